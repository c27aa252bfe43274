"""Tracing: an eager training loop of one shape traces each compiled function once, and
TensorFlow's retracing warning speaks only of real retraces.

fastcarry keeps one ``tf.function`` per (cell math, options) in
``fastcarry._functions._FUNCTIONS``. TF's frequent-retracing detector used to key
them all by their shared Python code object, so a run over several
configurations (``fastcarry check``, or a model with several layers) logged
"5 out of the last 5 calls to <function _backward_fn.<locals>.backward>
triggered tf.function retracing" although no function was traced twice.
"""

import logging

import numpy as np
import pytest
import tensorflow as tf

import fastcarry as fc
from fastcarry import _functions

# H = 11 appears in no other test file: the compiled functions these tests make are new.
B, T, D, H = 3, 8, 5, 11

# name -> (unroll options, the compiled functions a training step uses)
CONFIGS = {
    "plain": (dict(), {"forward", "fused"}),
    "lengths_reverse": (dict(sequence_length=[8, 0, 5], reverse=True), {"forward", "fused"}),
    "time_major": (dict(time_major=True), {"forward", "fused"}),
    "chunk": (dict(chunk=3), {"forward", "fused"}),
    # T a multiple of the chunk: every swapped piece has one shape.
    "swap_memory": (dict(swap_memory=True, chunk=4), {"forward", "fused"}),
    "autodiff": (dict(backward="autodiff"), {"infer", "autodiff"}),
    "graph": (dict(jit_compile=False), {"forward", "fused"}),
}


def _counts():
    return {key: f.experimental_get_tracing_count() for key, f in _functions._FUNCTIONS.items()}


def _train(cell, step, steps=10):
    """``steps`` eager GradientTape steps of plain SGD; returns the losses."""
    losses = []
    for _ in range(steps):
        with tf.GradientTape() as tape:
            loss = step()
        grads = tape.gradient(loss, cell.trainable_variables)
        for v, g in zip(cell.trainable_variables, grads):
            v.assign_sub(0.01 * g)
        losses.append(float(loss))
    return losses


@pytest.mark.parametrize("name", list(CONFIGS))
def test_ten_eager_training_steps_trace_each_compiled_function_once(name):
    options, kinds = CONFIGS[name]
    cell = fc.LSTM(H, input_size=D, seed=0, name=f"tracing_{name}")
    shape = (T, B, D) if options.get("time_major") else (B, T, D)
    x = tf.constant(np.random.default_rng(0).standard_normal(shape), tf.float32)
    before = _counts()

    def step():
        outputs, state = fc.unroll(cell, x, **options)
        return tf.reduce_mean(outputs ** 2) + tf.reduce_mean(state.c ** 2)

    losses = _train(cell, step, steps=1)
    first = _counts()
    losses += _train(cell, step, steps=9)
    assert _counts() == first  # steps 2 to 10 trace nothing
    # Step 1 traced each function it uses at most once (a function another
    # test already traced for this shape is shared, not traced again).
    traced = {key: first[key] - before.get(key, 0) for key in first if first[key] != before.get(key, 0)}
    assert traced and {key[0] for key in traced} <= kinds and set(traced.values()) == {1}, traced
    assert losses[-1] < losses[0]  # it trained


def test_carry_over_ten_eager_steps_traces_once():
    cell = fc.GRU(H, input_size=D, seed=0, name="tracing_carry")
    carry = fc.Carry(cell, B, truncate=False)
    x = tf.constant(np.random.default_rng(1).standard_normal((B, T, D)), tf.float32)
    before = _counts()

    def step():
        carry.reset()
        return tf.reduce_mean(carry(x[:, :4]) ** 2) + tf.reduce_mean(carry(x[:, 4:]) ** 2)

    _train(cell, step, steps=1)
    first = _counts()
    _train(cell, step, steps=9)
    assert _counts() == first
    traced = {key: first[key] - before.get(key, 0) for key in first if first[key] != before.get(key, 0)}
    assert {key[0] for key in traced} == {"forward", "fused"} and set(traced.values()) == {1}, traced


class _Messages(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def tf_log():
    handler = _Messages()
    tf.get_logger().addHandler(handler)
    yield handler.messages
    tf.get_logger().removeHandler(handler)


def _retracing(messages):
    return [m for m in messages if "triggered tf.function retracing" in m]


def test_many_configurations_traced_once_each_do_not_warn(tf_log):
    """Six new compiled functions, each traced once: no retracing warning (there was one before)."""
    cell = fc.SimpleRNN(H, input_size=D, seed=0, name="tracing_configs")
    x = tf.constant(np.random.default_rng(2).standard_normal((B, T, D)), tf.float32)
    for unroll in (1, 3, 5, 6, 7, 9):  # a new _Options each: new forward and backward functions
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(fc.unroll(cell, x, unroll=unroll, jit_compile=False)[0])
        tape.gradient(loss, cell.trainable_variables)
    assert _retracing(tf_log) == []


def test_a_real_retrace_still_warns(tf_log):
    """The control: one compiled function fed a new T on every call is retraced, and TF says so."""
    cell = fc.SimpleRNN(H, input_size=D, seed=0, name="tracing_retrace")
    for time in range(2, 9):
        fc.unroll(cell, tf.zeros([B, time, D]), unroll=4, jit_compile=False)
    warned = _retracing(tf_log)
    assert warned and "fastcarry_simple_rnn_infer" in warned[0], tf_log
