"""Cells fastcarry did not write, as cells of ``fastcarry.CellProtocol``: ``fc.as_cell`` and ``fc.FunctionCell``.

Three contracts are accepted:

- **Keras** (Keras 3 or ``tf_keras`` layers): ``state_size`` (an int or a list
  of them) and ``call(inputs, states) -> (output, new_states)``, states a list
  (``keras.layers.LSTMCell``, ``GRUCell``, ``SimpleRNNCell``, any user layer).
- **TF1** ``RNNCell`` (``tf_keras``'s ``legacy_cells``: ``BasicLSTMCell``,
  ``GRUCell``, ``BasicRNNCell``, ``MultiRNNCell``, any subclass): also
  ``zero_state(batch_size, dtype)``; the state is the cell's own structure
  (``LSTMStateTuple``, tuples of them).
- **A step function**: ``fc.FunctionCell(step, state_size, output_size, variables)``.

Such a cell runs on the *generic* path: ``unroll``'s loops call its step as it
is, and the backward is TF's VJP of that step (see ``fastcarry._backward``).
A Keras ``LSTMCell``/``GRUCell``/``SimpleRNNCell`` the fused kernels can run
(``fastcarry._support.not_supported_reasons``) runs on the *fused* path instead,
the fused kernel reading the layer's own variables (no copy,
``fastcarry._keras_fused``); ``fc.as_cell(cell, fused=False)`` keeps it generic.

Shapes: ``x_t [B, D]``, each state component ``[B, size]``, ``y_t [B, output_size]``.
"""

import inspect
import re
import warnings
from typing import Any, Callable, Sequence

import keras
import tensorflow as tf
from keras.src.backend.common import global_state

from fastcarry import _hoist
from fastcarry._keras_fused import KerasFusedCell
from fastcarry._layer import CellLayer, in_keras_call, input_dim_of, tf_variable
from fastcarry._protocol import SHAPE_MEMBERS, Core, attached, identity_project, missing_members, zeros_in
from fastcarry._support import fused_kind, not_supported_reasons


def _describe(structure):
    """``structure`` of tensors as text: its nesting with ``dtype[shape]`` leaves."""
    def leaf(v):
        if tf.is_tensor(v) or isinstance(v, tf.Variable):
            return f"{v.dtype.name}{v.shape.as_list() if v.shape.rank is not None else '[?]'}"
        return type(v).__name__
    return str(tf.nest.map_structure(leaf, structure))


def checked_step(step, name):
    """``step(state, x_t) -> (state, y_t)``, checked at trace time: the state comes back as it went in.

    A loop carries the state from step to step, so a step that changes its
    structure, a shape or a dtype cannot run; say so here, naming what the
    step returned, rather than deep inside ``tf.while_loop``.
    """
    def run(state, x_t):
        result = step(state, x_t)
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            raise TypeError(f"{name} must return (new_state, output), got {_describe(result)}")
        new_state, y = result
        try:
            tf.nest.assert_same_structure(state, new_state, check_types=False)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} returned a state of structure {_describe(new_state)}, but was given "
                            f"{_describe(state)}; the state must keep its structure from step to step") from err
        for got, want in zip(tf.nest.flatten(new_state), tf.nest.flatten(state)):
            got = tf.convert_to_tensor(got)
            if got.dtype != want.dtype or not got.shape.is_compatible_with(want.shape):
                raise TypeError(f"{name} returned a state {_describe(new_state)}, but was given {_describe(state)}; "
                                f"each component must keep its shape and dtype from step to step")
        y = tf.convert_to_tensor(y)
        if y.shape.rank != 2 or y.dtype != x_t.dtype:
            raise TypeError(f"{name} returned an output {_describe(y)}, expected {x_t.dtype.name}[B, output_size]")
        return tf.nest.pack_sequence_as(state, tf.nest.flatten(new_state)), y
    return run


