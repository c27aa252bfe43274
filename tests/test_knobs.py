"""``dynamic_rnn``'s knobs: ``parallel_iterations`` reaches the graph loops, and says when it cannot."""

import warnings

import numpy as np
import pytest
import tensorflow as tf

import fastcarry as fc
from conftest import assert_all_close, make_cell, random_inputs
from fastcarry import _check, _unroll

B, T, D, H = 3, 7, 4, 5


def _while_loop_parallel_iterations(concrete):
    """The ``parallel_iterations`` of every while loop in a traced function and the functions it calls."""
    found = []
    graphs = [concrete.graph] + [f.graph for f in concrete.graph._functions.values() if hasattr(f, "graph")]
    for graph in graphs:
        for op in graph.get_operations():
            if op.type in ("While", "StatelessWhile"):
                found.append(op.get_attr("parallel_iterations"))
    return found


@pytest.mark.parametrize("chunk", [None, 3])
def test_parallel_iterations_reaches_every_graph_loop_forward_and_backward(chunk):
    cell = make_cell("gru", H, input_dim=D)
    x = tf.constant(random_inputs(B, T, D), tf.float32)

    @tf.function(autograph=False)
    def train(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            ys, _ = fc.unroll(cell, x, jit_compile=False, parallel_iterations=3, chunk=chunk)
        return tape.gradient(ys, [x, *cell.trainable_variables])

    loops = _while_loop_parallel_iterations(train.get_concrete_function(x))
    # forward + backward, and with chunks the chunk loops around them
    assert len(loops) >= (2 if chunk is None else 4) and set(loops) == {3}, loops


def test_parallel_iterations_changes_no_number():
    cell = make_cell("lstm", H, input_dim=D)
    x = random_inputs(B, T, D)
    cot = _check.random_cotangents(cell, B, T)
    want = _check.evaluate(fc.unroll, cell, x, None, cot, jit_compile=False)
    got = _check.evaluate(fc.unroll, cell, x, None, cot, jit_compile=False, parallel_iterations=1)
    assert_all_close(got, want, tf.float32, "parallel_iterations=1")


def test_parallel_iterations_with_jit_warns_once_at_the_callers_line(monkeypatch):
    monkeypatch.setattr(_unroll, "_WARNED", set())
    cell = make_cell("rnn", H, input_dim=D)
    x = tf.constant(random_inputs(B, T, D), tf.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ys, _ = fc.unroll(cell, x, parallel_iterations=4)
        fc.unroll(cell, x, parallel_iterations=4)
    assert len(caught) == 1, [str(w.message) for w in caught]
    assert "parallel_iterations has no effect with jit_compile=True" in str(caught[0].message)
    assert caught[0].filename == __file__
    np.testing.assert_array_equal(ys.numpy(), fc.unroll(cell, x)[0].numpy())


@pytest.mark.parametrize("value, error, message", [
    (0, ValueError, "parallel_iterations must be None or an int >= 1, got 0"),
    (2.0, TypeError, "parallel_iterations must be None or an int >= 1, got 2.0"),
])
def test_bad_parallel_iterations_fails_clearly(value, error, message):
    with pytest.raises(error, match=message):
        fc.unroll(make_cell("lstm", H, input_dim=D), tf.zeros([B, T, D]), parallel_iterations=value)
