"""The time loop: runs a cell's pure ``step`` over time; knows no cell math.

Everything here is time-major and in *processing order* (the order the steps
run in); reversing and batch-major layouts are handled by the caller
(``fastcarry._unroll``). Shapes: ``x [T, B, D]``, ``xp [T, B, G]``,
``ys [T, B, H]``, ``lengths [B]`` int32 or None.

``forward`` runs the loop once. ``backward`` is its gradient, written by hand
because TF cannot differentiate a loop compiled by XLA from outside the compiled
function (the accumulators it would need are TensorLists, which cannot cross the
XLA/TF boundary: "Support for TensorList crossing the XLA/TF boundary is not
implemented"). It walks time in reverse, takes the VJP of one step at a time at
the state saved by ``forward``, and carries only the state gradient.
"""

from typing import Callable, Hashable, NamedTuple, Optional

import tensorflow as tf


class Split(NamedTuple):
    """A step split at its one recurrent matmul (see ``fastcarry.kernels``).

    recurrent_input: ``state -> h [B, H]``.
    recurrent: ``(params, h [N, H]) -> rec [N, G]``, linear in params and h.
    update: ``(state, xp_t, rec_t) -> (state, y_t)``, elementwise.
    """

    recurrent_input: Callable
    recurrent: Callable
    update: Callable


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


def _masked_update(split, state, xp_t, rec_t, valid):
    return _mask(valid, *split.update(state, xp_t, rec_t), state)


def _pad_to_multiple(xp, lengths, unroll):
    """Pads time to a multiple of ``unroll`` when T is only known at run time.

    With a static T the remainder steps are unrolled in Python after the loop
    instead; with a dynamic T their count is not known when tracing, so the
    padded steps are masked out as if they were past every row's length.
    Returns ``(xp [T', B, G], lengths [B], T)``.
    """
    t = tf.shape(xp)[0]
    padded = (t + unroll - 1) // unroll * unroll
    xp = tf.pad(xp, [[0, padded - t], [0, 0], [0, 0]])
    full = tf.fill(tf.shape(xp)[1:2], t)
    lengths = full if lengths is None else tf.minimum(lengths, t)
    return xp, lengths, t


def _plan(xp, lengths, unroll):
    """``(xp, lengths, T_true, T_run, n_loop, tail)`` for a loop of ``unroll`` steps an iteration.

    Time steps ``[0, n_loop * unroll)`` run in the while loop, ``tail`` (a
    Python range, static) after it.
    """
    t_static = xp.shape[0]
    if t_static is None and unroll > 1:
        xp, lengths, t_true = _pad_to_multiple(xp, lengths, unroll)
        t_run = tf.shape(xp)[0]
        return xp, lengths, t_true, t_run, t_run // unroll, range(0)
    t_run = t_static if t_static is not None else tf.shape(xp)[0]
    n_loop = t_run // unroll
    tail = range(n_loop * unroll, t_static) if t_static is not None else range(0)
    return xp, lengths, t_run, t_run, n_loop, tail


def _ta(dtype, size, element_shape=None):
    return tf.TensorArray(dtype, size=size, element_shape=element_shape)


