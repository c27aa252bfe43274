"""Time in the loops: how T steps are cut into loop iterations (``Plan``), and how whole sequences are
read and written a block at a time (``Time``), time-major ``[T, B, ..]`` or, under XLA, batch-major
``[B, T, ..]`` without transposed copies.
"""

from typing import NamedTuple

import tensorflow as tf

# Private but stable (jax2tf builds on it): XLA's own ops, for ``_time_put``.
from tensorflow.compiler.tf2xla.python import xla as _xla

from fastcarry._validity import Validity


def pad_to_multiple(x, validity, unroll):
    """Pads time to a multiple of ``unroll``, and to at least one loop iteration, when T is only known at run time.

    With a static T the remainder steps are unrolled in Python after the loop
    instead; with a dynamic T their count is not known when tracing, so the
    padded steps are marked as not real (``Validity.padded``). At least one
    iteration: a T of 0 at run time would otherwise leave empty arrays, which
    TF cannot stack without a static B and XLA cannot slice a step from (a
    traced function with T unknown, called with T = 0).
    Returns ``(x [T', B, D], validity, T)``.
    """
    t = tf.shape(x)[0]
    padded = tf.maximum((t + unroll - 1) // unroll, 1) * unroll
    x = tf.pad(x, [[0, padded - t], [0, 0], [0, 0]])
    return x, validity.padded(t, padded - t, tf.shape(x)[1]), t


def pad_time(plan, seq):
    """``seq [T, B, ..]`` padded to ``[T_run, B, ..]`` like ``plan.x`` (a no-op for a static T)."""
    pad = plan.t_run - plan.t_true
    if isinstance(pad, int) and not pad:
        return seq
    return tf.pad(seq, [[0, pad]] + [[0, 0]] * (seq.shape.rank - 1))


class Plan(NamedTuple):
    """How T steps are cut: ``[0, n_loop * unroll)`` in the while loop, ``tail`` (static) after it."""

    x: tf.Tensor          # [T_run, B, D], padded when T is dynamic (see pad_to_multiple)
    validity: Validity    # which of the T_run steps are real
    t_true: object        # T (int when static)
    t_run: object         # T_run >= T
    n_loop: object        # while-loop iterations
    tail: range           # time steps unrolled in Python after the loop


def make_plan(x, validity, steps, time_axis=0):
    """Cuts ``x``'s T steps into iterations of ``steps`` (``x [T, B, D]``; ``[B, T, D]`` with ``time_axis=1``,
    static T only)."""
    t_static = x.shape[time_axis]
    if t_static is None:
        assert time_axis == 0, "only a time-major x can be padded"
        x, validity, t_true = pad_to_multiple(x, validity, steps)
        t_run = tf.shape(x)[0]
        return Plan(x, validity, t_true, t_run, t_run // steps, range(0))
    n_loop = t_static // steps
    return Plan(x, validity, t_static, t_static, n_loop, range(n_loop * steps, t_static))


def while_options(parallel_iterations):
    """``tf.while_loop`` keywords: ``parallel_iterations`` only when given (XLA ignores it)."""
    return {} if parallel_iterations is None else {"parallel_iterations": parallel_iterations}


def counted_loop(body, loop_vars, n, parallel_iterations=None):
    """``tf.while_loop(cond, body, loop_vars)`` run exactly ``n`` times (an int, or a scalar tensor for a
    run-time T), ended by ``maximum_iterations`` alone.

    TF counts ``maximum_iterations`` with a counter of its own and ands
    ``counter < n`` into the condition; a second bound in ``cond`` (``i < n``,
    or ``i >= 0`` for a loop that counts down) would leave XLA a conjunction,
    whose trip count its analysis does not derive. With the counter alone the
    compiled loop has a known trip count (``known_trip_count`` in the optimized
    HLO): TensorLists of a fixed size, and on a GPU no copy of the condition to
    the host each iteration. ``body`` still gets and returns its own index.
    """
    return tf.while_loop(lambda *_: tf.constant(True), body, loop_vars, maximum_iterations=n,
                         **while_options(parallel_iterations))


def has_loop(plan):
    """False when the plan has no while-loop iteration (static T < steps per iteration).

    XLA rejects reading from an empty TensorArray, so then there is no loop.
    """
    return not (isinstance(plan.n_loop, int) and plan.n_loop == 0)


def tensor_array(dtype, size, element_shape=None):
    return tf.TensorArray(dtype, size=size, element_shape=element_shape)


def _blocks(x, plan, unroll):
    """``x [T_run, B, D]`` as a TensorArray of ``[unroll, B, D]`` blocks, one per loop iteration."""
    main = x[: plan.n_loop * unroll] if plan.tail else x
    shape = tf.concat([[plan.n_loop, unroll], tf.shape(x)[1:]], 0)
    return tensor_array(x.dtype, plan.n_loop, tf.TensorShape([unroll]).concatenate(x.shape[1:])).unstack(
        tf.reshape(main, shape))


def _stack_blocks(ta, tail_part, t_true):
    """A ``[N, C, B, ..]`` TensorArray or None, then a ``[tail, B, ..]`` part or None -> ``[T, B, ..]``."""
    parts = []
    if ta is not None:
        stacked = ta.stack()
        parts.append(tf.reshape(stacked, tf.concat([[-1], tf.shape(stacked)[2:]], 0)))
    if tail_part is not None:
        parts.append(tail_part)
    return (tf.concat(parts, 0) if len(parts) > 1 else parts[0])[:t_true]


def time_slice(seq, start, size):
    """``seq [B, T, H]`` steps ``[start, start + size)`` as ``[size, B, H]``: one block, transposed alone.

    Explicit sizes, not -1: with a run-time start and -1 sizes, TF's XLA
    lowering pads the whole input to twice its size in every dimension.
    """
    shape = tf.shape(seq)
    piece = tf.slice(seq, tf.stack([0, start, 0]), tf.stack([shape[0], size, shape[2]]))
    return tf.transpose(piece, [1, 0, 2])


def _time_put(seq, start, piece):
    """``seq [B, T, H]`` with steps ``[start, start + size)`` set to ``piece [size, B, H]``.

    XLA only (``Time`` is batch-major only under XLA): a dynamic-update-slice,
    which XLA runs in place on a loop-carried buffer. (A scatter runs in place
    too but is slower; TF's ``TensorStridedSliceUpdate`` is refused by XLA at a
    run-time start.)
    """
    return _xla.dynamic_update_slice(seq, tf.transpose(piece, [1, 0, 2]), tf.stack([0, start, 0]))


class Time(NamedTuple):
    """How a loop reads and writes whole sequences, one ``[C, B, ..]`` block per iteration.

    Time-major (``[T, B, ..]`` in processing order): TensorArrays, of blocks, or
    of steps with ``per_step`` (small C: the tail's steps then go into the same
    array instead of a concatenated copy of the whole result).
    Batch-major (``[B, T, ..]``, static T, not reversed; XLA only): each block is sliced
    out and transposed alone, and results are written into a ``[B, T, ..]``
    buffer as they are made, so no transposed copy of a whole sequence exists
    (on CPU every such buffer also costs page faults on each call).
    """

    plan: Plan
    steps: int  # steps per block (a loop iteration's unroll, or a BPTT chunk)
    batch_major: bool
    per_step: bool = False

    def reader(self, seq):
        """``(read(i) -> block i, tail [len(tail), B, ..] or None)``; call outside any loop."""
        plan, steps = self.plan, self.steps
        if self.batch_major:
            return ((lambda i: time_slice(seq, i * steps, steps)),
                    time_slice(seq, plan.tail.start, len(plan.tail)) if plan.tail else None)
        read = _blocks(seq, plan, steps).read if has_loop(plan) else None
        return read, seq[plan.tail.start:] if plan.tail else None

    def new(self, like, width):
        """An empty result with ``like``'s layout, B and T and ``width`` features, to ``put`` blocks into."""
        if self.batch_major:
            return tf.zeros(tf.stack([tf.shape(like)[0], self.plan.t_true, width]), like.dtype)
        step = tf.TensorShape([like.shape[1], width])
        if self.per_step:
            return tensor_array(like.dtype, self.plan.t_run, step)
        return tensor_array(like.dtype, self.plan.n_loop, tf.TensorShape([self.steps]).concatenate(step))

    def put(self, result, i, value, start=None):
        """Chunk ``i`` into ``result``: ``value [C, B, width]``, or with ``per_step`` a list of C ``[B, width]``.

        ``start`` (a step) replaces ``i`` for the tail.
        """
        start = i * self.steps if start is None else start
        if not self.per_step:
            return _time_put(result, start, value) if self.batch_major else result.write(i, value)
        # One write per step, which XLA fuses into the step's last fusion.
        for j, row in enumerate(value):
            result = _time_put(result, start + j, row[None]) if self.batch_major else result.write(start + j, row)
        return result

    def finish(self, result, tail_value):
        """The whole sequence, with the tail's ``[len(tail), B, width]`` (or None) at the end."""
        if self.batch_major or self.per_step:
            if tail_value is not None:
                result = self.put(result, None, tail_value, start=self.plan.tail.start)
            return result if self.batch_major else result.stack()[: self.plan.t_true]
        return _stack_blocks(result if has_loop(self.plan) else None, tail_value, self.plan.t_true)


def tensor_arrays_like(structure, size):
    """One TensorArray of ``size`` per component of ``structure`` (a structure of ``[B, ..]``)."""
    return [tensor_array(s.dtype, size, s.shape) for s in tf.nest.flatten(structure)]


def write_all(tas, t, structure):
    return [ta.write(t, s) for ta, s in zip(tas, tf.nest.flatten(structure))]
