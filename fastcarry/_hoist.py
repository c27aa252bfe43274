"""A generic step split in two, found in its traced graph: the part that reads only ``x_t`` and the weights
(run for every row of every step at once, before the loop), and the rest (run per step).

A user's Keras cell or step function starts, as a rule, with its input projection
``x_t @ kernel (+ bias)``, which does not depend on the state. Run inside the
loop it is T small matmuls forward, T more in the backward's per-step
recompute and once more in the batched weight gradient; hoisted, it is one
``[T * B, D] @ [D, G]`` GEMM, and the backward's per-step VJP is left with the
state-dependent ops only.

The step is traced once, with the batch unknown (``[None, ..]``). An op is
*hoisted* when it depends on ``x_t`` and not on the state, and its kind is one
that treats rows independently (``_row_wise``): elementwise math, a matmul
with ``x``'s rows on the left, a split, slice, concat or reduction that leaves
axis 0 alone. Everything else (a stateful op, an op of any other kind, or one
fed by such an op) stays in the step. The *frontier* is what hoisted ops pass
to the rest; the projection returns it concatenated on the last axis as
``xp [N, G]``, and the step splits ``xp_t [B, G]`` back into it.

Both halves are pure functions of explicit tensors: the weights they read come
in as the values of their variables, read where the halves run (so a replica
reads its own copy and a tape sees the reads), never as captured handles.
A step whose graph is not of this form (a variable read by an op other than
``ReadVariableOp``, one not among the cell's variables, a frontier that is not
``[N, k]`` of the cell's dtype, no matmul to hoist, an op that cannot be made
again) is not split: ``split`` says why, and the step runs as it is.
"""

from typing import Callable, NamedTuple, Optional

import tensorflow as tf

# Private but stable: what TF's generated op functions use to add an op to a graph and record it on tapes.
from tensorflow.python.eager import execute as _execute
from tensorflow.python.framework import op_def_library as _op_def_library

from fastcarry._boundary import replica_copies
from fastcarry._rows import ELEMENTWISE, MATMULS, REDUCTIONS

_X, _STATE, _PINNED = 1, 2, 4

# What reads a variable's value as a whole; anything else on a handle (a gather, an assign) keeps the step whole.
_READ = "ReadVariableOp"


class Split(NamedTuple):
    """A step in two halves (see the module docstring).

    project: ``(rows [N, D], values) -> xp [N, G]``.
    step: ``(state, xp_t [B, G], values) -> (state, y_t [B, output_size])``.
    values: ``() -> tuple`` of tensors, the variables' values and captured tensors both halves take; call it
      where the halves run.
    sizes: the frontier's widths, which add up to G.
    """

    project: Callable
    step: Callable
    values: Callable
    sizes: tuple


def _constant(tensor):
    """``tensor``'s value if it is a ``Const``, else None."""
    return tf.get_static_value(tensor) if tensor.op.type == "Const" else None


def _batch_axis_untouched(op, x_inputs):
    """Whether ``op`` (not elementwise) keeps each row of its x-dependent inputs to itself."""
    kind = op.type
    if kind in MATMULS:
        lhs, rhs = op.inputs[0], op.inputs[1]
        adj = op.get_attr("transpose_a" if kind == "MatMul" else "adj_x")
        return x_inputs == [0] and not adj and lhs.shape.rank == 2 and rhs.shape.rank == 2
    if kind in ("Split", "ConcatV2", "SplitV") or kind in REDUCTIONS:
        axis_input = {"Split": 0, "SplitV": 2}.get(kind, len(op.inputs) - 1 if kind == "ConcatV2" else 1)
        axes = _constant(op.inputs[axis_input])
        if axes is None or axis_input in x_inputs:
            return False
        rank = op.inputs[1 if kind == "Split" else 0].shape.rank
        if rank is None:
            return False
        return all(int(a) % rank != 0 for a in tf.nest.flatten(axes.tolist()))
    if kind in ("Softmax", "LogSoftmax"):  # over the last axis, which is the batch axis at rank 1
        return op.inputs[0].shape.rank is not None and op.inputs[0].shape.rank >= 2
    if kind == "StridedSlice":
        strides = _constant(op.inputs[3])
        return (x_inputs == [0] and strides is not None and int(strides.flat[0]) == 1
                and op.get_attr("begin_mask") & 1 and op.get_attr("end_mask") & 1
                and not op.get_attr("ellipsis_mask") and not op.get_attr("new_axis_mask")
                and not op.get_attr("shrink_axis_mask") & 1)
    return False


def _row_wise(op, flags):
    """Whether ``op`` may run on the rows of every step at once: it treats rows independently and its outputs
    keep the unknown batch axis first."""
    x_inputs = [i for i, t in enumerate(op.inputs) if flags.get(t.ref(), 0) & _X]
    if op.type not in ELEMENTWISE and not _batch_axis_untouched(op, x_inputs):
        return False
    return all(o.shape.rank and o.shape[0] is None for o in op.outputs)


