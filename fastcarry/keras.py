"""Keras 3 drop-in layers: ``fastcarry.keras.LSTM``, ``GRU``, ``SimpleRNN`` and ``RNN(cell)``.

Each is a subclass of the Keras layer of the same name, so the constructor,
the variables (names, order, shapes), ``get_config``, ``stateful``/
``reset_states()``, ``Bidirectional``, masking and saving are Keras's own;
only the time loop differs: ``fastcarry.unroll`` runs the fused kernel on the
layer's own variables (XLA-compiled, the hand-written backward), also inside
``model.fit(jit_compile=True)``, where Keras's cuDNN path cannot go::

    from fastcarry import keras as fck
    model = keras.Sequential([keras.Input((None, 32)), fck.LSTM(128), keras.layers.Dense(1)])
    fast.set_weights(native.get_weights())       # a Keras LSTM's weights load as they are

Semantics are Keras's, including masks (from ``Embedding(mask_zero=True)``,
``Masking`` or ``mask=``; right- or left-padded or with holes): at a masked step
the state is carried through and the output repeats the previous one (zeros
before the first real step), or is zero with ``zero_output_for_mask=True``.
``go_backwards`` reverses time and returns outputs in processing order.
Input ``dropout`` is applied once to the whole sequence, as Keras's cell does
(one mask for all steps, drawn by the cell: the same numbers as Keras).

``fastcarry.keras.RNN(cell)`` is ``keras.layers.RNN(cell)`` on ``fastcarry.unroll``: a
Keras ``LSTMCell``/``GRUCell``/``SimpleRNNCell`` runs fused on its variables,
any other Keras cell (a user's, or a list of cells: ``StackedRNNCells``) on the
generic path (its own ``call`` per step, fastcarry's compiled loop and backward),
and fastcarry's own cells (``fc.LSTM``, ``fc.Stack``, ``fc.FunctionCell``, any
``fastcarry.CellProtocol`` object) as ``fc.unroll`` runs them.

What the fused loop cannot run, Keras's own loop runs, exactly, and a warning
at construction says why (``layer.fused`` is False, ``layer.fallback_reason``
says why): ``recurrent_dropout``, activations other than the cell's standard
ones (LSTM/GRU: tanh and sigmoid; SimpleRNN: tanh, relu, sigmoid, linear),
LSTM/GRU ``implementation=1`` with ``dropout``. ``unroll=True`` runs all T
steps in one iteration of the compiled loop (a fully unrolled body; T must be
static, as Keras requires). ``use_cudnn=True`` is kept in the config and warns:
the fused loop runs instead of cuDNN's kernel, which XLA cannot compile.
Integer inputs are cast to the compute dtype, as Keras's cells promote them.

A saved model loads with ``keras.models.load_model`` in any process that has
imported ``fastcarry.keras`` (the import registers the layers; no ``custom_objects``).

Shapes: inputs ``[B, T, D]``; outputs ``[B, T, H]`` with ``return_sequences``,
else ``[B, H]``; states ``[B, H]`` each (LSTM: h, c).
"""

import warnings
from typing import Any

import keras
import tensorflow as tf

from fastcarry._adapters import as_cell
from fastcarry._keras_fused import KerasFusedCell
from fastcarry._layer import ProtocolLayer, untracked_variables
from fastcarry._protocol import missing_members
from fastcarry._stack import Stack
from fastcarry._support import not_supported_reasons
from fastcarry._unroll import unroll as _unroll

__all__ = ["GRU", "LSTM", "RNN", "SimpleRNN"]


def _cells_of(cell):
    """``cell`` and, for a stack (``StackedRNNCells``), the cells in it."""
    return [cell, *getattr(cell, "cells", [])]


def _last_real_output(ys, mask):
    """``[B, H]``: each row's output at its last real step (zeros if none), from ``ys [B, T, H]`` and ``mask``."""
    time = tf.shape(ys)[1]
    last = time - 1 - tf.argmax(tf.reverse(tf.cast(mask, tf.int32), [1]), axis=1, output_type=tf.int32)
    out = tf.gather(ys, last, axis=1, batch_dims=1)
    return tf.where(tf.reduce_any(mask, axis=1)[:, None], out, tf.zeros_like(out))


def _hold_last_output(ys, mask):
    """Keras's masked outputs from ``ys [B, T, H]`` (zeros at masked steps) and ``mask [B, T]``.

    At a masked step Keras repeats the previous output (zeros before the
    first real step). With ``idx[b, t]`` the last real step ``<= t``, the
    result is ``ys[b, idx]``: the real steps are counted along time, and each
    count's segment starts at its real step (a segment max finds it), so no
    second loop over time is needed.
    """
    batch, time = tf.shape(ys)[0], tf.shape(ys)[1]
    count = tf.cumsum(tf.cast(mask, tf.int32), axis=1)                          # [B, T]
    segment = count + (time + 1) * tf.range(batch)[:, None]
    steps = tf.broadcast_to(tf.range(time)[None, :], tf.shape(count))
    start = tf.math.unsorted_segment_max(tf.where(mask, steps, -1), segment, batch * (time + 1))
    idx = tf.gather(start, segment)                                             # [B, T], -1: none yet
    held = tf.gather(ys, tf.maximum(idx, 0), axis=1, batch_dims=1)
    return tf.where((idx >= 0)[..., None], held, tf.zeros_like(held))


