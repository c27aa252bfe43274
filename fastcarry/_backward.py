"""The gradient of ``fastcarry._loop.forward``, written by hand: a reverse loop over what it saved.

Written by hand because TF cannot differentiate a loop compiled by XLA from
outside the compiled function (the accumulators it would need are
TensorLists, which cannot cross the XLA/TF boundary: "Support for TensorList
crossing the XLA/TF boundary is not implemented"). It walks time in reverse,
takes the VJP of one step at a time at the state saved by ``forward``, and
carries only the state gradient. Time-major, processing order, as ``forward``.
"""

import tensorflow as tf

from fastcarry._protocol import masked_step, masked_update, step_shapes, valid_rows
from fastcarry._time import (make_plan, pad_time, tensor_array, tensor_arrays_like, time_slice, while_options,
                             write_all)


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
    plan = make_plan(x, lengths, unroll)
    dys, padded = pad_time(plan, dys), [pad_time(plan, s) for s in saved]
    n_state = len(tf.nest.flatten(state_like))
    if dys_batch_major:
        def dys_at(t):
            return time_slice(dys, t, 1)[0]
    else:
        dys_at = tensor_array(dys.dtype, plan.t_run, dys.shape[1:]).unstack(dys).read
    saved_tas = [tensor_array(s.dtype, plan.t_run, s.shape[1:]).unstack(s) for s in padded]

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
            xp = core.project(params, make_plan(x, plan.lengths, unroll).x)
    xs = tensor_array(xp.dtype, plan.t_run, xp.shape[1:]).unstack(xp)

    def one_vjp(t, dstate, dparams, dxs):
        state, xp_t = read_state(t), xs.read(t)
        with tf.GradientTape() as step_tape:
            step_tape.watch([state, xp_t, params])
            new_state, y = masked_step(core, params, state, xp_t, valid_rows(t, plan.lengths))
        dstate, dxp_t, dparams_t = step_tape.gradient(
            [new_state, y], [state, xp_t, params], output_gradients=[dstate, dys_at(t)],
            unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return dstate, tf.nest.map_structure(tf.add, dparams, dparams_t), dxs.write(t, dxp_t)

    dparams = tf.nest.map_structure(tf.zeros_like, params)
    dxs = tensor_array(xp.dtype, plan.t_run, xp.shape[1:])
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
    like = step_shapes(core, params, state_like, x)

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
            new_state, y = masked_update(split, state, a_t, valid_rows(t, plan.lengths))
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
        return dstate, write_all(das, t, da_t)

    das = tensor_arrays_like(like.a, plan.t_run)
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