def _generic_core(cell, step, variables, owner, as_written=False):
    """The ``Core`` of a generic ``cell`` (a ``LayerCell`` or ``FunctionCell``): ``step(state, x_t)`` split at its
    state-free input part (``fastcarry._hoist``; key ``("hoisted", widths)``) as ``cell.hoist`` says, else (and
    with ``as_written``) as it is with the identity projection (key None). ``variables`` are what ``step``
    reads; compiled functions are kept on ``owner``."""
    name, output_size = cell.name, cell.output_size
    split = None if as_written else _split_of(step, variables, owner, cell)
    if split is None:
        def core_step(params, state, xp_t):
            del params  # the step reads its variables itself
            return step(state, xp_t)
        return Core(name, None, identity_project, output_size, step=core_step, variables=tuple(variables),
                    owner=owner)

    def project(params, x):
        del params
        rows = tf.reshape(x, [-1, x.shape[-1]])
        xp = tf.reshape(split.project(rows, split.values()), tf.concat([tf.shape(x)[:-1], [sum(split.sizes)]], 0))
        xp.set_shape(x.shape[:-1].concatenate([sum(split.sizes)]))
        return xp

    def split_step(params, state, xp_t):
        del params
        return split.step(state, xp_t, split.values())
    return Core(name, ("hoisted", split.sizes), project, output_size, step=split_step, variables=tuple(variables),
                owner=owner)


def _split_of(step, variables, owner, cell):
    """``_hoist.split`` of ``cell``'s step for its D and dtype (kept on ``owner``), as ``cell.hoist`` asks.

    hoist: None: the split where there is one, else None; True: the split, or a
      ``ValueError`` saying why there is none; False: None.
    Not inside Keras's stateless scope (a model's symbolic build, a pass for
    shapes), where the step reads the scope's values instead of its variables.
    """
    hoist = cell.hoist
    if hoist is False or cell.input_dim is None or global_state.get_global_attribute("stateless_scope") is not None:
        return None
    splits = attached(owner, "_fastcarry_splits")
    key = (cell.input_dim, cell.dtype.name)
    if key not in splits:
        splits[key] = _hoist.split(step, cell.zero_state(1), cell.input_dim, cell.dtype, variables)
    found, why = splits[key]
    if found is None and hoist:
        raise ValueError(f"hoist=True: cannot split the step of {cell!r} at its input projection: {why}")
    return found


def for_inference(cell, core, unroll):
    """The ``Core`` ``cell`` runs for inference with ``unroll`` steps per loop iteration: ``core`` (its
    ``core()``), except that a generic cell split at its input projection by default (``hoist=None``) runs its
    step as written with ``unroll == 1``. With one step per iteration the split's projection is one more kernel
    per iteration beside the step, no larger a matmul than the step's own, and nothing is saved for a backward
    that projects all steps at once (measured: ``benchmarks/README.md``, "Users' own cells")."""
    generic = isinstance(cell, (LayerCell, FunctionCell))
    if generic and unroll == 1 and cell.hoist is None and core.project is not identity_project:
        return cell.core(as_written=True)
    return core


def _check_hoist(hoist):
    if not (hoist is None or hoist is True or hoist is False):  # not ``in``: 1 == True
        raise TypeError(f"hoist must be None, True or False, got {hoist!r}")


