"""``fastcarry.keras`` layers against Keras 3's layers holding the same weights.

Outputs, states and the gradients of every weight and of the inputs under a
random cotangent; masks with holes, left padding and an all-masked row;
``go_backwards``, ``Bidirectional``, ``stateful``, dropout, mixed precision;
real ``model.fit``/``model.save``/``load_model``.
"""

import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import MASK, assert_all_close
from fastcarry import keras as fck

B, T, D, H = 3, 7, 4, 5

KINDS = {
    "lstm": ("LSTM", {}),
    "gru": ("GRU", {}),
    "gru-reset-before": ("GRU", {"reset_after": False}),
    "rnn": ("SimpleRNN", {}),
}


def _built_alike(native, fast, weight_seed=0):
    """Both layers built for D and given the same random weights; returns them."""
    for layer in (native, fast):
        layer.build((B, T, D))
    rng = np.random.default_rng(weight_seed)
    weights = [(rng.standard_normal(w.shape) * 0.5).astype(w.dtype) for w in native.get_weights()]
    native.set_weights(weights)
    fast.set_weights(weights)
    return native, fast


def _pair(kind, weight_seed=0, **kw):
    """A Keras layer and a fastcarry.keras layer of ``kind`` with the same random weights, built for D."""
    name, base = KINDS[kind]
    return _built_alike(*(getattr(mod, name)(H, **base, **kw) for mod in (keras.layers, fck)), weight_seed)


def _results(layer, x, cotangent_seed=5, **call_kw):
    """The layer's outputs and the gradients of (inputs, every trainable weight) under a random cotangent."""
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        outs = tf.nest.flatten(layer(x, **call_kw))
    rng = np.random.default_rng(cotangent_seed)
    cots = [tf.constant(rng.standard_normal(o.shape), o.dtype) for o in outs]
    grads = tape.gradient(outs, [x] + layer.trainable_weights, output_gradients=cots)
    return {**{f"out{i}": o for i, o in enumerate(outs)}, "dx": grads[0],
            **{f"d{i}_{w.name}": g for i, (w, g) in enumerate(zip(layer.trainable_weights, grads[1:]))}}


def _inputs(seed=2):
    return np.random.default_rng(seed).standard_normal((B, T, D)).astype("float32")


