"""Reading a captured ``.xplane.pb``: the op executions of each step, with their TF op names.

xprof's op-level tools (``hlo_stats``, ``op_profile``) read device planes
only: on a CPU-only machine they come back empty, although the trace holds
every XLA op (with ``--xla_cpu_enable_xprof_traceme``) and every TF op the
executor ran. So this module reads the XSpace protobuf itself, with the
message classes TensorFlow ships (``tensorflow.tsl.profiler.protobuf``):

- **XLA ops** are events with a ``program_id`` stat. Their TF op name (the
  name scopes that say which phase they belong to) is the ``op_name`` of the
  HLO instruction's metadata, from the HLO protos the profiler stores in the
  ``/host:metadata`` plane. Instructions XLA added (copies of loop state) have
  no metadata; they take the name of the instruction that calls their
  computation (a ``while`` loop's body ops the loop's name). On a GPU the same
  events sit on ``/device:GPU:N`` planes (CUPTI kernels carry ``hlo_op`` and
  ``program_id``); nothing here assumes the host is the device.
- **TF ops** run by TF's executor (a graph ``tf.function`` without XLA) are
  host events named ``"<op name>:<OpType>"``.
- **Copies** between host and device (``MemcpyH2D``/``MemcpyD2H`` on a GPU,
  ``EagerCopyToDevice`` eagerly) are kept as such. A copy within the device
  (``MemcpyD2D``, ``MemcpyP2P``) is not one: with a ``program_id`` it is an
  XLA program's (XLA:GPU annotates its copy thunks as it does kernels), else
  device work outside XLA.
- **Steps** are the ``tf.profiler.experimental.Trace(name, step_num=i)``
  events on the host's Python thread.

Shapes of the result: ``Space.runs`` is a list of ``OpRun`` (one op execution),
``Space.steps`` a list of ``(step_num, start_ps, end_ps)``.
"""

import bisect
import json
import math
import re
from typing import NamedTuple

from tensorflow.compiler.xla.service import hlo_pb2
from tensorflow.tsl.profiler.protobuf import xplane_pb2

# "<op name>:<OpType>", the TraceMe name TF's executor gives a kernel run.
_TF_OP = re.compile(r"^(?P<name>[A-Za-z0-9_.][A-Za-z0-9_.\-/>]*):(?P<type>_?[A-Z][A-Za-z0-9_]*)$")
# Copies between host and device, by event name; any other "Memcpy..." stays on the device.
_HOST_DEVICE_COPY = re.compile(r"^(MemcpyH2D|MemcpyD2H|EagerCopyToDevice)")


class OpRun(NamedTuple):
    """One execution of one op: ``[start_ps, end_ps)`` on ``plane``/``line``."""

    start_ps: int
    end_ps: int
    name: str  # the TF op name with its scopes ("fastcarry_lstm/recurrence/while/MatMul"), or the copy's kind
    kind: str  # "xla", "tf" or "copy"
    opcode: str  # the HLO opcode ("dot", "fusion", ...) for XLA ops, the op type for TF ops
    flops: int  # the HLO dot FLOPs of one execution (0 for everything else)
    plane: str
    line: object  # the thread or stream (an id; ("async", n) for an async dot's remainder)
    hlo: str = ""  # the HLO instruction (XLA ops)
    program: int = 0  # the XLA program id (XLA ops)


# Tracing a tf.function and XLA compiling it (CPU and GPU compilers; XLA:GPU's backend also annotates its
# span as "XlaCompileBackend:#module=..,program_id=..#", xla/service/gpu/gpu_compiler.cc).
_COMPILE = re.compile(r"^(tf\.function-graph_building|\w*Compiler::(Compile\w*|RunBackend|RunHloPasses)"
                      r"|XlaCompileBackend(:#.*#)?)$")


class Space(NamedTuple):
    runs: list
    steps: list  # (step_num, start_ps, end_ps), in time order
    compile_intervals: list  # (start_ps, end_ps) of tracing and compilation
    xla_programs: int  # HLO modules the trace knows
    xla_executions: int  # whole-program executions seen (a program run without op events: no traceme)
    device_planes: list  # names of the planes that ran ops


def load(path):
    """The ``XSpace`` message stored at ``path``."""
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    return space


def _stat_value(plane, stat):
    which = stat.WhichOneof("value")
    if which == "ref_value":
        return plane.stat_metadata[stat.ref_value].name
    return getattr(stat, which) if which else None


def _stats(plane, stats):
    return {plane.stat_metadata[s.metadata_id].name: _stat_value(plane, s) for s in stats}


