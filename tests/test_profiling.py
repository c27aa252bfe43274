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