# Each case mixes options, so a few cases cover them all: masks (holes, left
# padding, an all-masked row) with both output semantics, reversal, states.
CASES = {
    "sequences+mask": (dict(return_sequences=True, return_state=True), dict(mask=MASK)),
    "backwards+state": (dict(go_backwards=True, return_state=True), {}),
    "backwards+mask+zero_output": (dict(go_backwards=True, return_sequences=True, zero_output_for_mask=True),
                                   dict(mask=MASK)),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("kind", list(KINDS))
def test_layer_equals_keras(kind, case):
    layer_kw, call_kw = CASES[case]
    native, fast = _pair(kind, **layer_kw)
    assert fast.fused
    x = _inputs()
    assert_all_close(_results(fast, x, **call_kw), _results(native, x, **call_kw), tf.float32, f"{kind} {case}")


def test_layer_comparison_can_fail():
    native, fast = _pair("lstm", return_sequences=True)
    fast.cell.recurrent_kernel.assign(fast.cell.recurrent_kernel + 1e-3)
    with pytest.raises(AssertionError, match="recurrent_kernel"):
        assert_all_close(_results(fast, _inputs(), mask=MASK), _results(native, _inputs(), mask=MASK))


def test_same_variables_names_and_order_as_keras():
    native, fast = _pair("gru")
    assert [(w.path.split("/", 1)[1], w.shape) for w in fast.weights] == \
        [(w.path.split("/", 1)[1], w.shape) for w in native.weights]


def test_bidirectional_with_a_mask():
    native, fast = _built_alike(*(keras.layers.Bidirectional(mod.LSTM(H, return_sequences=True))
                                  for mod in (keras.layers, fck)))
    assert isinstance(fast.backward_layer, fck.LSTM) and fast.backward_layer.go_backwards
    x = _inputs()
    assert_all_close(_results(fast, x, mask=MASK), _results(native, x, mask=MASK), tf.float32, "bidirectional")


def test_stateful_over_two_calls_and_reset():
    native, fast = _pair("lstm", stateful=True, return_sequences=True)
    x = _inputs()
    for layer in (native, fast):
        layer.reset_states()
    for call in range(2):
        piece = x[:, call * 3:call * 3 + 3]
        assert_all_close({"y": fast(piece), "h": fast.states[0]}, {"y": native(piece), "h": native.states[0]},
                         tf.float32, f"call {call}")
    for layer in (native, fast):
        layer.reset_states()
    assert_all_close({"y": fast(x)}, {"y": native(x)}, tf.float32, "after reset_states")


def test_input_dropout_draws_keras_mask():
    """With the same seed both layers draw the same dropout mask; the fused loop applies it as Keras's cell does."""
    native, fast = _pair("gru", dropout=0.5, seed=7)
    x = _inputs()
    assert_all_close(_results(fast, x, training=True), _results(native, x, training=True), tf.float32, "dropout")


def test_unsupported_configuration_falls_back_to_keras_with_a_warning():
    with pytest.warns(UserWarning, match="recurrent_dropout=0.25 .* runs Keras's own loop"):
        native, fast = _pair("lstm", recurrent_dropout=0.25, return_sequences=True)
    assert not fast.fused and "recurrent_dropout" in fast.fallback_reason
    x = _inputs()
    assert_all_close(_results(fast, x, mask=MASK), _results(native, x, mask=MASK), tf.float32, "fallback")


@pytest.mark.parametrize("policy, dtype", [("mixed_float16", tf.float16), ("mixed_bfloat16", tf.bfloat16)])
def test_mixed_precision_computes_in_the_policy_dtype(policy, dtype):
    native, fast = _pair("lstm", return_sequences=True, dtype=policy)
    x = _inputs()
    got, want = fast(x, mask=MASK), native(x, mask=MASK)
    assert got.dtype == want.dtype == dtype
    assert_all_close({"y": got}, {"y": want}, dtype, policy)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_unroll_true_runs_one_fully_unrolled_iteration_with_keras_numbers(kind, monkeypatch):
    native, fast = _pair(kind, return_sequences=True, unroll=True)
    seen = []
    unroll = fck._unroll
    monkeypatch.setattr(fck, "_unroll", lambda *a, **k: seen.append(k.get("unroll")) or unroll(*a, **k))
    x = _inputs()
    assert_all_close(_results(fast, x, mask=MASK), _results(native, x, mask=MASK), tf.float32, f"{kind} unroll")
    assert seen and set(seen) == {T}  # all T steps in one iteration; on main: ValueError at construction
    assert fast.get_config()["unroll"] is True and type(fast).from_config(fast.get_config()).unroll is True


def test_use_cudnn_true_is_kept_and_warns_that_the_fused_loop_runs():
    with pytest.warns(UserWarning, match="use_cudnn=True: fastcarry's compiled loop runs instead of cuDNN"):
        native, fast = _pair("gru", use_cudnn=True)
    native.use_cudnn = False  # on a CPU Keras's own layer would refuse True at call
    assert fast.get_config()["use_cudnn"] is True  # Keras's own GRU leaves it out of its config
    with pytest.warns(UserWarning, match="use_cudnn=True"):
        assert fck.GRU.from_config(fast.get_config()).use_cudnn is True
    x = _inputs()
    assert_all_close(_results(fast, x), _results(native, x), tf.float32, "use_cudnn")


def test_integer_inputs_are_cast_as_keras_casts_them():
    native, fast = _pair("lstm", return_sequences=True)
    x = np.random.default_rng(5).integers(-3, 4, (B, T, D))
    got, want = fast(x), native(x)
    assert got.dtype == want.dtype == tf.float32
    assert_all_close({"y": got}, {"y": want}, tf.float32, "int64 inputs")


def test_bad_inputs_after_build_fail_clearly():
    _, fast = _pair("gru")
    with pytest.raises(ValueError, match=f"{fast.name}.*expected axis -1 of input shape to have value {D}"):
        fast(np.zeros((B, T, D + 1), "float32"))
    with pytest.raises(ValueError, match="mask must have shape"):
        fast(_inputs(), mask=np.ones((B, T + 1), bool))


def _model(module, kind="LSTM", depth=2):
    return keras.Sequential([
        keras.Input((T,), dtype="int32"),
        keras.layers.Embedding(10, D, mask_zero=True),
        *[getattr(module, kind)(H, return_sequences=i < depth - 1) for i in range(depth)],
        keras.layers.Dense(1),
    ])


def test_fit_matches_keras_and_save_load_roundtrips(tmp_path, monkeypatch):
    """Real ``model.fit`` (jit_compile=True), same weights and data: the same loss trajectory; then .keras."""
    calls = []
    unroll = fck._unroll
    monkeypatch.setattr(fck, "_unroll", lambda *a, **k: calls.append(k.get("mask")) or unroll(*a, **k))
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 10, (16, T))
    tokens[:4, :3] = 0      # left padding
    tokens[4:8, 5:] = 0     # right padding
    target = rng.standard_normal((16, 1)).astype("float32")
    native, fast = _model(keras.layers), _model(fck)
    fast.set_weights(native.get_weights())
    histories = []
    for model in (native, fast):
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=True)
        histories.append(model.fit(tokens, target, batch_size=8, epochs=3, shuffle=False, verbose=0)
                         .history["loss"])
    np.testing.assert_allclose(histories[1], histories[0], rtol=1e-4)
    assert len(calls) >= 2 and all(m is not None for m in calls), "fit did not run the fused loop with the mask"
    path = tmp_path / "m.keras"
    fast.save(path)
    np.save(tmp_path / "tokens.npy", tokens)
    # A fresh process, as a user loads a model: importing fastcarry.keras registers the layers.
    script = (f"import keras, numpy as np, fastcarry.keras as fck\n"
              f"m = keras.models.load_model({str(path)!r})\n"
              f"assert [type(l) for l in m.layers[1:3]] == [fck.LSTM, fck.LSTM]\n"
              f"np.save({str(tmp_path / 'loaded.npy')!r}, m.predict(np.load({str(tmp_path / 'tokens.npy')!r}), verbose=0))")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert run.returncode == 0, run.stderr[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "loaded.npy"), fast.predict(tokens, verbose=0))


