"""The time loop: runs a cell's pure ``step`` over time; knows no cell math.

Everything here is in *processing order* (the order the steps run in) and
time-major: ``x [T, B, D]``, ``xp [T, B, G]``, ``ys [T, B, H]``, ``lengths [B]``
int32 or None. Reversal is the caller's (``fastcarry._unroll``); so is a
batch-major layout, except that under XLA ``x``, ``ys`` and ``dys`` may stay
``[B, T, ..]`` and are then read and written a step at a time (``Time``),
instead of as transposed copies.

``forward`` runs the loop once. ``backward`` is its gradient, written by hand
because TF cannot differentiate a loop compiled by XLA from outside the compiled
function (the accumulators it would need are TensorLists, which cannot cross the
XLA/TF boundary: "Support for TensorList crossing the XLA/TF boundary is not
implemented"). It walks time in reverse, takes the VJP of one step at a time at
the state saved by ``forward``, and carries only the state gradient.
"""

from typing import Callable, Hashable, NamedTuple, Optional

import tensorflow as tf
# Private but stable (jax2tf builds on it): XLA's own ops, for ``_time_put``.
from tensorflow.compiler.tf2xla.python import xla as _xla


class Inner(NamedTuple):
    """A second recurrent matmul whose input needs the first one's result (reset-before GRU's ``(r * h) @ U_h``).

    input: ``(state, a) -> g [B, K]``, elementwise; it may read only the parts of
      ``a`` that ``combine`` leaves unchanged (GRU: ``r`` from ``a.zr``).
    recurrent: ``(params, g [N, K]) -> rec [N, G2]``, linear in params and g.
    combine: ``(a, rec) -> a``, linear in both; adds ``rec`` into ``a``.
    kernel: optional ``params -> W [K, G2]`` with ``recurrent(params, g) == g @ W``
      (plus terms free of ``g``); lets the backward loop use a pre-transposed ``W``.
    """

    input: Callable
    recurrent: Callable
    combine: Callable
    kernel: Optional[Callable] = None


class Split(NamedTuple):
    """A step split at its recurrent matmul (see ``fastcarry.kernels``)::

        a = combine(xp_t, recurrent(params, recurrent_input(state)))
        a = inner.combine(a, inner.recurrent(params, inner.input(state, a)))   # only with an inner
        step(params, state, xp_t) == update(state, a)

    recurrent_input: ``state -> h [B, H]``.
    recurrent: ``(params, h [N, H]) -> rec [N, G1]``, linear in params and h.
    combine: ``(xp [.., G], rec [.., G1]) -> a``, linear in both (LSTM: ``xp + rec``);
      ``a`` (a tensor or a NamedTuple of them) is what the forward pass saves per step.
    update: ``(state, a_t) -> (state, y_t)``, elementwise.
    inner: an ``Inner``, or None for cells with one recurrent matmul.
    kernel: optional ``params -> W [H, G1]`` with ``recurrent(params, h) == h @ W``
      (plus terms free of ``h``, such as a recurrent bias); see ``Inner.kernel``.
    """

    recurrent_input: Callable
    recurrent: Callable
    combine: Callable
    update: Callable
    inner: Optional[Inner] = None
    kernel: Optional[Callable] = None


def _preactivation(split, params, state, xp_t):
    """One step's ``a`` from ``state`` and ``xp_t [B, G]``: the recurrent matmul(s), no nonlinearity but the inner input's."""
    a = split.combine(xp_t, split.recurrent(params, split.recurrent_input(state)))
    if split.inner is not None:
        inner = split.inner
        a = inner.combine(a, inner.recurrent(params, inner.input(state, a)))
    return a


class Core(NamedTuple):
    """What the loop needs from a cell.

    key: hashable, names the math; cores with equal keys and output sizes share
      compiled functions, so the key must determine ``project`` and ``step``.
    project: ``(params, x [T, B, D]) -> xp [T, B, G]``, the input projection of all steps.
    step: ``(params, state, xp_t [B, G]) -> (state, y_t [B, output_size])``.
    output_size: H, the last dimension of ``y_t``.
    split: the same step as a ``Split``, or None; with it the backward pass
      does one ``drec @ recurrent_kernelᵀ`` per step and the weight gradients
      as single large matmuls after the loop (as cuDNN does).
    """

    key: Hashable
    project: Callable
    step: Callable
    output_size: int
    split: Optional[Split] = None