def _graph_of(step, state_like, input_dim, dtype):
    """``step`` traced on ``[None, ..]`` placeholders: ``(wrapped function, state placeholders, x placeholder)``."""
    state_spec = tf.nest.map_structure(lambda s: tf.TensorSpec([None, *s.shape[1:]], s.dtype), state_like)
    x_spec = tf.TensorSpec([None, input_dim], dtype)
    with tf.init_scope():
        wrapped = tf.compat.v1.wrap_function(lambda state, x: step(state, x), [state_spec, x_spec])
    n_state = len(tf.nest.flatten(state_spec))
    return wrapped, wrapped.inputs[:n_state], wrapped.inputs[n_state]


def _hoisted_ops(graph, state_phs, x_ph):
    """The ops that run before the loop (``x_t``'s placeholder first, then in graph order)."""
    flags = {t.ref(): _STATE for t in state_phs}
    flags[x_ph.ref()] = _X
    hoisted = [x_ph.op]
    for op in graph.get_operations():
        if op.type == "Placeholder":
            continue
        f = 0
        for t in list(op.inputs) + [o for c in op.control_inputs for o in c.outputs]:
            f |= flags.get(t.ref(), 0)
        if op._is_stateful and op.type != _READ:  # random numbers, assignments: per step, as written
            f |= _PINNED
        if f == _X and not _row_wise(op, flags):
            f |= _PINNED
        if f == _X:
            hoisted.append(op)
        for t in op.outputs:
            flags[t.ref()] = f
    return hoisted


def _replayer(op):
    """``inputs -> outputs``: ``op`` made again in the current graph, recorded by any tape as a generated op
    wrapper records it; None for an op that cannot be (a function attribute or control inputs)."""
    if op.control_inputs or any(v.HasField("func") for v in op.node_def.attr.values()):
        return None
    op_def = op.op_def
    inferred = {n for a in op_def.input_arg for n in (a.type_attr, a.number_attr, a.type_list_attr) if n}
    attrs = {a.name: op.get_attr(a.name) for a in op_def.attr if a.name not in inferred}
    counts = [op.get_attr(a.number_attr) if a.number_attr else
              len(op.get_attr(a.type_list_attr)) if a.type_list_attr else None for a in op_def.input_arg]
    name = op.name.rsplit("/", 1)[-1]

    def replay(inputs):
        args, i = {}, 0
        for arg, count in zip(op_def.input_arg, counts):
            args[arg.name] = list(inputs[i:i + count]) if count is not None else inputs[i]
            i += 1 if count is None else count
        # What every generated op function (tensorflow/python/ops/gen_*_ops.py) does in a graph.
        _, _, new_op, outputs = _op_def_library._apply_op_helper(op.type, name=name, **args, **attrs)
        if _execute.must_record_gradient():
            flat_attrs = tuple(v for a in op_def.attr for v in (a.name, new_op.get_attr(a.name)))
            _execute.record_gradient(op.type, new_op.inputs, flat_attrs, outputs)
        return outputs
    return replay


class _Half(NamedTuple):
    """Part of a traced graph, to be made again from tensors given for ``feeds`` (``_in_graph``)."""

    feeds: list     # the graph's tensors that are given
    fetches: list   # the graph's tensors that are wanted
    ops: list       # (op, replay) in graph order: what lies between them


def _half(graph, feeds, fetches):
    """``(the ops fetches need beyond feeds, "")``, or ``(None, why not)`` if one cannot be made again."""
    fed = {t.ref() for t in feeds}
    needed, stack = set(), [t.op for t in fetches if t.ref() not in fed]
    while stack:
        op = stack.pop()
        if op.name in needed:
            continue
        if op.type == "Placeholder":
            return None, f"it reads {op.name}, which is neither the state, x_t nor a variable's value"
        needed.add(op.name)
        stack.extend(t.op for t in op.inputs if t.ref() not in fed)
    ops = []
    for op in graph.get_operations():
        if op.name in needed:
            replay = _replayer(op)
            if replay is None:
                return None, (f"its op {op.name} ({op.type}) has control inputs or a function attribute, so it "
                              f"cannot be made again outside the cell's call")
            ops.append((op, replay))
    half = _Half(list(feeds), list(fetches), ops)
    # Made again once here, in a scratch graph: an op TF will not rebuild from its definition is found now,
    # not inside the caller's trace.
    with tf.Graph().as_default():
        try:
            _in_graph(half, [tf.compat.v1.placeholder(t.dtype, t.shape) for t in feeds])
        except Exception as err:  # noqa: BLE001 (any op of the user's step)
            return None, f"one of its ops cannot be made again outside the cell's call ({type(err).__name__}: {err})"
    return half, ""


