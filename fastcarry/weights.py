"""``fastcarry.weights``: every conversion between weight layouts, in one place: Keras 3's (fastcarry's own),
TF1's, PyTorch's.

Keras 3 (what fastcarry's cells hold): ``kernel [D, G]``, ``recurrent_kernel [H, G]``,
gates **i, f, c, o** (LSTM), **z, r, h** (GRU); ``bias [G]`` (GRU reset-after
``[2, G]``: input, recurrent). TF1 ``BasicLSTMCell``: one ``kernel [D + H, 4H]``,
rows ``[x; h]``, gates **i, j, f, o**, and a run-time ``forget_bias``. TF1
``GRUCell``: ``gates [D + H, 2H]`` (**r, u**) and ``candidate [D + H, H]``.
PyTorch: ``weight_ih [G, D]``, ``weight_hh [G, H]``, two biases, gates
**i, f, g, o** (LSTM) and **r, z, n** (GRU, reset after the recurrent matmul).

All functions take and return numpy arrays (or what ``np.asarray`` reads). The cells' importers
(``fc.LSTM.from_tf1``, ``from_keras``, ...) use them; so can a user moving weights between frameworks.
"""

import warnings

import numpy as np

from fastcarry._support import not_supported_reasons

__all__ = ["fold_forget_bias", "from_tf1_gru", "from_tf1_lstm", "from_tf1_simple_rnn", "keras_cell", "keras_weights",
           "to_torch"]


def as_array(value, name):
    """``value`` (an array, variable or eager tensor) as numpy, or a ``TypeError`` naming ``name``."""
    try:
        return np.asarray(value.numpy() if hasattr(value, "numpy") else value)
    except Exception as err:  # a symbolic tensor, say: say which argument
        raise TypeError(f"{name} must be a concrete array, variable or eager tensor, "
                        f"got {type(value).__name__}") from err


def check_shape(value, want, name):
    if tuple(value.shape) != tuple(want):
        raise ValueError(f"{name} has shape {list(value.shape)}, expected {list(want)}")


def _split_rows(kernel, units, name, columns):
    """``[D + H, G]`` -> ``([D, G], [H, G])`` (TF1's ``[x; h]`` rows); ``columns`` names G in errors (``"4H"``)."""
    if kernel.ndim != 2 or kernel.shape[0] <= units:
        raise ValueError(f"{name} must be [D + H, {columns}] with D >= 1, got shape {list(kernel.shape)} (H={units})")
    d = kernel.shape[0] - units
    return kernel[:d], kernel[d:]


# -- Keras -------------------------------------------------------------------------------------------------------

def keras_cell(layer_or_cell, kind, importer):
    """The built Keras (3 or ``tf_keras``) cell of ``kind`` inside ``layer_or_cell``, checked for ``importer``."""
    want = {"lstm": "LSTMCell", "gru": "GRUCell", "simple_rnn": "SimpleRNNCell"}[kind]
    cell = getattr(layer_or_cell, "cell", layer_or_cell)
    if type(cell).__name__ != want:
        raise TypeError(f"{importer} expects a keras {want[:-4]} layer or {want}, got {type(layer_or_cell).__name__}")
    if not getattr(cell, "built", False) or getattr(cell, "kernel", None) is None:
        raise ValueError(f"{importer}: the keras {type(cell).__name__} is not built; call it once or build() it first")
    reasons = not_supported_reasons(cell, "weights", kind=kind)
    if reasons:
        raise ValueError(f"{importer}: {'; '.join(reasons)}")
    for knob in ("dropout", "recurrent_dropout"):
        if getattr(cell, knob, 0.0):
            warnings.warn(f"{importer}: the keras cell has {knob}={getattr(cell, knob)}; fastcarry imports the "
                          "weights only and applies no dropout", stacklevel=3)
    return cell


def keras_weights(cell, bias_shape):
    """``[kernel, recurrent_kernel, bias]`` of a built Keras cell (zeros ``bias_shape`` without a bias)."""
    kernel, recurrent = as_array(cell.kernel, "kernel"), as_array(cell.recurrent_kernel, "recurrent_kernel")
    bias = as_array(cell.bias, "bias") if getattr(cell, "use_bias", True) else np.zeros(bias_shape, kernel.dtype)
    return [kernel, recurrent, bias]


def fold_forget_bias(bias, units, forget_bias):
    """An LSTM ``bias [4H]`` with a run-time ``forget_bias`` added into its f slice (Keras has none)."""
    bias = np.array(bias, copy=True)
    bias[units:2 * units] += forget_bias
    return bias


