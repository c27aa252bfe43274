"""The generic path's split (``fastcarry._hoist``): what is hoisted out of users' steps, what never is, and
what a user is told.

Exactness of the split path under every option is ``test_generic.py``'s (its
generic Keras cells, user cells and options matrix run split, and one case
``hoist=False``); the user-cell benchmark's own check compares both against
``keras.layers.RNN`` (``test_bench.py``). Here: what is split, the ``hoist=``
argument, and steps that mix batch rows after their projection, whose outputs a
wrong split would get wrong.
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


# Steps whose projected rows are then mixed across the batch. Such a step is outside the generic path's
# contract for gradients (they are taken over all T * B rows at once, ``FunctionCell``'s docstring), but its
# outputs stay right: hoisted over all T * B rows, the mixing would reach other steps' rows, so it stays in the
# step. The projection before it is still hoisted.
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
    return fc.FunctionCell(step, H, H, [kernel, recurrent], name="mixing")


def _outputs(cell, run):
    x = tf.constant(np.random.default_rng(2).standard_normal((B, T, D)), tf.float32)
    outputs, state = run(cell, x)
    return {"outputs": np.asarray(outputs), "state": np.asarray(state)}


def _fastcarry(cell, x, projection=None):
    return fc.unroll(cell, x, jit_compile=False, unroll=2, projection=projection)


def _hoisted(cell, x):
    return _fastcarry(cell, x, projection="hoisted")  # one projection of all T * B rows


def _reference(cell, x):
    return fc.reference.unroll(cell, x)


@pytest.mark.parametrize("name", list(ROW_MIXING))
def test_ops_that_mix_rows_stay_in_the_step(name):
    cell = _mixing_cell(ROW_MIXING[name])
    want = _outputs(cell, _reference)
    for run in (_fastcarry, _hoisted):
        assert_all_close(_outputs(cell, run), want, context=f"{name} {run.__name__}")
    assert cell.core().key == ("hoisted", (H,))  # the matmul alone


def test_a_split_that_hoisted_a_row_mixing_op_would_be_wrong(monkeypatch):
    """The must-fail twin of the test above: with ``ReverseV2`` taken for a row-wise op, it is wrong."""
    monkeypatch.setattr(_hoist, "ELEMENTWISE", _hoist.ELEMENTWISE | {"ReverseV2"})
    cell = _mixing_cell(ROW_MIXING["reverse_rows"])
    got, want = _outputs(cell, _hoisted), _outputs(cell, _reference)
    assert np.abs(got["outputs"] - want["outputs"]).max() > 1e-2


def _keys_run(layer, x, hoist, unroll, tape):
    """The ``Core.key``\\ s of the compiled functions one eager ``fc.unroll`` of ``layer`` (a Keras cell) made."""
    vars(layer).pop("_fastcarry_functions", None)  # kept on the layer (the core's owner)
    cell = fc.as_cell(layer, fused=False, hoist=hoist)
    if tape:
        with tf.GradientTape():
            fc.unroll(cell, x, unroll=unroll, jit_compile=False)
    else:
        fc.unroll(cell, x, unroll=unroll, jit_compile=False)
    return {key[2] for key in vars(layer)["_fastcarry_functions"]}


def test_inference_with_one_step_per_iteration_runs_the_step_as_written():
    layer = cell_classes()["indrnn"](H)
    x = tf.constant(np.random.default_rng(3).standard_normal((B, T, D)), tf.float32)
    split = ("hoisted", (H,))
    assert _keys_run(layer, x, None, 1, tape=False) == {None}  # fastcarry._adapters.for_inference
    assert _keys_run(layer, x, None, 2, tape=False) == {split}
    assert _keys_run(layer, x, None, 1, tape=True) == {split}  # training: the backward projects all T at once
    assert _keys_run(layer, x, True, 1, tape=False) == {split}  # asked for
    assert _keys_run(layer, x, False, 2, tape=False) == {None}