def forward(core, params, x, state, lengths, unroll, save_states=False):
    """Runs the loop.

    Args:
      core: the cell's ``Core``.
      params: the cell's weights (a NamedTuple of tensors).
      x: ``[T, B, D]`` inputs in processing order.
      state: initial state (the cell's structure of ``[B, ...]`` tensors).
      lengths: ``[B]`` int32 valid steps per row, or None (all T).
      unroll: static int >= 1, steps per loop iteration.
      save_states: also return the state *before* every step, for ``backward``.

    Returns:
      ``(ys [T, B, H], final_state, saved)`` where ``saved`` is a list of
      ``[T, B, ...]`` stacks: one per flattened state component, then (for a
      core with a ``split``) the recurrent matmul's result ``rec [T, B, G]``;
      ``[]`` when ``save_states`` is False.
    """
    with tf.name_scope("project"):
        xp = core.project(params, x)
    xp, lengths, t_true, t_run, n_loop, tail = _plan(xp, lengths, unroll)
    flat_state = tf.nest.flatten(state)

    xs = _ta(xp.dtype, t_run, xp.shape[1:]).unstack(xp)
    ys = _ta(xp.dtype, t_run, tf.TensorShape([xp.shape[1], core.output_size]))
    split = core.split
    saved = []
    if save_states:
        saved = [_ta(s.dtype, t_run, s.shape) for s in flat_state]
        if split is not None:
            saved.append(_ta(xp.dtype, t_run, xp.shape[1:]))

    def one_step(t, state, ys, saved):
        valid = _valid(t, lengths)
        if not saved or split is None:
            saved = [ta.write(t, s) for ta, s in zip(saved, tf.nest.flatten(state))]
            state, y = _masked_step(core, params, state, xs.read(t), valid)
            return state, ys.write(t, y), saved
        rec = split.recurrent(params, split.recurrent_input(state))
        saved = [ta.write(t, s) for ta, s in zip(saved, tf.nest.flatten(state) + [rec])]
        state, y = _masked_update(split, state, xs.read(t), rec, valid)
        return state, ys.write(t, y), saved

    def body(i, state, ys, saved):
        for j in range(unroll):
            state, ys, saved = one_step(i * unroll + j, state, ys, saved)
        return i + 1, state, ys, saved

    with tf.name_scope("recurrence"):
        # A static trip count: XLA needs fixed-size TensorLists, and on GPU it
        # avoids a host sync per iteration.
        _, state, ys, saved = tf.while_loop(
            lambda i, *_: i < n_loop, body, (tf.constant(0), state, ys, saved),
            maximum_iterations=n_loop)
        for t in tail:
            state, ys, saved = one_step(t, state, ys, saved)

    ys = ys.stack()[:t_true]
    return ys, state, [ta.stack()[:t_true] for ta in saved]


def _reverse_loop(one_vjp, carry, n_loop, unroll, tail):
    """Runs ``carry = one_vjp(t, *carry)`` for t = T-1 .. 0 (the tail first, then the loop)."""
    for t in reversed(tail):
        carry = one_vjp(t, *carry)

    def body(i, *carry):
        for j in reversed(range(unroll)):
            carry = one_vjp(i * unroll + j, *carry)
        return (i - 1, *carry)

    return tf.while_loop(lambda i, *_: i >= 0, body, (n_loop - 1, *carry), maximum_iterations=n_loop)[1:]