class _FusedLoop:
    """The shared part: Keras's ``RNN.inner_loop`` replaced by ``fastcarry.unroll``."""

    _kind = None  # "lstm", "gru" or "simple_rnn"

    def _init_fastcarry(self):
        # Keras turns XLA off for a layer it would run with cuDNN; this one never does.
        self.supports_jit = True
        self.fallback_reason = self._why_not_fused()
        if self.fallback_reason:
            warnings.warn(f"fastcarry.keras.{type(self).__name__} {self.name!r}: {self.fallback_reason} runs "
                          f"Keras's own loop (exact, not fused)", UserWarning, stacklevel=3)
        elif getattr(self, "use_cudnn", "auto") is True:
            # Kept (get_config round-trips it), and said: the fused loop is what runs, on every device.
            warnings.warn(f"fastcarry.keras.{type(self).__name__} {self.name!r}: use_cudnn=True: fastcarry's "
                          f"compiled loop runs instead of cuDNN's kernel (which XLA cannot compile), with the same "
                          f"results", UserWarning, stacklevel=3)
        self._fastcarry_cell = None

    def get_config(self):
        config = super().get_config()
        if hasattr(self, "use_cudnn"):  # Keras's LSTM/GRU leave it out; a saved model keeps what was asked
            config["use_cudnn"] = self.use_cudnn
        return config

    def _why_not_fused(self):
        # The layer applies the cell's input dropout itself (one mask for all steps, as Keras's cell does).
        return "; ".join(not_supported_reasons(self.cell, "fused", kind=self._kind, input_dropout=True)) or None

    def _cell_to_run(self):
        """The fastcarry cell that runs ``self.cell``, made on first use."""
        if self._fastcarry_cell is None:
            self._fastcarry_cell = self._make_cell()
        return self._fastcarry_cell

    def _make_cell(self):
        """The fastcarry cell that runs ``self.cell`` (its output is its state's first component)."""
        return KerasFusedCell(self.cell, self._kind)

    _output_is_state = True  # y_t == the state's first component (h), so the last output is the final h

    @property
    def fused(self):
        """Whether calls run fastcarry's fused loop (False: Keras's, see ``fallback_reason``)."""
        return self.fallback_reason is None

    def build(self, sequences_shape, initial_state_shape=None):
        super().build(sequences_shape, initial_state_shape)
        dim = sequences_shape[-1]
        if dim is not None:
            # A later call with another feature size gets Keras's own error naming the layer.
            self.input_spec = keras.layers.InputSpec(ndim=3, axes={-1: int(dim)})

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if not self.fused:
            return super().inner_loop(sequences, initial_state, mask, training=training)
        if tf.nest.is_nested(mask):
            mask = mask[0]
        x = sequences
        if not x.dtype.is_floating:
            # Keras's cells promote integer inputs in their first matmul (int64 @ float32 -> float32).
            x = tf.cast(x, self.compute_dtype)
        rate = getattr(self.cell, "dropout", 0.0)
        # (Keras's LSTM and GRU cells skip a rate of 1; its SimpleRNN cell does not.)
        if training and 0.0 < rate and (rate < 1.0 or self._kind == "simple_rnn"):
            # The cell's own mask (drawn once per call by RNN.call): what Keras multiplies every step by.
            x = x * tf.expand_dims(self.cell.get_dropout_mask(sequences[:, 0, :]), 1)
        if mask is not None:
            mask = tf.cast(mask, tf.bool)
        if self.go_backwards:
            x = tf.reverse(x, [1])
            mask = None if mask is None else tf.reverse(mask, [1])
        # Keras may nest the states otherwise than state_size does (a stack's GRUCell: [h] for 6): fastcarry
        # gets them in the cell's structure, Keras gets the final states back in its own.
        cell = self._cell_to_run()
        state = tf.nest.pack_sequence_as(cell.state_size, tf.nest.flatten(initial_state))
        # config="auto": a `fastcarry tune` result for this shape, if there is one (results are the same).
        # unroll=True (Keras: unroll the Python loop; T is static, Keras's call checked): all T steps in one
        # iteration of the compiled loop, a fully unrolled body.
        steps = x.shape[1] if self.unroll else None
        # training False (predict, evaluate, export): in a graph the forward saves nothing for a backward pass
        # (TFLite builtins convert it at any batch; a gradient asked for all the same recomputes).
        ys, final = _unroll(cell, x, state, mask=mask, config="auto", unroll=steps or None,
                            training=None if training else False)
        final = tf.nest.pack_sequence_as(list(initial_state), tf.nest.flatten(final))
        if not self._output_is_state:
            if mask is None or self.zero_output_for_mask:  # Keras's last output is then the last step's
                return ys[:, -1], ys, final
            return _last_real_output(ys, mask), (_hold_last_output(ys, mask) if self.return_sequences else ys), final
        h = final[0]
        if mask is None:
            return h, ys, final
        # With a mask the state is carried through masked steps, so the final h is
        # the last real step's output; Keras's last output is zeros if no step
        # was real, and with zero_output_for_mask also if the last step is masked.
        last_real = mask[:, -1] if self.zero_output_for_mask else tf.reduce_any(mask, axis=1)
        last = tf.where(last_real[:, None], h, tf.zeros_like(h))
        outputs = ys if self.zero_output_for_mask or not self.return_sequences else _hold_last_output(ys, mask)
        return last, outputs, final


