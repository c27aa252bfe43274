"""``fastcarry.unroll`` (XLA and graph) against Keras 3's own layers, and ``from_keras``.

Every comparison is numeric: outputs, final state and the gradients with respect
to inputs, initial state, kernel, recurrent_kernel and bias under a random
cotangent, within the float32 tolerance of ``conftest.assert_all_close``.

Two independent routes to the Keras numbers:

- ``harness.KerasUnroll`` (the Keras layer behind ``unroll``'s signature) for the
  option matrix (``test_matches_keras_layer``);
- Keras layers built right here, with masks, ``go_backwards`` and initial states
  passed the Keras way, imported with ``from_keras`` and differentiated with a
  tape written here (``test_from_keras_direct`` and the ``from_keras`` tests),
  so the suite does not rest on the adapter alone.

Shapes are shared (B, T, D, H = 3, 6, 4, 5) so the XLA functions compiled for
one test are reused by the next.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import fastcarry as fc
import harness
from conftest import assert_all_close, make_cell, random_inputs, random_state

B, T, D, H = 3, 6, 4, 5
LENGTHS = [T, 0, 3]  # a full row, an empty row and a partial one

# name -> (initial state given?, unroll options)
CASES = {
    "plain": (False, {}),
    "initial_state": (True, {}),
    "sequence_length": (True, dict(sequence_length=LENGTHS)),
    "reverse": (True, dict(sequence_length=LENGTHS, reverse=True)),
    "time_major_reverse": (True, dict(time_major=True, reverse=True)),
}

WEIGHT_GRADS = ("d_kernel", "d_recurrent_kernel", "d_bias")


def _state_names(kind):
    return ["state.h", "state.c"] if kind == "lstm" else ["state"]


# ---------------------------------------------------------------------------
# Against the Keras layer through harness.KerasUnroll: the option matrix.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("kind", ["lstm", "gru", "gru-reset-before", "rnn"])
def test_matches_keras_layer(kind, case):
    with_state, options = CASES[case]
    time_major = options.get("time_major", False)
    cell = make_cell(kind, H, input_dim=D)
    inputs = random_inputs(B, T, D, time_major=time_major)
    s0 = random_state(cell, B) if with_state else None
    cot = harness.random_cotangents(cell, B, T, time_major=time_major)

    reference = harness.KerasUnroll(cell)
    want = harness.evaluate(reference, cell, inputs, s0, cot, weights=reference.weights, **options)
    # Every gradient is there (and not trivially zero) before anything is compared.
    expected = {"outputs", "d_inputs", *WEIGHT_GRADS, *_state_names(kind)}
    if with_state:
        expected |= {f"d_initial_{n}" for n in _state_names(kind)}
    assert set(want) == expected
    for name in expected:
        assert np.abs(want[name]).max() > 1e-3, name

    for jit in (False, True):
        got = harness.evaluate(fc.unroll, cell, inputs, s0, cot, jit_compile=jit, **options)
        assert_all_close(got, want, context=f"{kind} {case} jit_compile={jit}")

    if "sequence_length" in options:
        # dynamic_rnn semantics, checked without Keras (on the jit result): the
        # empty row outputs exact zeros and hands its initial state through
        # unchanged, so that row's initial-state gradient is the state cotangent.
        assert np.all(got["outputs"][1] == 0.0)
        assert np.all(got["outputs"][2, 3:] == 0.0)
        flat_s0 = tf.nest.flatten(s0)
        for i, name in enumerate(_state_names(kind)):
            np.testing.assert_allclose(got[name][1], flat_s0[i][1], rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(got[f"d_initial_{name}"][1], cot.state[i][1], rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------
# Against Keras layers built here (no adapter), imported with from_keras.
# ---------------------------------------------------------------------------

def _keras_layer(kind, module=keras, **kw):
    kw = dict(return_sequences=True, return_state=True, **kw)
    if kind == "lstm":
        return module.layers.LSTM(H, **kw)
    if kind == "gru":
        return module.layers.GRU(H, reset_after=True, **kw)
    if kind == "gru-reset-before":
        return module.layers.GRU(H, reset_after=False, **kw)
    if kind == "rnn":
        return module.layers.SimpleRNN(H, **kw)
    raise ValueError(kind)


def _built(layer, seed=7):
    """Builds a Keras RNN layer for D features and randomises its biases (they start at 0/1)."""
    layer.build((None, None, D))
    weights = layer.get_weights()
    if len(weights) == 3:
        rng = np.random.default_rng(seed)
        weights[2] = (rng.standard_normal(weights[2].shape) * 0.5).astype(weights[2].dtype)
        layer.set_weights(weights)
    return layer


def _importer(kind):
    return {"lstm": fc.LSTM, "gru": fc.GRU, "gru-reset-before": fc.GRU, "rnn": fc.SimpleRNN}[kind]


def _value_and_grads(run, inputs, flat_s0, weights, cot):
    """``run(x, flat_s0) -> (outputs, flat_state)`` and its gradients under ``cot``, by name.

    Written independently of ``harness.evaluate``; state components keep ``run``'s order.
    """
    x = tf.constant(inputs, tf.float32)
    s0 = [tf.constant(s, tf.float32) for s in flat_s0]
    with tf.GradientTape() as tape:
        tape.watch([x] + s0)
        outputs, states = run(x, s0)
        loss = tf.reduce_sum(outputs * tf.constant(cot.outputs, tf.float32))
        for s, w in zip(states, cot.state):
            loss += tf.reduce_sum(s * tf.constant(w, tf.float32))
    grads = tape.gradient(loss, [x] + s0 + list(weights), unconnected_gradients=tf.UnconnectedGradients.ZERO)
    result = {"outputs": outputs.numpy(), "d_inputs": grads[0].numpy()}
    for i, s in enumerate(states):
        result[f"state{i}"] = s.numpy()
        result[f"d_initial_state{i}"] = grads[1 + i].numpy()
    for name, g in zip(WEIGHT_GRADS, grads[1 + len(s0):]):
        result[name] = g.numpy()
    return result


def _keras_run(layer, lengths=None, go_backwards=False):
    """The Keras layer called the Keras way: a mask, a state list, ``go_backwards``.

    Keras returns the backward outputs in processing order, so they are flipped
    to line up with the inputs, and Keras' masked outputs are zeroed as
    ``dynamic_rnn`` (and ``fc.unroll``) does.
    """
    def run(x, s0):
        mask = None if lengths is None else tf.sequence_mask(lengths, T)
        out = layer(x, mask=mask, initial_state=s0 or None)
        outputs, states = out[0], list(out[1:])  # LSTM: [h, c], the order of fc.LSTMState
        if go_backwards:
            outputs = tf.reverse(outputs, [1])
        if mask is not None:
            outputs = outputs * tf.cast(mask, outputs.dtype)[:, :, None]
        return outputs, states
    return run


def _fc_run(cell, **options):
    def run(x, s0):
        state = None
        if s0:
            state = fc.LSTMState(*s0) if isinstance(cell, fc.LSTM) else s0[0]
        outputs, final = fc.unroll(cell, x, state, **options)
        return outputs, tf.nest.flatten(final)
    return run


def _fc_weights(cell):
    return [cell.kernel, cell.recurrent_kernel, cell.bias]


def _keras_weights(layer):
    c = getattr(layer, "cell", layer)
    return [c.kernel, c.recurrent_kernel, c.bias]


def _assert_layer_matches_cell(layer, layer_weights, cell, context):
    """A Keras RNN layer and a fastcarry cell agree on outputs, state and all gradients."""
    inputs = random_inputs(B, T, D)
    flat_s0 = tf.nest.flatten(random_state(cell, B))
    cot = harness.random_cotangents(cell, B, T)
    want = _value_and_grads(_keras_run(layer), inputs, flat_s0, layer_weights, cot)
    got = _value_and_grads(_fc_run(cell), inputs, flat_s0, _fc_weights(cell), cot)
    assert_all_close(got, want, context=context)


@pytest.mark.parametrize("variant", ["initial_state", "sequence_length_go_backwards"])
@pytest.mark.parametrize("kind", ["lstm", "gru", "gru-reset-before", "rnn"])
def test_from_keras_direct(kind, variant):
    backwards = variant == "sequence_length_go_backwards"
    lengths = LENGTHS if backwards else None
    layer = _built(_keras_layer(kind, go_backwards=backwards))
    cell = _importer(kind).from_keras(layer)
    assert type(cell) is _importer(kind) and cell.units == H and cell.input_dim == D
    if kind.startswith("gru"):
        assert cell.reset_after == (kind == "gru")
    for got_w, want_w in zip(cell.get_weights(), layer.get_weights()):
        np.testing.assert_array_equal(got_w, want_w)

    inputs = random_inputs(B, T, D)
    flat_s0 = tf.nest.flatten(random_state(cell, B))  # LSTM: (h, c), Keras' [h, c] order too
    cot = harness.random_cotangents(cell, B, T)
    want = _value_and_grads(_keras_run(layer, lengths, backwards), inputs, flat_s0, _keras_weights(layer), cot)
    for jit in (True, False):
        run = _fc_run(cell, sequence_length=lengths, reverse=backwards, jit_compile=jit)
        got = _value_and_grads(run, inputs, flat_s0, _fc_weights(cell), cot)
        assert_all_close(got, want, context=f"{kind} {variant} jit_compile={jit}")


def test_sanity_perturbed_weight_is_detected():
    """The comparison can fail: one recurrent weight off by 1e-3 is far beyond tolerance."""
    layer = _built(_keras_layer("lstm"))
    cell = fc.LSTM.from_keras(layer)
    inputs = random_inputs(B, T, D)
    flat_s0 = tf.nest.flatten(random_state(cell, B))
    cot = harness.random_cotangents(cell, B, T)
    want = _value_and_grads(_keras_run(layer), inputs, flat_s0, _keras_weights(layer), cot)
    run = _fc_run(cell)
    assert_all_close(_value_and_grads(run, inputs, flat_s0, _fc_weights(cell), cot), want, context="unperturbed")

    perturbed = cell.recurrent_kernel.numpy()
    perturbed[0, 0] += 1e-3
    cell.recurrent_kernel.assign(perturbed)
    with pytest.raises(AssertionError, match="beyond"):
        assert_all_close(_value_and_grads(run, inputs, flat_s0, _fc_weights(cell), cot), want, context="perturbed")

    # The same through the adapter path of test_matches_keras_layer.
    ref_cell = make_cell("gru", H, input_dim=D)
    reference = harness.KerasUnroll(ref_cell)
    cot = harness.random_cotangents(ref_cell, B, T)
    s0 = random_state(ref_cell, B)
    want = harness.evaluate(reference, ref_cell, inputs, s0, cot, weights=reference.weights)
    perturbed = ref_cell.bias.numpy()
    perturbed[1, 2 * H] += 1e-3  # the recurrent bias of the candidate, the reset-after-only term
    ref_cell.bias.assign(perturbed)
    with pytest.raises(AssertionError, match="d_bias|outputs|state"):
        assert_all_close(harness.evaluate(fc.unroll, ref_cell, inputs, s0, cot), want, context="perturbed bias")


# ---------------------------------------------------------------------------
# from_keras: tf_keras layers, bare cells, use_bias=False, errors.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["lstm", "gru", "gru-reset-before", "rnn"])
def test_from_keras_tf_keras_layer(kind):
    layer = _keras_layer(kind, module=tf_keras)
    assert isinstance(layer, tf_keras.layers.Layer) and not isinstance(layer, keras.layers.Layer)
    layer = _built(layer, seed=11)
    cell = _importer(kind).from_keras(layer)
    assert cell.dtype == tf.float32
    for got_w, want_w in zip(cell.get_weights(), layer.get_weights()):
        np.testing.assert_array_equal(got_w, want_w)
    _assert_layer_matches_cell(layer, _keras_weights(layer), cell, f"tf_keras {kind}")


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn", "tf_keras-gru-reset-before"])
def test_from_keras_bare_cell(kind):
    module = tf_keras if kind.startswith("tf_keras") else keras
    name = kind.removeprefix("tf_keras-")
    if name == "lstm":
        kcell, importer = module.layers.LSTMCell(H), fc.LSTM
    elif name == "rnn":
        kcell, importer = module.layers.SimpleRNNCell(H), fc.SimpleRNN
    else:
        kcell, importer = module.layers.GRUCell(H, reset_after=(name == "gru")), fc.GRU
    kcell.build((None, D))
    rng = np.random.default_rng(5)
    kcell.bias.assign(rng.standard_normal(kcell.bias.shape).astype(np.float32) * 0.5)
    cell = importer.from_keras(kcell)
    for got_w, want_w in zip(cell.get_weights(), [kcell.kernel, kcell.recurrent_kernel, kcell.bias]):
        np.testing.assert_array_equal(got_w, np.asarray(want_w))

    # The bare cell, run over time by the generic Keras RNN layer.
    layer = module.layers.RNN(kcell, return_sequences=True, return_state=True)
    _assert_layer_matches_cell(layer, _keras_weights(kcell), cell, f"bare {kind} cell")


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_from_keras_use_bias_false(kind):
    layer = _keras_layer(kind, use_bias=False)
    layer.build((None, None, D))
    assert layer.cell.bias is None and len(layer.get_weights()) == 2
    cell = _importer(kind).from_keras(layer)
    assert cell.bias.shape == ((4 * H,) if kind == "lstm" else (2, 3 * H))
    assert np.all(cell.bias.numpy() == 0.0)
    np.testing.assert_array_equal(cell.kernel.numpy(), layer.cell.kernel.numpy())
    np.testing.assert_array_equal(cell.recurrent_kernel.numpy(), layer.cell.recurrent_kernel.numpy())

    inputs = random_inputs(B, T, D)
    flat_s0 = tf.nest.flatten(random_state(cell, B))
    cot = harness.random_cotangents(cell, B, T)
    keras_weights = [layer.cell.kernel, layer.cell.recurrent_kernel]
    want = _value_and_grads(_keras_run(layer), inputs, flat_s0, keras_weights, cot)
    got = _value_and_grads(_fc_run(cell), inputs, flat_s0, _fc_weights(cell)[:2], cot)
    assert_all_close(got, want, context=f"{kind} use_bias=False")


@pytest.mark.parametrize("make, importer, match", [
    (lambda: keras.layers.LSTM(H, activation="relu"), fc.LSTM, "activation must be 'tanh', got 'relu'"),
    (lambda: keras.layers.LSTM(H, recurrent_activation="hard_sigmoid"), fc.LSTM,
     "recurrent_activation must be 'sigmoid', got 'hard_sigmoid'"),
    (lambda: tf_keras.layers.LSTM(H, activation="relu"), fc.LSTM, "activation must be 'tanh', got 'relu'"),
    (lambda: keras.layers.GRU(H, activation="softsign"), fc.GRU, "activation must be 'tanh', got 'softsign'"),
    (lambda: keras.layers.GRUCell(H, recurrent_activation="hard_sigmoid"), fc.GRU, "recurrent_activation"),
    (lambda: keras.layers.SimpleRNN(H, activation="elu"), fc.SimpleRNN, "activation must be one of .*got 'elu'"),
], ids=["lstm-relu", "lstm-hard_sigmoid", "tf_keras-lstm-relu", "gru-softsign", "grucell-hard_sigmoid", "rnn-elu"])
def test_from_keras_rejects_unsupported_activation(make, importer, match):
    layer = make()
    layer.build((None, None, D) if hasattr(layer, "cell") else (None, D))
    with pytest.raises(ValueError, match=match):
        importer.from_keras(layer)


def test_from_keras_simple_rnn_supported_activation():
    """A non-tanh activation fastcarry has (relu) is carried over, not rejected, and computes the same."""
    layer = _built(keras.layers.SimpleRNN(H, activation="relu", return_sequences=True, return_state=True))
    cell = fc.SimpleRNN.from_keras(layer)
    assert cell.activation == "relu"
    inputs = random_inputs(B, T, D)
    flat_s0 = tf.nest.flatten(random_state(cell, B))
    cot = harness.random_cotangents(cell, B, T)
    want = _value_and_grads(_keras_run(layer), inputs, flat_s0, _keras_weights(layer), cot)
    got = _value_and_grads(_fc_run(cell, jit_compile=False), inputs, flat_s0, _fc_weights(cell), cot)
    assert_all_close(got, want, context="rnn relu")


@pytest.mark.parametrize("make, importer", [
    (lambda: keras.layers.LSTM(H), fc.LSTM),
    (lambda: keras.layers.GRU(H), fc.GRU),
    (lambda: keras.layers.SimpleRNN(H), fc.SimpleRNN),
    (lambda: keras.layers.LSTMCell(H), fc.LSTM),
    (lambda: tf_keras.layers.GRU(H), fc.GRU),
], ids=["lstm", "gru", "rnn", "lstm-cell", "tf_keras-gru"])
def test_from_keras_rejects_unbuilt(make, importer):
    with pytest.raises(ValueError, match="not built"):
        importer.from_keras(make())


def test_from_keras_rejects_other_kinds():
    gru = _built(keras.layers.GRU(H))
    with pytest.raises(TypeError, match="LSTM.from_keras expects a keras LSTM"):
        fc.LSTM.from_keras(gru)
    with pytest.raises(TypeError, match="SimpleRNN.from_keras"):
        fc.SimpleRNN.from_keras(keras.layers.Dense(H))


def test_from_keras_warns_on_dropout():
    layer = _built(keras.layers.LSTM(H, dropout=0.25))
    with pytest.warns(UserWarning, match="dropout=0.25"):
        cell = fc.LSTM.from_keras(layer)
    for got_w, want_w in zip(cell.get_weights(), layer.get_weights()):
        np.testing.assert_array_equal(got_w, want_w)
