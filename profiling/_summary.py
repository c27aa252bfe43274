"""``Summary``: where each traced step's time went, by phase, with advice from what was measured.

Attribution is by wall-clock time, not by summed op time: ops run on several
threads at once (XLA:CPU's thread pool, a GPU's streams), so summing them
could exceed the step. Within each step window, time is cut at every op's
start and end; each piece goes to the innermost op running on each
thread/stream, split evenly among those running at once; an XLA:CPU matmul
runs until the first op that reads its result starts (``_xspace.async_remainders``).
Time in which nothing runs is ``no op running``.
The rows therefore add up to the measured step time (``Summary.coverage``
says how closely; the tests hold it within 15%).
"""

import json
import os
import statistics
from typing import NamedTuple

from fastcarry.profiling import _phases, _xspace


class Row(NamedTuple):
    """One phase: ``ms`` per step, ``share`` of the step, ``gflops`` achieved (matmul phases; else None).

    ``ms`` is wall-clock time, shared with whatever ran at the same time;
    ``gflops`` is the phase's matmul FLOPs over the time any of its ops ran.
    """

    phase: str
    ms: float
    share: float
    gflops: object
    ops: int  # op runs per step


class Advice(NamedTuple):
    """What the trace shows (``evidence``, numbers) and what to do about it (``action``)."""

    signal: str
    evidence: str
    action: str


class Summary(NamedTuple):
    """Per-step time by phase for one captured run.

    ``step_ms``: mean wall time of a traced step (the rows add up to it);
    ``median_ms``: the median; ``rows``: one ``Row`` per
    phase that took time (in ``PHASES`` order); ``compile_s``: tracing and XLA
    compilation seen inside the traced steps (per step, summed); ``steps``:
    how many steps were read; ``coverage``: sum of the rows over the step time;
    ``advice``: ``Advice`` items; ``device``: the planes the ops ran on.
    """

    step_ms: float
    median_ms: float
    rows: list
    compile_s: float
    steps: int
    coverage: float
    advice: list
    device: list
    label: str = ""

    def row(self, phase):
        """The ``Row`` of ``phase`` (zero if it took no time)."""
        for r in self.rows:
            if r.phase == phase:
                return r
        return Row(phase, 0.0, 0.0, None, 0)

    def to_json(self):
        """A JSON string of everything in the summary."""
        return json.dumps(self.to_dict(), indent=2)

    def to_dict(self):
        return {"label": self.label, "step_ms": self.step_ms, "median_ms": self.median_ms, "steps": self.steps,
                "compile_s": self.compile_s, "coverage": self.coverage, "device": self.device,
                "rows": [r._asdict() for r in self.rows], "advice": [a._asdict() for a in self.advice]}

    def to_markdown(self):
        """The phase table, then the advice, as Markdown."""
        lines = [f"step {self.step_ms:.2f} ms (mean of {self.steps}, median {self.median_ms:.2f}); compilation in "
                 f"the traced steps {self.compile_s:.2f} s; rows cover {self.coverage:.0%} of the step", "",
                 "| phase | ms / step | share | GFLOP/s |", "|---|---:|---:|---:|"]
        for r in self.rows:
            rate = "" if r.gflops is None else f"{r.gflops:.1f}"
            lines.append(f"| {r.phase} | {r.ms:.3f} | {r.share:.1%} | {rate} |")
        if self.advice:
            lines += ["", "Advice:"]
            lines += [f"- **{a.signal}**: {a.evidence}. {a.action}" for a in self.advice]
        return "\n".join(lines)


def _innermost_segments(runs):
    """Per thread: ``(start, end, run)`` pieces in which ``run`` is the innermost op running."""
    by_line = {}
    for run in runs:
        by_line.setdefault((run.plane, run.line), []).append(run)
    pieces = []
    for line_runs in by_line.values():
        line_runs.sort(key=lambda r: (r.start_ps, -r.end_ps))
        stack = []  # open runs, outermost first
        cursor = None
        for run in line_runs:
            while stack and stack[-1].end_ps <= run.start_ps:  # close runs that ended before this one starts
                top = stack.pop()
                if cursor < top.end_ps:
                    pieces.append((cursor, top.end_ps, top))
                cursor = max(cursor, top.end_ps)
            if stack and cursor < run.start_ps:
                pieces.append((cursor, run.start_ps, stack[-1]))
            cursor = run.start_ps if cursor is None else max(cursor, run.start_ps)
            stack.append(run)
        while stack:
            top = stack.pop()
            if cursor < top.end_ps:
                pieces.append((cursor, top.end_ps, top))
            cursor = max(cursor, top.end_ps)
    return pieces


