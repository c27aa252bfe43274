"""The cell contract: sizes, zero_state, variables (layout, names, creation), checkpoints,
tf.function and XLA training use, copy, initialisation, and one equivalence case per cell.
"""

import warnings

import numpy as np
import pytest
import tensorflow as tf

import fastcarry as fc
import harness
from conftest import CELL_KINDS, assert_all_close, make_cell, random_inputs, random_state

B, T, D, H = 2, 3, 4, 5

# Keras 3 layout of [kernel, recurrent_kernel, bias] for input dim D and H units.
SHAPES = {
    "lstm": [(D, 4 * H), (H, 4 * H), (4 * H,)],
    "gru": [(D, 3 * H), (H, 3 * H), (2, 3 * H)],
    "gru-reset-before": [(D, 3 * H), (H, 3 * H), (3 * H,)],
    "rnn": [(D, H), (H, H), (H,)],
}


def _weights(cell):
    return [cell.kernel, cell.recurrent_kernel, cell.bias]


# -- sizes and zero_state --------------------------------------------------------

@pytest.mark.parametrize("kind", CELL_KINDS)
def test_state_and_output_size(kind):
    cell = make_cell(kind, H)
    assert cell.output_size == H
    if kind == "lstm":
        assert isinstance(cell.state_size, fc.LSTMState)
        assert cell.state_size == fc.LSTMState(H, H)
    else:
        assert cell.state_size == H


@pytest.mark.parametrize("dtype", [None, tf.float64], ids=["cell_dtype", "float64"])
@pytest.mark.parametrize("kind", CELL_KINDS)
def test_zero_state(kind, dtype):
    cell = make_cell(kind, H)
    state = cell.zero_state(3, dtype) if dtype is not None else cell.zero_state(3)
    want_dtype = dtype or tf.float32
    if kind == "lstm":
        assert isinstance(state, fc.LSTMState)
        parts = list(state)
    else:
        assert tf.is_tensor(state)
        parts = [state]
    for part in parts:
        assert tuple(part.shape) == (3, H)
        assert part.dtype == want_dtype
        np.testing.assert_array_equal(part.numpy(), 0)


# -- variables -------------------------------------------------------------------

def _check_variables(cell, kind):
    assert cell.built and cell.input_dim == D
    kernel, recurrent, bias = _weights(cell)
    assert [tuple(v.shape) for v in (kernel, recurrent, bias)] == SHAPES[kind]
    assert all(isinstance(v, tf.Variable) and v.dtype == cell.dtype for v in (kernel, recurrent, bias))
    assert "kernel" in kernel.name and "recurrent" not in kernel.name, kernel.name
    assert "recurrent_kernel" in recurrent.name, recurrent.name
    assert "bias" in bias.name, bias.name
    trainable = cell.trainable_variables
    assert len(trainable) == 3
    # Keras variables (what a keras.Model trains), the attributes' tf.Variables behind them (one storage).
    assert [v.value for v in trainable] == [kernel, recurrent, bias]


@pytest.mark.parametrize("kind", CELL_KINDS)
def test_build_creates_keras_layout_variables(kind):
    cell = make_cell(kind, H)
    assert not cell.built
    with pytest.warns(UserWarning, match="input_size"):
        assert len(cell.trainable_variables) == 0
    cell.build(D)
    _check_variables(cell, kind)


@pytest.mark.parametrize("kind", CELL_KINDS)
def test_input_size_builds_at_construction(kind):
    extra = {"gru": dict(reset_after=True), "gru-reset-before": dict(reset_after=False)}.get(kind, {})
    cls = {"lstm": fc.LSTM, "gru": fc.GRU, "gru-reset-before": fc.GRU, "rnn": fc.SimpleRNN}[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a built cell's variables are read without a word
        cell = cls(H, input_size=D, seed=0, **extra)
        _check_variables(cell, kind)
        assert len(cell.variables) == 3
    same = cls(H, seed=0, **extra)
    same.build(D)
    for a, b in zip(cell.get_weights(), same.get_weights()):  # the same initialisation as build(D)
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, "4"])
def test_input_size_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match=f"input_size must be a positive int, got {bad!r}"):
        fc.LSTM(H, input_size=bad)


