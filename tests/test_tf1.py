"""``fastcarry.unroll`` against TF1's ``dynamic_rnn`` with the legacy cells, via ``from_tf1``.

The legacy cells (``BasicLSTMCell`` with its run-time ``forget_bias=1.0``,
``GRUCell``, ``BasicRNNCell``) are built by running ``dynamic_rnn`` once eagerly,
their variables are randomised and imported with ``from_tf1``, and then
outputs, final state and the gradients with respect to inputs, initial state and
*every* TF1 variable are compared with fastcarry's, its Keras-layout weight
gradients mapped back to TF1's layout here (``_to_tf1_layout``).

Reversal is ``bidirectional_dynamic_rnn``'s backward direction:
``reverse_sequence`` on the inputs, ``dynamic_rnn``, ``reverse_sequence`` on the
outputs, against ``fc.unroll(reverse=True, sequence_length=...)``.
"""

import numpy as np
import pytest
import tensorflow as tf
from tf_keras.src.layers.rnn import legacy_cells

import fastcarry as fc
import harness
from conftest import assert_all_close, random_inputs

B, T, D, H = 3, 6, 4, 5
LENGTHS = [T, 0, 3]  # a full row, an empty row and a partial one

KINDS = ("lstm", "gru", "rnn")

# name -> dynamic_rnn / unroll options (an initial state is always given)
CASES = {
    "sequence_length": dict(sequence_length=LENGTHS),
    "reverse": dict(sequence_length=LENGTHS, reverse=True),
    "time_major_reverse": dict(sequence_length=LENGTHS, reverse=True, time_major=True),
    # Out of [0, T]: dynamic_rnn runs all T steps for a length above T and none
    # for a negative one; fastcarry clips to [0, T], which is the same thing.
    "out_of_range_lengths": dict(sequence_length=[T + 4, -2, 3]),
}


def _tf1_variables(kind, tcell):
    """The legacy cell's variables by TF1 name (scope stripped), checked to be all of them."""
    if kind == "lstm":
        named = {"kernel": tcell._kernel, "bias": tcell._bias}
    elif kind == "gru":
        named = {"gates/kernel": tcell._gate_kernel, "gates/bias": tcell._gate_bias,
                 "candidate/kernel": tcell._candidate_kernel, "candidate/bias": tcell._candidate_bias}
    else:
        named = {"kernel": tcell._kernel, "bias": tcell._bias}
    assert {id(v) for v in named.values()} == {id(v) for v in tcell.trainable_variables}
    for short, var in named.items():
        assert var.name.endswith(f"/{short}:0"), (short, var.name)
    return named


def _make_tf1_cell(kind, seed=0):
    """A legacy cell, built by one eager ``dynamic_rnn`` and given random weights (biases included)."""
    tcell = {"lstm": legacy_cells.BasicLSTMCell, "gru": legacy_cells.GRUCell,
             "rnn": legacy_cells.BasicRNNCell}[kind](H)
    tf.compat.v1.nn.dynamic_rnn(tcell, tf.zeros([B, T, D]), dtype=tf.float32)
    rng = np.random.default_rng(seed)
    for var in _tf1_variables(kind, tcell).values():
        var.assign(rng.uniform(-0.6, 0.6, var.shape).astype(np.float32))
    return tcell


def _import(kind, tcell, **kw):
    v = _tf1_variables(kind, tcell)
    if kind == "lstm":
        return fc.LSTM.from_tf1(v["kernel"], v["bias"], **kw)
    if kind == "gru":
        return fc.GRU.from_tf1(v["gates/kernel"], v["gates/bias"], v["candidate/kernel"], v["candidate/bias"], **kw)
    return fc.SimpleRNN.from_tf1(v["kernel"], v["bias"], **kw)


