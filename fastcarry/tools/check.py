"""Numerical comparison of unroll implementations: what ``fastcarry check`` runs.

``evaluate`` runs one implementation and differentiates a loss built from random
cotangents (never ``.sum()``, which hides sign and layout errors), returning
every output, final-state component and gradient as numpy arrays by name.
``compare`` reports per-tensor errors relative to the largest magnitude.
"""

from typing import NamedTuple

import numpy as np
import tensorflow as tf

# Relative to the largest magnitude of the reference tensor (float32's is the
# issue's acceptance bound; the others scale with each dtype's epsilon).
TOLERANCE = {tf.float16: 5e-3, tf.bfloat16: 4e-2, tf.float32: 2e-5, tf.float64: 1e-12}


class Cotangents(NamedTuple):
    """Random weights of the loss: ``outputs [B, T, H]`` and one ``[B, H]`` per state component."""

    outputs: np.ndarray
    state: list


def random_cotangents(cell, batch, time, time_major=False, seed=0):
    """``Cotangents`` for a cell's outputs and final state, standard normal."""
    rng = np.random.default_rng(seed)
    shape = (time, batch, cell.output_size) if time_major else (batch, time, cell.output_size)
    state = [rng.standard_normal((batch, n)) for n in tf.nest.flatten(cell.state_size)]
    return Cotangents(rng.standard_normal(shape), state)


def state_names(cell):
    fields = getattr(type(cell.state_size), "_fields", None)
    return [f"state.{f}" for f in fields] if fields else ["state"]


def evaluate(impl, cell, inputs, initial_state, cotangents, weights=None, **options):
    """Runs ``impl(cell, inputs, initial_state, **options)`` and its gradients.

    ``weights``: the ``[kernel, recurrent_kernel, bias]`` variables ``impl``
    really uses (another library's copy, say); the cell's by default.

    Returns a dict of numpy arrays: ``outputs``, ``state[.h/.c]``, ``d_inputs``,
    ``d_initial_state[.h/.c]`` (when an initial state is given) and ``d_<weight>``
    for ``kernel``, ``recurrent_kernel``, ``bias``, all in the cell's dtype.
    """
    dtype = cell.dtype
    inputs = tf.convert_to_tensor(inputs, dtype)
    flat_s0 = None if initial_state is None else [tf.convert_to_tensor(s, dtype) for s in tf.nest.flatten(initial_state)]
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        if flat_s0 is not None:
            tape.watch(flat_s0)
            initial_state = tf.nest.pack_sequence_as(initial_state, flat_s0)
        outputs, state = impl(cell, inputs, initial_state, **options)
        flat_state = tf.nest.flatten(state)
        loss = tf.reduce_sum(outputs * tf.cast(cotangents.outputs, dtype))
        for s, w in zip(flat_state, cotangents.state):
            loss += tf.reduce_sum(s * tf.cast(w, dtype))
    weights = list(weights) if weights is not None else [cell.kernel, cell.recurrent_kernel, cell.bias]
    sources = [inputs] + (flat_s0 or []) + weights
    grads = tape.gradient(loss, sources, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    names = state_names(cell)
    result = {"outputs": outputs}
    result.update(zip(names, flat_state))
    result["d_inputs"] = grads[0]
    if flat_s0 is not None:
        result.update(zip([f"d_initial_{n}" for n in names], grads[1:1 + len(flat_s0)]))
    result.update(zip(["d_kernel", "d_recurrent_kernel", "d_bias"], grads[-3:]))
    return {k: np.asarray(tf.cast(v, dtype).numpy()) for k, v in result.items()}


class Row(NamedTuple):
    name: str
    max_abs: float
    relative: float


def compare(got, want):
    """One ``Row`` per tensor: max abs error and that error over ``max |want|``."""
    if set(got) != set(want):
        raise ValueError(f"compare: tensors differ: {sorted(set(got) ^ set(want))}")
    rows = []
    for name in want:
        a, b = np.asarray(got[name], np.float64), np.asarray(want[name], np.float64)
        if a.shape != b.shape:
            rows.append(Row(name, float("inf"), float("inf")))
            continue
        err = float(np.max(np.abs(a - b))) if a.size else 0.0
        scale = float(np.max(np.abs(b))) if b.size else 0.0
        rows.append(Row(name, err, err / scale if scale else (0.0 if err == 0 else float("inf"))))
    return rows


def worst(rows):
    """The largest relative error among ``rows`` (0.0 for none)."""
    return max((r.relative for r in rows), default=0.0)


class KerasUnroll:
    """``unroll``'s signature run by the Keras 3 layer of the same kind, with a copy of the cell's weights.

    The layer's variables are ``weights`` (Keras layout, so gradients compare
    one-to-one). ``sequence_length`` becomes a Keras mask. ``reverse`` flips
    inputs and mask along time, which is what Keras' ``go_backwards`` does, and
    flips the outputs back. Keras repeats the last output at masked steps, so
    outputs are zeroed past each row's length to match ``dynamic_rnn``.
    ``unroll`` and ``jit_compile`` do not apply to Keras and are not used.
    """

    def __init__(self, cell):
        from fastcarry._cells import GRU, LSTM, SimpleRNN

        kw = dict(return_sequences=True, return_state=True, dtype=cell.dtype.name)
        if isinstance(cell, LSTM):
            layer = tf.keras.layers.LSTM(cell.units, **kw)
        elif isinstance(cell, GRU):
            layer = tf.keras.layers.GRU(cell.units, reset_after=cell.reset_after, **kw)
        elif isinstance(cell, SimpleRNN):
            layer = tf.keras.layers.SimpleRNN(cell.units, activation=cell.activation, **kw)
        else:
            raise TypeError(f"KerasUnroll: no Keras layer for {type(cell).__name__}")
        kernel, recurrent, bias = cell.get_weights()
        if isinstance(cell, LSTM) and cell.forget_bias:
            h = cell.units  # Keras has no run-time forget bias: fold it into the f slice.
            bias = bias.copy()
            bias[h:2 * h] += cell.forget_bias
        layer.build((None, None, cell.input_dim))
        layer.set_weights([kernel, recurrent, bias])
        self.layer = layer
        self.weights = [layer.cell.kernel, layer.cell.recurrent_kernel, layer.cell.bias]

    def __call__(self, cell, inputs, initial_state=None, *, sequence_length=None, time_major=False,
                 reverse=False, unroll=1, jit_compile=True):
        x = tf.transpose(inputs, [1, 0, 2]) if time_major else inputs
        mask = None if sequence_length is None else tf.sequence_mask(sequence_length, x.shape[1])
        if reverse:
            x = tf.reverse(x, [1])
        state = None if initial_state is None else list(tf.nest.flatten(initial_state))
        out = self.layer(x, mask=None if mask is None else (tf.reverse(mask, [1]) if reverse else mask),
                         initial_state=state)
        outputs, states = out[0], out[1:]
        if reverse:
            outputs = tf.reverse(outputs, [1])
        if mask is not None:
            outputs = outputs * tf.cast(mask, outputs.dtype)[:, :, None]
        if time_major:
            outputs = tf.transpose(outputs, [1, 0, 2])
        fields = hasattr(type(cell.state_size), "_fields")
        return outputs, (type(cell.state_size)(*states) if fields else states[0])
