"""fastcarry's cells wherever a Keras layer or a ``tf.Module`` works (issue 23, item 1).

A cell held by a ``keras.Model`` is tracked, trained by ``fit`` and saved
(``.keras``, ``model.export``, checkpoints); ``keras.layers.RNN`` and
``fastcarry.keras.RNN`` take fastcarry cells, ``fc.Stack``, ``fc.FunctionCell``
and protocol objects; a ``tf.Module`` parent still finds the ``tf.Variable``\\ s.
Shapes are tiny: B=3, T=5, D=4; most of the time here is Keras tracing.
"""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import fastcarry as fc
from fastcarry import keras as fck
from harness import TOLERANCE

B, T, D, H = 3, 5, 4, 6
RNG = np.random.default_rng(23)
X = RNG.standard_normal((B, T, D)).astype("float32")
Y = RNG.standard_normal((B, 1)).astype("float32")
TOL = TOLERANCE[tf.float32]


def _close(got, want, what):
    got, want = np.asarray(got), np.asarray(want)
    scale = max(1.0, float(np.max(np.abs(want))))
    assert np.max(np.abs(got - want)) <= TOL * scale, (what, np.max(np.abs(got - want)))


@keras.saving.register_keras_serializable(package="fastcarry_tests")
class CellModel(keras.Model):
    """A subclassed model holding an ``fc.LSTM`` as an attribute and calling ``fc.unroll`` itself."""

    def __init__(self, units=H, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.cell = fc.LSTM(units, seed=1)
        self.head = keras.layers.Dense(1)

    def call(self, x):
        outputs, _ = fc.unroll(self.cell, x)
        return self.head(outputs[:, -1])

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def _layer_model(source):
    """The same model written with ``fastcarry.keras.LSTM``, holding ``source``'s weights."""
    model = keras.Sequential([keras.Input((T, D)), fck.LSTM(H), keras.layers.Dense(1)])
    model.set_weights([v.numpy() for v in source.trainable_variables])
    return model


def test_a_subclassed_model_tracks_trains_and_matches_the_fastcarry_keras_model():
    model = CellModel()
    model(X)
    held = model.trainable_variables
    assert [v.path.rsplit("/", 1)[-1] for v in held[:3]] == ["kernel", "recurrent_kernel", "bias"], held
    assert [v.value for v in held[:3]] == [model.cell.kernel, model.cell.recurrent_kernel, model.cell.bias]
    twin = _layer_model(model)
    _close(model(X), twin(X), "outputs before fit")
    before = model.cell.kernel.numpy().copy()
    for m in (model, twin):
        m.compile(keras.optimizers.SGD(0.1), "mse", jit_compile=True)
    history = model.fit(X, Y, epochs=3, batch_size=B, verbose=0, shuffle=False).history["loss"]
    twin_history = twin.fit(X, Y, epochs=3, batch_size=B, verbose=0, shuffle=False).history["loss"]
    assert np.max(np.abs(model.cell.kernel.numpy() - before)) > 1e-4  # on main: exactly 0.0
    np.testing.assert_allclose(history, twin_history, rtol=1e-5)
    for got, want in zip(model.trainable_variables, twin.trainable_variables):
        _close(got.numpy(), want.numpy(), got.path)


def test_gradients_of_a_model_holding_a_cell_equal_keras_lstms():
    model = CellModel()
    model(X)
    native = keras.Sequential([keras.Input((T, D)), keras.layers.LSTM(H), keras.layers.Dense(1)])
    native.set_weights([v.numpy() for v in model.trainable_variables])
    cotangent = tf.constant(RNG.standard_normal((B, 1)), tf.float32)
    grads = []
    for m in (model, native):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(m(X) * cotangent)
        grads.append(tape.gradient(loss, m.trainable_variables))
    assert all(g is not None for g in grads[0])
    for got, want, v in zip(*grads, model.trainable_variables):
        _close(got, want, v.path)


def test_a_subclassed_model_saves_loads_and_exports(tmp_path):
    model = CellModel()
    want = model(X)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.cell, fc.LSTM)
    np.testing.assert_array_equal(loaded(X), want)
    model.export(tmp_path / "served", verbose=False)
    served = tf.saved_model.load(str(tmp_path / "served"))  # held: its variables live as long as it does
    np.testing.assert_array_equal(served.serve(X), want)
    checkpoint = tf.train.Checkpoint(model=model)
    path = checkpoint.save(tmp_path / "ckpt")
    fresh = CellModel()
    fresh(X)
    tf.train.Checkpoint(model=fresh).restore(path).assert_consumed()
    np.testing.assert_array_equal(fresh(X), want)


def test_a_tf_module_parent_and_a_checkpoint_still_see_the_cells_tf_variables(tmp_path):
    cell = fc.GRU(H, input_size=D, seed=2)

    class Parent(tf.Module):
        def __init__(self):
            super().__init__()
            self.cell = cell

    found = Parent().trainable_variables
    assert sorted(v.name for v in found) == [f"{cell.name}/{w}:0" for w in ("bias", "kernel", "recurrent_kernel")]
    assert all(isinstance(v, tf.Variable) for v in found)
    assert [v.value for v in cell.trainable_variables] == [cell.kernel, cell.recurrent_kernel, cell.bias]
    path = tf.train.Checkpoint(cell=cell).save(tmp_path / "c")
    names = sorted(n for n, _ in tf.train.list_variables(path) if n.startswith("cell/"))
    assert names == [f"cell/{w}/.ATTRIBUTES/VARIABLE_VALUE" for w in ("bias", "kernel", "recurrent_kernel")]


