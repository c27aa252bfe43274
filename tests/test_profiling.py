"""``fastcarry.profiling``: real TensorFlow traces, read back and attributed to fastcarry's phases.

Every test captures a real trace with TF's profiler (``tf.profiler.experimental``)
of a small compiled training step; nothing is mocked.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import fastcarry as fc
import fastcarry.profiling as fcp
from fastcarry.profiling import _phases

B, T, D, H = 4, 12, 6, 16


def _train_step(cell, **options):
    params = cell.trainable_variables

    @tf.function(jit_compile=True)
    def step(x):
        with tf.GradientTape() as tape:
            outputs, _ = fc.unroll(cell, x, **options)
            loss = tf.reduce_sum(outputs * outputs)
        return tape.gradient(loss, params)
    return step


def _x(seed=0):
    return tf.constant(np.random.default_rng(seed).standard_normal((B, T, D)), tf.float32)


@pytest.fixture(scope="module")
def lstm_summary(tmp_path_factory):
    cell = fc.LSTM(H, input_size=D, seed=0)
    prof = fcp.trace(_train_step(cell), _x(), logdir=str(tmp_path_factory.mktemp("lstm")), steps=3, warmup=2)
    return prof, prof.summary(label="fastcarry")


def test_trace_writes_a_tensorboard_run(lstm_summary):
    prof, _ = lstm_summary
    assert prof.steps == 3 and prof.run_dir.startswith(os.path.join(prof.logdir, "plugins", "profile"))
    assert prof.xplane_paths and all(p.endswith(".xplane.pb") and os.path.getsize(p) > 0 for p in prof.xplane_paths)


def test_every_forward_and_backward_phase_is_found(lstm_summary):
    _, summary = lstm_summary
    found = {r.phase for r in summary.rows if r.ms > 0}
    want = {_phases.INPUT_PROJECTION, _phases.RECURRENT_MATMUL, _phases.GATES, _phases.BACKWARD_LOOP,
            _phases.WEIGHT_GRADIENTS}
    assert want <= found, summary.to_markdown()
    for phase in (_phases.INPUT_PROJECTION, _phases.RECURRENT_MATMUL, _phases.WEIGHT_GRADIENTS):
        assert summary.row(phase).gflops > 0


def test_rows_add_up_to_the_step_time(lstm_summary):
    _, summary = lstm_summary
    assert summary.steps == 3
    assert abs(sum(r.ms for r in summary.rows) - summary.step_ms) <= 0.15 * summary.step_ms
    assert abs(summary.coverage - 1) <= 0.15
    assert summary.compile_s == 0  # compiled in the warm-up


def test_summary_serialises(lstm_summary):
    _, summary = lstm_summary
    data = json.loads(summary.to_json())
    assert data["label"] == "fastcarry" and data["steps"] == 3
    assert [r["phase"] for r in data["rows"]] == [r.phase for r in summary.rows]
    table = summary.to_markdown()
    assert "| backward loop |" in table and "ms / step" in table


def test_chunk_recompute_is_its_own_phase(tmp_path):
    cell = fc.GRU(H, input_size=D, seed=0)
    prof = fcp.trace(_train_step(cell, chunk=4), _x(), logdir=str(tmp_path), steps=2, warmup=1)
    assert prof.summary(calibrate=False).row(_phases.RECOMPUTE).ms > 0


def test_without_fastcarry_scopes_nothing_is_attributed_to_fastcarry(tmp_path):
    """The control: a Keras LSTM step has none of the scopes, so no op lands in a fastcarry phase."""
    layer = tf.keras.layers.LSTM(H)
    layer.build((None, T, D))

    @tf.function(jit_compile=True)
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(x) ** 2)
        return tape.gradient(loss, layer.trainable_variables)

    summary = fcp.trace(step, _x(), logdir=str(tmp_path), steps=2, warmup=1).summary(calibrate=False)
    phases = {r.phase for r in summary.rows}
    assert phases <= {_phases.OUTSIDE, _phases.COPIES, _phases.IDLE, _phases.COMPILE}, summary.to_markdown()
    assert summary.row(_phases.OUTSIDE).ms > 0


def test_compilation_inside_the_traced_steps_is_reported(tmp_path):
    cell = fc.SimpleRNN(H, input_size=D, seed=0)
    sizes = iter(range(5, 50))

    @tf.function(jit_compile=True)
    def step(x):
        return fc.unroll(cell, x)[0]

    def new_length_each_call():
        return step(tf.zeros([B, next(sizes), D]))  # a new T: a new trace and an XLA compile

    summary = fcp.trace(new_length_each_call, logdir=str(tmp_path), steps=2, warmup=0).summary(calibrate=False)
    assert summary.compile_s > 0 and summary.row(_phases.COMPILE).ms > 0
    assert any(a.signal == "compilation inside the traced steps" for a in summary.advice), summary.advice


def test_capture_around_a_users_own_loop(tmp_path):
    cell = fc.LSTM(H, input_size=D, seed=1)
    step = _train_step(cell)
    step(_x())
    with fcp.capture(str(tmp_path)) as prof:
        for seed in range(3):
            with prof.step():
                step(_x(seed))[0].numpy()
    summary = prof.summary(calibrate=False)
    assert summary.steps == 3 and summary.row(_phases.BACKWARD_LOOP).ms > 0


# -- bad input, faults ------------------------------------------------------------

@pytest.mark.parametrize("kw, match", [(dict(steps=0), "steps must be an int >= 1, got 0"),
                                       (dict(warmup=-1), "warmup must be an int >= 0, got -1"),
                                       (dict(steps=2.0), "steps must be an int >= 1, got 2.0")])
def test_bad_counts_name_the_argument(tmp_path, kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fcp.trace(lambda: None, logdir=str(tmp_path), **kw)


def test_unwritable_logdir_fails_before_anything_runs(tmp_path):
    calls = []
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(ValueError, match="logdir .* is not a writable directory"):
        fcp.trace(lambda: calls.append(1), logdir=str(not_a_dir / "sub"))
    assert calls == []


def test_an_exception_in_a_traced_step_stops_the_profiler(tmp_path):
    calls = []

    def fails_on_the_second_traced_call():
        calls.append(1)
        if len(calls) == 3:
            raise KeyError("the user's bug")
        return tf.constant(1.0)

    with pytest.raises(KeyError, match="the user's bug"):
        fcp.trace(fails_on_the_second_traced_call, logdir=str(tmp_path / "a"), steps=3, warmup=1)
    prof = fcp.trace(lambda: tf.constant(2.0), logdir=str(tmp_path / "b"), steps=1, warmup=0)  # works again
    assert prof.xplane_paths


def test_a_profiler_already_running_is_a_clear_error(tmp_path):
    tf.profiler.experimental.start(str(tmp_path / "theirs"))
    try:
        with pytest.raises(RuntimeError, match="profiler is already running"):
            fcp.trace(lambda: None, logdir=str(tmp_path / "ours"), steps=1, warmup=0)
    finally:
        tf.profiler.experimental.stop()


def test_an_unreadable_trace_names_the_file_and_keeps_it(tmp_path):
    prof = fcp.trace(lambda: tf.constant(1.0), logdir=str(tmp_path), steps=1, warmup=0)
    path = prof.xplane_paths[0]
    with open(path, "wb") as f:
        f.write(b"\x08\xff\xff not a protobuf")
    with pytest.raises(RuntimeError, match="could not parse the trace .*xplane.pb.*kept"):
        prof.summary(calibrate=False)
    assert os.path.exists(path)


def test_classify_follows_the_scopes():
    c = _phases.classify
    assert c("PartitionedCall/fastcarry_lstm/recurrence/while/project/MatMul", "xla", "dot") == _phases.INPUT_PROJECTION
    assert c("fastcarry_lstm/recurrence/while/recurrent_matmul/MatMul", "xla", "dot") == _phases.RECURRENT_MATMUL
    assert c("fastcarry_lstm/recurrence/while/gates/mul_4", "xla", "fusion") == _phases.GATES
    assert c("fastcarry_gru_grad/recurrence_grad/while/MatMul", "xla", "dot") == _phases.BACKWARD_LOOP
    assert c("gradient_tape/fastcarry_gru_grad/recurrence_grad/weights_grad/MatMul", "xla", "dot") == \
        _phases.WEIGHT_GRADIENTS
    assert c("fastcarry_lstm_grad/chunks_grad/while/recompute/recurrence/while/MatMul", "xla", "dot") == \
        _phases.RECOMPUTE
    assert c("fastcarry_lstm/layout/transpose", "tf", "Transpose") == _phases.LAYOUT
    assert c("fastcarry_swap/fetch/strided_slice", "tf", "StridedSlice") == _phases.COPIES
    assert c("MemcpyH2D", "copy", "MemcpyH2D") == _phases.COPIES
    assert c("lstm/while/MatMul", "xla", "dot") == _phases.OUTSIDE


def test_classify_another_rnn_by_its_layer_name_and_loop_structure():
    """A Keras layer's ops: TF uniquifies its scope (lstm_1/), and the loops say forward or backward."""
    c = _phases.classify
    assert c("lstm_1/while/MatMul_1", "xla", "dot", "lstm") == _phases.RECURRENT_MATMUL
    assert c("lstm/while/mul_2", "xla", "fusion", "lstm") == _phases.GATES
    assert c("gradient_tape/lstm_1/while/gradients/MatMul_grad/MatMul", "xla", "dot", "lstm") == \
        _phases.BACKWARD_LOOP
    assert c("gradient_tape/lstm/MatMul", "xla", "dot", "lstm") == _phases.WEIGHT_GRADIENTS
    assert c("lstm_10/while/MatMul", "xla", "dot", "lstm_1") == _phases.OUTSIDE  # another layer
    assert c("dense/MatMul", "xla", "dot", "lstm") == _phases.OUTSIDE


