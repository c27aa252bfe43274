"""A step that combines batch rows is refused by the fused backward (``fastcarry._rows``): its one call over all
(step, row) pairs would give wrong gradients, silently. Steps that keep rows apart are not refused."""

import numpy as np
import pytest
import tensorflow as tf

import fastcarry as fc
from fastcarry import _rows

B, H = 3, 4


def _found(fn, shape=(B, H)):
    """``_rows.mixing`` of the ops ``fn(rows)`` makes, ``rows`` a ``[B, H]`` placeholder (B known, as in the
    backward's graph)."""
    with tf.Graph().as_default() as graph:
        rows = tf.compat.v1.placeholder(tf.float32, shape)
        before = len(graph.get_operations())
        fn(rows)
        return _rows.mixing(graph.get_operations()[before:], [rows])


w = np.ones((H, H), np.float32)


@pytest.mark.parametrize("fn, why", [
    (lambda h: tf.reduce_mean(h, axis=0), "reduces over the rows' axis 0"),
    (lambda h: tf.reduce_sum(tf.tanh(h)), "reduces over the rows' axis 0"),  # no axis: all of them
    (lambda h: h - tf.reduce_mean(h * 2.0, axis=0, keepdims=True), "reduces over the rows' axis 0"),
    (lambda h: tf.matmul(h, h, transpose_b=True), "both operands carry rows"),  # attention across the batch
    (lambda h: tf.matmul(h, tf.ones((B, H)), transpose_a=True), "contracts the rows' axis"),
    (lambda h: tf.expand_dims(h, 1) * tf.expand_dims(h, 0), "meet on different axes"),  # a batch outer product
    (lambda h: tf.math.cumsum(h, axis=0), "accumulates along the rows' axis"),
    (lambda h: tf.nn.softmax(tf.transpose(h)), "normalises over the rows' axis"),
    (lambda h: tf.reduce_max(tf.transpose(tf.expand_dims(h, -1), [2, 1, 0]), axis=2), "reduces over the rows' axis 2"),
    (lambda h: tf.reduce_sum(tf.concat([h, h * 2.0], axis=1), axis=0), "reduces over the rows' axis 0"),
    (lambda h: tf.reduce_max(tf.reshape(h, [-1, 2, H // 2]), axis=0), "reduces over the rows' axis 0"),  # heads
])
def test_steps_that_combine_rows_are_found(fn, why):
    assert why in _found(fn)


@pytest.mark.parametrize("fn", [
    lambda h: h - tf.reduce_mean(h, axis=-1, keepdims=True),  # a layer norm: within each row
    lambda h: tf.nn.softmax(h),
    lambda h: tf.matmul(w, h, transpose_b=True),  # [H, B]: each column one row
    lambda h: tf.reduce_sum(tf.transpose(h), axis=0),  # over the units, after the rows moved to axis 1
    lambda h: tf.reduce_sum(tf.stack(tf.split(h, 2, axis=-1), axis=0), axis=0),
    lambda h: tf.math.cumsum(h[:, 1:], axis=1),
    lambda h: tf.reduce_sum(tf.expand_dims(h, 0), axis=0),  # over the new leading axis
    lambda h: tf.reduce_sum(tf.reshape(h, [-1, 2, H // 2]), axis=[1, 2]),  # each row's heads
    lambda h: tf.reduce_sum(tf.reshape(h, [-1]), axis=0),  # flattened, the rows are not followed: not proven
])
def test_steps_that_keep_rows_apart_are_not_refused(fn):
    assert _found(fn) == ""


def _batch_statistic_cell():
    rng = np.random.default_rng(0)
    kernel = tf.Variable(rng.standard_normal((2, H)).astype(np.float32) * 0.5)
    recurrent = tf.Variable(rng.standard_normal((H, H)).astype(np.float32) * 0.5)

    def step(state, x_t):
        a = x_t @ kernel + state @ recurrent
        h = tf.tanh(a - tf.reduce_mean(a, axis=0, keepdims=True))  # centred over the batch: rows combined
        return h, h
    return fc.FunctionCell(step, H, H, [kernel, recurrent]), [kernel, recurrent]


def _gradients(unroll, cell, variables, x, **options):
    with tf.GradientTape() as tape:
        y = unroll(cell, x, **options)[0]
        loss = tf.reduce_sum(y * tf.cos(y))
    return y, tape.gradient(loss, variables)


def test_the_fused_backward_refuses_a_step_that_combines_rows_and_autodiff_is_right():
    cell, variables = _batch_statistic_cell()
    x = tf.constant(np.random.default_rng(1).standard_normal((B, 5, 2)), tf.float32)
    with pytest.raises(ValueError, match=r"combines batch rows \(Mean .*reduces over the rows' axis 0\).*"
                                         r"backward='autodiff'"):
        _gradients(fc.unroll, cell, variables, x)
    y, got = _gradients(fc.unroll, cell, variables, x, backward="autodiff")
    y_ref, want = _gradients(fc.reference.unroll, cell, variables, x)
    np.testing.assert_allclose(y.numpy(), y_ref.numpy(), atol=1e-5)  # the forward was never in question
    for g, r in zip(got, want):
        np.testing.assert_allclose(g.numpy(), r.numpy(), atol=1e-4)
    fc.unroll(cell, x, training=False)  # inference takes no gradient: not refused


def test_without_the_check_the_fused_gradient_is_wrong(monkeypatch):
    """What the refusal prevents: the one call over every (step, row) pair centres over T*B rows, not B."""
    cell, variables = _batch_statistic_cell()
    x = tf.constant(np.random.default_rng(1).standard_normal((B, 5, 2)), tf.float32)
    monkeypatch.setattr(_rows, "mixing", lambda ops, rows: "")
    _, got = _gradients(fc.unroll, cell, variables, x, jit_compile=False)
    _, want = _gradients(fc.reference.unroll, cell, variables, x)
    assert max(float(np.max(np.abs(g.numpy() - r.numpy()))) for g, r in zip(got, want)) > 1e-2
