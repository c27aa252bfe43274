"""Whether a traced step combines different batch rows: found in its graph by following the rows' axis.

fastcarry's backward for a step without a ``RecurrentSplit`` takes the weight
and input gradients of all ``T * B`` (step, row) pairs in one call of the
step (``_backward._per_step_vjps``). That is right only when each row's
results depend on that row alone, as an RNN step's do; a step that mixes rows
(a batch statistic, attention across the batch) would get wrong gradients
there, and nothing else would say so. ``mixing`` finds such a step in the ops
that call made.

Each tensor known to carry the rows is followed with the axis they are on,
through the ops whose effect on that axis is certain (elementwise math with
broadcasting, reductions, matmuls, transposes, expand/squeeze, concat/split,
stack, softmax, scans, a full slice of the rows, a reshape of each row). An op that provably combines
rows is reported: a reduction, scan or softmax over the rows' axis, a matmul
that contracts it, two operands whose rows meet on different axes (an outer
product of the batch). Past any other op the rows are no longer followed: the
check never refuses what it cannot prove.
"""

import tensorflow as tf

# Op kinds by what they do to rows; fastcarry._hoist's split reads the first three too (the ops it may run on
# every row at once). Elementwise: NumPy broadcasting, aligned from the right (not v1 ``Select``, whose rank-1
# condition picks whole rows).
ELEMENTWISE = frozenset({
    "Identity", "StopGradient", "Cast", "Neg", "Abs", "Sign", "Floor", "Ceil", "Round", "Square", "Sqrt", "Rsqrt",
    "Reciprocal", "Exp", "Expm1", "Log", "Log1p", "Sigmoid", "Tanh", "Relu", "Relu6", "Elu", "Selu", "LeakyRelu",
    "Softplus", "Softsign", "Erf", "Sin", "Cos", "AddV2", "Add", "Sub", "Mul", "RealDiv", "Div", "DivNoNan",
    "Maximum", "Minimum", "Pow", "SquaredDifference", "BiasAdd", "SelectV2",
})
REDUCTIONS = frozenset({"Sum", "Mean", "Max", "Min", "Prod"})
MATMULS = frozenset({"MatMul", "BatchMatMulV2", "BatchMatMulV3"})
# What this check follows besides: comparisons, logic, gradients' elementwise ops; more reductions; scans.
_ELEMENTWISE = ELEMENTWISE | {
    "AddN", "Equal", "NotEqual", "Less", "LessEqual", "Greater", "GreaterEqual", "LogicalAnd", "LogicalOr",
    "LogicalNot", "ClipByValue", "FloorDiv", "FloorMod", "IsFinite", "ZerosLike", "OnesLike", "Relu6Grad",
    "ReluGrad", "SigmoidGrad", "TanhGrad"}
_REDUCTIONS = REDUCTIONS | {"All", "Any", "EuclideanNorm", "ArgMax", "ArgMin"}
_SCANS = frozenset({"Cumsum", "Cumprod", "CumulativeLogsumexp"})
_MATMULS = MATMULS | {"BatchMatMul"}


def _const(tensor):
    value = tf.get_static_value(tensor) if tensor.op.type == "Const" else None
    return None if value is None else [int(v) for v in tf.nest.flatten(value.tolist())]


def _rank(tensor):
    return tensor.shape.rank


def _elementwise(op, axes):
    """Output axis under broadcasting (aligned from the right), or a conflict between operands."""
    out_rank = _rank(op.outputs[0])
    if out_rank is None or any(_rank(op.inputs[i]) is None for i in axes):
        return None, ""
    placed = {a + out_rank - _rank(op.inputs[i]) for i, a in axes.items()}
    if len(placed) > 1:
        return None, "two operands' rows meet on different axes (a product across the batch)"
    return placed.pop(), ""


def _reduction(op, axis, rank):
    dims = _const(op.inputs[1])
    if dims is None or rank is None:
        return None, ""
    dims = {d % rank for d in dims} if rank else set()
    if axis in dims:
        return None, f"it reduces over the rows' axis {axis}"
    keep = op.get_attr("keep_dims") if "keep_dims" in op.node_def.attr else False
    if op.type in ("ArgMax", "ArgMin"):
        keep = False
    return (axis if keep else axis - sum(d < axis for d in dims)), ""