def _function_cell(variable):
    def step(h, x_t):
        h = tf.tanh(tf.concat([x_t, h], 1) @ variable)
        return h, h
    return fc.FunctionCell(step, H, H, [variable], name="tanh_cell")


class _ProtocolCell:
    """A plain object of ``fastcarry.CellProtocol`` wrapping a GRU (not a Keras layer)."""

    def __init__(self, inner):
        self.inner = inner

    dtype = property(lambda self: self.inner.dtype)
    state_size = property(lambda self: self.inner.state_size)
    output_size = property(lambda self: self.inner.output_size)
    input_dim = property(lambda self: self.inner.input_dim)
    trainable_variables = property(lambda self: self.inner.trainable_variables)

    def build(self, input_dim):
        self.inner.build(input_dim)

    def zero_state(self, batch_size, dtype=None):
        return self.inner.zero_state(batch_size, dtype)

    def core(self):
        return self.inner.core()

    def params(self):
        return self.inner.params()


def _cells():
    variable = keras.Variable(RNG.standard_normal((D + H, H)).astype("float32") * 0.3, name="w")
    return {
        "lstm": fc.LSTM(H, seed=3),
        "stack": fc.Stack([fc.LSTM(H, seed=4), keras.layers.GRUCell(H, seed=5), fc.SimpleRNN(H, seed=6)]),
        "function_cell": _function_cell(variable),
        "protocol": _ProtocolCell(fc.GRU(H, seed=7)),
    }


@pytest.mark.parametrize("kind", ["lstm", "stack", "function_cell", "protocol"])
def test_fastcarry_keras_rnn_takes_every_fastcarry_cell_and_trains_its_weights(kind):
    cell = _cells()[kind]
    layer = fck.RNN(cell, return_sequences=True, return_state=True)
    cotangent = tf.constant(RNG.standard_normal((B, T, H)), tf.float32)
    with tf.GradientTape() as tape:
        outputs, *states = layer(X)
        loss = tf.reduce_sum(outputs * cotangent)
    assert layer.trainable_weights, "nothing for fit to train"
    got = tape.gradient(loss, layer.trainable_weights)
    # The same cell through fc.unroll, on the same variables.
    with tf.GradientTape() as tape:
        want, final = fc.unroll(cell, X)
        want_loss = tf.reduce_sum(want * cotangent)
    want_grads = tape.gradient(want_loss, layer.trainable_weights)
    _close(outputs, want, "outputs")
    for s, f in zip(states, tf.nest.flatten(final)):
        _close(s, f, "state")
    for g, w, v in zip(got, want_grads, layer.trainable_weights):
        assert g is not None, v.path
        _close(g, w, v.path)


@pytest.mark.parametrize("kind", ["lstm", "stack"])
def test_keras_own_rnn_runs_a_fastcarry_cell_step_by_step_as_fc_unroll_does(kind):
    cell = _cells()[kind]
    got = keras.layers.RNN(cell, return_sequences=True)(X)
    want, _ = fc.unroll(cell, X)
    _close(got, want, "outputs")


def test_a_functional_model_with_fastcarry_cells_saves_and_loads(tmp_path):
    inputs = keras.Input((None, D))
    stack = fc.Stack([fc.LSTM(H, seed=8), keras.layers.GRUCell(H, seed=9)])
    model = keras.Model(inputs, fck.RNN(stack)(inputs))
    want = model(X)
    model.save(tmp_path / "f.keras")
    loaded = keras.models.load_model(tmp_path / "f.keras")
    assert isinstance(loaded.layers[1].cell, fc.Stack)
    np.testing.assert_array_equal(loaded(X), want)


def test_tf_variables_keras_cannot_train_are_an_error_in_fastcarry_keras_rnn_and_a_warning_in_a_model():
    plain = tf.Variable(RNG.standard_normal((D + H, H)).astype("float32") * 0.3, name="plain")
    with pytest.raises(TypeError, match=r"\['plain:0'\] are tf.Variables, which Keras 3 neither trains"):
        fck.RNN(_function_cell(plain))(X)

    class Holder(keras.Model):
        def __init__(self):
            super().__init__()
            self.cell = _function_cell(plain)

        def call(self, x):
            return fc.unroll(self.cell, x)[0]

    with pytest.warns(UserWarning, match=r"tf.Variables \['plain:0'\], which Keras 3 does not track"):
        Holder()(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fc.unroll(_function_cell(plain), X)  # outside a Keras call: a tf.Module-style use, no warning


def test_a_function_cell_or_protocol_cell_has_no_keras_config():
    variable = keras.Variable(np.zeros((D + H, H), "float32"))
    with pytest.raises(NotImplementedError, match="its step is Python code"):
        _function_cell(variable).get_config()
    with pytest.raises(NotImplementedError, match="is not a Keras layer and has no config"):
        fck.RNN(_ProtocolCell(fc.GRU(H))).cell.get_config()
