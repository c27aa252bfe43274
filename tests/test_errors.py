"""Misuse of ``fastcarry.unroll``, ``fastcarry.reference.unroll`` and the cells: clear errors, early.

One test per misuse. Every error must be a TypeError (wrong type or structure) or
a ValueError (right type, wrong value), as each case says, and its message must
name the argument, what was expected and what came; ``_raises`` checks that the
message contains each of the given pieces (in any order). Cases that concern
``unroll``'s arguments run against both the fused path and the reference.
"""

import re

import numpy as np
import pytest
import tensorflow as tf

import fastcarry as fc

B, T, D, H = 2, 3, 4, 5

UNROLLS = pytest.mark.parametrize("run", [fc.unroll, fc.reference.unroll], ids=["fused", "reference"])


def _raises(*parts, exc):
    """``pytest.raises(exc)`` whose ``match`` requires every piece of ``parts``, in any order.

    ``exc`` is one type: ``TypeError`` for a value of the wrong type or structure, ``ValueError`` for the right
    type with a wrong value or shape (``fc.Config`` and ``fc.unroll`` check their common options alike).
    """
    pattern = "(?s)" + "".join(f"(?=.*{re.escape(str(p))})" for p in parts)
    return pytest.raises(exc, match=pattern)


def _cell(kind="lstm"):
    cell = {"lstm": fc.LSTM, "gru": fc.GRU, "rnn": fc.SimpleRNN}[kind](H, seed=0)
    cell.build(D)
    return cell


def _x(shape=(B, T, D), dtype=np.float32):
    return np.zeros(shape, dtype)


# -- inputs --------------------------------------------------------------------

@UNROLLS
def test_inputs_of_rank_2(run):
    with _raises("inputs", "rank 3", "[B, T, D]", "(2, 4)", exc=ValueError):
        run(_cell(), _x((B, D)))


@UNROLLS
def test_inputs_of_rank_4(run):
    with _raises("inputs", "rank 3", "[B, T, D]", "(2, 3, 4, 1)", exc=ValueError):
        run(_cell(), _x((B, T, D, 1)))


@UNROLLS
def test_inputs_feature_dim_differs_from_built_kernel(run):
    with _raises("inputs", "feature dim 6", "expected 4", exc=ValueError):
        run(_cell(), _x((B, T, 6)))


@UNROLLS
def test_integer_inputs(run):
    with _raises("inputs", "floating", "float32", "int32", exc=TypeError):
        run(_cell(), _x(dtype=np.int32))


@UNROLLS
def test_bool_inputs(run):
    with _raises("inputs", "floating", "float32", "bool", exc=TypeError):
        run(_cell(), _x(dtype=bool))


@UNROLLS
def test_float64_inputs_into_float32_cell(run):
    with _raises("inputs", "float64", "float32", exc=TypeError):
        run(_cell(), _x(dtype=np.float64))


# -- initial_state -------------------------------------------------------------

@UNROLLS
def test_initial_state_single_tensor_for_lstm(run):
    with _raises("initial_state", "LSTMState(h, c)", "Tensor", exc=TypeError):
        run(_cell("lstm"), _x(), tf.zeros([B, H]))


@UNROLLS
def test_initial_state_three_tuple_for_lstm(run):
    with _raises("initial_state", "LSTMState(h, c)", "tuple of 3", exc=TypeError):
        run(_cell("lstm"), _x(), (tf.zeros([B, H]),) * 3)


@UNROLLS
def test_initial_state_pair_for_gru(run):
    with _raises("initial_state", "one tensor [B, H]", "GRU", "tuple of 2", exc=TypeError):
        run(_cell("gru"), _x(), (tf.zeros([B, H]), tf.zeros([B, H])))


@UNROLLS
def test_initial_state_component_of_wrong_shape(run):
    state = fc.LSTMState(tf.zeros([B, H]), tf.zeros([B, H + 1]))
    with _raises("initial_state.c", "[2, 6]", "expected [2, 5]", exc=ValueError):
        run(_cell("lstm"), _x(), state)


@UNROLLS
def test_initial_state_of_wrong_dtype(run):
    state = fc.LSTMState(tf.zeros([B, H]), tf.zeros([B, H], tf.float64))
    with _raises("initial_state.c", "float64", "expected float32", exc=TypeError):
        run(_cell("lstm"), _x(), state)


# -- sequence_length -----------------------------------------------------------

@UNROLLS
def test_sequence_length_of_wrong_shape(run):
    with _raises("sequence_length", "[B]", "[2]", "(3,)", exc=ValueError):
        run(_cell(), _x(), sequence_length=[1, 2, 3])


@UNROLLS
def test_sequence_length_of_float_dtype(run):
    with _raises("sequence_length", "integer", "float32", exc=TypeError):
        run(_cell(), _x(), sequence_length=[1.0, 2.0])


# -- mask ----------------------------------------------------------------------