# XLA:GPU's GEMMs: library calls (xla/service/gpu/cublas_cudnn.cc) and Triton fusions (their backend config's
# fusion kind, xla/service/gpu/ir_emission_utils.h; the dot inside, nested one level deeper in the second).
# Both are reported as a "dot": their phase and FLOPs are a matmul's.
_GEMM_TARGETS = ("__cublas$gemm", "__cublas$lt$matmul", "__cublas$lt$matmul$f8")
_GEMM_FUSIONS = ("__triton_gemm", "__triton_nested_gemm_fusion")


def _backend_config(ins):
    """The instruction's backend config (JSON) as a dict; empty when it has none or it is not JSON."""
    try:
        config = json.loads(ins.backend_config or b"{}")
    except ValueError:
        return {}
    return config if isinstance(config, dict) else {}


def _opcode(ins):
    """``ins``'s HLO opcode, ``"dot"`` for a GEMM custom-call or GEMM fusion."""
    if ins.opcode == "custom-call" and ins.custom_call_target in _GEMM_TARGETS:
        return "dot"
    if ins.opcode == "fusion" and _backend_config(ins).get("fusion_backend_config", {}).get("kind") in _GEMM_FUSIONS:
        return "dot"
    return ins.opcode


def _gemm_flops(ins, by_id):
    """A GEMM custom-call's FLOPs, from its backend config's dot dimension numbers (its result is the first
    element of a (result, workspace) tuple)."""
    dims = _backend_config(ins).get("gemm_backend_config", {}).get("dot_dimension_numbers", {})
    shape = ins.shape.tuple_shapes[0] if ins.shape.tuple_shapes else ins.shape
    lhs = by_id.get(ins.operand_ids[0]) if ins.operand_ids else None
    if lhs is None:
        return 0
    k = math.prod(lhs.shape.dimensions[int(d)] for d in dims.get("lhs_contracting_dimensions", []))
    return 2 * math.prod(shape.dimensions) * k


def _dot_flops(ins, by_id):
    out = 1
    for d in ins.shape.dimensions:
        out *= d
    lhs = by_id.get(ins.operand_ids[0]) if ins.operand_ids else None
    k = 1
    if lhs is not None:
        for d in ins.dot_dimension_numbers.lhs_contracting_dimensions:
            k *= lhs.shape.dimensions[d]
    return 2 * out * k


class HloOp(NamedTuple):
    """What a trace event of one HLO instruction needs from the module."""

    op_name: str  # the TF op name (with scopes); the calling instruction's when XLA made it
    opcode: str  # "dot" for XLA:GPU's GEMM custom-calls and GEMM fusions too
    flops: int  # dot FLOPs of one execution (a fusion: of the dots inside it; a GEMM custom-call: its own)
    users: tuple  # names of the instructions that read its result
    returned: bool  # the program returns it (a user is the entry computation's root)


_NO_OP = HloOp("", "", 0, (), False)


def hlo_ops(module):
    """``{instruction name: HloOp}`` for one ``HloModuleProto``."""
    computations = {c.id: c for c in module.computations}
    callers = {}  # computation id -> the calling instruction
    by_id = {}
    for comp in module.computations:
        for ins in comp.instructions:
            by_id[ins.id] = ins
            for called in ins.called_computation_ids:
                callers.setdefault(called, ins)
    owner = {ins.id: comp.id for comp in module.computations for ins in comp.instructions}

    def name_of(ins, depth=0):
        if ins.metadata.op_name or depth > 50:
            return ins.metadata.op_name
        caller = callers.get(owner.get(ins.id))
        return name_of(caller, depth + 1) if caller is not None else ""

    def flops_of(ins, depth=0):
        if ins.opcode == "dot":
            return _dot_flops(ins, by_id)
        if ins.opcode == "custom-call" and ins.custom_call_target in _GEMM_TARGETS:
            return _gemm_flops(ins, by_id)
        if ins.opcode == "fusion" and depth < 5:
            return sum(flops_of(i, depth + 1) for c in ins.called_computation_ids
                       for i in computations[c].instructions)
        return 0

    users = {}
    for ins in by_id.values():
        for operand in ins.operand_ids:
            if operand in by_id:
                users.setdefault(operand, []).append(ins.id)
    entry_root = computations[module.entry_computation_id].root_id if module.entry_computation_id in computations \
        else None
    returned = {o for o in by_id[entry_root].operand_ids} if entry_root in by_id else set()
    return {ins.name: HloOp(name_of(ins), _opcode(ins), flops_of(ins),
                            tuple(by_id[u].name for u in users.get(ins.id, ())), ins.id in returned)
            for ins in by_id.values()}


def _programs(space):
    """``{program_id: {instruction name: HloOp}}`` from the metadata plane."""
    programs = {}
    for plane in space.planes:
        if plane.name != "/host:metadata":
            continue
        for program_id, meta in plane.event_metadata.items():
            for stat in meta.stats:
                if plane.stat_metadata[stat.metadata_id].name == "Hlo Proto" and stat.bytes_value:
                    proto = hlo_pb2.HloProto()
                    proto.ParseFromString(stat.bytes_value)
                    programs[program_id] = hlo_ops(proto.hlo_module)
    return programs