def _summary_with(**rows_ms):
    from fastcarry.profiling import _summary

    step = sum(rows_ms.values())
    rows = [fcp.Row(p.replace("_", " "), ms, ms / step, None, 1) for p, ms in rows_ms.items()]
    return _summary.Summary(step, step, rows, 0.0, 5, 1.0, [], ["/host:CPU"])


def test_advice_comes_from_the_measured_signals():
    from fastcarry.profiling import _summary, _xspace

    space = _xspace.Space([], [(0, 0, 1)], [], 1, 0, ["/host:CPU"])
    quiet = _summary_with(backward_loop=9.0, no_op_running=1.0)
    assert _summary.advise(quiet, space, matmul_gflops=None, minor_faults_per_step=10) == []
    faults = _summary.advise(quiet, space, minor_faults_per_step=20_000)  # ~5 ms of a 10 ms step
    assert [a.signal for a in faults] == ["fresh memory on every call"]
    assert "TF_CPU_ALLOCATOR_USE_BFC=1" in faults[0].action and "20000 page faults per step" in faults[0].evidence
    idle = _summary.advise(_summary_with(backward_loop=4.0, no_op_running=6.0), space)
    assert [a.signal for a in idle] == ["overhead-bound step"] and "60%" in idle[0].evidence
    copies = _summary.advise(_summary_with(backward_loop=5.0, **{"host<->device_copies": 5.0}), space)
    assert [a.signal for a in copies] == ["host<->device copies"] and "swap_memory" in copies[0].action
    slow = _summary_with(backward_loop=5.0, weight_gradients=5.0)
    slow = slow._replace(rows=[r._replace(phase=_phases.WEIGHT_GRADIENTS, gflops=10.0) if r.phase == "weight gradients"
                               else r for r in slow.rows])
    advice = _summary.advise(slow, space, matmul_gflops=150.0)
    assert [a.signal for a in advice] == [f"slow matmuls: {_phases.WEIGHT_GRADIENTS}"]
    assert "10.0 GFLOP/s against 150 GFLOP/s" in advice[0].evidence
    assert "hoist" not in advice[0].action
    # The recurrent matmul's fix is not hoisting (which moves only the input projection): issue 23.
    recurrent = slow._replace(rows=[r._replace(phase=_phases.RECURRENT_MATMUL) if r.gflops else r for r in slow.rows])
    action = _summary.advise(recurrent, space, matmul_gflops=150.0)[0].action
    assert "unroll=" in action and "does not change it" in action
    projection = slow._replace(rows=[r._replace(phase=_phases.INPUT_PROJECTION) if r.gflops else r for r in slow.rows])
    assert "projection='hoisted'" in _summary.advise(projection, space, matmul_gflops=150.0)[0].action


