"""The cell protocol: what ``fastcarry.unroll`` needs from a cell, public as ``fc.Core``, ``fc.RecurrentSplit``,
``fc.SecondMatmul`` and ``fc.CellProtocol``.

A *cell* is any object with these members (checked by name, not by class, as
Flax's ``RNNBase`` is a Protocol)::

    dtype          tf.DType of inputs, states and outputs
    state_size     the state's structure with an int H per ``[B, H]`` component
    output_size    int, the last dimension of each step's output ``y_t [B, output_size]``
    input_dim      int D once built, else None
    build(D)       creates the variables for inputs of feature size D (idempotent)
    zero_state(B, dtype)   the initial state when none is given
    core()         -> Core: the math, as pure functions of (params, state, inputs)
    params()       -> the weights as a structure of tensors (what ``Core``'s functions take as ``params``)

``fc.LSTM``, ``fc.GRU``, ``fc.SimpleRNN`` and ``fc.FunctionCell`` are cells;
``fc.as_cell`` wraps Keras and TF1 cells into one. A cell whose ``Core`` has a
``RecurrentSplit`` gets the hand-written backward (one ``drec @ Wᵀ`` per step,
weight gradients as large matmuls after the loop); without one, the backward
takes TF's VJP of ``step`` per step for the state, and the weight and input
gradients after the loop as one VJP over all ``T * B`` rows (so ``step`` must
treat batch rows independently, as every RNN step does).

Shapes: ``state`` a structure of ``[B, ..]``, ``x [T, B, D]``, ``xp_t [B, G]``, ``y_t [B, output_size]``.
"""

from typing import Any, Callable, Hashable, NamedTuple, Optional, Protocol, Union, runtime_checkable

import numpy as np
import tensorflow as tf

# What the public API takes where it takes a tensor: a tensor, a variable, a numpy array or nested lists.
TensorLike = Union[tf.Tensor, tf.Variable, np.ndarray, list, Any]


class SecondMatmul(NamedTuple):
    """A second recurrent matmul whose input needs the first one's result (reset-before GRU's ``(r * h) @ U_h``).

    input: ``(state, a) -> g [B, K]``, elementwise; it may read only the parts of
      ``a`` that ``combine`` leaves unchanged (GRU: ``r`` from ``a.zr``).
    recurrent: ``(params, g [N, K]) -> rec [N, G2]``, linear in params and g.
    combine: ``(a, rec) -> a``, linear in both; adds ``rec`` into ``a``.
    recurrent_kernel: optional ``params -> W [K, G2]`` with ``recurrent(params, g) == g @ W``
      (plus terms free of ``g``); lets the backward loop use a pre-transposed ``W``.
    """

    input: Callable
    recurrent: Callable
    combine: Callable
    recurrent_kernel: Optional[Callable] = None


class RecurrentSplit(NamedTuple):
    """A step split at its recurrent matmul, which is what the hand-written backward needs::

        a = combine(xp_t, recurrent(params, recurrent_input(state)))
        a = second.combine(a, second.recurrent(params, second.input(state, a)))   # only with a second matmul
        new_state, y_t = update(state, a)                 # update(state, a, unit_params(params)) with unit_params

    recurrent_input: ``state -> h [B, H]``.
    recurrent: ``(params, h [N, H]) -> rec [N, G1]``, linear in params and h (a matmul,
      or IndRNN's per-unit ``u * h``).
    combine: ``(xp [.., G], rec [.., G1]) -> a``, linear in both (LSTM: ``xp + rec``);
      ``a`` (a tensor or a NamedTuple of them) is what the forward pass saves per step.
    update: ``(state, a_t) -> (state, y_t)``, or ``(state, a_t, u) -> (state, y_t)`` with
      ``unit_params``; row-wise: no matmul, no mixing of batch rows (elementwise math,
      or a normalisation over a row's units).
    second: a ``SecondMatmul``, or None for cells with one recurrent matmul.
    recurrent_kernel: optional ``params -> W [H, G1]`` with ``recurrent(params, h) == h @ W``
      (plus terms free of ``h``, such as a recurrent bias); see ``SecondMatmul.recurrent_kernel``.
    unit_params: optional ``params -> u``, the weights ``update`` reads besides ``a``: a
      structure of tensors shared by all batch rows (``[H]`` peepholes, layer-norm gains).
      ``update`` gets them as its third argument. The backward adds up their gradient
      over the steps in its reverse loop, then takes it back through ``unit_params``
      once (which may be any differentiable function of ``params``).
    """

    recurrent_input: Callable
    recurrent: Callable
    combine: Callable
    update: Callable
    second: Optional[SecondMatmul] = None
    recurrent_kernel: Optional[Callable] = None
    unit_params: Optional[Callable] = None