def test_eager_fit_equals_compiled_fit():
    rng = np.random.default_rng(2)
    tokens, target = rng.integers(0, 10, (8, T)), rng.standard_normal((8, 1)).astype("float32")
    eager, compiled = _model(fck, "SimpleRNN", depth=1), _model(fck, "SimpleRNN", depth=1)
    compiled.set_weights(eager.get_weights())
    losses = []
    for model, options in ((eager, dict(run_eagerly=True)), (compiled, dict(jit_compile=True))):
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", **options)
        losses.append(model.fit(tokens, target, batch_size=4, epochs=2, shuffle=False, verbose=0).history["loss"])
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


def test_fit_with_auto_jit_and_tensorboard_callback(tmp_path):
    model = _model(fck, "GRU", depth=1)
    model.compile(optimizer="adam", loss="mse")  # jit_compile="auto" (False on a CPU-only machine)
    tokens = np.random.default_rng(1).integers(0, 10, (8, T))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no fallback, no retracing warning
        model.fit(tokens, np.zeros((8, 1), "float32"), epochs=1, verbose=0,
                  callbacks=[keras.callbacks.TensorBoard(str(tmp_path))])
    assert list((tmp_path / "train").glob("events.out.tfevents.*"))


# -- fastcarry.keras.RNN(cell) ------------------------------------------------------------------------------

class _DoubledOutputCell(keras.layers.Layer):
    """Keras's ``MinimalRNNCell`` example, but its output (2h) is not its state (h): the generic path's last output."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units, self.state_size, self.output_size = units, units, units

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), name="kernel")
        self.recurrent_kernel = self.add_weight(shape=(self.units, self.units), name="recurrent_kernel")

    def call(self, inputs, states):
        h = keras.ops.tanh(keras.ops.matmul(inputs, self.kernel) + keras.ops.matmul(states[0], self.recurrent_kernel))
        return 2.0 * h, [h]


RNN_CELLS = {
    "user-cell": lambda: _DoubledOutputCell(H),
    "lstm-cell": lambda: keras.layers.LSTMCell(H),
    "stacked": lambda: [keras.layers.LSTMCell(H), keras.layers.GRUCell(H + 1, reset_after=False)],
}
RNN_CASES = {
    "sequences+mask": (dict(return_sequences=True, return_state=True), dict(mask=MASK)),
    "last+mask": (dict(return_state=True), dict(mask=MASK)),
    "backwards+mask+zero_output": (dict(go_backwards=True, return_sequences=True, zero_output_for_mask=True),
                                   dict(mask=MASK)),
}


@pytest.mark.parametrize("case", list(RNN_CASES))
@pytest.mark.parametrize("cell", list(RNN_CELLS))
def test_rnn_of_a_cell_equals_keras_rnn(cell, case):
    layer_kw, call_kw = RNN_CASES[case]
    native, fast = _built_alike(keras.layers.RNN(RNN_CELLS[cell](), **layer_kw),
                                fck.RNN(RNN_CELLS[cell](), **layer_kw))
    assert fast.fused
    x = _inputs()
    assert_all_close(_results(fast, x, **call_kw), _results(native, x, **call_kw), tf.float32, f"{cell} {case}")


def test_rnn_of_a_cell_with_dropout_falls_back():
    with pytest.warns(UserWarning, match="GRUCell dropout=0.5"):
        layer = fck.RNN(keras.layers.GRUCell(H, dropout=0.5))
    assert not layer.fused


def test_a_gradient_of_an_inference_call_in_a_graph_recomputes_keras_numbers():
    """Outside fit (training False) the layer's graph saves nothing; a tape around it still gets Keras's gradients."""
    native, fast = _pair("gru", return_sequences=True)
    x = tf.constant(_inputs())
    cotangent = tf.constant(np.random.default_rng(8).standard_normal((B, T, H)), tf.float32)
    grads = []
    for layer in (fast, native):
        @tf.function
        def step(x, layer=layer):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(layer(x, mask=MASK) * cotangent)  # training defaults to False
            return tape.gradient(loss, [x, *layer.trainable_weights])
        grads.append(step(x))
    assert_all_close({f"g{i}": g for i, g in enumerate(grads[0])}, {f"g{i}": g for i, g in enumerate(grads[1])},
                     tf.float32, "inference-call gradients")