def attribute(runs, start_ps, end_ps, scope=_phases.FASTCARRY):
    """Per phase in ``[start_ps, end_ps)``: wall-clock ps (shared), busy ps, flops, op runs (four dicts).

    Wall-clock time is split among the ops running at once, so the phases add
    up to the window; busy time is the time in which any op of the phase
    runs, what its achieved GFLOP/s is measured against (two matmuls running
    side by side each ran for the whole span, not half of it). Where ops ran
    on a device (a GPU's planes), the window is the device's: its kernels and
    the copies to and from it; the host's own ops (launches, the executor's
    bookkeeping) run beside the kernels and take no share of their time.
    ``scope``: what marks the RNN's ops (``_phases.classify``).
    """
    inside = [r for r in runs if r.end_ps > start_ps and r.start_ps < end_ps]
    if any(r.plane.startswith("/device:") for r in inside):
        inside = [r for r in inside if r.plane.startswith("/device:") or r.kind == "copy"]
    pieces = [(max(s, start_ps), min(e, end_ps), r) for s, e, r in _innermost_segments(inside)]
    pieces = [p for p in pieces if p[1] > p[0]]
    starts = [(s, 1, i) for i, (s, _, _) in enumerate(pieces)]
    events = sorted(starts + [(e, -1, i) for i, (_, e, _) in enumerate(pieces)], key=lambda ev: (ev[0], ev[1]))
    phases = {id(r): _phases.classify(r.name, r.kind, r.opcode, scope) for r in inside}
    phase_of = [phases[id(r)] for _, _, r in pieces]
    times, active, last = {}, set(), start_ps
    for t, change, i in events:
        if t > last:
            span = t - last
            if active:
                for j in active:
                    times[phase_of[j]] = times.get(phase_of[j], 0) + span / len(active)
            else:
                times[_phases.IDLE] = times.get(_phases.IDLE, 0) + span
            last = t
        if change > 0:
            active.add(i)
        else:
            active.discard(i)
    if end_ps > last:
        times[_phases.IDLE] = times.get(_phases.IDLE, 0) + end_ps - last
    by_phase = {}
    for (s, e, _), phase in zip(pieces, phase_of):
        by_phase.setdefault(phase, []).append((s, e))
    busy = {phase: _union_ps(spans) for phase, spans in by_phase.items()}
    flops, counts = {}, {}
    for r in inside:
        if start_ps <= r.start_ps < end_ps and not isinstance(r.line, tuple):  # an async remainder is no new run
            phase = phases[id(r)]
            flops[phase] = flops.get(phase, 0) + r.flops
            counts[phase] = counts.get(phase, 0) + 1
    return times, busy, flops, counts


def _merged(intervals):
    """Overlapping ``(start, end)`` intervals joined."""
    out = []
    for s, e in sorted(intervals):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def _union_ps(intervals):
    """The time covered by ``(start, end)`` intervals, overlaps counted once."""
    return sum(e - s for s, e in _merged(intervals))


def summarize(space, *, label="", scope=_phases.FASTCARRY, matmul_gflops=None, minor_faults_per_step=None):
    """The ``Summary`` of a read trace (``_xspace.Space``).

    Args:
      space: what ``_xspace.read`` returned.
      label: a name for the run (the contender).
      scope: what marks the RNN's ops: ``"fastcarry_"``, or another RNN's layer name (a Keras ``"lstm"``).
      matmul_gflops: this device's measured matmul rate (``calibrate()``), for advice; None skips that advice.
      minor_faults_per_step: page faults the process took per traced step (``resource.getrusage``), or None.
    """
    if not space.steps:
        raise ValueError("the trace has no steps: no tf.profiler.experimental.Trace(..., step_num=i) events "
                         "were recorded (was the step function run inside the capture?)")
    # Compilation runs on the calling thread while no op does: as runs of their own it is a row.
    compiles = [_xspace.OpRun(s, e, "compile", "compile", "", 0, "compile", i)
                for i, (s, e) in enumerate(_merged(space.compile_intervals))]
    runs = space.runs + compiles
    totals, busy, flops, counts, step_ps = {}, {}, {}, {}, []
    for _, start, end in space.steps:
        times, b, f, c = attribute(runs, start, end, scope)
        for d, src in ((totals, times), (busy, b), (flops, f), (counts, c)):
            for k, v in src.items():
                d[k] = d.get(k, 0) + v
        step_ps.append(end - start)
    n = len(space.steps)
    step_ms = sum(step_ps) / n / 1e9
    median_ms = statistics.median(step_ps) / 1e9
    rows = []
    for phase in _phases.PHASES:
        ps = totals.get(phase, 0)
        if ps <= 0:
            continue
        ms = ps / n / 1e9
        rate = None
        if phase in _phases.MATMUL_PHASES and flops.get(phase) and busy.get(phase):
            rate = flops[phase] / (busy[phase] / 1e12) / 1e9
        rows.append(Row(phase, ms, ms / step_ms, rate, round(counts.get(phase, 0) / n)))
    coverage = sum(r.ms for r in rows) / step_ms
    compile_s = sum(_union_ps([(max(s, a), min(e, b)) for s, e in space.compile_intervals if e > a and s < b])
                    for _, a, b in space.steps) / 1e12
    summary = Summary(step_ms, median_ms, rows, compile_s, n, coverage, [], list(space.device_planes), label)
    return summary._replace(advice=advise(summary, space, matmul_gflops, minor_faults_per_step))