@UNROLLS
def test_mask_of_wrong_shape(run):
    with _raises("mask", "[B, T]", "[2, 3]", "[3, 2]", exc=ValueError):
        run(_cell(), _x(), mask=np.ones((T, B), bool))


@UNROLLS
def test_mask_of_float_dtype(run):
    with _raises("mask", "bool", "float32", exc=TypeError):
        run(_cell(), _x(), mask=np.ones((B, T), np.float32))


@UNROLLS
def test_mask_and_sequence_length_together(run):
    with _raises("sequence_length or mask, not both", exc=ValueError):
        run(_cell(), _x(), mask=np.ones((B, T), bool), sequence_length=[1, 2])


# Out of [0, T] is not an error: lengths are clipped to [0, T] in every mode, as
# dynamic_rnn treats them (test_tf1.py holds that equal to dynamic_rnn). Under a
# caller's XLA compilation a value check could not report anything, so eager
# and graph calls do not raise either: one behaviour everywhere.
OUT_OF_RANGE = [([-1, 2], [0, 2]), ([1, T + 4], [1, T]), ([-3, 9], [0, T])]


@UNROLLS
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("mode", ["eager", "graph", "jit"])
def test_sequence_length_out_of_range_is_clipped_in_every_mode(run, mode, reverse):
    cell = _cell("gru")
    x = tf.constant(np.random.default_rng(0).standard_normal((B, T, D)), tf.float32)

    def f(lengths):
        return run(cell, x, sequence_length=lengths, reverse=reverse)

    compiled = f if mode == "eager" else tf.function(f, jit_compile=mode == "jit")
    for bad, clipped in OUT_OF_RANGE:
        got = compiled(tf.constant(bad))
        want = f(tf.constant(clipped))
        for name, g, w in (("outputs", got[0], want[0]), ("state", got[1], want[1])):
            np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-6, atol=1e-6,
                                       err_msg=f"{mode} {name}: lengths {bad} vs {clipped}")
    # The clipped rows are not trivially equal to anything: lengths do matter here.
    full = f(tf.constant([T, T]))[0].numpy()
    assert np.abs(full - f(tf.constant([0, 2]))[0].numpy()).max() > 1e-3


# -- unroll, flags, cell -------------------------------------------------------

@UNROLLS
def test_unroll_zero(run):
    with _raises("unroll", "int >= 1", "got 0", exc=ValueError):
        run(_cell(), _x(), unroll=0)


@UNROLLS
def test_unroll_float(run):
    with _raises("unroll", "int >= 1", "1.5", exc=TypeError):
        run(_cell(), _x(), unroll=1.5)


@UNROLLS
def test_unroll_bool(run):
    with _raises("unroll", "int >= 1", "True", exc=TypeError):
        run(_cell(), _x(), unroll=True)


@UNROLLS
@pytest.mark.parametrize("value", ["cudnn", None, True])
def test_backward_unknown(run, value):
    with _raises("backward", "('fused', 'autodiff')", repr(value), exc=ValueError):
        run(_cell(), _x(), backward=value)


@UNROLLS
@pytest.mark.parametrize("flag, value", [("time_major", 1), ("reverse", "yes"), ("jit_compile", None), ("training", "no")])
def test_non_bool_flag(run, flag, value):
    with _raises(flag, "bool", repr(value), exc=TypeError):
        run(_cell(), _x(), **{flag: value})


class _NoCall:
    state_size = H


class _HalfProtocol:
    """Has what argument checks read but no core()/params() and no call: neither contract."""

    dtype, state_size, output_size, input_dim = tf.float32, H, H, None

    def build(self, input_dim):
        pass

    def zero_state(self, batch_size, dtype=None):
        return tf.zeros([batch_size, H])


@UNROLLS
@pytest.mark.parametrize("cell, missing", [(object(), "state_size, __call__"), (_NoCall(), "lacks __call__"),
                                           (_HalfProtocol(), "lacks core, params")])
def test_non_cell_object_as_cell(run, cell, missing):
    with _raises("cell must be", "Keras cell", "TF1 RNNCell", type(cell).__name__, missing, exc=TypeError):
        run(cell, _x())


@UNROLLS
def test_a_cell_class_instead_of_an_instance(run):
    with _raises("cell must be a cell instance", "the class LSTM", "pass an instance", "fc.LSTM(units)",
                 exc=TypeError):
        run(fc.LSTM, _x())


@UNROLLS
@pytest.mark.parametrize("layer", ["LSTM", "GRU", "SimpleRNN"])
def test_a_keras_rnn_layer_instead_of_its_cell(run, layer):
    import keras

    with _raises("the Keras RNN layer", layer, "pass its cell (layer.cell)", f"fastcarry.keras.{layer}",
                 exc=TypeError):
        run(getattr(keras.layers, layer)(H), _x())


class _ProtocolCell(_HalfProtocol):
    """A protocol cell whose ``core()`` is given: for the checks of what a core holds."""

    def __init__(self, core):
        self._core = core

    def core(self):
        return self._core

    def params(self):
        return ()


