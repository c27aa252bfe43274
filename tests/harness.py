"""The tests' own harness: run an ``unroll``-like function and its gradients, compare tensor by tensor.

Independent of the shipped ``fastcarry check`` tool (``fastcarry.tools.check``),
whose verdicts ``test_cli`` holds against this harness. Gradients are taken of
a loss weighted by random cotangents (never ``.sum()``, which hides sign and
layout errors). Tolerances are relative to the largest magnitude of the
expected tensor, keyed by dtype (float32's 2e-5 is the acceptance bound; the
others scale with each dtype's epsilon).
"""

from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

import fastcarry as fc

TOLERANCE = {tf.float16: 5e-3, tf.bfloat16: 4e-2, tf.float32: 2e-5, tf.float64: 1e-12}


class Cotangents(NamedTuple):
    """The loss's weights: ``outputs [B, T, H]`` (``[T, B, H]`` time-major) and one ``[B, H]`` per state leaf."""

    outputs: np.ndarray
    state: list


def random_cotangents(cell, batch, time, time_major=False, seed=0):
    rng = np.random.default_rng(seed)
    lead = (time, batch) if time_major else (batch, time)
    state = [rng.standard_normal((batch, n)) for n in tf.nest.flatten(cell.state_size)]
    return Cotangents(rng.standard_normal(lead + (cell.output_size,)), state)


def _state_names(cell):
    fields = getattr(type(cell.state_size), "_fields", None)
    return ["state." + f for f in fields] if fields else ["state"]


def evaluate(impl, cell, inputs, initial_state, cotangents, weights=None, **options):
    """``impl(cell, inputs, initial_state, **options)``: ``{name: numpy array}`` of its outputs, final state
    and the gradients of ``sum(outputs * cot.outputs) + sum(state * cot.state)`` w.r.t. inputs, the initial
    state (if given) and ``weights`` (default: the cell's kernel, recurrent kernel, bias)."""
    dtype = cell.dtype
    x = tf.constant(np.asarray(inputs), dtype)
    starts = ([] if initial_state is None
              else [tf.constant(np.asarray(s), dtype) for s in tf.nest.flatten(initial_state)])
    weights = list(weights) if weights is not None else [cell.kernel, cell.recurrent_kernel, cell.bias]
    with tf.GradientTape(persistent=False) as tape:
        tape.watch([x] + starts)
        state0 = None if initial_state is None else tf.nest.pack_sequence_as(initial_state, starts)
        outputs, state = impl(cell, x, state0, **options)
        finals = tf.nest.flatten(state)
        loss = tf.add_n([tf.reduce_sum(outputs * tf.cast(cotangents.outputs, dtype))]
                        + [tf.reduce_sum(f * tf.cast(c, dtype)) for f, c in zip(finals, cotangents.state)])
    grads = tape.gradient(loss, [x] + starts + weights, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    names = _state_names(cell)
    named = [("outputs", outputs), *zip(names, finals), ("d_inputs", grads[0])]
    named += [("d_initial_" + n, g) for n, g in zip(names, grads[1:1 + len(starts)])]
    named += list(zip(("d_kernel", "d_recurrent_kernel", "d_bias"), grads[1 + len(starts):]))
    return {name: tf.cast(value, dtype).numpy() for name, value in named}


class Row(NamedTuple):
    name: str
    max_abs: float
    relative: float


def compare(got, want):
    """A ``Row`` per tensor of ``want``: the largest absolute error and that over ``max |want|``."""
    assert set(got) == set(want), f"different tensors: {sorted(set(got) ^ set(want))}"
    rows = []
    for name, expected in want.items():
        a, b = np.asarray(got[name], np.float64), np.asarray(expected, np.float64)
        if a.shape != b.shape:
            rows.append(Row(name, np.inf, np.inf))
            continue
        err = float(np.abs(a - b).max(initial=0.0))
        scale = float(np.abs(b).max(initial=0.0))
        rows.append(Row(name, err, err / scale if scale else (0.0 if err == 0 else np.inf)))
    return rows


class KerasUnroll:
    """``unroll``'s signature run by the Keras 3 layer of the cell's kind holding a copy of its weights.

    ``weights`` are the layer's variables (Keras layout: gradients compare one
    to one). ``sequence_length`` becomes a Keras mask and outputs past each
    row's length are zeroed (Keras repeats the last output there);
    ``reverse`` is ``go_backwards`` on flipped inputs, outputs flipped back.
    """

    def __init__(self, cell):
        common = dict(return_sequences=True, return_state=True, dtype=cell.dtype.name)
        kernel, recurrent, bias = cell.get_weights()
        if isinstance(cell, fc.LSTM):
            layer = keras.layers.LSTM(cell.units, **common)
            bias = bias.copy()
            bias[cell.units:2 * cell.units] += cell.forget_bias  # Keras has no run-time forget bias
        elif isinstance(cell, fc.GRU):
            layer = keras.layers.GRU(cell.units, reset_after=cell.reset_after, **common)
        elif isinstance(cell, fc.SimpleRNN):
            layer = keras.layers.SimpleRNN(cell.units, activation=cell.activation, **common)
        else:
            raise TypeError(f"no Keras layer for {type(cell).__name__}")
        layer.build((None, None, cell.input_dim))
        layer.set_weights([kernel, recurrent, bias])
        self.layer = layer
        self.weights = [layer.cell.kernel, layer.cell.recurrent_kernel, layer.cell.bias]

    def __call__(self, cell, inputs, initial_state=None, *, sequence_length=None, time_major=False, reverse=False,
                 **_ignored):
        x = tf.transpose(inputs, [1, 0, 2]) if time_major else inputs
        mask = None if sequence_length is None else tf.sequence_mask(sequence_length, x.shape[1])
        flip = (lambda t: tf.reverse(t, [1])) if reverse else (lambda t: t)
        out = self.layer(flip(x), mask=None if mask is None else flip(mask),
                         initial_state=None if initial_state is None else list(tf.nest.flatten(initial_state)))
        outputs = flip(out[0])
        if mask is not None:
            outputs *= tf.cast(mask, outputs.dtype)[:, :, None]
        if time_major:
            outputs = tf.transpose(outputs, [1, 0, 2])
        states = out[1:]
        return outputs, (type(cell.state_size)(*states) if hasattr(type(cell.state_size), "_fields") else states[0])
