"""A Keras ``LSTMCell``/``GRUCell``/``SimpleRNNCell`` run by fastcarry's fused kernel on the layer's own variables.

Made by ``fc.as_cell`` when ``not_supported_reasons(cell, "fused")`` is empty,
and by ``fastcarry.keras``'s layers. The state is Keras's: a list, ``[h, c]``
for LSTM, ``[h]`` otherwise; the kernels' math is fastcarry's cells' (same
``Core`` name, so the same tuned schedule).

Shapes: ``x_t [B, D]``, each state component ``[B, H]``, ``y_t [B, H]``.
"""

import tensorflow as tf

from fastcarry._cells import gru_core, lstm_core, simple_rnn_core
from fastcarry._protocol import zeros_in
from fastcarry._support import activation_name
from fastcarry.kernels._params import Params
from fastcarry.kernels.lstm import LSTMState
from fastcarry.tune_cache import LIST_STATE_KEY


def _list_state(core, to_core, from_core):
    """``core``'s math on Keras's list states: ``to_core(list) -> core state``, ``from_core(core state) -> list``."""
    split = core.split

    def recurrent_input(state):
        return split.recurrent_input(to_core(state))

    def update(state, a, *units):  # units: a split's unit_params, where it has them
        new, y = split.update(to_core(state), a, *units)
        return from_core(new), y

    second = split.second
    if second is not None:
        second = second._replace(input=lambda state, a: split.second.input(to_core(state), a))
    return core._replace(key=(LIST_STATE_KEY,) + tuple(core.key),
                         split=split._replace(recurrent_input=recurrent_input, update=update, second=second))


class KerasFusedCell:
    """A Keras ``LSTMCell``/``GRUCell``/``SimpleRNNCell`` run by the fused kernel on the layer's own variables.

    Made by ``fc.as_cell``. ``params()`` reads the layer's ``kernel``,
    ``recurrent_kernel`` and ``bias`` (cast to its compute dtype), so the
    caller's tape sends their gradients to those variables; nothing is copied.
    The state is Keras's: ``[h, c]`` for LSTM, ``[h]`` otherwise.
    """

    def __init__(self, layer, kind):
        self.layer = layer
        self.kind = kind
        self.units = int(layer.units)
        self.dtype = tf.as_dtype(getattr(layer, "compute_dtype", None) or layer.dtype)
        self.state_size = [self.units, self.units] if kind == "lstm" else [self.units]
        self.output_size = self.units
        self.input_dim = None

    @property
    def trainable_variables(self):
        """The layer's (its own variables, which the fused kernel reads)."""
        return list(self.layer.trainable_variables)

    def build(self, input_dim):
        layer = self.layer
        if not layer.built:
            with tf.init_scope():
                layer.build((None, int(input_dim)))
        got = int(layer.kernel.shape[0])
        if got != input_dim:
            raise ValueError(f"inputs have feature dim {input_dim}, expected {got} (the keras "
                             f"{type(layer).__name__} was built for {got})")
        self.input_dim = got

    def zero_state(self, batch_size, dtype=None):
        return zeros_in(self.state_size, batch_size, self.dtype if dtype is None else dtype)

    def core(self):
        layer = self.layer
        if self.kind == "lstm":
            core = lstm_core(self.units, 0.0)
            return _list_state(core, lambda s: LSTMState(*s), lambda s: [s.h, s.c])
        if self.kind == "gru":
            core = gru_core(self.units, bool(layer.reset_after))
        else:
            core = simple_rnn_core(self.units, activation_name(layer.activation))
        return _list_state(core, lambda s: s[0], lambda s: [s])

    def params(self):
        layer = self.layer
        kernel, recurrent = layer.kernel, layer.recurrent_kernel
        if getattr(layer, "use_bias", True):
            bias = tf.convert_to_tensor(layer.bias)
        else:
            shape = [2, 3 * self.units] if self.kind == "gru" and layer.reset_after else [kernel.shape[-1]]
            bias = tf.zeros(shape, self.dtype)
        return Params(*(tf.cast(tf.convert_to_tensor(w), self.dtype) for w in (kernel, recurrent, bias)))

    def __repr__(self):
        return f"fc.as_cell({type(self.layer).__name__}, fused=True)"