def backward(core, params, x, lengths, unroll, state_like, saved, dys, dfinal):
    """The gradient of ``forward`` by a reverse loop over time.

    Args:
      core, params, x, lengths, unroll: as given to ``forward``.
      state_like: any value with the state's structure (to rebuild it).
      saved: ``forward``'s ``saved`` (states before each step, then ``rec``
        for a core with a split), ``[T, B, ...]`` each.
      dys: ``[T, B, H]`` cotangent of ``ys``.
      dfinal: cotangent of the final state (the state's structure).

    Returns:
      ``(dx [T, B, D], dstate0, dparams)``, the last two in the structures of
      ``state`` and ``params``.

    With a split core the loop carries only the state gradient: per step the
    VJP of the elementwise ``update`` and one ``drec @ recurrent_kernelᵀ``; the
    weight gradients are then one large matmul over all ``[T * B]`` rows.
    Without one it takes the VJP of the whole step and sums weight gradients
    step by step.
    """
    with tf.GradientTape() as tape:
        tape.watch([x, params])
        with tf.name_scope("project"):
            xp = core.project(params, x)
    xp_run, lengths, t_true, t_run, n_loop, tail = _plan(xp, lengths, unroll)
    pad = t_run - t_true
    padded = saved
    if not isinstance(pad, int) or pad:
        dys = tf.pad(dys, [[0, pad], [0, 0], [0, 0]])
        padded = [tf.pad(s, [[0, pad]] + [[0, 0]] * (s.shape.rank - 1)) for s in saved]
    n_state = len(tf.nest.flatten(state_like))
    xs = _ta(xp.dtype, t_run, xp.shape[1:]).unstack(xp_run)
    dys_ta = _ta(dys.dtype, t_run, dys.shape[1:]).unstack(dys)
    saved_tas = [_ta(s.dtype, t_run, s.shape[1:]).unstack(s) for s in padded]
    dxs = _ta(xp.dtype, t_run, xp.shape[1:])

    def read_state(t):
        return tf.nest.pack_sequence_as(state_like, [ta.read(t) for ta in saved_tas[:n_state]])

    with tf.name_scope("recurrence_grad"):
        if core.split is None:
            dstate, dxs, dparams = _per_step_vjps(core, params, lengths, read_state, xs, dys_ta, dxs,
                                                  dfinal, n_loop, unroll, tail)
        else:
            dstate, dxs, dparams = _fused_vjps(core.split, params, lengths, read_state, xs, dys_ta, dxs,
                                               saved_tas[n_state], saved, state_like, t_true, dfinal,
                                               n_loop, unroll, tail)

    dxp = dxs.stack()[:t_true]
    with tf.name_scope("project_grad"):
        dx, dparams_in = tape.gradient(
            xp, [x, params], output_gradients=dxp,
            unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return dx, dstate, tf.nest.map_structure(tf.add, dparams, dparams_in)


def _per_step_vjps(core, params, lengths, read_state, xs, dys_ta, dxs, dfinal, n_loop, unroll, tail):
    def one_vjp(t, dstate, dparams, dxs):
        state, xp_t = read_state(t), xs.read(t)
        with tf.GradientTape() as step_tape:
            step_tape.watch([state, xp_t, params])
            new_state, y = _masked_step(core, params, state, xp_t, _valid(t, lengths))
        dstate, dxp_t, dparams_t = step_tape.gradient(
            [new_state, y], [state, xp_t, params], output_gradients=[dstate, dys_ta.read(t)],
            unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return dstate, tf.nest.map_structure(tf.add, dparams, dparams_t), dxs.write(t, dxp_t)

    dparams = tf.nest.map_structure(tf.zeros_like, params)
    dstate, dparams, dxs = _reverse_loop(one_vjp, (dfinal, dparams, dxs), n_loop, unroll, tail)
    return dstate, dxs, dparams


def _fused_vjps(split, params, lengths, read_state, xs, dys_ta, dxs, recs, saved, state_like, t_true,
                dfinal, n_loop, unroll, tail):
    drecs = _ta(dys_ta.dtype, dxs.size(), recs.element_shape)

    def one_vjp(t, dstate, dxs, drecs):
        state, xp_t, rec_t = read_state(t), xs.read(t), recs.read(t)
        with tf.GradientTape() as step_tape:
            step_tape.watch([state, xp_t, rec_t])
            new_state, y = _masked_update(split, state, xp_t, rec_t, _valid(t, lengths))
        dstate_direct, dxp_t, drec_t = step_tape.gradient(
            [new_state, y], [state, xp_t, rec_t], output_gradients=[dstate, dys_ta.read(t)],
            unconnected_gradients=tf.UnconnectedGradients.ZERO)
        # d h_prev = drec @ recurrent_kernelᵀ: the only matmul in the loop. The
        # tape's forward matmul is dead code that XLA removes.
        with tf.GradientTape() as rec_tape:
            rec_tape.watch(state)
            rec = split.recurrent(params, split.recurrent_input(state))
        dstate_rec = rec_tape.gradient(rec, state, output_gradients=drec_t,
                                       unconnected_gradients=tf.UnconnectedGradients.ZERO)
        dstate = tf.nest.map_structure(tf.add, dstate_direct, dstate_rec)
        return dstate, dxs.write(t, dxp_t), drecs.write(t, drec_t)

    dstate, dxs, drecs = _reverse_loop(one_vjp, (dfinal, dxs, drecs), n_loop, unroll, tail)
    # Weight gradients of the recurrent matmul over all steps at once:
    # d recurrent_kernel = H_prevᵀ · DREC with H_prev, DREC as [T * B, ...].
    h_prev = split.recurrent_input(tf.nest.pack_sequence_as(state_like, saved[:len(tf.nest.flatten(state_like))]))
    drec = drecs.stack()[:t_true]
    flat_h = tf.reshape(h_prev, [-1, tf.shape(h_prev)[-1]])
    flat_drec = tf.reshape(drec, [-1, tf.shape(drec)[-1]])
    with tf.GradientTape() as weight_tape:
        weight_tape.watch(params)
        rec_all = split.recurrent(params, flat_h)
    dparams = weight_tape.gradient(rec_all, params, output_gradients=flat_drec,
                                   unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return dstate, dxs, dparams