def _matmul(op, axes):
    """Rows of a matmul operand: each operand has one free and one contracted axis (the last two)."""
    lhs, rhs = op.inputs[0], op.inputs[1]
    rank = _rank(lhs)
    if rank is None or _rank(rhs) != rank:
        return None, ""
    if op.type == "MatMul":
        flip_a, flip_b = op.get_attr("transpose_a"), op.get_attr("transpose_b")
    else:
        flip_a, flip_b = op.get_attr("adj_x"), op.get_attr("adj_y")
    batch_axes = set(range(rank - 2))
    placed = set()
    for i, a in axes.items():
        if a in batch_axes:
            placed.add(a)
            continue
        free = (rank - 2 + (1 if flip_a else 0)) if i == 0 else (rank - 1 - (1 if flip_b else 0))
        if a != free:
            return None, "it contracts the rows' axis"
        placed.add(rank - 2 if i == 0 else rank - 1)
    if len(placed) > 1:
        return None, "both operands carry rows (a product across the batch)"
    return placed.pop(), ""


def _moved(op, axis, rank):
    """The rows' axis after a transpose, expand, squeeze, concat, split, stack, softmax, scan or slice."""
    kind = op.type
    if kind == "Transpose":
        perm = _const(op.inputs[1])
        return (None if perm is None else perm.index(axis)), ""
    if kind == "ExpandDims":
        dim = _const(op.inputs[1])
        if dim is None or rank is None:
            return None, ""
        dim = dim[0] % (rank + 1)
        return (axis + 1 if dim <= axis else axis), ""
    if kind == "Squeeze":
        dims = op.get_attr("squeeze_dims")
        if not dims or rank is None:
            return None, ""
        dims = {d % rank for d in dims}
        return (None if axis in dims else axis - sum(d < axis for d in dims)), ""
    if kind in ("Softmax", "LogSoftmax"):
        return (None, "it normalises over the rows' axis") if axis == rank - 1 else (axis, "")
    if kind in _SCANS:
        dim = _const(op.inputs[1])
        if dim is None or rank is None:
            return None, ""
        return (None, "it accumulates along the rows' axis") if dim[0] % rank == axis else (axis, "")
    if kind == "Reshape" and axis == 0:  # rows kept whole: only each row's own shape changes
        src, dst = op.inputs[0].shape, op.outputs[0].shape
        whole = (src.rank and dst.rank and src[1:].is_fully_defined() and dst[1:].is_fully_defined()
                 and src[1:].num_elements() == dst[1:].num_elements())
        return (0 if whole else None), ""
    if kind == "StridedSlice" and axis == 0:
        strides = _const(op.inputs[3])
        whole = (strides is not None and strides[0] == 1 and op.get_attr("begin_mask") & 1
                 and op.get_attr("end_mask") & 1 and not op.get_attr("ellipsis_mask")
                 and not op.get_attr("new_axis_mask") and not op.get_attr("shrink_axis_mask") & 1)
        return (0 if whole else None), ""
    return None, ""


def _follow(op, axes):
    """``(axis of the rows in op's outputs or None, why op combines rows or "")`` for ``axes``: the rows' axis
    of each of op's inputs that carries them, by input index."""
    kind = op.type
    first = next(iter(axes.values()))
    rank = _rank(op.inputs[next(iter(axes))])
    if kind in _ELEMENTWISE:
        return _elementwise(op, axes)
    if kind in _REDUCTIONS:
        return _reduction(op, first, rank) if 0 in axes else (None, "")
    if kind in _MATMULS:
        return _matmul(op, axes)
    if kind == "Pack":  # tf.stack: a new axis at ``axis``
        if len(set(axes.values())) > 1 or rank is None:
            return None, ""
        along = op.get_attr("axis") % (rank + 1)
        return (first + 1 if along <= first else first), ""
    if kind == "ConcatV2":
        along = _const(op.inputs[-1])
        if len(set(axes.values())) > 1 or rank is None or along is None:
            return None, ""
        return (None if along[0] % rank == first else first), ""  # joined along the rows: no longer followed
    if kind in ("Split", "SplitV"):
        along = _const(op.inputs[0 if kind == "Split" else 2])
        if along is None or rank is None or (kind == "Split" and 1 not in axes) or (kind == "SplitV" and 0 not in axes):
            return None, ""
        return (None if along[0] % rank == first else first), ""
    if len(axes) == 1 and 0 in axes:
        return _moved(op, first, rank)
    return None, ""


def mixing(ops, rows):
    """The first of ``ops`` (in graph order) that combines different rows of ``rows`` (tensors whose axis 0 is
    the rows), as ``"<op type> '<name>': <why>"``; ``""`` if none is proven to."""
    carried = {t.ref(): 0 for t in rows}
    for op in ops:
        axes = {i: carried[t.ref()] for i, t in enumerate(op.inputs) if t.ref() in carried}
        if not axes:
            continue
        axis, why = _follow(op, axes)
        if why:
            return f"{op.type} '{op.name}': {why}"
        if axis is not None:
            for out in op.outputs:
                carried[out.ref()] = axis
    return ""
