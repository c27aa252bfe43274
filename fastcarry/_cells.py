"""The cells: weights (Keras 3 layers and ``tf.Module`` objects, Keras 3's weight layout) plus a ``Core``.

A cell holds no loop and no math of its own: its math is in ``fastcarry.kernels``
and its loop in ``fastcarry._loop``. It owns variables named ``kernel``,
``recurrent_kernel`` and ``bias``, created by ``build(input_dim)`` or on first use.
"""

import functools
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf

from fastcarry import weights as _weights
from fastcarry._layer import CellLayer, concrete_variables, input_dim_of, tf_variable
from fastcarry._protocol import Core, RecurrentSplit, SecondMatmul
from fastcarry._support import activation_name
from fastcarry.kernels import gru as _gru
from fastcarry.kernels import lstm as _lstm
from fastcarry.kernels import simple_rnn as _simple_rnn
from fastcarry.kernels._params import Params
from fastcarry.kernels.lstm import LSTMState
from fastcarry.kernels.simple_rnn import ACTIVATIONS
from fastcarry.weights import as_array, check_shape

_FLOAT_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)
_WEIGHTS = ("kernel", "recurrent_kernel", "bias")


class Cell(CellLayer):
    """Base of fastcarry's cells: a Keras 3 layer and a ``tf.Module`` (``fastcarry._layer``).

    It follows ``fastcarry.CellProtocol``. Subclasses define
    ``_weight_shapes(input_dim)``, ``_initial_values`` and ``core()``, and end
    their ``__init__`` with ``self._build_now(input_size)``.
    Variables are created at construction when ``input_size`` (D) is given, else
    by ``build(D)`` or on first use (by ``fastcarry.unroll``). ``kernel``,
    ``recurrent_kernel`` and ``bias`` are ``tf.Variable`` objects (what
    ``trainable_variables`` lists and ``tf.train.Checkpoint(cell=cell)`` saves),
    the same storage as the Keras variables in ``trainable_weights`` (what a
    ``keras.Model`` holding the cell trains and saves).

    Reading ``variables`` or ``trainable_variables`` of a cell that has none yet
    warns (once per cell): a training loop that collects its parameters before
    the first call would otherwise hold an empty list and never train the cell.
    """

    def __init__(self, units: int, *, dtype: tf.DType | str = tf.float32, seed: int | None = None,
                 name: str | None = None):
        if isinstance(units, bool) or not isinstance(units, (int, np.integer)):
            raise TypeError(f"units must be a positive int, got {units!r}")
        if units < 1:
            raise ValueError(f"units must be a positive int, got {units!r}")
        dtype = tf.as_dtype(dtype)
        if dtype not in _FLOAT_DTYPES:
            raise TypeError(f"dtype must be a floating dtype {[d.name for d in _FLOAT_DTYPES]}, got {dtype.name}")
        super().__init__(dtype=dtype, name=name)
        self.units = int(units)
        self.seed = seed
        self.input_dim = None
        self.kernel = self.recurrent_kernel = self.bias = None

    def _build_now(self, input_size):
        """Builds the cell for ``input_size`` features unless it is None (the end of every ``__init__``)."""
        if input_size is not None:
            self.build(input_size, name="input_size")

    def _build_hint(self):
        return (f"Make it with the input size, fc.{type(self).__name__}({self.units}, input_size=D), "
                f"or call cell.build(D) first")

    def get_config(self) -> dict:
        """The constructor's arguments (Keras serialization: ``.keras`` files, ``keras.layers.RNN(cell)``)."""
        return {"units": self.units, "input_size": self.input_dim, "dtype": self.dtype.name, "name": self.name,
                **self._config()}

    # -- the RNNCell contract -------------------------------------------------
    @property
    def state_size(self):
        """``H`` (``LSTMState(h=H, c=H)`` for LSTM)."""
        return self.units

    @property
    def output_size(self):
        """``H``."""
        return self.units

    def zero_state(self, batch_size: Any, dtype: tf.DType | str | None = None) -> Any:
        """Zeros in the state's structure, each ``[batch_size, H]``."""
        dtype = self.dtype if dtype is None else tf.as_dtype(dtype)
        return tf.nest.map_structure(lambda size: tf.zeros(tf.stack([batch_size, size]), dtype), self.state_size)

    def build(self, input_dim: Any, *, name: str = "input_dim") -> None:
        """Creates the variables for inputs of feature size ``input_dim`` (D, or a shape ``(B, D)`` as Keras
        passes it); ``name`` is the argument errors name."""
        input_dim = input_dim_of(input_dim, name)
        if isinstance(input_dim, bool) or not isinstance(input_dim, (int, np.integer)) or input_dim < 1:
            raise ValueError(f"{name} must be a positive int, got {input_dim!r}")
        if self.built:
            if input_dim != self.input_dim:
                raise ValueError(
                    f"inputs have feature dim {input_dim}, expected {self.input_dim} "
                    f"(the cell {self.name!r} was built for input_dim={self.input_dim})")
            return
        # init_scope: values and variables are made eagerly even when the first
        # use is inside a tf.function (a traced initial value could not escape it).
        with tf.init_scope(), concrete_variables():
            values = self._initial_values(int(input_dim))
            for value, weight in zip(values, _WEIGHTS):
                variable = self.add_weight(shape=tuple(value.shape), dtype=self.dtype.name, name=weight,
                                           initializer=lambda shape, dtype, value=value: value)
                # The attribute is the tf.Variable behind the Keras variable (one storage; see _layer).
                setattr(self, weight, tf_variable(variable, weight))
        self.input_dim = int(input_dim)

    def get_weights(self) -> list[np.ndarray]:
        """``[kernel, recurrent_kernel, bias]`` as numpy arrays (Keras order and layout)."""
        self._require_built("get_weights")
        return [v.numpy() for v in (self.kernel, self.recurrent_kernel, self.bias)]

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Assigns ``[kernel, recurrent_kernel, bias]`` in Keras layout; builds the cell if needed."""
        if not isinstance(weights, (list, tuple)) or len(weights) != 3:
            raise ValueError(f"weights must be [kernel, recurrent_kernel, bias], got {type(weights).__name__} "
                             f"of length {len(weights) if hasattr(weights, '__len__') else '?'}")
        kernel, recurrent, bias = (as_array(w, n) for w, n in zip(weights, ("kernel", "recurrent_kernel", "bias")))
        if kernel.ndim != 2:
            raise ValueError(f"kernel must have rank 2 ([D, G]), got shape {list(kernel.shape)}")
        shapes = self._weight_shapes(kernel.shape[0])
        for value, want, name in zip((kernel, recurrent, bias), shapes, ("kernel", "recurrent_kernel", "bias")):
            check_shape(value, want, name)
        self.build(int(kernel.shape[0]))
        for var, value in zip((self.kernel, self.recurrent_kernel, self.bias), (kernel, recurrent, bias)):
            var.assign(tf.cast(value, self.dtype))

    def copy(self, *, dtype: tf.DType | str | None = None, name: str | None = None) -> "Cell":
        """A new cell of the same configuration with a copy of the weights, cast to ``dtype``.

        For example ``cell.copy(dtype=tf.float64)`` to hold a float32 cell against
        the float64 reference.
        """
        new = type(self)(self.units, dtype=self.dtype if dtype is None else dtype, name=name, **self._config())
        if self.built:
            new.set_weights([tf.cast(v, new.dtype) for v in (self.kernel, self.recurrent_kernel, self.bias)])
        return new

    def _config(self):
        """Constructor arguments beyond ``units``, ``dtype`` and ``name``."""
        return {"seed": self.seed}

    # -- what the loop uses (fastcarry.CellProtocol) ------------------------------
    def params(self):
        """The weights as tensors, in the kernel's ``Params`` NamedTuple (what ``core()``'s functions take)."""
        return Params(*(tf.convert_to_tensor(v) for v in (self.kernel, self.recurrent_kernel, self.bias)))

    def _require_built(self, what):
        if not self.built:
            raise ValueError(f"{what} needs a built cell: call cell.build(input_dim) or run it once first")

    def _initial_values(self, input_dim):
        kernel_shape, recurrent_shape, bias_shape = self._weight_shapes(input_dim)
        # Drawn in float32 at least: the orthogonal initializer's QR has no bfloat16 kernel.
        dtype = tf.float64 if self.dtype == tf.float64 else tf.float32
        kernel = tf.keras.initializers.GlorotUniform(self.seed)(kernel_shape, dtype)
        recurrent = tf.keras.initializers.Orthogonal(seed=self.seed)(recurrent_shape, dtype)
        return tf.cast(kernel, self.dtype), tf.cast(recurrent, self.dtype), self._initial_bias(bias_shape)

    def _initial_bias(self, shape):
        return tf.zeros(shape, self.dtype)

    def __repr__(self):
        return f"{type(self).__name__}(units={self.units}, dtype={self.dtype.name}, input_dim={self.input_dim})"


# -- the fused cores, one per cell kind (also run on Keras cells' variables: fastcarry._generic) ---------------

def lstm_core(units, forget_bias):
    """``fastcarry.kernels.lstm`` as a ``Core``: Keras layout, ``forget_bias`` added to f at run time."""
    split = RecurrentSplit(_lstm.recurrent_input, _lstm.recurrent, _lstm.combine, _lstm.update,
                           recurrent_kernel=_lstm.recurrent_kernel)
    return Core("lstm", ("keras", float(forget_bias)), functools.partial(_lstm.project, forget_bias=forget_bias),
                units, split=split)


def gru_core(units, reset_after):
    """``fastcarry.kernels.gru`` as a ``Core``, reset-after (one recurrent matmul) or reset-before (two)."""
    project = functools.partial(_gru.project, reset_after=reset_after)
    if not reset_after:
        # Two dependent recurrent matmuls per step: the candidate's is the split's second one.
        second = SecondMatmul(_gru.reset_state, _gru.recurrent_candidate, _gru.add_candidate,
                              _gru.recurrent_kernel_h)
        split = RecurrentSplit(_gru.recurrent_input, _gru.recurrent_reset_before, _gru.combine_reset_before,
                               _gru.update_reset_before, second, recurrent_kernel=_gru.recurrent_kernel_zr)
        return Core("gru", ("reset_before",), project, units, split=split)
    split = RecurrentSplit(_gru.recurrent_input, _gru.recurrent_reset_after, _gru.combine_reset_after,
                           _gru.update_reset_after, recurrent_kernel=_gru.recurrent_kernel)
    return Core("gru", ("reset_after",), project, units, split=split)


def simple_rnn_core(units, activation):
    """``fastcarry.kernels.simple_rnn`` as a ``Core``; ``activation`` a name in ``ACTIVATIONS``."""
    update = functools.partial(_simple_rnn.update, activation=ACTIVATIONS[activation])
    split = RecurrentSplit(_simple_rnn.recurrent_input, _simple_rnn.recurrent, _simple_rnn.combine, update,
                           recurrent_kernel=_simple_rnn.recurrent_kernel)
    return Core("simple_rnn", (activation,), _simple_rnn.project, units, split=split)


@keras.saving.register_keras_serializable(package="fastcarry.cells")
class LSTM(Cell):
    """LSTM cell, Keras 3 layout: gates **i, f, c, o**.

    Weights: ``kernel [D, 4H]``, ``recurrent_kernel [H, 4H]``, ``bias [4H]``.
    State: ``LSTMState(h [B, H], c [B, H])``; output ``h``. ``forget_bias`` is a
    constant added to the forget gate's pre-activation at run time (TF1's
    ``BasicLSTMCell`` uses 1.0; Keras uses 0.0 and initialises the f bias to 1
    instead, as this cell does).

    ``fc.LSTM(H, input_size=D)`` creates the variables at once (so
    ``trainable_variables`` can be collected before the first call); without
    ``input_size`` they are made by ``build(D)`` or on first use.
    """


    def __init__(self, units: int, *, input_size: int | None = None, forget_bias: float = 0.0,
                 dtype: tf.DType | str = tf.float32, seed: int | None = None, name: str | None = None):
        super().__init__(units, dtype=dtype, seed=seed, name=name)
        if isinstance(forget_bias, bool) or not isinstance(forget_bias, (int, float, np.floating, np.integer)):
            raise TypeError(f"forget_bias must be a number, got {forget_bias!r}")
        self.forget_bias = float(forget_bias)
        self._build_now(input_size)

    @property
    def state_size(self):
        return LSTMState(self.units, self.units)

    def _config(self):
        return {"seed": self.seed, "forget_bias": self.forget_bias}

    def _weight_shapes(self, input_dim):
        return [input_dim, 4 * self.units], [self.units, 4 * self.units], [4 * self.units]

    def _initial_bias(self, shape):
        # Keras' unit_forget_bias=True.
        h = self.units
        return tf.concat([tf.zeros([h], self.dtype), tf.ones([h], self.dtype), tf.zeros([2 * h], self.dtype)], 0)

    def core(self):
        """The fused LSTM math (``fastcarry.kernels.lstm``) as a ``Core`` with a ``RecurrentSplit``."""
        return lstm_core(self.units, self.forget_bias)

    @classmethod
    def from_keras(cls, layer_or_cell: Any, *, name: str | None = None) -> "Cell":
        """A new LSTM holding a copy of a built ``keras.layers.LSTM``'s (or ``LSTMCell``'s) weights."""
        cell = _weights.keras_cell(layer_or_cell, "lstm", "LSTM.from_keras")
        new = cls(cell.units, dtype=cell.kernel.dtype, name=name)
        new.set_weights(_weights.keras_weights(cell, [4 * cell.units]))
        return new

    @classmethod
    def from_tf1(cls, kernel: Any, bias: Any, forget_bias: float = 1.0, *, name: str | None = None) -> "LSTM":
        """A new LSTM from TF1 ``BasicLSTMCell`` variables.

        Args:
          kernel: ``[D + H, 4H]``, rows ``[x; h]``, gate columns **i, j, f, o**.
          bias: ``[4H]``, same gate order.
          forget_bias: the cell's run-time forget bias (``BasicLSTMCell`` default 1.0).
        """
        weights = _weights.from_tf1_lstm(kernel, bias)
        new = cls(weights[1].shape[0], forget_bias=forget_bias, dtype=weights[0].dtype, name=name)
        new.set_weights(weights)
        return new


@keras.saving.register_keras_serializable(package="fastcarry.cells")
class GRU(Cell):
    """GRU cell, Keras 3 layout: gates **z, r, h**.

    Weights: ``kernel [D, 3H]``, ``recurrent_kernel [H, 3H]``, and ``bias [2, 3H]``
    (input bias, recurrent bias) with ``reset_after=True`` (Keras' default, the
    cuDNN form: the reset gate multiplies ``h @ U_h + b``) or ``bias [3H]`` with
    ``reset_after=False`` (TF1 ``GRUCell``: the reset gate multiplies ``h`` before
    ``U_h``). State and output: ``h [B, H]``. ``input_size=D`` creates the
    variables at once (else ``build(D)`` or first use).
    """


    def __init__(self, units: int, *, input_size: int | None = None, reset_after: bool = True,
                 dtype: tf.DType | str = tf.float32, seed: int | None = None, name: str | None = None):
        super().__init__(units, dtype=dtype, seed=seed, name=name)
        if not isinstance(reset_after, bool):
            raise TypeError(f"reset_after must be a bool, got {reset_after!r}")
        self.reset_after = reset_after
        self._build_now(input_size)

    def _config(self):
        return {"seed": self.seed, "reset_after": self.reset_after}

    def _weight_shapes(self, input_dim):
        bias = [2, 3 * self.units] if self.reset_after else [3 * self.units]
        return [input_dim, 3 * self.units], [self.units, 3 * self.units], bias

    def core(self):
        """The fused GRU math (``fastcarry.kernels.gru``) as a ``Core`` with a ``RecurrentSplit``."""
        return gru_core(self.units, self.reset_after)

    @classmethod
    def from_keras(cls, layer_or_cell: Any, *, name: str | None = None) -> "Cell":
        """A new GRU holding a copy of a built ``keras.layers.GRU``'s (or ``GRUCell``'s) weights."""
        cell = _weights.keras_cell(layer_or_cell, "gru", "GRU.from_keras")
        new = cls(cell.units, reset_after=bool(cell.reset_after), dtype=cell.kernel.dtype, name=name)
        new.set_weights(_weights.keras_weights(cell, new._weight_shapes(1)[2]))
        return new

    @classmethod
    def from_tf1(cls, gate_kernel: Any, gate_bias: Any, candidate_kernel: Any, candidate_bias: Any, *,
                 name: str | None = None) -> "GRU":
        """A new reset-before GRU from TF1 ``GRUCell`` variables.

        Args:
          gate_kernel: ``[D + H, 2H]``, rows ``[x; h]``, columns **r, u** (u is Keras' z).
          gate_bias: ``[2H]``.
          candidate_kernel: ``[D + H, H]``, applied to ``[x; r * h]``.
          candidate_bias: ``[H]``.
        """
        weights = _weights.from_tf1_gru(gate_kernel, gate_bias, candidate_kernel, candidate_bias)
        new = cls(weights[1].shape[0], reset_after=False, dtype=weights[0].dtype, name=name)
        new.set_weights(weights)
        return new


@keras.saving.register_keras_serializable(package="fastcarry.cells")
class SimpleRNN(Cell):
    """SimpleRNN cell, Keras 3 layout: ``h' = activation(x @ kernel + bias + h @ recurrent_kernel)``.

    Weights: ``kernel [D, H]``, ``recurrent_kernel [H, H]``, ``bias [H]``. State and
    output: ``h [B, H]``. ``activation`` is one of ``"tanh"``, ``"relu"``,
    ``"sigmoid"``, ``"linear"``. ``input_size=D`` creates the variables at once
    (else ``build(D)`` or first use).
    """


    def __init__(self, units: int, *, input_size: int | None = None, activation: str = "tanh",
                 dtype: tf.DType | str = tf.float32, seed: int | None = None, name: str | None = None):
        super().__init__(units, dtype=dtype, seed=seed, name=name)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.activation = activation
        self._build_now(input_size)

    def _config(self):
        return {"seed": self.seed, "activation": self.activation}

    def _weight_shapes(self, input_dim):
        return [input_dim, self.units], [self.units, self.units], [self.units]

    def core(self):
        """The fused SimpleRNN math (``fastcarry.kernels.simple_rnn``) as a ``Core`` with a ``RecurrentSplit``."""
        return simple_rnn_core(self.units, self.activation)

    @classmethod
    def from_keras(cls, layer_or_cell: Any, *, name: str | None = None) -> "Cell":
        """A new SimpleRNN holding a copy of a built ``keras.layers.SimpleRNN``'s (or cell's) weights."""
        cell = _weights.keras_cell(layer_or_cell, "simple_rnn", "SimpleRNN.from_keras")
        new = cls(cell.units, activation=activation_name(cell.activation), dtype=cell.kernel.dtype, name=name)
        new.set_weights(_weights.keras_weights(cell, [cell.units]))
        return new

    @classmethod
    def from_tf1(cls, kernel: Any, bias: Any, *, activation: str = "tanh", name: str | None = None) -> "SimpleRNN":
        """A new SimpleRNN from TF1 ``BasicRNNCell`` variables: ``kernel [D + H, H]``, ``bias [H]``."""
        weights = _weights.from_tf1_simple_rnn(kernel, bias)
        new = cls(weights[1].shape[0], activation=activation, dtype=weights[0].dtype, name=name)
        new.set_weights(weights)
        return new