@keras.saving.register_keras_serializable(package="fastcarry")
class LSTM(_FusedLoop, keras.layers.LSTM):
    """``keras.layers.LSTM`` run by fastcarry's fused loop; same arguments, weights and results.

    Weights: ``kernel [D, 4H]``, ``recurrent_kernel [H, 4H]``, ``bias [4H]``,
    gates i, f, c, o (Keras's layout, Keras's variables).
    """

    _kind = "lstm"

    def __init__(self, units: int, **kwargs: Any):
        super().__init__(units, **kwargs)
        self._init_fastcarry()


@keras.saving.register_keras_serializable(package="fastcarry")
class GRU(_FusedLoop, keras.layers.GRU):
    """``keras.layers.GRU`` run by fastcarry's fused loop; same arguments, weights and results.

    Weights: ``kernel [D, 3H]``, ``recurrent_kernel [H, 3H]``, ``bias`` ``[2, 3H]``
    with ``reset_after=True`` (the default) else ``[3H]``; gates z, r, h.
    """

    _kind = "gru"

    def __init__(self, units: int, **kwargs: Any):
        super().__init__(units, **kwargs)
        self._init_fastcarry()


@keras.saving.register_keras_serializable(package="fastcarry")
class SimpleRNN(_FusedLoop, keras.layers.SimpleRNN):
    """``keras.layers.SimpleRNN`` run by fastcarry's fused loop; same arguments, weights and results.

    Weights: ``kernel [D, H]``, ``recurrent_kernel [H, H]``, ``bias [H]``.
    """

    _kind = "simple_rnn"

    def __init__(self, units: int, **kwargs: Any):
        super().__init__(units, **kwargs)
        self._init_fastcarry()


@keras.saving.register_keras_serializable(package="fastcarry")
class RNN(_FusedLoop, keras.layers.RNN):
    """``keras.layers.RNN(cell)`` run by ``fastcarry.unroll``; same arguments and results.

    ``cell``: a Keras ``LSTMCell``/``GRUCell``/``SimpleRNNCell`` (fused, on its own
    variables, when ``fc.as_cell`` can fuse it), any other Keras RNN cell
    (``state_size`` and ``call(inputs, states)``; the generic path), a list
    of cells (Keras's ``StackedRNNCells``), or a fastcarry cell: ``fc.LSTM``/
    ``GRU``/``SimpleRNN``, ``fc.Stack``, ``fc.FunctionCell`` or any object of
    ``fastcarry.CellProtocol``. A cell with dropout runs Keras's loop. Trainable
    variables that are not Keras variables are an error at build (Keras 3
    would neither train nor save them).
    """

    def __init__(self, cell: Any, **kwargs: Any):
        if not isinstance(cell, (keras.layers.Layer, list, tuple)) and not missing_members(cell):
            cell = ProtocolLayer(cell)  # a fastcarry.CellProtocol object: Keras's RNN needs a layer
        super().__init__(cell, **kwargs)
        self._init_fastcarry()

    def build(self, sequences_shape, initial_state_shape=None):
        super().build(sequences_shape, initial_state_shape)
        if self.fused:
            untracked = untracked_variables(self._cell_to_run(), self)
            if untracked:
                raise TypeError(
                    f"fastcarry.keras.RNN {self.name!r}: the cell's trainable variables {untracked} are tf.Variables, "
                    f"which Keras 3 neither trains (fit) nor saves; create them as Keras variables (keras.Variable, "
                    f"or add_weight in a Keras layer), or run the cell with fc.unroll in your own training loop")

    def _why_not_fused(self):
        # fc.unroll calls every cell of the stack without dropout, fused or not.
        return "; ".join(r for c in _cells_of(self.cell) for r in not_supported_reasons(c, "generic")) or None

    def _make_cell(self):
        if isinstance(self.cell, keras.layers.StackedRNNCells):
            # Layer by layer, each cell fused where it can be: fc.Stack's semantics are StackedRNNCells'.
            return Stack([as_cell(c) for c in self.cell.cells])
        if isinstance(self.cell, ProtocolLayer):
            return self.cell.cell
        return as_cell(self.cell)

    @property
    def _output_is_state(self):
        return isinstance(self._fastcarry_cell, KerasFusedCell)
