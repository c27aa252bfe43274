"""The user-cell benchmark's four cells written on fastcarry's public fused protocol (``fc.RecurrentSplit``).

Each ``ProtocolCell`` reads the weights of one of ``user_cell_bench``'s Keras
cells (``cell_classes()``), so the two compute the same function of the same
variables: the Keras cell through ``keras.layers.RNN`` or fastcarry's generic
path, this one through the hand-written backward. How each fits the protocol:

- peephole LSTM: the LSTM's split, with the three peephole vectors as ``unit_params`` (``update`` reads them);
- minimal gated unit: a second recurrent matmul, ``(f * h) @ U_h``, as the reset-before GRU's;
- IndRNN: the recurrent "matmul" is the per-unit product ``u * h`` (linear in ``u`` and in ``h``);
- layer-normalised gated cell: ``update`` normalises each pre-activation over its row's units, with the gains
  and shifts as ``unit_params``.

Shapes: ``x [T, B, D]``, ``h``, ``c`` ``[B, H]``, ``y_t [B, H]``; each Keras cell's state is a list, and so is
this one's (``[h]``, or ``[h, c]`` for the peephole LSTM).
"""

import tensorflow as tf

import fastcarry as fc


def _peephole_lstm(h_units):
    def update(state, a, peepholes):  # peepholes [3, H]: input, forget, output gate
        h, c = state
        zi, zf, zc, zo = tf.split(a, 4, axis=-1)
        i = tf.sigmoid(zi + c * peepholes[0])
        f = tf.sigmoid(zf + c * peepholes[1])
        c = f * c + i * tf.tanh(zc)
        h = tf.sigmoid(zo + c * peepholes[2]) * tf.tanh(c)
        return [h, c], h

    return _projection(bias=True), _matmul_split(update, unit_params=lambda p: p["peepholes"])


def _minimal_gated_unit(h_units):
    def update(state, a):  # a = (forget pre-activation, candidate pre-activation), [B, H] each
        f = tf.sigmoid(a[0])
        h = (1.0 - f) * state[0] + f * tf.tanh(a[1])
        return [h], h

    second = fc.SecondMatmul(
        input=lambda state, a: tf.sigmoid(a[0]) * state[0],
        recurrent=lambda p, g: g @ p["recurrent_candidate"],
        combine=lambda a, rec: (a[0], a[1] + rec),
        recurrent_kernel=lambda p: p["recurrent_candidate"])
    split = fc.RecurrentSplit(
        recurrent_input=lambda state: state[0],
        recurrent=lambda p, h: h @ p["recurrent_forget"],
        combine=lambda xp, rec: (xp[..., :h_units] + rec, xp[..., h_units:]),
        update=update,
        second=second,
        recurrent_kernel=lambda p: p["recurrent_forget"])
    return _projection(bias=True), split


def _indrnn(h_units):
    def update(state, a):
        h = tf.nn.relu(a)
        return [h], h

    split = fc.RecurrentSplit(
        recurrent_input=lambda state: state[0],
        recurrent=lambda p, h: p["recurrent"] * h,  # per unit: no matmul, so no recurrent_kernel
        combine=lambda xp, rec: xp + rec,
        update=update)
    return _projection(bias=True), split


def _layer_norm_gated(h_units):
    def norm(z, gain, shift):  # over each row's units
        mean, variance = tf.nn.moments(z, axes=[-1], keepdims=True)
        return (z - mean) * tf.math.rsqrt(variance + 1e-5) * gain + shift

    def update(state, a, units):
        gain, shift = units  # [2, H] each: update gate, candidate
        zz, zc = tf.split(a, 2, axis=-1)
        gate = tf.sigmoid(norm(zz, gain[0], shift[0]))
        h = (1.0 - gate) * state[0] + gate * tf.tanh(norm(zc, gain[1], shift[1]))
        return [h], h

    return _projection(bias=False), _matmul_split(update, unit_params=lambda p: (p["gain"], p["shift"]))


def _matmul_split(update, unit_params):
    """The split of a cell whose pre-activation is ``x W (+ b) + h @ recurrent_kernel`` (``h`` the state's first
    component) and whose ``update`` reads ``unit_params``."""
    return fc.RecurrentSplit(
        recurrent_input=lambda state: state[0],
        recurrent=lambda p, h: h @ p["recurrent_kernel"],
        combine=lambda xp, rec: xp + rec,
        update=update,
        recurrent_kernel=lambda p: p["recurrent_kernel"],
        unit_params=unit_params)


def _projection(bias):
    def project(p, x):  # [T, B, D] -> [T, B, G]
        xp = tf.einsum("tbd,dg->tbg", x, p["kernel"])
        return xp + p["bias"] if bias else xp
    return project


KINDS = {"peephole_lstm": _peephole_lstm, "minimal_gated_unit": _minimal_gated_unit, "indrnn": _indrnn,
         "layer_norm_gated": _layer_norm_gated}


class ProtocolCell:
    """A cell of ``fc.CellProtocol`` whose math is ``kind``'s and whose weights are ``keras_cell``'s variables
    (``user_cell_bench.cell_classes()[kind]``, built): the same function as ``keras_cell``, on the fused path.

    ``params()`` reads the variables, so a tape around ``fc.unroll`` sends the
    gradients to them, as it does for the Keras cell.
    """

    def __init__(self, kind, keras_cell):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {tuple(KINDS)}, got {kind!r}")
        if not keras_cell.built:
            raise ValueError(f"build the {type(keras_cell).__name__} first: its variables are this cell's weights")
        self.kind, self.keras_cell = kind, keras_cell
        self.dtype = tf.float32
        self.output_size = keras_cell.units
        self.state_size = [keras_cell.units] * keras_cell.states
        self.input_dim = int(keras_cell.kernel.shape[0])

    def build(self, input_dim):
        if int(input_dim) != self.input_dim:
            raise ValueError(f"inputs have feature dim {input_dim}, expected {self.input_dim} (the Keras cell's)")

    def zero_state(self, batch_size, dtype=None):
        return [tf.zeros([batch_size, size], dtype or self.dtype) for size in self.state_size]

    @property
    def trainable_variables(self):
        return self.keras_cell.trainable_variables

    def params(self):
        """``{name: tensor}`` of the Keras cell's weights (read here, so the caller's tape sees the variables)."""
        return {w.path.split("/")[-1]: tf.convert_to_tensor(w) for w in self.keras_cell.weights}

    def core(self):
        project, split = KINDS[self.kind](self.output_size)
        return fc.Core(f"protocol_{self.kind}", (), project, self.output_size, split=split)

    def __repr__(self):
        return f"ProtocolCell({self.kind!r}, units={self.output_size})"