class Core(NamedTuple):
    """A cell's math: pure functions of ``(params, state, inputs)``, and how to cache their compilation.

    name: a short identifier (``"lstm"``); names the trace scopes and compiled
      functions (``fastcarry_<name>_forward``) and picks the default ``unroll``.
    key: hashable, the configuration within ``name`` (``("keras", 1.0)``: layout,
      forget bias). Cores with equal ``(name, key)`` and ``output_size`` share
      compiled functions, so together they must determine every function below;
      giving two different cells the same pair is an error (caught when their
      functions' code differs).
    project: ``(params, x [T, B, D]) -> xp [T, B, G]``, the input projection of
      several steps at once (the identity for a cell that does its own).
    output_size: int, the last dimension of ``y_t``.
    step: ``(params, state, xp_t [B, G]) -> (state, y_t [B, output_size])``; may be
      None when ``split`` is given (the step is then the split's, written once).
    split: the same step as a ``RecurrentSplit``, or None (see the module docstring).
    variables: ``tf.Variable``\\ s the functions read by closure instead of through
      ``params`` (a Keras or TF1 cell's own weights); their gradients are taken by
      the backward and returned to the caller's tape like those of ``params``.
    owner: with ``variables``, the object they belong to: compiled functions are
      then kept on it (they live as long as it does), never shared by key.
    """

    name: str
    key: Hashable
    project: Callable
    output_size: int
    step: Optional[Callable] = None
    split: Optional[RecurrentSplit] = None
    variables: tuple = ()
    owner: object = None

    def run_step(self, params, state, xp_t):
        """One step, ``(state, y_t)``: ``step``, or the split's composition."""
        if self.step is not None:
            return self.step(params, state, xp_t)
        return run_update(self.split, params, state, preactivation(self.split, params, state, xp_t))


def run_update(split, params, state, a_t, units=None):
    """``split.update`` of ``(state, a_t)``, with ``units`` (default ``split.unit_params(params)``) where the split
    has unit parameters: ``(state, y_t)``."""
    if split.unit_params is None:
        return split.update(state, a_t)
    return split.update(state, a_t, split.unit_params(params) if units is None else units)


def preactivation(split, params, state, xp_t):
    """One step's ``a`` from ``state`` and ``xp_t [B, G]``: the recurrent matmul(s), no nonlinearity but the
    second matmul's input."""
    a = split.combine(xp_t, split.recurrent(params, split.recurrent_input(state)))
    if split.second is not None:
        second = split.second
        a = second.combine(a, second.recurrent(params, second.input(state, a)))
    return a


@runtime_checkable
class CellProtocol(Protocol):
    """The members ``fastcarry.unroll`` reads from a cell (see the module docstring); for type checkers."""

    dtype: tf.DType
    state_size: object
    output_size: int
    input_dim: Optional[int]

    def build(self, input_dim): ...

    def zero_state(self, batch_size, dtype=None): ...

    def core(self) -> Core: ...

    def params(self): ...


# What argument checking reads (a composition such as fc.Stack has these),
# then what one compiled loop needs besides.
SHAPE_MEMBERS = ("dtype", "state_size", "output_size", "input_dim", "build", "zero_state")
MEMBERS = SHAPE_MEMBERS + ("core", "params")


def missing_members(cell, members=MEMBERS):
    """The names of ``members`` (``CellProtocol``'s by default) that ``cell`` lacks."""
    return [name for name in members if not hasattr(cell, name)]


def check_core(core, owner_name):
    """``core`` (what ``owner_name.core()`` returned) checked, or a ``TypeError`` naming the bad field."""
    where = f"{owner_name}.core()"
    if not isinstance(core, Core):
        raise TypeError(f"{where} must return a fastcarry.Core, got {type(core).__name__}")
    if not isinstance(core.name, str) or not core.name.isidentifier():
        raise TypeError(f"{where}.name must be an identifier string such as 'lstm', got {core.name!r}")
    try:
        hash(core.key)
    except TypeError as err:
        raise TypeError(f"{where}.key must be hashable, got {core.key!r}") from err
    if isinstance(core.output_size, bool) or not isinstance(core.output_size, int) or core.output_size < 1:
        raise TypeError(f"{where}.output_size must be an int >= 1, got {core.output_size!r}")
    if core.step is None and core.split is None:
        raise TypeError(f"{where} has neither step nor split: give at least one")
    if core.split is not None:
        if not isinstance(core.split, RecurrentSplit):
            raise TypeError(f"{where}.split must be a fastcarry.RecurrentSplit, got {type(core.split).__name__}")
        second = core.split.second
        if not (second is None or isinstance(second, SecondMatmul)):
            raise TypeError(f"{where}.split.second must be None or a fastcarry.SecondMatmul, got "
                            f"{type(second).__name__}")
        for field, value in core.split._asdict().items():
            optional = field in ("recurrent_kernel", "unit_params")
            if field != "second" and not (callable(value) or (optional and value is None)):
                raise TypeError(f"{where}.split.{field} must be a function{' or None' if optional else ''}, "
                                f"got {type(value).__name__}")
    if core.variables and core.owner is None:
        raise TypeError(f"{where} has variables but no owner (compiled functions that close over variables "
                        f"are cached per owner)")
    return core


def attached(obj, name):
    """A dict kept in ``obj``'s own ``__dict__`` under ``name`` (made on first use).

    Caches of what belongs to one object live on it, so they go when it goes
    (reference cycles through it are collected); a global table keyed by the
    object would keep it alive through its own entries. Written into
    ``__dict__`` directly: a Keras layer's ``__setattr__`` would track it.
    """
    return vars(obj).setdefault(name, {})


def identity_project(params, x):
    """A generic cell projects its own inputs inside its step: ``xp_t = x_t``."""
    del params
    return x


def zeros_in(state_size, batch_size, dtype):
    """Zeros ``[batch_size, size]`` per component of ``state_size`` (ints or shapes), in its structure."""
    def zeros(size):
        shape = tf.TensorShape(size).as_list() if not isinstance(size, int) else [size]
        return tf.zeros(tf.concat([[batch_size], shape], 0), dtype)
    return tf.nest.map_structure(zeros, state_size)