def advise(summary, space, matmul_gflops=None, minor_faults_per_step=None):
    """``Advice`` from measured signals only; each item names its evidence."""
    out = []
    if summary.compile_s > 0.001:
        out.append(Advice(
            "compilation inside the traced steps",
            f"{summary.compile_s:.2f} s of tracing/XLA compilation in {summary.steps} traced steps "
            f"({summary.compile_s / (summary.step_ms * summary.steps / 1e3):.0%} of their time)",
            "a function is retraced or recompiled in the hot loop: keep shapes and Python arguments fixed "
            "(pad T to a few lengths), and warm up before timing"))
    if space.xla_executions and not any(r.kind == "xla" for r in space.runs):
        out.append(Advice(
            "no XLA op events",
            f"{space.xla_executions} XLA program runs but no per-op events",
            "XLA:CPU records ops only in programs compiled with XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true: "
            "import fastcarry.profiling before the step is first compiled, or set the flag before the program "
            "starts"))
    idle = summary.row(_phases.IDLE)
    if idle.share > 0.3 and summary.step_ms < 50:
        per_step_ops = sum(r.ops for r in summary.rows)
        out.append(Advice(
            "overhead-bound step",
            f"no op runs for {idle.share:.0%} of a {summary.step_ms:.2f} ms step with {per_step_ops} op runs "
            f"per step",
            "the step is bound by dispatch and launches, not arithmetic: a larger batch per step costs little "
            "more time" + ("" if any(r.kind == "xla" for r in space.runs) else
                           "; compiling the whole step with tf.function(jit_compile=True) removes most dispatch")))
    if minor_faults_per_step is not None and minor_faults_per_step > 0:
        # ~0.25 us per minor fault is what zeroing a fresh 4 KiB page costs on this class of CPU.
        fault_ms = minor_faults_per_step * 0.25e-3
        if fault_ms > 0.1 * summary.step_ms and "/device:GPU" not in " ".join(summary.device):
            out.append(Advice(
                "fresh memory on every call",
                f"{minor_faults_per_step:.0f} page faults per step (about {fault_ms:.2f} ms of a "
                f"{summary.step_ms:.2f} ms step)",
                "TF's default CPU allocator returns XLA's temporaries to the OS after each call; set "
                "TF_CPU_ALLOCATOR_USE_BFC=1 before TensorFlow starts to keep them"))
    if any(d.startswith("/device:GPU") for d in summary.device) and not _command_buffers_traced():
        out.append(Advice(
            "command buffers off while traced",
            f"a trace of {', '.join(d for d in summary.device if d.startswith('/device:GPU'))} without "
            f"{COMMAND_BUFFERS_FLAG} in XLA_FLAGS",
            "while a profiler is attached XLA runs each command buffer's kernels one launch at a time "
            "(xla/backends/gpu/runtime/command_buffer_thunk.cc), so this traced step launches more than the "
            f"untraced one and its launch overhead is overstated; set XLA_FLAGS={COMMAND_BUFFERS_FLAG} before "
            "the program starts to trace the step as it runs"))
    copies = summary.row(_phases.COPIES)
    if copies.share > 0.2:
        out.append(Advice(
            "host<->device copies",
            f"copies take {copies.share:.0%} of the step ({copies.ms:.2f} ms)",
            "swap_memory=True trades these copies for device memory: turn it off if the activations fit, or "
            "raise chunk= so fewer, larger copies overlap with compute"))
    if matmul_gflops:
        for r in summary.rows:
            if r.gflops is not None and r.ms > 0.05 * summary.step_ms and r.gflops < 0.25 * matmul_gflops:
                out.append(Advice(
                    f"slow matmuls: {r.phase}",
                    f"{r.gflops:.1f} GFLOP/s against {matmul_gflops:.0f} GFLOP/s for a large matmul on this "
                    f"device, over {r.share:.0%} of the step", _MATMUL_FIX.get(r.phase, _MATMUL_FIX[None])))
    return out


COMMAND_BUFFERS_FLAG = "--xla_enable_command_buffers_during_profiling=true"


def _command_buffers_traced():
    """Whether XLA_FLAGS keeps XLA:GPU's command buffers (CUDA graphs) on while a profiler is attached."""
    return COMMAND_BUFFERS_FLAG in os.environ.get("XLA_FLAGS", "").split()


# What helps a slow matmul depends on which it is: hoisting moves only the input projection.
_MATMUL_FIX = {
    _phases.INPUT_PROJECTION: "projection='hoisted' makes the per-step input projections one [T*B, D] @ [D, G] "
                              "matmul before the loop; a larger batch also fills them",
    _phases.RECURRENT_MATMUL: "each step's [B, H] @ [H, G] is too small to use the device, and must wait for the "
                              "previous step: a larger batch fills it, and a larger unroll= cuts the per-step "
                              "overhead around it (projection='hoisted' does not change it)",
    None: "the matmuls are too small to use the device: a larger batch fills them",
}