def test_a_gpu_trace_says_when_command_buffers_were_off_while_traced(monkeypatch):
    """XLA:GPU runs command buffers launch by launch while a profiler is attached unless a flag says otherwise
    (issue 25): the summary of a GPU trace says so; a CPU trace, or the flag set, says nothing."""
    from fastcarry.profiling import _summary, _xspace

    space = _xspace.Space([], [(0, 0, 1)], [], 1, 0, ["/device:GPU:0"])
    gpu = _summary_with(backward_loop=9.0, no_op_running=1.0)._replace(device=["/host:CPU", "/device:GPU:0"])
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_autotune_level=2")
    (advice,) = _summary.advise(gpu, space)
    assert advice.signal == "command buffers off while traced" and "/device:GPU:0" in advice.evidence
    assert "XLA_FLAGS=--xla_enable_command_buffers_during_profiling=true" in advice.action
    assert _summary.advise(gpu._replace(device=["/host:CPU"]), space) == []
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_autotune_level=2 --xla_enable_command_buffers_during_profiling=true")
    assert _summary.advise(gpu, space) == []


# -- a GPU device plane (no GPU here: a synthetic XSpace in the layout TF's GPU tracer writes) --------

def _gpu_space(path, copies=False):
    """An XSpace with a host step, the HLO module in ``/host:metadata`` and kernels on ``/device:GPU:0``.

    Kernel events carry ``program_id`` and ``hlo_op`` stats, as XLA:GPU's kernel
    annotations give them (``Thunk:#name=..,hlo_op=..#`` in
    ``xla/backends/gpu/runtime/annotation.cc``, made stats by CUPTI's collector,
    ``cupti_collector.cc``); the matmuls are cuBLAS custom-calls, as XLA:GPU emits
    them (``gemm_rewriter.cc``), not ``dot`` instructions. The step runs 0-500 us: a
    recurrent matmul 0-100, the gates 100-150, a weight-gradient matmul 200-400,
    the device idle otherwise.
    A host TF op (the executor's, outside the RNN) runs beside the recurrent matmul, 0-100 us: it takes no
    share of the device's time. With ``copies``: XLA's own device copy (``MemcpyD2D`` with those stats) 400-420,
    a ``MemcpyD2D`` without them 420-430, a ``MemcpyH2D`` 430-450, and XLA:GPU's
    compile annotation on the host 450-460.
    """
    from tensorflow.compiler.xla.service import hlo_pb2
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    module = hlo_pb2.HloProto()
    comp = module.hlo_module.computations.add(name="main", id=1)
    specs = [  # name, opcode, op_name, output shape, operand ids
        ("p0", "parameter", "", [4, 16], []),
        ("p1", "parameter", "", [16, 32], []),
        ("dot.1", "custom-call", "fastcarry_lstm/recurrence/while/recurrent_matmul/MatMul", [4, 32], [1, 2]),
        ("fusion.2", "fusion", "fastcarry_lstm/recurrence/while/gates/mul", [4, 32], [3]),
        ("dot.3", "custom-call", "gradient_tape/fastcarry_lstm_grad/recurrence_grad/weights_grad/MatMul", [16, 32],
         [1, 4]),
        ("copy.4", "copy", "fastcarry_lstm/recurrence/while/gates/mul", [4, 32], [4]),
    ]
    for i, (name, opcode, op_name, shape, operands) in enumerate(specs, start=1):
        ins = comp.instructions.add(name=name, opcode=opcode, id=i)
        ins.operand_ids.extend(operands)
        ins.metadata.op_name = op_name
        if opcode != "custom-call":
            ins.shape.dimensions.extend(shape)
            continue
        ins.custom_call_target = "__cublas$gemm"
        ins.shape.tuple_shapes.add().dimensions.extend(shape)  # (result, workspace)
        ins.shape.tuple_shapes.add().dimensions.extend([0])
        contracting = 1 if name == "dot.1" else 0
        ins.backend_config = ('{"gemm_backend_config":{"alpha_real":1,"beta":0,"dot_dimension_numbers":'
                              f'{{"lhs_contracting_dimensions":["{contracting}"],"rhs_contracting_dimensions":["0"],'
                              '"lhs_batch_dimensions":[],"rhs_batch_dimensions":[]},"epilogue":"DEFAULT"}}').encode()

    space = xplane_pb2.XSpace()
    meta = space.planes.add(id=1, name="/host:metadata")
    meta.stat_metadata[1].id, meta.stat_metadata[1].name = 1, "Hlo Proto"
    meta.event_metadata[7].id, meta.event_metadata[7].name = 7, "module"
    meta.event_metadata[7].stats.add(metadata_id=1, bytes_value=module.SerializeToString())

    host = space.planes.add(id=2, name="/host:CPU")
    host.stat_metadata[1].id, host.stat_metadata[1].name = 1, "step_num"
    host.event_metadata[1].id, host.event_metadata[1].name = 1, "train"
    python = host.lines.add(id=1, name="python", timestamp_ns=1000)
    step = python.events.add(metadata_id=1, offset_ps=0, duration_ps=500_000_000)
    step.stats.add(metadata_id=1, int64_value=0)
    host.event_metadata[3].id, host.event_metadata[3].name = 3, "model/dense/ReadVariableOp:ReadVariableOp"
    python.events.add(metadata_id=3, offset_ps=0, duration_ps=100_000_000)

    gpu = space.planes.add(id=3, name="/device:GPU:0")
    for sid, name in ((1, "program_id"), (2, "hlo_op")):
        gpu.stat_metadata[sid].id, gpu.stat_metadata[sid].name = sid, name
    stream = gpu.lines.add(id=7, name="Stream #7(Compute)", timestamp_ns=1000)
    kernels = [("kernel_dot.1", "dot.1", 0, 100), ("kernel_fusion.2", "fusion.2", 100, 150),
               ("kernel_dot.3", "dot.3", 200, 400)]
    if copies:  # names as TF's GPU tracer writes them (tsl/profiler/utils/xplane_schema.h: MemcpyD2D, ...)
        kernels += [("MemcpyD2D", "copy.4", 400, 420), ("MemcpyD2D", None, 420, 430), ("MemcpyH2D", None, 430, 450)]
        host.event_metadata[2].id, host.event_metadata[2].name = 2, "XlaCompileBackend:#module=m,program_id=7#"
        python.events.add(metadata_id=2, offset_ps=450_000_000, duration_ps=10_000_000)
    for k, (event_name, hlo, start_us, end_us) in enumerate(kernels):
        gpu.event_metadata[k + 1].id, gpu.event_metadata[k + 1].name = k + 1, event_name
        event = stream.events.add(metadata_id=k + 1, offset_ps=start_us * 1_000_000,
                                  duration_ps=(end_us - start_us) * 1_000_000)
        if hlo is not None:
            event.stats.add(metadata_id=1, int64_value=7)
            event.stats.add(metadata_id=2, str_value=hlo)
    with open(path, "wb") as f:
        f.write(space.SerializeToString())