@pytest.mark.parametrize("what", ["trainable_variables", "variables"])
def test_reading_an_unbuilt_cells_variables_warns_once(what):
    cell = fc.GRU(H, name="enc")
    with pytest.warns(UserWarning) as record:
        assert list(getattr(cell, what)) == []
    message = str(record[0].message)
    assert record[0].filename == __file__  # attributed to the line that read it
    for piece in (f"cell.{what}", "GRU cell 'enc'", "never trains it", f"fc.GRU({H}, input_size=D)", "cell.build(D)"):
        assert piece in message, (piece, message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        getattr(cell, what)  # once per cell
        cell.build(D)
        assert len(getattr(cell, what)) == 3


def test_reading_a_carrys_variables_warns_while_its_cell_is_unbuilt():
    carry = fc.Carry(fc.LSTM(H), batch_size=B)
    with pytest.warns(UserWarning, match=r"carry\.trainable_variables holds none of the LSTM cell"):
        assert carry.trainable_variables == ()
    built = fc.Carry(fc.LSTM(H, input_size=D), batch_size=B)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(built.trainable_variables) == 3 and len(built.variables) == 5


@pytest.mark.parametrize("kind", CELL_KINDS)
def test_first_use_creates_keras_layout_variables(kind):
    cell = make_cell(kind, H)
    assert not cell.built
    outputs, _ = fc.unroll(cell, tf.zeros([B, T, D]), jit_compile=False)
    assert tuple(outputs.shape) == (B, T, H)
    _check_variables(cell, kind)


def test_build_again_with_the_same_dim_keeps_the_variables():
    cell = make_cell("lstm", H, input_dim=D)
    before = [id(v) for v in _weights(cell)]
    cell.build(D)
    assert [id(v) for v in _weights(cell)] == before


def test_lstm_default_bias_has_ones_in_the_forget_slice():
    cell = fc.LSTM(H, seed=0)
    cell.build(D)
    bias = cell.bias.numpy()
    np.testing.assert_array_equal(bias[H:2 * H], 1.0)  # gates i, f, c, o: f is the second block
    np.testing.assert_array_equal(bias[:H], 0.0)
    np.testing.assert_array_equal(bias[2 * H:], 0.0)


@pytest.mark.parametrize("kind", CELL_KINDS)
def test_seed_makes_initialisation_reproducible(kind):
    a, b, c = (make_cell(kind, H, seed=s) for s in (7, 7, 8))
    for cell in (a, b, c):
        cell.build(D)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    # The random weights depend on the seed.
    assert not np.array_equal(a.get_weights()[0], c.get_weights()[0])
    assert not np.array_equal(a.get_weights()[1], c.get_weights()[1])


# -- checkpoints -----------------------------------------------------------------

@pytest.mark.parametrize("kind", CELL_KINDS)
def test_checkpoint_round_trip_into_a_built_cell(kind, tmp_path):
    saved = make_cell(kind, H, seed=0, input_dim=D)  # random bias too
    path = tf.train.Checkpoint(cell=saved).save(str(tmp_path / "ckpt"))
    fresh = make_cell(kind, H, seed=1, input_dim=D)
    assert not np.array_equal(fresh.get_weights()[0], saved.get_weights()[0])
    tf.train.Checkpoint(cell=fresh).restore(path).assert_consumed()
    for got, want in zip(fresh.get_weights(), saved.get_weights()):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_checkpoint_deferred_restore_into_an_unbuilt_cell(kind, tmp_path):
    saved = make_cell(kind, H, seed=0, input_dim=D)
    path = tf.train.Checkpoint(cell=saved).save(str(tmp_path / "ckpt"))
    fresh = make_cell(kind, H, seed=1)
    status = tf.train.Checkpoint(cell=fresh).restore(path)
    fresh.build(D)  # the pending values land when the variables are created
    status.assert_consumed()
    for got, want in zip(fresh.get_weights(), saved.get_weights()):
        np.testing.assert_array_equal(got, want)


# -- inside a user's tf.function -------------------------------------------------

@pytest.mark.parametrize("jit_compile", [True, False], ids=["jit", "graph"])
def test_first_use_inside_a_user_function(jit_compile):
    cell = fc.GRU(H, seed=0)

    @tf.function
    def run(x):
        return fc.unroll(cell, x, jit_compile=jit_compile)

    x = tf.constant(random_inputs(B, T, D), tf.float32)
    y1, s1 = run(x)
    assert cell.built and len(cell.trainable_variables) == 3
    variables = [id(v) for v in _weights(cell)]
    y2, _ = run(x + 1.0)
    assert [id(v) for v in _weights(cell)] == variables  # no new variables on later calls
    eager_y1, eager_s1 = fc.unroll(cell, x, jit_compile=False)
    eager_y2, _ = fc.unroll(cell, x + 1.0, jit_compile=False)
    np.testing.assert_allclose(y1.numpy(), eager_y1.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s1.numpy(), eager_s1.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y2.numpy(), eager_y2.numpy(), rtol=1e-5, atol=1e-6)


def test_sgd_training_step_in_a_user_xla_function():
    cell = make_cell("lstm", H, seed=0, input_dim=D)
    x = tf.constant(random_inputs(B, T, D, seed=3), tf.float32)
    target = tf.constant(np.random.default_rng(4).standard_normal((B, T, H)) * 0.5, tf.float32)
    s0 = tf.nest.map_structure(lambda s: tf.constant(s, tf.float32), random_state(cell, B, seed=5))

    @tf.function(jit_compile=True)
    def train_step(x, target, s0):
        with tf.GradientTape() as tape:
            outputs, state = fc.unroll(cell, x, s0)
            loss = tf.reduce_mean((outputs - target) ** 2) + tf.reduce_mean(state.c ** 2)
        grads = tape.gradient(loss, _weights(cell))
        for var, grad in zip(_weights(cell), grads):
            var.assign_sub(0.5 * grad)
        return loss

    before = cell.get_weights()
    losses = [float(train_step(x, target, s0)) for _ in range(4)]
    after = cell.get_weights()
    for name, old, new in zip(("kernel", "recurrent_kernel", "bias"), before, after):
        assert not np.allclose(old, new), f"{name} did not change"
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


# -- copy ------------------------------------------------------------------------

@pytest.mark.parametrize("kind", CELL_KINDS)
def test_copy_to_float64_copies_weights_and_config(kind):
    extra = {"lstm": dict(forget_bias=1.0), "rnn": dict(activation="relu")}.get(kind, {})
    cell = make_cell(kind, H, seed=0, input_dim=D, **extra)
    new = cell.copy(dtype=tf.float64)
    assert type(new) is type(cell) and new.units == H and new.dtype == tf.float64 and new.input_dim == D
    for attr in ("forget_bias", "reset_after", "activation"):
        assert getattr(new, attr, None) == getattr(cell, attr, None), attr
    for got, want in zip(new.get_weights(), cell.get_weights()):
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, want.astype(np.float64))
    # A copy: its variables are its own.
    new.kernel.assign_add(tf.ones_like(new.kernel))
    assert not np.array_equal(new.get_weights()[0], cell.get_weights()[0].astype(np.float64))


# -- one equivalence case per cell -----------------------------------------------

@pytest.mark.parametrize("kind", CELL_KINDS)
def test_jit_graph_and_reference_agree(kind):
    cell = make_cell(kind, H, seed=0, input_dim=D)
    x = random_inputs(B, T, D)
    s0 = random_state(cell, B)
    cot = harness.random_cotangents(cell, B, T, seed=6)
    want = harness.evaluate(fc.reference.unroll, cell.copy(dtype=tf.float64), x, s0, cot)
    for name, impl, options in (("jit", fc.unroll, dict(jit_compile=True)),
                                ("graph", fc.unroll, dict(jit_compile=False)),
                                ("reference float32", fc.reference.unroll, {})):
        got = harness.evaluate(impl, cell, x, s0, cot, **options)
        assert_all_close(got, want, tf.float32, f"{kind} {name}")
