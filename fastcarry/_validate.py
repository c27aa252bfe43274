"""Argument checks for ``unroll`` (fused and reference): clear errors, early.

Every error names the argument, what was expected and what came.
"""

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from fastcarry._protocol import SHAPE_MEMBERS, missing_members
from fastcarry._validity import Validity


class Args(NamedTuple):
    """Normalised arguments. ``inputs`` as given (layout unchanged); ``batch``/``time``
    are ints when static, else scalar tensors; ``validity`` a ``Validity`` in the
    caller's time order (lengths ``[B]`` int32 clipped to ``[0, T]``, or a
    time-major ``[T, B]`` bool mask)."""

    inputs: tf.Tensor
    initial_state: object
    validity: Validity
    batch: object
    time: object


def _dim(tensor, axis):
    static = tensor.shape[axis]
    return static if static is not None else tf.shape(tensor)[axis]


def check(cell, inputs, initial_state, options, *, sequence_length=None, mask=None):
    """Validates ``unroll``'s data arguments for ``cell`` and ``options`` (an ``Options``, itself checked when
    made); returns ``Args``. It does not build the cell (``build_for`` does)."""
    missing = missing_members(cell, SHAPE_MEMBERS)
    if missing:
        raise TypeError(f"cell must be a fastcarry cell (fastcarry.CellProtocol; see fc.as_cell for Keras and TF1 "
                        f"cells), got {type(cell).__name__}, which lacks {', '.join(missing)}")
    time_major = options.time_major
    inputs = _inputs(inputs, cell, time_major)
    batch_axis, time_axis = (1, 0) if time_major else (0, 1)
    batch, time = _dim(inputs, batch_axis), _dim(inputs, time_axis)
    initial_state = check_state(initial_state, cell, inputs.shape[batch_axis])
    if mask is not None:
        if sequence_length is not None:
            raise ValueError("give sequence_length or mask, not both (a mask says everything lengths do)")
        return Args(inputs, initial_state, Validity(mask=_mask(mask, inputs, time_major)), batch, time)
    lengths = check_lengths(sequence_length, inputs.shape[batch_axis], time)
    return Args(inputs, initial_state, Validity(lengths=lengths), batch, time)


def _inputs(inputs, cell, time_major):
    layout = "[T, B, D]" if time_major else "[B, T, D]"
    if tf.is_tensor(inputs) or isinstance(inputs, (tf.Variable, np.ndarray)):
        tensor = tf.convert_to_tensor(inputs)
    elif isinstance(inputs, (list, tuple)):
        # A Python list would become float64 by numpy's default: it means "the cell's dtype".
        try:
            tensor = tf.convert_to_tensor(inputs, cell.dtype)
        except (TypeError, ValueError) as err:
            raise TypeError(f"inputs must be a numeric tensor {layout}, got a {type(inputs).__name__} "
                            f"that does not convert to {cell.dtype.name}") from err
    else:
        raise TypeError(f"inputs must be a tensor {layout}, got {type(inputs).__name__}")
    if not tensor.dtype.is_floating:
        raise TypeError(f"inputs must be a floating tensor ({cell.dtype.name}, the cell's dtype), "
                        f"got dtype {tensor.dtype.name}")
    if tensor.shape.rank != 3:
        raise ValueError(f"inputs must have rank 3 {layout}, got shape {tensor.shape}")
    if tensor.dtype != cell.dtype:
        raise TypeError(f"inputs has dtype {tensor.dtype.name}, expected {cell.dtype.name} (the cell's dtype; "
                        f"make the cell with dtype={tensor.dtype.name!r} or cast the inputs)")
    feature = tensor.shape[2]
    if feature is None:
        raise ValueError(f"inputs must have a static feature dimension D (last axis of {layout}), "
                         f"got shape {tensor.shape}")
    if cell.input_dim is not None and feature != cell.input_dim:
        raise ValueError(f"inputs has feature dim {feature} (shape {tensor.shape}), expected {cell.input_dim} "
                         f"(the input_dim the cell was built for)")
    return tensor


def build_for(cell, args):
    """Builds an unbuilt ``cell`` for the validated inputs' feature size D (first use)."""
    if cell.input_dim is None:
        cell.build(int(args.inputs.shape[-1]))


def _size(size):
    """A state_size leaf (int or TensorShape) as a list of dims after B."""
    return [size] if isinstance(size, int) else tf.TensorShape(size).as_list()


def _component(value, name, batch, size, dtype):
    want = [batch] + _size(size)
    if not (tf.is_tensor(value) or isinstance(value, (np.ndarray, list, tf.Variable))):
        raise TypeError(f"{name} must be a tensor {want}, got {type(value).__name__}")
    tensor = tf.convert_to_tensor(value)
    if tensor.dtype != dtype:
        raise TypeError(f"{name} has dtype {tensor.dtype.name}, expected {dtype.name}")
    if not tensor.shape.is_compatible_with(tf.TensorShape(want)):
        got = tensor.shape.as_list() if tensor.shape.rank is not None else tensor.shape
        raise ValueError(f"{name} has shape {got}, expected {want}")
    return tensor