def _to_tf1_layout(kind, kernel, recurrent, bias):
    """Keras-layout ``[kernel, recurrent_kernel, bias]`` (weights or their gradients) -> TF1 variables by name.

    A permutation and concatenation of entries, so it maps gradients exactly as it maps weights.
    """
    rows = np.concatenate([kernel, recurrent], axis=0)  # TF1 kernels act on [x; h]
    if kind == "lstm":  # Keras i, f, c, o -> TF1 i, j(=c), f, o
        i, f, c, o = np.split(rows, 4, axis=1)
        bi, bf, bc, bo = np.split(bias, 4)
        return {"kernel": np.concatenate([i, c, f, o], axis=1), "bias": np.concatenate([bi, bc, bf, bo])}
    if kind == "gru":  # Keras z, r, h -> TF1 gates (r, u=z) and candidate (h)
        z, r, h = np.split(rows, 3, axis=1)
        bz, br, bh = np.split(bias, 3)
        return {"gates/kernel": np.concatenate([r, z], axis=1), "gates/bias": np.concatenate([br, bz]),
                "candidate/kernel": h, "candidate/bias": bh}
    return {"kernel": rows, "bias": bias}


def _state_names(kind):
    return ["state.h", "state.c"] if kind == "lstm" else ["state"]


def _random_state(kind, seed=1):
    """Initial state as numpy, in fastcarry's order ((h, c) for LSTM)."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((B, H)) * 0.5 for _ in _state_names(kind)]


def _tf1_evaluate(kind, tcell, inputs, flat_s0, cot, *, sequence_length=None, reverse=False, time_major=False):
    """TF1 ``dynamic_rnn`` (reversed by ``reverse_sequence`` if asked) and its gradients under ``cot``.

    Names as ``harness.evaluate``'s, except weight gradients: ``d_<TF1 variable>``.
    """
    variables = _tf1_variables(kind, tcell)
    x = tf.constant(inputs, tf.float32)
    s0 = [tf.constant(s, tf.float32) for s in flat_s0]
    lengths = None if sequence_length is None else tf.constant(sequence_length, tf.int64)
    seq_axis, batch_axis = (0, 1) if time_major else (1, 0)

    def flip(seq):
        if lengths is None:
            return tf.reverse(seq, [seq_axis])
        return tf.reverse_sequence(seq, lengths, seq_axis=seq_axis, batch_axis=batch_axis)

    with tf.GradientTape() as tape:
        tape.watch([x] + s0)
        # dynamic_rnn's LSTM state is LSTMStateTuple(c, h); fastcarry's is LSTMState(h, c).
        init = legacy_cells.LSTMStateTuple(c=s0[1], h=s0[0]) if kind == "lstm" else s0[0]
        outputs, final = tf.compat.v1.nn.dynamic_rnn(
            tcell, flip(x) if reverse else x, sequence_length=lengths, initial_state=init, time_major=time_major)
        if reverse:
            outputs = flip(outputs)
        flat_final = [final.h, final.c] if kind == "lstm" else [final]
        loss = tf.reduce_sum(outputs * tf.constant(cot.outputs, tf.float32))
        for s, w in zip(flat_final, cot.state):
            loss += tf.reduce_sum(s * tf.constant(w, tf.float32))
    grads = tape.gradient(loss, [x] + s0 + list(variables.values()),
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)
    names = _state_names(kind)
    result = {"outputs": outputs.numpy(), "d_inputs": grads[0].numpy()}
    result.update({n: s.numpy() for n, s in zip(names, flat_final)})
    result.update({f"d_initial_{n}": g.numpy() for n, g in zip(names, grads[1:1 + len(s0)])})
    result.update({f"d_{name}": g.numpy() for name, g in zip(variables, grads[1 + len(s0):])})
    return result


def _fc_evaluate_tf1_layout(kind, cell, inputs, flat_s0, cot, **options):
    """``fc.unroll`` through ``harness.evaluate``, weight gradients mapped to TF1's variables."""
    s0 = fc.LSTMState(*flat_s0) if kind == "lstm" else flat_s0[0]
    got = harness.evaluate(fc.unroll, cell, inputs, s0, cot, **options)
    tf1_grads = _to_tf1_layout(kind, *(got.pop(k) for k in ("d_kernel", "d_recurrent_kernel", "d_bias")))
    got.update({f"d_{name}": g for name, g in tf1_grads.items()})
    return got


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("kind", KINDS)
def test_matches_dynamic_rnn(kind, case):
    options = CASES[case]
    tcell = _make_tf1_cell(kind)
    cell = _import(kind, tcell)
    # The import is exact, and _to_tf1_layout is its inverse (so it is the right map for gradients).
    for name, value in _to_tf1_layout(kind, *cell.get_weights()).items():
        np.testing.assert_array_equal(value, _tf1_variables(kind, tcell)[name].numpy(), err_msg=name)
    if kind == "lstm":
        assert cell.forget_bias == 1.0
    if kind == "gru":
        assert cell.reset_after is False

    time_major = options.get("time_major", False)
    inputs = random_inputs(B, T, D, time_major=time_major)
    flat_s0 = _random_state(kind)
    cot = harness.random_cotangents(cell, B, T, time_major=time_major)
    want = _tf1_evaluate(kind, tcell, inputs, flat_s0, cot, **options)
    for name, value in want.items():  # every tensor, every variable's gradient, carries signal
        assert np.abs(value).max() > 1e-3, name
    for jit in (True, False):
        got = _fc_evaluate_tf1_layout(kind, cell, inputs, flat_s0, cot, jit_compile=jit, **options)
        assert_all_close(got, want, context=f"{kind} {case} jit_compile={jit}")


