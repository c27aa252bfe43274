"""What already worked with TensorFlow's tools, held by tests (issue 23's "must keep working" list).

``padded_batch`` + ``Masking`` + ``fit`` against Keras's layer; ``tf.recompute_grad``
around ``fc.unroll``; a ``tf.train.Checkpoint`` of a cell, a Keras optimizer's
slots and a ``Carry``, bit-exact. (Distribution, export and mixed precision:
``test_distribute.py``, ``test_export.py``, ``test_keras_layers.py``.)
"""

import keras
import numpy as np
import tensorflow as tf

import fastcarry as fc
from fastcarry import keras as fck
from harness import TOLERANCE

B, T, D, H = 4, 6, 3, 5
RNG = np.random.default_rng(31)


def _sequences(n=16):
    """``n`` sequences of 1..T steps (non-zero features) and their targets."""
    lengths = RNG.integers(1, T + 1, n)
    xs = [RNG.standard_normal((k, D)).astype("float32") + 3.0 for k in lengths]  # no all-zero step
    return xs, RNG.standard_normal((n, 1)).astype("float32")


def test_padded_batch_masking_and_fit_match_keras():
    xs, ys = _sequences()
    data = tf.data.Dataset.from_generator(lambda: zip(xs, ys), output_signature=(
        tf.TensorSpec([None, D], tf.float32), tf.TensorSpec([1], tf.float32))).padded_batch(B)
    losses = {}
    for module in (keras.layers, fck):
        keras.utils.set_random_seed(7)
        model = keras.Sequential([keras.Input((None, D)), keras.layers.Masking(0.0), module.LSTM(H),
                                  keras.layers.Dense(1)])
        model.compile(keras.optimizers.SGD(0.05), "mse")
        losses[module.__name__] = model.fit(data, epochs=3, verbose=0, shuffle=False).history["loss"]
    np.testing.assert_allclose(losses["fastcarry.keras"], losses["keras.layers"], rtol=1e-5)


def test_recompute_grad_around_unroll_gives_the_same_gradients():
    cell = fc.GRU(H, input_size=D, seed=8)
    x = tf.constant(RNG.standard_normal((B, T, D)), tf.float32)
    cotangent = tf.constant(RNG.standard_normal((B, T, H)), tf.float32)
    grads = []
    for fn in (lambda x: fc.unroll(cell, x)[0], tf.recompute_grad(lambda x: fc.unroll(cell, x)[0])):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(fn(x) * cotangent)
        grads.append(tape.gradient(loss, [x, *cell.trainable_variables]))
    for got, want in zip(*grads):
        scale = max(1.0, float(np.max(np.abs(want))))
        assert np.max(np.abs(got.numpy() - want.numpy())) <= TOLERANCE[tf.float32] * scale


def test_a_checkpoint_of_cell_optimizer_and_carry_round_trips_bit_exact(tmp_path):
    cell = fc.LSTM(H, input_size=D, seed=9)
    carry = fc.Carry(cell, batch_size=B)
    optimizer = keras.optimizers.Adam(0.01)
    x = tf.constant(RNG.standard_normal((B, T, D)), tf.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(carry(x)))
    optimizer.apply_gradients(zip(tape.gradient(loss, cell.trainable_variables), cell.trainable_variables))
    checkpoint = tf.train.Checkpoint(cell=cell, optimizer=optimizer, carry=carry)
    path = checkpoint.save(tmp_path / "ckpt")
    saved = [v.numpy().copy() for v in checkpoint_values(cell, optimizer, carry)]
    for v in checkpoint_values(cell, optimizer, carry):
        v.assign(tf.ones_like(v) * 3)  # the step counter is an int
    checkpoint.restore(path).assert_consumed()
    for got, want in zip(checkpoint_values(cell, optimizer, carry), saved):
        np.testing.assert_array_equal(got.numpy(), want)


def checkpoint_values(cell, optimizer, carry):
    """The cell's weights, the optimizer's slots and step count, and the carried state's variables."""
    return [*cell.trainable_variables, *optimizer.variables, *carry.variables[:2]]