def _split(**fields):
    parts = dict(recurrent_input=lambda h: h, recurrent=lambda p, h: h, combine=lambda xp, rec: xp + rec,
                 update=lambda h, a: (a, a))
    return fc.RecurrentSplit(**{**parts, **fields})


@pytest.mark.parametrize("core, parts", [
    (fc.Core("my cell", (), lambda p, x: x, H, split=_split()), ["name must be an identifier", "'my cell'"]),
    (fc.Core("mine", (), lambda p, x: x, H), ["has neither step nor split"]),
    (fc.Core("mine", (), lambda p, x: x, H, split=(1, 2)), ["split must be a fastcarry.RecurrentSplit", "tuple"]),
    (fc.Core("mine", (), lambda p, x: x, H, split=_split(update="tanh")), ["split.update must be a function",
                                                                          "got str"]),
    (fc.Core("mine", (), lambda p, x: x, H, split=_split(unit_params=[1.0])),
     ["split.unit_params must be a function or None", "got list"]),
    (fc.Core("mine", (), lambda p, x: x, H, split=_split(second=(1, 2))),
     ["split.second must be None or a fastcarry.SecondMatmul", "got tuple"]),
], ids=["name", "no-step", "split-type", "update", "unit-params", "second"])
def test_a_core_that_breaks_the_protocol_is_named(core, parts):
    with _raises("_ProtocolCell.core()", *parts, exc=TypeError):
        fc.unroll(_ProtocolCell(core), _x())


# -- constructors, weights -----------------------------------------------------

def test_units_zero():
    with _raises("units", "positive int", "0", exc=ValueError):
        fc.LSTM(0)


def test_units_string():
    with _raises("units", "positive int", "'8'", exc=TypeError):
        fc.GRU("8")


def test_gru_reset_after_not_bool():
    with _raises("reset_after", "bool", "'yes'", exc=TypeError):
        fc.GRU(H, reset_after="yes")


def test_simple_rnn_unknown_activation():
    with _raises("activation", "tanh", "'gelu'", exc=ValueError):
        fc.SimpleRNN(H, activation="gelu")


def test_integer_dtype():
    with _raises("dtype", "float32", "int32", exc=TypeError):
        fc.LSTM(H, dtype=tf.int32)


@pytest.mark.parametrize("wrong", ["kernel", "recurrent_kernel", "bias"])
def test_set_weights_with_wrong_shape(wrong):
    cell = _cell("lstm")
    weights = dict(kernel=np.zeros([D, 4 * H]), recurrent_kernel=np.zeros([H, 4 * H]), bias=np.zeros([4 * H]))
    expected = list(weights[wrong].shape)
    bad = expected[:-1] + [expected[-1] - 1]
    if wrong == "kernel":  # a kernel's D may be new, but its G must be 4H
        expected = [D, 4 * H]
    weights[wrong] = np.zeros(bad)
    before = cell.get_weights()
    with _raises(wrong, str(bad), f"expected {expected}", exc=ValueError):
        cell.set_weights([weights["kernel"], weights["recurrent_kernel"], weights["bias"]])
    for old, new in zip(before, cell.get_weights()):
        np.testing.assert_array_equal(old, new)  # nothing was assigned


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_from_tf1_with_wrong_kernel_shape(kind):
    z = np.zeros
    if kind == "lstm":
        with _raises("kernel", "[D + H, 4H]", "[9, 21]", exc=ValueError):
            fc.LSTM.from_tf1(z([D + H, 4 * H + 1]), z([4 * H]))
    elif kind == "gru":
        with _raises("gate_kernel", "[9, 11]", "expected [9, 10]", exc=ValueError):
            fc.GRU.from_tf1(z([D + H, 2 * H + 1]), z([2 * H]), z([D + H, H]), z([H]))
    else:
        with _raises("kernel", "[D + H, H]", "[5, 5]", exc=ValueError):
            fc.SimpleRNN.from_tf1(z([H, H]), z([H]))


# -- T == 0 --------------------------------------------------------------------

@UNROLLS
@pytest.mark.parametrize("jit_compile", [True, False], ids=["jit", "graph"])
@pytest.mark.parametrize("given", [True, False], ids=["given_state", "zero_state"])
def test_zero_time_steps_return_empty_outputs_and_initial_state(run, jit_compile, given):
    cell = _cell("lstm")
    s0 = fc.LSTMState(tf.fill([B, H], 0.25), tf.fill([B, H], -0.5)) if given else None
    outputs, state = run(cell, tf.zeros([B, 0, D]), s0, jit_compile=jit_compile)
    assert tuple(outputs.shape) == (B, 0, H)
    assert outputs.dtype == tf.float32
    assert isinstance(state, fc.LSTMState)
    want = s0 if given else fc.LSTMState(np.zeros([B, H], np.float32), np.zeros([B, H], np.float32))
    for got, expected in zip(state, want):
        assert got.dtype == tf.float32
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