def test_gpu_kernels_are_attributed_by_their_hlo_ops(tmp_path):
    from fastcarry.profiling import _summary, _xspace

    path = tmp_path / "host.xplane.pb"
    _gpu_space(path)
    space = _xspace.read(str(path))
    assert space.device_planes == ["/host:CPU", "/device:GPU:0"]  # the host ran one TF op
    assert not any(isinstance(r.line, tuple) for r in space.runs)  # GPU kernel events span their work
    summary = _summary.summarize(space)
    assert summary.step_ms == pytest.approx(0.5)
    ms = {r.phase: r.ms for r in summary.rows}
    assert ms == pytest.approx({_phases.RECURRENT_MATMUL: 0.1, _phases.GATES: 0.05, _phases.WEIGHT_GRADIENTS: 0.2,
                                _phases.IDLE: 0.15})
    # dot.1: [4, 16] @ [16, 32] -> 2*4*32*16 FLOPs in 100 us
    assert summary.row(_phases.RECURRENT_MATMUL).gflops == pytest.approx(2 * 4 * 32 * 16 / 100e-6 / 1e9)


def test_gpu_gemms_are_dots_with_their_flops():
    """XLA:GPU emits matmuls as cuBLAS custom-calls (a (result, workspace) tuple, the dot dimension numbers in the
    backend config: ``xla/service/gpu/transforms/gemm_rewriter.cc``) or as Triton GEMM fusions (a ``dot``
    inside, ``"kind":"__triton_gemm"``): both are phases' matmuls, with FLOPs."""
    from tensorflow.compiler.xla.service import hlo_pb2

    from fastcarry.profiling import _xspace

    module = hlo_pb2.HloModuleProto(entry_computation_id=1)
    fused = module.computations.add(name="triton_gemm_computation", id=2)
    main = module.computations.add(name="main", id=1)

    def add(comp, id_, name, opcode, shape, operands=(), **fields):
        ins = comp.instructions.add(name=name, opcode=opcode, id=id_, **fields)
        ins.shape.dimensions.extend(shape)
        ins.operand_ids.extend(operands)
        ins.metadata.op_name = f"lstm/while/{name}"
        return ins

    add(main, 1, "lhs", "parameter", [4, 16])
    add(main, 2, "rhs", "parameter", [16, 32])
    gemm = add(main, 3, "custom-call.1", "custom-call", [], [1, 2], custom_call_target="__cublas$lt$matmul",
               backend_config=b'{"operation_queue_id":"0","gemm_backend_config":{"alpha_real":1,"beta":0,'
                              b'"dot_dimension_numbers":{"lhs_contracting_dimensions":["1"],'
                              b'"rhs_contracting_dimensions":["0"],"lhs_batch_dimensions":[],'
                              b'"rhs_batch_dimensions":[]},"epilogue":"DEFAULT"}}')
    gemm.shape.tuple_shapes.add().dimensions.extend([4, 32])
    gemm.shape.tuple_shapes.add().dimensions.extend([1024])  # cuBLAS's workspace
    add(fused, 4, "p0", "parameter", [4, 16])
    add(fused, 5, "p1", "parameter", [16, 32])
    add(fused, 6, "dot.0", "dot", [4, 32], [4, 5]).dot_dimension_numbers.lhs_contracting_dimensions.append(1)
    add(main, 7, "fusion.2", "fusion", [4, 32], [1, 2], called_computation_ids=[2],
        backend_config=b'{"fusion_backend_config":{"kind":"__triton_gemm"}}')
    add(main, 8, "fusion.3", "fusion", [4, 32], [7], called_computation_ids=[])  # the gates: not a GEMM
    ops = _xspace.hlo_ops(module)
    flops = 2 * 4 * 32 * 16
    assert (ops["custom-call.1"].opcode, ops["custom-call.1"].flops) == ("dot", flops)
    assert (ops["fusion.2"].opcode, ops["fusion.2"].flops) == ("dot", flops)
    assert (ops["fusion.3"].opcode, ops["fusion.3"].flops) == ("fusion", 0)
    assert _phases.classify("lstm/while/custom-call.1", "xla", "dot", "lstm") == _phases.RECURRENT_MATMUL