def _in_graph(half, given):
    """``half``'s fetches, its ops made again in the current graph from ``given`` (one tensor per feed)."""
    values = {t.ref(): v for t, v in zip(half.feeds, given)}
    for op, replay in half.ops:
        for t, v in zip(op.outputs, replay([values[i.ref()] for i in op.inputs])):
            values[t.ref()] = v
    return [values[t.ref()] for t in half.fetches]


def _runner(half):
    """``given -> fetches`` for ``half``: its ops in the caller's graph, or, called eagerly (one step of a
    cell layer), in a ``tf.function`` of them."""
    eager = tf.function(lambda *given: _in_graph(half, given), autograph=False)

    def run(given):
        return eager(*given) if tf.executing_eagerly() else _in_graph(half, given)
    return run


def _values(wrapped, variables):
    """The feeds that replace the graph's captures: ``((reads or placeholders, () -> their values), "")``, or
    ``(None, why not)``.

    A captured variable handle must feed only ``ReadVariableOp``\\ s and belong to
    ``variables`` (a distributed variable's: any replica's copy); its reads are fed
    with the variable's value, read where the halves run (in a replica, its own
    copy). A captured tensor is fed with itself.
    """
    by_handle = {id(c.handle): v for v in variables for c in replica_copies(v)}
    feeds, sources = [], []
    for external, internal in wrapped.graph.captures:
        if internal.dtype == tf.resource:
            variable = by_handle.get(id(external))
            consumers = internal.consumers()
            if variable is None:
                return None, "it reads a variable that is not among the cell's variables"
            others = [c.type for c in consumers if c.type != _READ]
            if others:
                return None, (f"it reads the variable {variable.name} by {others[0]} (only a whole read, "
                              f"ReadVariableOp, can be given as a value)")
            for read in consumers:
                feeds.append(read.outputs[0])
                sources.append(variable)
        else:
            feeds.append(internal)
            sources.append(external)

    def values():
        return tuple(tf.convert_to_tensor(s) if isinstance(s, tf.Variable) else s for s in sources)
    return (feeds, values), ""


def split(step, state_like, input_dim, dtype, variables) -> tuple[Optional[Split], str]:
    """``step(state, x_t) -> (state, y_t)`` split at its state-free input part (module docstring).

    Returns ``(split, "")``, or ``(None, why not)``: a sentence for "cannot split the step: ...".

    Args:
      step: the cell's step; reads ``variables`` by closure.
      state_like: the state's structure of ``[b, ..]`` tensors (any b), for the shapes and dtypes.
      input_dim: D, of ``x_t [B, D]``.
      dtype: of ``x_t``; every frontier tensor must have it.
      variables: the ``tf.Variable``\\ s ``step`` may read.
    """
    try:
        wrapped, state_phs, x_ph = _graph_of(step, state_like, input_dim, dtype)
    except Exception as err:  # noqa: BLE001 (the user's code, traced with B unknown: any error of theirs)
        return None, f"tracing it with the batch size unknown failed ({type(err).__name__}: {err})"
    hoisted = _hoisted_ops(wrapped.graph, state_phs, x_ph)
    if not any(op.type in MATMULS for op in hoisted):
        return None, "its part that reads x_t but not the state has no matmul, so nothing is gained"
    names = {op.name for op in hoisted}
    outputs = tf.nest.flatten(wrapped.outputs)
    frontier = [t for op in hoisted for t in op.outputs
                if any(c.name not in names for c in t.consumers()) or any(t is o for o in outputs)]
    odd = [t for t in frontier if t.dtype != dtype or t.shape.rank != 2 or t.shape[1] is None]
    if odd:
        return None, (f"its state-free part passes {odd[0].name} of {odd[0].dtype.name}{odd[0].shape} to the "
                      f"rest, not [N, k] of {dtype.name}")
    found, why = _values(wrapped, variables)
    if found is None:
        return None, why
    value_feeds, values = found
    project_half, why = _half(wrapped.graph, [x_ph, *value_feeds], frontier)
    if project_half is None:
        return None, why
    step_half, why = _half(wrapped.graph, [*state_phs, *frontier, *value_feeds], outputs)
    if step_half is None:
        return None, why
    sizes = tuple(int(t.shape[1]) for t in frontier)
    run_project, run_step = _runner(project_half), _runner(step_half)

    def project(rows, weights):
        pieces = run_project([rows, *weights])
        return pieces[0] if len(pieces) == 1 else tf.concat(pieces, -1)

    def split_step(state, xp_t, weights):
        pieces = tf.split(xp_t, sizes, axis=-1) if len(sizes) > 1 else [xp_t]
        results = run_step([*tf.nest.flatten(state), *pieces, *weights])
        return tf.nest.pack_sequence_as(state, results[:-1]), results[-1]

    return Split(project, split_step, values, sizes), ""