def _valid(t, lengths):
    """``[B, 1]`` bool: which rows have a real step at time ``t`` (None: all)."""
    return None if lengths is None else tf.expand_dims(t < lengths, -1)


def _mask(valid, new_state, y, state):
    """``dynamic_rnn``'s masking: past a row's length the state is copied through, the output is zero."""
    if valid is None:
        return new_state, y
    new_state = tf.nest.map_structure(lambda n, o: tf.where(valid, n, o), new_state, state)
    return new_state, tf.where(valid, y, tf.zeros_like(y))


def _masked_step(core, params, state, xp_t, valid):
    return _mask(valid, *core.step(params, state, xp_t), state)


def _masked_update(split, state, a_t, valid):
    return _mask(valid, *split.update(state, a_t), state)


def _pad_to_multiple(x, lengths, unroll):
    """Pads time to a multiple of ``unroll`` when T is only known at run time.

    With a static T the remainder steps are unrolled in Python after the loop
    instead; with a dynamic T their count is not known when tracing, so the
    padded steps are masked out as if they were past every row's length.
    Returns ``(x [T', B, D], lengths [B], T)``.
    """
    t = tf.shape(x)[0]
    padded = (t + unroll - 1) // unroll * unroll
    x = tf.pad(x, [[0, padded - t], [0, 0], [0, 0]])
    full = tf.fill(tf.shape(x)[1:2], t)
    lengths = full if lengths is None else tf.minimum(lengths, t)
    return x, lengths, t


def _pad_time(plan, seq):
    """``seq [T, B, ..]`` padded to ``[T_run, B, ..]`` like ``plan.x`` (a no-op for a static T)."""
    pad = plan.t_run - plan.t_true
    if isinstance(pad, int) and not pad:
        return seq
    return tf.pad(seq, [[0, pad]] + [[0, 0]] * (seq.shape.rank - 1))


class _Plan(NamedTuple):
    """How T steps are cut: ``[0, n_loop * unroll)`` in the while loop, ``tail`` (static) after it."""

    x: tf.Tensor          # [T_run, B, D], padded when T is dynamic and unroll > 1
    lengths: object       # [B] int32 or None
    t_true: object        # T (int when static)
    t_run: object         # T_run >= T
    n_loop: object        # while-loop iterations
    tail: range           # time steps unrolled in Python after the loop