def test_sanity_wrong_import_is_detected():
    """The comparison can fail: importing BasicLSTMCell without its forget_bias of 1.0."""
    tcell = _make_tf1_cell("lstm")
    options = CASES["sequence_length"]
    inputs = random_inputs(B, T, D)
    flat_s0 = _random_state("lstm")
    cell = _import("lstm", tcell)
    cot = harness.random_cotangents(cell, B, T)
    want = _tf1_evaluate("lstm", tcell, inputs, flat_s0, cot, **options)
    assert_all_close(_fc_evaluate_tf1_layout("lstm", cell, inputs, flat_s0, cot, jit_compile=False, **options),
                     want, context="forget_bias=1.0")

    wrong = _import("lstm", tcell, forget_bias=0.0)
    with pytest.raises(AssertionError, match="beyond"):
        assert_all_close(_fc_evaluate_tf1_layout("lstm", wrong, inputs, flat_s0, cot, jit_compile=False, **options),
                         want, context="forget_bias=0.0")


def test_from_tf1_lstm_gate_order():
    """The i, j, f, o -> i, f, c, o reorder, checked on labelled columns (no numerics needed)."""
    labels = np.arange(4 * H, dtype=np.float32)  # column k of TF1 gate g holds g * H + k
    kernel = np.tile(labels, (D + H, 1)) + 100 * np.arange(D + H, dtype=np.float32)[:, None]
    cell = fc.LSTM.from_tf1(kernel, labels)
    i, j, f, o = (labels[g * H:(g + 1) * H] for g in range(4))
    np.testing.assert_array_equal(cell.bias.numpy(), np.concatenate([i, f, j, o]))
    np.testing.assert_array_equal(cell.kernel.numpy()[:, :H], kernel[:D, :H])
    np.testing.assert_array_equal(cell.kernel.numpy()[:, H:2 * H], kernel[:D, 2 * H:3 * H])
    np.testing.assert_array_equal(cell.recurrent_kernel.numpy()[:, 2 * H:3 * H], kernel[D:, H:2 * H])
    assert cell.forget_bias == 1.0 and cell.input_dim == D


@pytest.mark.parametrize("call, match", [
    (lambda: fc.LSTM.from_tf1(np.zeros([H, 4 * H]), np.zeros([4 * H])), "D >= 1"),
    (lambda: fc.LSTM.from_tf1(np.zeros([D + H, 4 * H + 1]), np.zeros([4 * H])), r"\[D \+ H, 4H\]"),
    (lambda: fc.LSTM.from_tf1(np.zeros([D + H, 4 * H]), np.zeros([3 * H])), "bias has shape"),
    (lambda: fc.GRU.from_tf1(np.zeros([D + H, 2 * H]), np.zeros([2 * H]), np.zeros([D + H, H]), np.zeros([2 * H])),
     "candidate_bias has shape"),
    (lambda: fc.SimpleRNN.from_tf1(np.zeros([H, H]), np.zeros([H])), "D >= 1"),
], ids=["lstm-no-inputs", "lstm-not-4h", "lstm-bias", "gru-candidate-bias", "rnn-no-inputs"])
def test_from_tf1_rejects_bad_shapes(call, match):
    with pytest.raises(ValueError, match=match):
        call()