def _snake(name):
    """``LSTMCell`` -> ``lstm_cell``, ``MultiRNNCell`` -> ``multi_rnn_cell``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


class FunctionCell(CellLayer):
    """A step function and the variables it reads, as a fastcarry cell (generic path)::

        step(state, x_t) -> (new_state, y_t)     x_t [B, D], y_t [B, output_size]

    ``state`` has the structure of ``state_size`` with ``[B, size]`` per
    component; ``new_state`` must have the same structure, shapes and dtypes.
    ``fc.unroll(fc.FunctionCell(...), inputs)`` runs it over time under one
    compiled loop; the gradient w.r.t. inputs, initial state and every
    variable in ``variables`` is TF's autodiff of ``step``, taken by fastcarry's
    reverse loop. ``step`` must treat batch rows independently (the weight
    gradients of all steps are taken as one batch of ``T * B`` rows; a step
    whose graph shows it combining rows is refused there, ``fastcarry._rows``), and
    every trainable variable it reads must be in ``variables`` (one that is not
    listed is an error when it runs where a gradient may be asked for).

    Args:
      step: the function above; a pure function of its arguments and ``variables``.
      state_size: an int H, or a structure (tuple, list, NamedTuple) of ints.
      output_size: int, the last dimension of ``y_t``.
      variables: the ``tf.Variable``\\ s or Keras variables ``step`` reads. Inside a
        ``keras.Model`` (or ``fastcarry.keras.RNN``) give Keras variables
        (``keras.Variable``): Keras 3 trains and saves only those.
      dtype: of inputs, state and outputs.
      name: names the compiled functions (``fastcarry_<name>_forward``); an identifier.
      hoist: None: the part of ``step`` that reads ``x_t`` and the weights but not the
        state (its input projection) runs as the cell's input projection, where
        ``fastcarry._hoist`` finds one: per loop iteration for its ``unroll`` steps at
        once, and in the backward for all steps at once (inference with one step
        per iteration runs ``step`` as it is: ``for_inference``); True: that in
        every mode, or a ``ValueError`` saying why not; False: ``step`` runs as it
        is, once per step.

    It is a Keras 3 layer (``fastcarry._layer``): Keras variables given here are
    its weights, which a model holding it trains. ``trainable_variables`` lists
    the ``tf.Variable`` behind each given variable.
    """

    def __init__(self, step: Callable, state_size: Any, output_size: int, variables: Sequence = (), *,
                 dtype: tf.DType | str = tf.float32, name: str = "function_cell", hoist: bool | None = None):
        if not callable(step):
            raise TypeError(f"step must be callable (state, x_t) -> (new_state, y_t), got {type(step).__name__}")
        for size in tf.nest.flatten(state_size):
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ValueError(f"state_size must be an int >= 1 or a structure of them, got {state_size!r}")
        if isinstance(output_size, bool) or not isinstance(output_size, int) or output_size < 1:
            raise ValueError(f"output_size must be an int >= 1, got {output_size!r}")
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"name must be an identifier string, got {name!r}")
        _check_hoist(hoist)
        given = tf.nest.flatten(list(variables))
        behind = tuple(tf_variable(v, "variables") for v in given)
        super().__init__(dtype=tf.as_dtype(dtype), name=name)
        # In __dict__ as given: a layer's __setattr__ would wrap a list state_size in a tracking list.
        vars(self).update(step=step, state_size=state_size)
        self.output_size = output_size
        # Keras tracks the Keras variables among them as this layer's weights; the step reads the tf.Variables.
        self.keras_variables = [v for v in given if isinstance(v, keras.Variable)]
        vars(self)["step_variables"] = behind
        self.hoist = hoist
        self.input_dim = None

    def build(self, input_dim):
        """Records D (an int, or Keras's ``(B, D)``); a step function has no variables to make."""
        input_dim = input_dim_of(input_dim, "input_dim")
        if self.input_dim is not None and input_dim != self.input_dim:
            raise ValueError(f"inputs have feature dim {input_dim}, expected {self.input_dim} "
                             f"(the first inputs of {self.name!r})")
        self.input_dim = int(input_dim)

    @property
    def trainable_variables(self):
        """The ``tf.Variable`` behind each given variable (what gets gradients)."""
        return list(self.step_variables)

    def zero_state(self, batch_size, dtype=None):
        """Zeros in ``state_size``'s structure, ``[batch_size, size]`` each."""
        return zeros_in(self.state_size, batch_size, self.dtype if dtype is None else dtype)

    def core(self, as_written=False):
        """The ``Core``: the step split at its input projection as ``hoist`` says; ``as_written``: never split."""
        untracked = [v.name for v in self.step_variables
                     if not any(v is k.value for k in self.keras_variables) and v.trainable]
        if untracked and in_keras_call():
            warnings.warn(f"FunctionCell {self.name!r} runs inside a Keras layer's call with tf.Variables "
                          f"{untracked}, which Keras 3 does not track: fit does not train them and model.save does "
                          f"not save them. Create them with keras.Variable", UserWarning, stacklevel=2)
        return _generic_core(self, checked_step(self.step, f"{self.name}'s step"), self.step_variables, self,
                             as_written)

    def get_config(self):
        raise NotImplementedError(f"FunctionCell {self.name!r} has no config: its step is Python code. Save the "
                                  f"weights (model.save_weights), or the model with model.export")

    def params(self):
        return ()

    def __repr__(self):
        return f"FunctionCell({self.name!r}, state_size={self.state_size!r}, output_size={self.output_size})"


class LayerCell:
    """A Keras or TF1 cell object (see the module docstring) as a fastcarry cell on the generic path.

    Made by ``fc.as_cell``, which keeps it on the layer. It builds the layer,
    if needed, by calling it once on zeros.
    """

    def __init__(self, layer, hoist=None):
        reasons = not_supported_reasons(layer, "generic")
        if reasons:
            raise ValueError(f"{'; '.join(reasons)}: make the cell without dropout (or apply dropout to the "
                             f"inputs and outputs of fc.unroll)")
        self.layer, self.hoist = layer, hoist
        self.tf1 = callable(getattr(layer, "zero_state", None))
        self.name = _snake(type(layer).__name__)
        self.dtype = tf.as_dtype(getattr(layer, "compute_dtype", None) or getattr(layer, "dtype", None) or "float32")
        size = layer.state_size
        # Keras passes the states as a list, one per state_size entry.
        self.state_size = size if self.tf1 else (list(size) if isinstance(size, (list, tuple)) else [size])
        self.input_dim = None
        self.output_size = None

    @property
    def trainable_variables(self):
        """The layer's."""
        return list(self.layer.trainable_variables)

    def step(self, state, x_t):
        """``(new_state, y_t)`` from the layer's ``(output, new_state)`` (Keras: states as a list)."""
        layer = self.layer
        if self.tf1:
            y, new_state = layer(x_t, state)
            return new_state, y
        y, new_states = layer(x_t, list(state))
        return (list(new_states) if isinstance(new_states, (list, tuple)) else [new_states]), y

    def build(self, input_dim):
        """Builds the layer for D features (one call on zeros, outside any trace) and learns ``output_size``."""
        if self.input_dim == input_dim:
            return
        with tf.init_scope():
            x = tf.zeros([1, int(input_dim)], self.dtype)
            try:
                _, y = checked_step(self.step, f"{type(self.layer).__name__}.call")(self.zero_state(1), x)
            except TypeError:  # checked_step's own message says it
                raise
            except Exception as err:  # the layer's: say which call failed
                raise ValueError(f"calling the {type(self.layer).__name__} on inputs of shape [1, {input_dim}] "
                                 f"failed: {err}") from err
        self.input_dim, self.output_size = int(input_dim), int(y.shape[-1])

    def zero_state(self, batch_size, dtype=None):
        """The layer's own initial state: TF1 ``zero_state``, Keras ``get_initial_state``, else zeros."""
        layer, dtype = self.layer, self.dtype if dtype is None else tf.as_dtype(dtype)
        if self.tf1:
            return layer.zero_state(batch_size, dtype)
        initial = getattr(layer, "get_initial_state", None)
        if initial is None:
            return zeros_in(self.state_size, batch_size, dtype)
        kwargs = {"dtype": dtype} if "dtype" in inspect.signature(initial).parameters else {}
        state = initial(batch_size=batch_size, **kwargs)
        return [tf.cast(s, dtype) for s in (state if isinstance(state, (list, tuple)) else [state])]

    def core(self, as_written=False):
        """The ``Core``: the layer's call split at its input projection as ``hoist`` says; ``as_written``: never
        split."""
        layer = self.layer
        variables = [tf_variable(v, type(layer).__name__) for v in layer.trainable_variables]
        return _generic_core(self, checked_step(self.step, f"{type(layer).__name__}.call"), variables, layer,
                             as_written)

    def params(self):
        return ()

    def __repr__(self):
        return f"fc.as_cell({type(self.layer).__name__}, fused=False)"


_ACCEPTED = ("a fastcarry cell (fc.LSTM, fc.GRU, fc.SimpleRNN, fc.FunctionCell, fc.Stack, or any object with "
             "fastcarry.CellProtocol's members), a Keras cell (state_size and call(inputs, states)), "
             "or a TF1 RNNCell (state_size, zero_state and __call__(inputs, state))")


def _lacks(cell):
    """What ``cell`` lacks of the contract it seems to mean: the protocol if it is shaped like a fastcarry cell
    and not callable, else the Keras/TF1 one (``state_size`` and a call)."""
    if not callable(cell) and not missing_members(cell, SHAPE_MEMBERS):
        return missing_members(cell)
    return [m for m, ok in (("state_size", getattr(cell, "state_size", None) is not None),
                            ("__call__ (call(inputs, states))", callable(cell))) if not ok]


def _check_not_a_class_or_layer(cell):
    """Raises for the two near misses: a cell class instead of an instance, a Keras RNN layer instead of its cell."""
    if isinstance(cell, type):
        prefix = "fc." if cell.__module__.startswith("fastcarry") else ""
        raise TypeError(f"cell must be a cell instance, got the class {cell.__name__}: pass an instance, "
                        f"{prefix}{cell.__name__}(units)")
    inner = getattr(cell, "cell", None)
    if inner is not None and hasattr(cell, "return_sequences") and hasattr(inner, "state_size"):
        name = type(cell).__name__
        raise TypeError(f"cell must be a cell, got the Keras RNN layer {name}: pass its cell (layer.cell) to "
                        f"fc.unroll, or use fastcarry.keras.{name} in a Keras model")


def as_cell(cell: Any, *, fused: bool | None = None, hoist: bool | None = None) -> Any:
    """``cell`` as a fastcarry cell (an object of ``fastcarry.CellProtocol``).

    Args:
      cell: a fastcarry cell (returned as it is), a Keras 3 or ``tf_keras``
        cell layer, or a TF1 ``RNNCell`` (see the module docstring).
      fused: None: a Keras ``LSTMCell``/``GRUCell``/``SimpleRNNCell`` that the
        fused kernels can run (standard activations, no dropout) is run by
        them on its own variables, anything else generically; True: fused or a
        ``ValueError`` saying why not; False: the generic path.
      hoist: on the generic path, as ``FunctionCell``'s: None: the part of the
        cell's call that reads the inputs and weights but not the state (its input
        projection) is split off where ``fastcarry._hoist`` finds one (except for
        inference with one step per loop iteration); True: that in every mode, or
        a ``ValueError`` saying why not; False: the call runs as it is.

    Returns:
      a cell for ``fc.unroll``, ``fc.Carry``, ``fc.Stack`` and ``fc.bidirectional``.
    """
    if fused not in (None, True, False):
        raise TypeError(f"fused must be None, True or False, got {fused!r}")
    _check_hoist(hoist)
    _check_not_a_class_or_layer(cell)
    if not missing_members(cell):
        for name, value in (("fused", fused), ("hoist", hoist)):
            if value is not None:
                raise ValueError(f"{name}= applies to Keras and TF1 cells; {type(cell).__name__} is already a "
                                 f"fastcarry cell")
        return cell
    lacks = _lacks(cell)
    if lacks:
        raise TypeError(f"cell must be {_ACCEPTED}; got {type(cell).__name__}, which lacks {', '.join(lacks)}")
    reasons = not_supported_reasons(cell, "fused") if fused is not False else []
    if fused is True and reasons:
        raise ValueError(f"fused=True: the fused kernels cannot run this {type(cell).__name__} "
                         f"({'; '.join(reasons)})")
    key = "fused" if (fused is not False and not reasons) else ("generic", hoist)
    if key == "fused" and hoist is not None:
        raise ValueError(f"hoist= applies to the generic path; this {type(cell).__name__} runs on the fused "
                         f"kernels, which project the inputs before the loop themselves (pass fused=False too)")
    # Kept on the layer, so an eager loop does not build (and probe) one per call.
    adapters = attached(cell, "_fastcarry_cells")
    if key not in adapters:
        adapters[key] = KerasFusedCell(cell, fused_kind(cell)) if key == "fused" else LayerCell(cell, hoist)
    return adapters[key]