def _plan(x, lengths, unroll, time_axis=0):
    """Cuts ``x``'s T steps (``x [T, B, D]``; ``[B, T, D]`` with ``time_axis=1``, static T only)."""
    t_static = x.shape[time_axis]
    if t_static is None and unroll > 1:
        assert time_axis == 0, "only a time-major x can be padded"
        x, lengths, t_true = _pad_to_multiple(x, lengths, unroll)
        t_run = tf.shape(x)[0]
        return _Plan(x, lengths, t_true, t_run, t_run // unroll, range(0))
    t_run = t_static if t_static is not None else tf.shape(x)[time_axis]
    n_loop = t_run // unroll
    tail = range(n_loop * unroll, t_static) if t_static is not None else range(0)
    return _Plan(x, lengths, t_run, t_run, n_loop, tail)


def while_options(parallel_iterations):
    """``tf.while_loop`` keywords: ``parallel_iterations`` only when given (XLA ignores it)."""
    return {} if parallel_iterations is None else {"parallel_iterations": parallel_iterations}


def has_loop(plan):
    """False when the plan has no while-loop iteration (static T < steps per iteration).

    XLA rejects reading from an empty TensorArray, so then there is no loop.
    """
    return not (isinstance(plan.n_loop, int) and plan.n_loop == 0)


def _ta(dtype, size, element_shape=None):
    return tf.TensorArray(dtype, size=size, element_shape=element_shape)


def _chunks(x, plan, unroll):
    """``x [T_run, B, D]`` as a TensorArray of ``[unroll, B, D]`` chunks, one per loop iteration."""
    main = x[: plan.n_loop * unroll] if plan.tail else x
    shape = tf.concat([[plan.n_loop, unroll], tf.shape(x)[1:]], 0)
    return _ta(x.dtype, plan.n_loop, tf.TensorShape([unroll]).concatenate(x.shape[1:])).unstack(
        tf.reshape(main, shape))


def _stack_chunks(ta, tail_part, t_true):
    """A ``[N, C, B, ..]`` TensorArray or None, then a ``[tail, B, ..]`` part or None -> ``[T, B, ..]``."""
    parts = []
    if ta is not None:
        stacked = ta.stack()
        parts.append(tf.reshape(stacked, tf.concat([[-1], tf.shape(stacked)[2:]], 0)))
    if tail_part is not None:
        parts.append(tail_part)
    return (tf.concat(parts, 0) if len(parts) > 1 else parts[0])[:t_true]


def _time_slice(seq, start, size):
    """``seq [B, T, H]`` steps ``[start, start + size)`` as ``[size, B, H]``: one chunk, transposed alone.

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
    """How a loop reads and writes whole sequences, one ``[C, B, ..]`` chunk per iteration.

    Time-major (``[T, B, ..]`` in processing order): TensorArrays, of chunks, or
    of steps with ``per_step`` (small C: the tail's steps then go into the same
    array instead of a concatenated copy of the whole result).
    Batch-major (``[B, T, ..]``, static T, not reversed; XLA only): each chunk is sliced
    out and transposed alone, and results are written into a ``[B, T, ..]``
    buffer as they are made, so no transposed copy of a whole sequence exists
    (for the memory benchmark's LSTM, 128 MiB of outputs and 32 MiB of inputs;
    on CPU every such buffer also costs page faults on each call).
    """

    plan: _Plan
    chunk: int
    batch_major: bool
    per_step: bool = False

    def reader(self, seq):
        """``(read(i) -> chunk i, tail [len(tail), B, ..] or None)``; call outside any loop."""
        plan, chunk = self.plan, self.chunk
        if self.batch_major:
            return ((lambda i: _time_slice(seq, i * chunk, chunk)),
                    _time_slice(seq, plan.tail.start, len(plan.tail)) if plan.tail else None)
        read = _chunks(seq, plan, chunk).read if has_loop(plan) else None
        return read, seq[plan.tail.start:] if plan.tail else None

    def new(self, like, width):
        """An empty result with ``like``'s layout, B and T and ``width`` features, to ``put`` chunks into."""
        if self.batch_major:
            return tf.zeros(tf.stack([tf.shape(like)[0], self.plan.t_true, width]), like.dtype)
        step = tf.TensorShape([like.shape[1], width])
        if self.per_step:
            return _ta(like.dtype, self.plan.t_run, step)
        return _ta(like.dtype, self.plan.n_loop, tf.TensorShape([self.chunk]).concatenate(step))

    def put(self, result, i, value, start=None):
        """Chunk ``i`` into ``result``: ``value [C, B, width]``, or with ``per_step`` a list of C ``[B, width]``.

        ``start`` (a step) replaces ``i`` for the tail.
        """
        start = i * self.chunk if start is None else start
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
        return _stack_chunks(result if has_loop(self.plan) else None, tail_value, self.plan.t_true)


class _Like(NamedTuple):
    """Zeros shaped like one step's pieces (``[B, ..]``); dead code once traced."""

    xp: tf.Tensor     # [B, G]
    rec: tf.Tensor    # [B, G1]
    a: object         # the structure of ``a``
    rec2: object      # [B, G2], or None without an inner matmul


def _shapes_of_step(core, params, state, x, time_axis=0):
    split = core.split
    # A sum, not ``[0]``: T may be 0.
    first = x[:1] if time_axis == 0 else x[:, :1]
    xp = tf.zeros_like(tf.reduce_sum(core.project(params, first), time_axis))
    rec = tf.zeros_like(split.recurrent(params, split.recurrent_input(state)))
    a = split.combine(xp, rec)
    rec2 = None
    if split.inner is not None:
        rec2 = tf.zeros_like(split.inner.recurrent(params, split.inner.input(state, a)))
        a = split.inner.combine(a, rec2)
    return _Like(xp, rec, a, rec2)


def _tas_like(structure, size):
    """One TensorArray of ``size`` per component of ``structure`` (a structure of ``[B, ..]``)."""
    return [_ta(s.dtype, size, s.shape) for s in tf.nest.flatten(structure)]


def _write(tas, t, structure):
    return [ta.write(t, s) for ta, s in zip(tas, tf.nest.flatten(structure))]


def forward(core, params, x, state, lengths, unroll, save_states=False, parallel_iterations=None,
            batch_major=False):
    """Runs the loop.

    The input projection runs per loop iteration, for its ``unroll`` steps at
    once (``[unroll * B, D] @ [D, G]``), not for all T before the loop: on CPU,
    an all-steps ``xp [T, B, G]`` costs more in memory traffic than the larger
    matmul saves (GRU B16 T500 D128 H256 inference: 129 ms hoisted, 49 ms in
    chunks of 10). ``unroll`` therefore sets both the steps per iteration and
    the projection's chunk.

    Args:
      core: the cell's ``Core``.
      params: the cell's weights (a NamedTuple of tensors).
      x: ``[T, B, D]`` inputs in processing order.
      state: initial state (the cell's structure of ``[B, ...]`` tensors).
      lengths: ``[B]`` int32 valid steps per row, or None (all T).
      unroll: static int >= 1, steps per loop iteration.
      save_states: also return what ``backward`` needs.
      parallel_iterations: the while loop's, or None for TF's default; only a
        graph loop uses it (XLA runs iterations in order).
      batch_major: ``x [B, T, D]`` and ``ys [B, T, H]`` (static T, processing
        order), read and written an iteration at a time (see ``Time``);
        ``saved`` stays time-major.

    Returns:
      ``(ys [T, B, H], final_state, saved)`` where ``saved`` is a list of
      ``[T, B, ...]`` stacks: the state *before* every step, one per flattened
      state component, then (for a core with a ``split``) the flattened
      ``combine`` result ``a`` of every step; ``[]`` when ``save_states`` is False.
    """
    plan = _plan(x, lengths, unroll, time_axis=1 if batch_major else 0)
    time = Time(plan, unroll, batch_major, per_step=True)
    split = core.split if save_states else None
    saved = _tas_like(state, plan.t_run) if save_states else []
    n_state = len(saved)

    def one_step(t, state, xp_t, saved):
        valid = _valid(t, plan.lengths)
        # Scopes name the phases a trace shows (fastcarry.profiling).
        if split is None:
            saved = _write(saved, t, state)
            with tf.name_scope("step"):
                state, y = _masked_step(core, params, state, xp_t, valid)
            return state, y, saved
        with tf.name_scope("recurrent_matmul"):
            a_t = _preactivation(split, params, state, xp_t)
        saved = _write(saved[:n_state], t, state) + _write(saved[n_state:], t, a_t)
        with tf.name_scope("gates"):
            state, y = _masked_update(split, state, a_t, valid)
        return state, y, saved

    def run_chunk(t0, x_chunk, steps, state, saved):
        """``steps`` steps from ``t0``: ``x_chunk [steps, B, D]`` -> ``steps`` outputs ``[B, H]``."""
        with tf.name_scope("project"):
            xp = core.project(params, x_chunk)
        ys = []
        for j in range(steps):
            state, y, saved = one_step(t0 + j, state, xp[j], saved)
            ys.append(y)
        return state, ys, saved

    if split is not None:
        # The arrays for ``a`` must exist before the loop.
        saved = saved + _tas_like(_shapes_of_step(core, params, state, plan.x, 1 if batch_major else 0).a,
                                  plan.t_run)
    x_chunk, x_tail = time.reader(plan.x)
    ys = time.new(x, core.output_size)
    with tf.name_scope("recurrence"):
        def body(i, state, ys, saved):
            state, ys_c, saved = run_chunk(i * unroll, x_chunk(i), unroll, state, saved)
            return i + 1, state, time.put(ys, i, ys_c), saved

        if has_loop(plan):
            # A static trip count: XLA needs fixed-size TensorLists, and on GPU
            # it avoids a host sync per iteration.
            _, state, ys, saved = tf.while_loop(
                lambda i, *_: i < plan.n_loop, body, (tf.constant(0), state, ys, saved),
                maximum_iterations=plan.n_loop, **while_options(parallel_iterations))
        ys_tail = None
        if plan.tail:
            state, ys_tail, saved = run_chunk(plan.tail.start, x_tail, len(plan.tail), state, saved)
    return time.finish(ys, ys_tail), state, [ta.stack()[: plan.t_true] for ta in saved]


def _reverse_loop(one_vjp, carry, n_loop, unroll, tail, parallel_iterations):
    """Runs ``carry = one_vjp(t, *carry)`` for t = T-1 .. 0 (the tail first, then the loop)."""
    for t in reversed(tail):
        carry = one_vjp(t, *carry)

    def body(i, *carry):
        for j in reversed(range(unroll)):
            carry = one_vjp(i * unroll + j, *carry)
        return (i - 1, *carry)

    return tf.while_loop(lambda i, *_: i >= 0, body, (n_loop - 1, *carry), maximum_iterations=n_loop,
                         **while_options(parallel_iterations))[1:]


def backward(core, params, x, lengths, unroll, state_like, saved, dys, dfinal, parallel_iterations=None,
             dys_batch_major=False):
    """The gradient of ``forward`` by a reverse loop over time.

    Args:
      core, params, x, lengths, unroll: as given to ``forward``.
      state_like: any value with the state's structure (to rebuild it).
      saved: ``forward``'s ``saved``, ``[T, B, ...]`` each.
      dys: ``[T, B, H]`` cotangent of ``ys``.
      dfinal: cotangent of the final state (the state's structure).
      parallel_iterations: as for ``forward``.
      dys_batch_major: ``dys`` is ``[B, T, H]`` (static T, processing order),
        read one step at a time instead of as a transposed copy.

    Returns:
      ``(dx [T, B, D], dstate0, dparams)``, the last two in the structures of
      ``state`` and ``params``.

    With a split core (cuDNN's scheme) the loop carries only the state
    gradient; per step it takes the VJP of the elementwise ``update`` at the
    saved ``a_t``, does one ``drec @ recurrent_kernelᵀ``, and writes ``da_t``.
    After the loop everything else is a few large matmuls over all ``[T * B]``
    rows: ``d kernel = Xᵀ·DXP``, ``dx = DXP·kernelᵀ``, ``d recurrent_kernel =
    H_prevᵀ·DREC``, biases as sums (for LSTM and SimpleRNN ``DXP = DREC = DA``).
    A split with an ``inner`` matmul (reset-before GRU) adds its VJP to the
    loop and ``d U_h = Gᵀ·DREC2`` (``G = inner.input`` of every step) after it.
    Without a split it takes the VJP of each whole step and sums weight
    gradients step by step.
    """
    plan = _plan(x, lengths, unroll)
    dys, padded = _pad_time(plan, dys), [_pad_time(plan, s) for s in saved]
    n_state = len(tf.nest.flatten(state_like))
    if dys_batch_major:
        def dys_at(t):
            return _time_slice(dys, t, 1)[0]
    else:
        dys_at = _ta(dys.dtype, plan.t_run, dys.shape[1:]).unstack(dys).read
    saved_tas = [_ta(s.dtype, plan.t_run, s.shape[1:]).unstack(s) for s in padded]

    def read_state(t):
        return tf.nest.pack_sequence_as(state_like, [ta.read(t) for ta in saved_tas[:n_state]])

    with tf.name_scope("recurrence_grad"):
        if core.split is None:
            return _per_step_vjps(core, params, x, plan, unroll, read_state, dys_at, dfinal, parallel_iterations)
        return _fused_vjps(core, params, x, plan, unroll, read_state, saved_tas[n_state:],
                           saved[:n_state], saved[n_state:], state_like, dys_at, dfinal, parallel_iterations)


def _per_step_vjps(core, params, x, plan, unroll, read_state, dys_at, dfinal, parallel_iterations):
    with tf.GradientTape() as tape:
        tape.watch([x, params])
        with tf.name_scope("project"):
            # Padded again under the tape (plan.x was padded outside it) so dx reaches x.
            xp = core.project(params, _plan(x, plan.lengths, unroll).x)
    xs = _ta(xp.dtype, plan.t_run, xp.shape[1:]).unstack(xp)

    def one_vjp(t, dstate, dparams, dxs):
        state, xp_t = read_state(t), xs.read(t)
        with tf.GradientTape() as step_tape:
            step_tape.watch([state, xp_t, params])
            new_state, y = _masked_step(core, params, state, xp_t, _valid(t, plan.lengths))
        dstate, dxp_t, dparams_t = step_tape.gradient(
            [new_state, y], [state, xp_t, params], output_gradients=[dstate, dys_at(t)],
            unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return dstate, tf.nest.map_structure(tf.add, dparams, dparams_t), dxs.write(t, dxp_t)

    dparams = tf.nest.map_structure(tf.zeros_like, params)
    dxs = _ta(xp.dtype, plan.t_run, xp.shape[1:])
    dstate, dparams, dxs = _reverse_loop(one_vjp, (dfinal, dparams, dxs), plan.n_loop, unroll, plan.tail,
                                         parallel_iterations)
    with tf.name_scope("project_grad"):
        dx, dparams_in = tape.gradient(xp, [x, params], output_gradients=dxs.stack(),
                                       unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return dx, dstate, tf.nest.map_structure(tf.add, dparams, dparams_in)


def _linear_vjp(f, primals, cotangent):
    """The VJP of ``f``, linear in ``primals``, at ``cotangent``; uses only the primals' shapes."""
    with tf.GradientTape() as tape:
        tape.watch(primals)
        out = f(*primals) if isinstance(primals, list) else f(primals)
    return tape.gradient(out, primals, output_gradients=cotangent,
                         unconnected_gradients=tf.UnconnectedGradients.ZERO)


def _matmul_input_vjp(recurrent, recurrent_input, params, kernel_t, primals, drec):
    """The VJP of ``recurrent(params, recurrent_input(*primals))`` w.r.t. ``primals`` at ``drec [B, G]``.

    With ``kernel_t`` (``Wᵀ [G, K]``) the matmul's part is ``drec @ kernel_t``,
    and the tape sees only the elementwise ``recurrent_input``; without, the
    tape does both (the forward matmul it records is dead code once traced).
    """
    with tf.GradientTape() as tape:
        tape.watch(primals)
        g = recurrent_input(*primals)
        out = g if kernel_t is not None else recurrent(params, g)
    cotangent = tf.matmul(drec, kernel_t) if kernel_t is not None else drec
    return tape.gradient(out, primals, output_gradients=cotangent, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def _stacked(like, t):
    """Zeros ``[T, B, ..]`` for each ``[B, ..]`` in ``like``."""
    return tf.nest.map_structure(lambda s: tf.zeros(tf.concat([[t], tf.shape(s)], 0), s.dtype), like)


def _flat(rows):
    """``[T, B, K] -> [T * B, K]``: one matmul over every (step, example) row."""
    return tf.reshape(rows, [-1, tf.shape(rows)[-1]])


def _fused_vjps(core, params, x, plan, unroll, read_state, a_tas, saved_states, saved_a, state_like,
                dys_at, dfinal, parallel_iterations):
    split, inner = core.split, core.split.inner
    like = _shapes_of_step(core, params, state_like, x)

    # Each recurrent matmul's Wᵀ, made once before the loop: inside it XLA:CPU's
    # dot against a transposed operand (what TF's MatMul gradient asks for) is
    # about 1.45x slower than a plain one ([16, 256] @ [256, 256]: 44 vs 31 µs).
    kernel_t = None if split.kernel is None else tf.transpose(split.kernel(params))
    inner_kernel_t = None if inner is None or inner.kernel is None else tf.transpose(inner.kernel(params))

    def inner_vjp(state, a_t, da_t):
        # Back through ``a += inner.recurrent(inner.input(state, a))``: one
        # ``drec2 @ U_h^T`` and the elementwise VJP of the inner input.
        da_pass, drec2 = _linear_vjp(inner.combine, [tf.nest.map_structure(tf.zeros_like, like.a), like.rec2],
                                     da_t)
        dstate, da_input = _matmul_input_vjp(inner.recurrent, inner.input, params, inner_kernel_t, [state, a_t],
                                             drec2)
        return dstate, tf.nest.map_structure(tf.add, da_pass, da_input)

    def one_vjp(t, dstate, das):
        state = read_state(t)
        a_t = tf.nest.pack_sequence_as(like.a, [ta.read(t) for ta in a_tas])
        with tf.GradientTape() as step_tape:
            step_tape.watch([state, a_t])
            new_state, y = _masked_update(split, state, a_t, _valid(t, plan.lengths))
        dstate_direct, da_t = step_tape.gradient(
            [new_state, y], [state, a_t], output_gradients=[dstate, dys_at(t)],
            unconnected_gradients=tf.UnconnectedGradients.ZERO)
        if inner is not None:
            dstate_inner, da_t = inner_vjp(state, a_t, da_t)
            dstate_direct = tf.nest.map_structure(tf.add, dstate_direct, dstate_inner)
        _, drec_t = _linear_vjp(split.combine, [like.xp, like.rec], da_t)
        # d h_prev = drec @ recurrent_kernelᵀ.
        dstate_rec, = _matmul_input_vjp(split.recurrent, split.recurrent_input, params, kernel_t, [state], drec_t)
        dstate = tf.nest.map_structure(tf.add, dstate_direct, dstate_rec)
        return dstate, _write(das, t, da_t)

    das = _tas_like(like.a, plan.t_run)
    dstate, das = _reverse_loop(one_vjp, (dfinal, das), plan.n_loop, unroll, plan.tail, parallel_iterations)
    da = tf.nest.pack_sequence_as(like.a, [ta.stack()[: plan.t_true] for ta in das])

    with tf.name_scope("weights_grad"):
        # Back through ``combine`` for all steps at once, then one large matmul
        # per weight, over all ``T * B`` (step, example) rows.
        dxp, drec = _linear_vjp(split.combine, [_stacked(like.xp, plan.t_true), _stacked(like.rec, plan.t_true)],
                                da)
        states = tf.nest.pack_sequence_as(state_like, saved_states)
        flat_h = _flat(split.recurrent_input(states))
        dparams_rec = _linear_vjp(lambda p: split.recurrent(p, flat_h), params, _flat(drec))
        if inner is not None:
            # Only the rec2 slot of ``da`` matters here; ``inner.input`` never
            # adds to it (see ``Inner``), so ``da`` after the inner VJP serves.
            _, drec2 = _linear_vjp(inner.combine, [_stacked(like.a, plan.t_true), _stacked(like.rec2, plan.t_true)],
                                   da)
            flat_g = _flat(inner.input(states, tf.nest.pack_sequence_as(like.a, saved_a)))
            dparams_inner = _linear_vjp(lambda p: inner.recurrent(p, flat_g), params, _flat(drec2))
            dparams_rec = tf.nest.map_structure(tf.add, dparams_rec, dparams_inner)
        dparams_in, dx = _linear_vjp(core.project, [params, x], dxp)
    return dx, dstate, tf.nest.map_structure(tf.add, dparams_rec, dparams_in)