# -- TF1 ---------------------------------------------------------------------------------------------------------

def from_tf1_lstm(kernel, bias):
    """``BasicLSTMCell``'s ``kernel [D + H, 4H]`` (i, j, f, o) and ``bias [4H]`` -> Keras ``[kernel, recurrent,
    bias]`` (i, f, c, o). The run-time forget bias stays apart (``fc.LSTM(forget_bias=...)``)."""
    kernel, bias = as_array(kernel, "kernel"), as_array(bias, "bias")
    if kernel.ndim != 2 or kernel.shape[1] % 4:
        raise ValueError(f"kernel must be [D + H, 4H], got shape {list(kernel.shape)}")
    units = kernel.shape[1] // 4
    x_rows, h_rows = _split_rows(kernel, units, "kernel", "4H")
    check_shape(bias, [4 * units], "bias")

    def keras_order(w):  # i, j, f, o -> i, f, c(=j), o
        i, j, f, o = np.split(w, 4, axis=-1)
        return np.concatenate([i, f, j, o], axis=-1)

    return [keras_order(x_rows), keras_order(h_rows), keras_order(bias)]


def from_tf1_gru(gate_kernel, gate_bias, candidate_kernel, candidate_bias):
    """``GRUCell``'s gates (r, u) and candidate -> a reset-before Keras ``[kernel, recurrent, bias [3H]]`` (z, r, h)."""
    gk, gb = as_array(gate_kernel, "gate_kernel"), as_array(gate_bias, "gate_bias")
    ck, cb = as_array(candidate_kernel, "candidate_kernel"), as_array(candidate_bias, "candidate_bias")
    if ck.ndim != 2:
        raise ValueError(f"candidate_kernel must be [D + H, H], got shape {list(ck.shape)}")
    units = ck.shape[1]
    _split_rows(ck, units, "candidate_kernel", "H")
    check_shape(gk, [ck.shape[0], 2 * units], "gate_kernel")
    check_shape(gb, [2 * units], "gate_bias")
    check_shape(cb, [units], "candidate_bias")
    r_k, u_k = np.split(gk, 2, axis=1)
    r_b, u_b = np.split(gb, 2)
    x_rows, h_rows = _split_rows(np.concatenate([u_k, r_k, ck], axis=1), units, "candidate_kernel", "H")
    return [x_rows, h_rows, np.concatenate([u_b, r_b, cb])]


def from_tf1_simple_rnn(kernel, bias):
    """``BasicRNNCell``'s ``kernel [D + H, H]`` and ``bias [H]`` -> Keras ``[kernel, recurrent, bias]``."""
    kernel, bias = as_array(kernel, "kernel"), as_array(bias, "bias")
    if kernel.ndim != 2:
        raise ValueError(f"kernel must be [D + H, H] with D >= 1, got shape {list(kernel.shape)}")
    units = kernel.shape[1]
    x_rows, h_rows = _split_rows(kernel, units, "kernel", "H")
    check_shape(bias, [units], "bias")
    return [x_rows, h_rows, bias]


# -- PyTorch (the benchmarks' contender) ----------------------------------------------------------------------------

def to_torch(kind, weights, forget_bias=0.0):
    """Keras ``[kernel, recurrent, bias]`` of ``kind`` (``"lstm"``, ``"gru"`` reset-after, ``"simple_rnn"``) as
    ``{"weight_ih_l0": [G, D], "weight_hh_l0": [G, H], "bias_ih_l0": [G], "bias_hh_l0": [G]}`` for PyTorch's
    ``nn.LSTM``/``nn.GRU``/``nn.RNN``, float32, contiguous."""
    kernel, recurrent, bias = (np.asarray(w) for w in weights)
    units = recurrent.shape[0]
    if kind == "lstm":
        bias_ih, bias_hh = fold_forget_bias(bias, units, forget_bias), np.zeros_like(bias)
    elif kind == "gru":
        order = np.r_[units:2 * units, 0:units, 2 * units:3 * units]  # z, r, h -> r, z, n
        kernel, recurrent, bias_ih, bias_hh = kernel[:, order], recurrent[:, order], bias[0][order], bias[1][order]
    elif kind == "simple_rnn":
        bias_ih, bias_hh = bias, np.zeros_like(bias)
    else:
        raise ValueError(f"kind must be 'lstm', 'gru' or 'simple_rnn', got {kind!r}")
    return {name: np.ascontiguousarray(value, np.float32)
            for name, value in (("weight_ih_l0", kernel.T), ("weight_hh_l0", recurrent.T), ("bias_ih_l0", bias_ih),
                                ("bias_hh_l0", bias_hh))}