def _paths(structure, name):
    """A name per leaf of ``structure``: ``name.c`` for NamedTuple fields, ``name[1]`` for positions."""
    if isinstance(structure, tuple) and hasattr(structure, "_fields"):
        return [p for f, v in zip(structure._fields, structure) for p in _paths(v, f"{name}.{f}")]
    if isinstance(structure, (tuple, list)):
        return [p for i, v in enumerate(structure) for p in _paths(v, f"{name}[{i}]")]
    if isinstance(structure, dict):
        return [p for k in sorted(structure) for p in _paths(structure[k], f"{name}[{k!r}]")]
    return [name]


def _got(state):
    if isinstance(state, (tuple, list)):
        return f"a {type(state).__name__} of {len(state)}"
    return type(state).__name__


def check_state(state, cell, batch, name="initial_state"):
    """``state`` (None or the cell's structure of ``[batch, size]``) as tensors of the cell's dtype, packed in
    ``state_size``'s structure, or a clear error naming ``name``."""
    if state is None:
        return None
    size = cell.state_size
    if not tf.nest.is_nested(size):
        if isinstance(state, (tuple, list)) and state and (tf.is_tensor(state[0]) or isinstance(state[0], np.ndarray)):
            # Keras returns a single state as a one-element list; accept that, nothing longer.
            if len(state) != 1:
                raise TypeError(f"{name} must be one tensor [B, H] for {type(cell).__name__}, got {_got(state)}")
            state = state[0]
        return _component(state, name, batch, size, cell.dtype)
    fields = getattr(type(size), "_fields", None)
    if fields is not None:
        shown = f"{type(size).__name__}({', '.join(fields)})"
        if not isinstance(state, (tuple, list)) or len(state) != len(fields):
            raise TypeError(f"{name} must be {shown} for {type(cell).__name__}, got {_got(state)}")
        if isinstance(state, tuple) and hasattr(state, "_fields") and tuple(state._fields) != tuple(fields):
            # LSTMStateTuple(c, h) for LSTMState(h, c) would swap h and c silently.
            raise TypeError(f"{name} must be {shown}, got {type(state).__name__}({', '.join(state._fields)})")
    try:
        tf.nest.assert_same_structure(size, state, check_types=False)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must have the structure of {type(cell).__name__}'s state_size {size!r} "
                        f"(a tensor [B, size] per int), got {_got(state)}: {err}") from None
    leaves = [_component(v, p, batch, n, cell.dtype)
              for v, p, n in zip(tf.nest.flatten(state), _paths(size, name), tf.nest.flatten(size))]
    return tf.nest.pack_sequence_as(size, leaves)


def check_lengths(sequence_length, batch, time):
    """``sequence_length`` as ``[B]`` int32 clipped to ``[0, T]``, or None."""
    if sequence_length is None:
        return None
    lengths = tf.convert_to_tensor(sequence_length)
    if not lengths.dtype.is_integer or lengths.dtype == tf.bool:
        raise TypeError(f"sequence_length must be an integer tensor [B], got dtype {lengths.dtype.name}")
    if not lengths.shape.is_compatible_with([batch]):
        raise ValueError(f"sequence_length must have shape [B] = {[batch]}, got {lengths.shape}")
    # Clipped to [0, T], always: a length above T runs all T steps and a
    # negative one none, which is what dynamic_rnn does with them (its step
    # tests ``t >= sequence_length``). One behaviour in every mode: under a
    # caller's XLA compilation an out-of-range value cannot be reported (XLA
    # drops Assert ops), and checking eager values would cost a device-to-host
    # copy of the lengths on every call. (Two plain ops: tf.clip_by_value's
    # checks cost more per eager call.)
    return tf.maximum(tf.minimum(tf.cast(lengths, tf.int32), tf.cast(time, tf.int32)), 0)


def _mask(mask, inputs, time_major):
    """``mask`` ``[B, T]`` (``[T, B]`` if ``time_major``) bool -> time-major ``[T, B]`` bool."""
    mask = tf.convert_to_tensor(mask)
    if mask.dtype != tf.bool:
        raise TypeError(f"mask must be a bool tensor, got dtype {mask.dtype.name}")
    want = inputs.shape[:2]
    layout = "[T, B]" if time_major else "[B, T]"
    if not mask.shape.is_compatible_with(want):
        raise ValueError(f"mask must have shape {layout} = {want.as_list()} like inputs' first two axes, "
                         f"got {mask.shape.as_list() if mask.shape.rank is not None else mask.shape}")
    return mask if time_major else tf.transpose(mask)