def read(path, step_name="train"):
    """The ``Space`` of the ``.xplane.pb`` at ``path``; steps are the ``step_name`` trace events."""
    space = load(path)
    programs = _programs(space)
    runs, steps, compiles, executions, planes, program_ends = [], [], [], 0, [], []
    for plane in space.planes:
        if not (plane.name.startswith("/host:CPU") or plane.name.startswith("/device:")):
            continue
        before = len(runs)
        for line in plane.lines:
            base_ps = line.timestamp_ns * 1000
            for event in line.events:
                meta = plane.event_metadata[event.metadata_id]
                name = meta.name
                start = base_ps + event.offset_ps
                end = start + event.duration_ps
                if name == step_name or name.startswith(step_name + " "):
                    stats = _stats(plane, event.stats)
                    if "step_num" in stats:
                        steps.append((int(stats["step_num"]), start, end))
                    continue
                if _COMPILE.match(name):
                    compiles.append((start, end))
                    continue
                if name == "CpuExecutable::ExecuteAsyncOnStream":
                    executions += 1
                    program_ends.append(end)
                    continue
                if name == "BlockUntilReady":  # waits for an XLA:CPU program's async work
                    program_ends.append(end)
                    continue
                if _HOST_DEVICE_COPY.match(name):
                    runs.append(OpRun(start, end, name, "copy", name, 0, plane.name, line.id))
                    continue
                stats = _stats(plane, event.stats)
                if name.startswith("Memcpy") and "program_id" not in stats:  # within the device, not XLA's
                    runs.append(OpRun(start, end, name, "tf", name, 0, plane.name, line.id))
                    continue
                if "program_id" in stats:
                    ops = programs.get(int(stats["program_id"]), {})
                    hlo_name = stats.get("hlo_op") if isinstance(stats.get("hlo_op"), str) else name
                    op = ops.get(hlo_name) or ops.get(name) or _NO_OP._replace(op_name=str(stats.get("tf_op", "")))
                    op_name, opcode, flops = op.op_name, op.opcode, op.flops
                    runs.append(OpRun(start, end, op_name or hlo_name, "xla", opcode, flops, plane.name, line.id,
                                      hlo_name, int(stats["program_id"])))
                    continue
                match = _TF_OP.match(name)
                if match and not name.startswith("__inference"):
                    runs.append(OpRun(start, end, match["name"], "tf", match["type"], 0, plane.name, line.id))
        if len(runs) > before:
            planes.append(plane.name)
    steps.sort(key=lambda s: s[1])
    runs += async_remainders(runs, programs, sorted(program_ends))
    return Space(runs, steps, compiles, len(programs), executions, planes)


def async_remainders(runs, programs, program_ends=()):
    """The time XLA:CPU's matmuls run after their trace event has ended, as runs of their own.

    XLA:CPU hands a large dot to its thread pool and ends the dot's event when
    the work is handed over, not done (measured: weight-gradient dots at 9x
    the device's peak matmul rate by their events). The work is done when the
    first op that reads the dot's result starts, or, for a result only the
    program returns, when the program is done (``program_ends``: the ends of
    ``BlockUntilReady`` and ``CpuExecutable::ExecuteAsyncOnStream`` events). So
    ``[event end, ready)`` is the dot's too: one run per dot execution, each on
    a line of its own (they overlap what else runs then). Host (XLA:CPU)
    planes only: GPU kernel events span the kernel's execution.
    """
    by_hlo = {}
    for run in runs:
        if run.kind == "xla" and run.plane.startswith("/host:"):
            by_hlo.setdefault((run.program, run.hlo), []).append(run.start_ps)
    for starts in by_hlo.values():
        starts.sort()
    extra = []
    for run in runs:
        if run.kind != "xla" or not run.flops or not run.plane.startswith("/host:"):
            continue
        op = programs.get(run.program, {}).get(run.hlo, _NO_OP)
        ready = None
        for user in op.users:
            starts = by_hlo.get((run.program, user), [])
            i = bisect.bisect_left(starts, run.end_ps)
            if i < len(starts) and (ready is None or starts[i] < ready):
                ready = starts[i]
        if ready is None and op.returned:
            i = bisect.bisect_left(program_ends, run.end_ps)  # returned: ready when the program is
            if i < len(program_ends):
                ready = program_ends[i]
        if ready is not None and ready > run.end_ps:
            extra.append(run._replace(start_ps=run.end_ps, end_ps=ready, line=("async", len(extra))))
    return extra