def test_xlas_device_copies_are_its_work_and_its_gpu_compiles_are_compiles(tmp_path):
    """A ``MemcpyD2D`` that XLA:GPU annotated is the program's op, one without is device work, neither is a
    host<->device copy (which would trigger the swap_memory advice); ``XlaCompileBackend`` spans are compiles."""
    from fastcarry.profiling import _summary, _xspace

    path = tmp_path / "host.xplane.pb"
    _gpu_space(path, copies=True)
    space = _xspace.read(str(path))
    kinds = {(r.name, r.kind) for r in space.runs if r.start_ps >= 1000 * 1000 + 400_000_000}
    assert kinds == {("fastcarry_lstm/recurrence/while/gates/mul", "xla"), ("MemcpyD2D", "tf"),
                     ("MemcpyH2D", "copy")}
    assert space.compile_intervals == [(1000 * 1000 + 450_000_000, 1000 * 1000 + 460_000_000)]
    ms = {r.phase: r.ms for r in _summary.summarize(space).rows}
    assert ms[_phases.COPIES] == pytest.approx(0.02) and ms[_phases.GATES] == pytest.approx(0.05 + 0.02)


def test_layout_and_swap_copies_are_found_in_a_graph_step(tmp_path):
    """A caller's graph tf.function (no XLA around it): reverse= reorders time (layout), and
    swap_memory's host copies and per-chunk fetches run as TF ops under ``fastcarry_swap``."""
    cell = fc.LSTM(H, input_size=D, seed=0)
    params = cell.trainable_variables

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            outputs, _ = fc.unroll(cell, x, reverse=True, swap_memory=True, chunk=4)
            loss = tf.reduce_sum(outputs * outputs)
        return tape.gradient(loss, params)

    from fastcarry.profiling import _xspace

    prof = fcp.trace(step, _x(), logdir=str(tmp_path), steps=2, warmup=1)
    runs = _xspace.read(prof.xplane_paths[0]).runs
    phase = {r.name: _phases.classify(r.name, r.kind, r.opcode) for r in runs}
    swapped = {n for n in phase if "fastcarry_swap/fetch" in n or "fastcarry_swap/to_host" in n}
    assert any("fetch" in n for n in swapped) and {phase[n] for n in swapped} == {_phases.COPIES}, swapped
    assert any("/layout/" in n and phase[n] == _phases.LAYOUT for n in phase), sorted(phase)[:20]
    summary = prof.summary(calibrate=False)
    assert summary.row(_phases.LAYOUT).ms > 0 and summary.row(_phases.BACKWARD_LOOP).ms > 0
