"""The generic path's split (``fastcarry._hoist``): what is hoisted out of users' steps, what never is, and
what a user is told.

Exactness of the split path under every option is ``test_generic.py``'s (its
generic Keras cells, user cells and options matrix run split, and one case
``hoist=False``); the user-cell benchmark's own check compares both against
``keras.layers.RNN`` (``test_bench.py``). Here: steps that mix batch rows
after their projection, which a wrong split would get wrong.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from tf_keras.src.layers.rnn import legacy_cells

import fastcarry as fc
from conftest import assert_all_close
from fastcarry import _hoist
from fastcarry.tools.user_cell_bench import cell_classes

B, T, D, H = 3, 5, 4, 6


def _split_key(cell, **kwargs):
    wrapped = fc.as_cell(cell, fused=False, **kwargs)
    wrapped.build(D)
    return wrapped.core().key


def test_users_cells_and_keras_cells_have_their_input_projection_hoisted():
    widths = {"peephole_lstm": (4 * H,), "minimal_gated_unit": (H, H), "indrnn": (H,), "layer_norm_gated": (2 * H,)}
    for name, cls in cell_classes().items():
        assert _split_key(cls(H)) == ("hoisted", widths[name]), name
    assert _split_key(keras.layers.LSTMCell(H)) == ("hoisted", (4 * H,))
    assert _split_key(keras.layers.GRUCell(H)) == ("hoisted", (H, H, H))
    assert _split_key(keras.layers.LSTMCell(H), hoist=False) is None


def test_a_step_without_a_separate_projection_is_not_split_and_hoist_true_says_why():
    # TF1's BasicLSTMCell multiplies concat([x, h]) by one kernel: nothing reads x without the state.
    tf1 = legacy_cells.BasicLSTMCell(H)
    assert _split_key(tf1) is None
    with pytest.raises(ValueError, match=r"hoist=True: cannot split .*no matmul"):
        _split_key(tf1, hoist=True)


def test_hoist_argument_is_checked():
    with pytest.raises(TypeError, match=r"hoist must be None, True or False, got 'yes'"):
        fc.as_cell(keras.layers.LSTMCell(H), fused=False, hoist="yes")
    with pytest.raises(ValueError, match=r"hoist= applies to the generic path; this LSTMCell runs on the fused"):
        fc.as_cell(keras.layers.LSTMCell(H), hoist=True)
    with pytest.raises(ValueError, match=r"hoist= applies to Keras and TF1 cells; LSTM is already"):
        fc.as_cell(fc.LSTM(H), hoist=False)
    with pytest.raises(TypeError, match=r"hoist must be None, True or False, got 1"):
        fc.FunctionCell(lambda s, x: (s, s), H, H, hoist=1)


# Steps whose projected rows are then mixed across the batch: hoisted over all T * B rows at once, the
# mixing would reach other steps' rows. Each stays in the step; the projection before it is still hoisted.
ROW_MIXING = {
    "reverse_rows": lambda p: tf.reverse(p, [0]),
    "batch_mean": lambda p: p - tf.reduce_mean(p, axis=0, keepdims=True),
    "roll_rows": lambda p: tf.roll(p, 1, axis=0),
}


def _mixing_cell(mix):
    kernel = tf.Variable(np.random.default_rng(0).uniform(-0.5, 0.5, (D, H)).astype(np.float32))
    recurrent = tf.Variable(np.random.default_rng(1).uniform(-0.5, 0.5, (H, H)).astype(np.float32))

    def step(h, x):
        h = tf.tanh(mix(x @ kernel) + h @ recurrent)
        return h, h
    return fc.FunctionCell(step, H, H, [kernel, recurrent], name="mixing"), [kernel, recurrent]


def _results(cell, variables, run):
    rng = np.random.default_rng(2)
    x = tf.constant(rng.standard_normal((B, T, D)), tf.float32)
    cot = tf.constant(rng.standard_normal((B, T, H)), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        outputs, state = run(cell, x)
        loss = tf.reduce_sum(outputs * cot) + tf.reduce_sum(state)
    return dict(zip(["outputs", "state", "d_inputs", "d_kernel", "d_recurrent"],
                    [np.asarray(v) for v in [outputs, state, *tape.gradient(loss, [x, *variables])]]))


def _fastcarry(cell, x):
    return fc.unroll(cell, x, jit_compile=False)


def _reference(cell, x):
    return fc.reference.unroll(cell, x)


@pytest.mark.parametrize("name", list(ROW_MIXING))
def test_ops_that_mix_rows_stay_in_the_step(name):
    cell, variables = _mixing_cell(ROW_MIXING[name])
    got = _results(cell, variables, _fastcarry)
    assert cell.core().key == ("hoisted", (H,))  # the matmul alone
    assert_all_close(got, _results(cell, variables, _reference), context=name)


def test_a_split_that_hoisted_a_row_mixing_op_would_be_wrong(monkeypatch):
    """The must-fail twin of the test above: with ``ReverseV2`` taken for a row-wise op, it is wrong."""
    monkeypatch.setattr(_hoist, "_ELEMENTWISE", _hoist._ELEMENTWISE | {"ReverseV2"})
    cell, variables = _mixing_cell(ROW_MIXING["reverse_rows"])
    got = _results(cell, variables, _fastcarry)
    want = _results(cell, variables, _reference)
    assert np.abs(got["outputs"] - want["outputs"]).max() > 1e-2
