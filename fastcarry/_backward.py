"""The gradient of ``fastcarry._loop.forward``, written by hand: a reverse loop over what it saved.

Written by hand because TF cannot differentiate a loop compiled by XLA from
outside the compiled function (the accumulators it would need are
TensorLists, which cannot cross the XLA/TF boundary: "Support for TensorList
crossing the XLA/TF boundary is not implemented"). It walks time in reverse,
takes the VJP of one step at a time at the state saved by ``forward``, and
carries only the state gradient. Time-major, processing order, as ``forward``.
"""

from typing import Callable, NamedTuple

import tensorflow as tf

from fastcarry import _rows
from fastcarry._step import masked_update, step_shapes, weights
from fastcarry._time import counted_loop, make_plan, pad_time, tensor_array, tensor_arrays_like, time_slice, write_all


def _reverse_loop(one_vjp, carry, n_loop, unroll, tail, parallel_iterations):
    """Runs ``carry = one_vjp(t, *carry)`` for t = T-1 .. 0 (the tail first, then the loop)."""
    for t in reversed(tail):
        carry = one_vjp(t, *carry)

    def body(i, *carry):
        for j in reversed(range(unroll)):
            carry = one_vjp(i * unroll + j, *carry)
        return (i - 1, *carry)

    return counted_loop(body, (n_loop - 1, *carry), n_loop, parallel_iterations)[1:]


class _Pass(NamedTuple):
    """What one backward pass over time reads (time-major, processing order)."""

    core: object            # the cell's Core
    params: object          # its params (tensors)
    x: tf.Tensor            # [T, B, D]
    plan: object            # fastcarry._time.Plan of x
    unroll: int             # steps per loop iteration
    read_state: Callable    # t -> the state before step t (the state's structure of [B, ..])
    dys_at: Callable        # t -> dL/dy_t [B, H]
    dfinal: object          # dL/d final state
    parallel_iterations: object


def backward(core, params, x, validity, schedule, residuals, cotangents, *, dys_batch_major=False):
    """The gradient of ``forward`` by a reverse loop over time.

    Args:
      core, params, x, validity, schedule: as given to ``forward``.
      residuals: ``forward``'s ``Residuals``, ``[T, B, ...]`` each.
      cotangents: ``Cotangents``: ``outputs`` ``[T, B, H]``, or None for zeros
        (a loss of the final state only), and ``state``, of the final state
        (the state's structure).
      dys_batch_major: ``cotangents.outputs`` is ``[B, T, H]`` (static T,
        processing order), read one step at a time instead of as a transposed copy.

    Returns:
      ``(dx [T, B, D], dstate0, dweights)``: ``dstate0`` in the state's
      structure, ``dweights`` in that of ``weights(core, params)`` =
      ``(params, core.variables)``.

    With a split core (cuDNN's scheme) the loop carries only the state
    gradient; per step it takes the VJP of the elementwise ``update`` at the
    saved ``a_t``, does one ``drec @ recurrent_kernelᵀ``, and writes ``da_t``.
    After the loop everything else is a few large matmuls over all ``[T * B]``
    rows: ``d kernel = Xᵀ·DXP``, ``dx = DXP·kernelᵀ``, ``d recurrent_kernel =
    H_prevᵀ·DREC``, biases as sums (for LSTM and SimpleRNN ``DXP = DREC = DA``).
    A split with a second matmul (reset-before GRU) adds its VJP to the
    loop and ``d U_h = Gᵀ·DREC2`` (``G = second.input`` of every step) after it.
    Without a split the loop takes the VJP of each step w.r.t. the state
    only, writing the cotangents of its results; the weight and input
    gradients are then one VJP of the step over all ``T * B`` rows at once.
    """
    state_like, dys, dfinal = cotangents.state, cotangents.outputs, cotangents.state
    plan = make_plan(x, validity, schedule.unroll)
    if dys is None:  # a zero cotangent: zeros one step at a time, never a [T, B, H] buffer
        y_shape = tf.stack([tf.shape(x)[1], core.output_size])

        def dys_at(t):
            return tf.zeros(y_shape, x.dtype)
    elif dys_batch_major:
        def dys_at(t):
            return time_slice(dys, t, 1)[0]
    else:
        dys_at = tensor_array(dys.dtype, plan.t_run, dys.shape[1:]).unstack(pad_time(plan, dys)).read
    state_tas, a_tas = ([tensor_array(s.dtype, plan.t_run, s.shape[1:]).unstack(pad_time(plan, s)) for s in saved]
                        for saved in residuals)

    def read_state(t):
        return tf.nest.pack_sequence_as(state_like, [ta.read(t) for ta in state_tas])

    run = _Pass(core, params, x, plan, schedule.unroll, read_state, dys_at, dfinal, schedule.parallel_iterations)
    states = tf.nest.pack_sequence_as(state_like, residuals.states)
    with tf.name_scope("recurrence_grad"):
        if core.split is None:
            return _per_step_vjps(run, states)
        return _fused_vjps(run, a_tas, states, residuals.preactivations, state_like)


def _per_step_vjps(run, states):
    """The backward of a core without a split: per step the state's VJP, then one VJP over every row.

    The loop asks the tape for the state's gradient only, so no per-step
    weight gradient ([B, D]ᵀ @ [B, G] matmuls and [D, G] sums, T times) is
    made; it writes the cotangents of each step's (unmasked) results instead.
    The step treats batch rows independently, so the weight and input
    gradients of all T steps are one VJP of the step over ``[T * B]`` rows:
    large matmuls where XLA does best.
    """
    core, params, plan = run.core, run.params, run.plan
    with tf.name_scope("project"):
        xp = core.project(params, plan.x)
    xs = tensor_array(xp.dtype, plan.t_run, xp.shape[1:]).unstack(xp)

    def one_vjp(t, dstate, douts):
        state, xp_t = run.read_state(t), xs.read(t)
        valid = plan.validity.at(t)
        # Past a row's length the step's results are discarded (``mask``): their
        # cotangents are zero and the state's passes through unchanged.
        dnew, dy = _masked_cotangents(valid, dstate, run.dys_at(t))
        with tf.GradientTape() as step_tape:
            step_tape.watch(state)
            new_state, y = core.run_step(params, state, xp_t)
        dstep = step_tape.gradient([new_state, y], state, output_gradients=[dnew, dy],
                                   unconnected_gradients=tf.UnconnectedGradients.ZERO)
        if valid is not None:
            dstep = tf.nest.map_structure(lambda d, passed: tf.where(valid, d, passed), dstep, dstate)
        return dstep, write_all(douts, t, (dnew, dy))

    douts = tensor_arrays_like(run.dfinal, plan.t_run) + [
        tensor_array(xp.dtype, plan.t_run, tf.TensorShape([run.x.shape[1], core.output_size]))]
    dstate, douts = _reverse_loop(one_vjp, (run.dfinal, douts), plan.n_loop, run.unroll, plan.tail,
                                  run.parallel_iterations)
    stacked = [ta.stack()[: plan.t_true] for ta in douts]
    dnew, dy = tf.nest.pack_sequence_as(run.dfinal, stacked[:-1]), stacked[-1]

    with tf.name_scope("weights_grad"):
        w = weights(core, params)
        with tf.GradientTape() as tape:
            tape.watch([run.x, w])
            xp_all = core.project(params, run.x)
            rows = tf.nest.map_structure(_flat_rows, (states, xp_all))
            new_state, y = _run_on_rows(core, params, rows)
        dx, dw = tape.gradient([new_state, y], [run.x, w],
                               output_gradients=[tf.nest.map_structure(_flat_rows, dnew), _flat_rows(dy)],
                               unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return dx, dstate, dw


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


def _masked_cotangents(valid, dstate, dy):
    """The cotangents of a step's results before ``mask``: zero for rows past their length."""
    if valid is None:
        return dstate, dy
    return tf.nest.map_structure(lambda d: tf.where(valid, d, tf.zeros_like(d)), (dstate, dy))


def _stacked(like, t):
    """Zeros ``[T, B, ..]`` for each ``[B, ..]`` in ``like``."""
    return tf.nest.map_structure(lambda s: tf.zeros(tf.concat([[t], tf.shape(s)], 0), s.dtype), like)


def _run_on_rows(core, params, rows):
    """``core.run_step`` on every (step, row) pair at once, refused (``ValueError``) where its graph shows the
    step combining rows (``fastcarry._rows``): the one call's gradients would then be wrong."""
    graph = tf.compat.v1.get_default_graph()
    before = len(graph.get_operations())
    new_state, y = core.run_step(params, *rows)
    mixed = _rows.mixing(graph.get_operations()[before:], tf.nest.flatten(rows))
    if mixed:
        raise ValueError(
            f"the step of {core.name!r} combines batch rows ({mixed}): backward='fused' takes the weight and input "
            f"gradients of all T*B (step, row) pairs in one call of the step, which is right only when each row's "
            f"results depend on that row alone. Use backward='autodiff' (TensorFlow's gradient of the loop) for "
            f"this cell, or keep the rows apart in its step")
    return new_state, y


def _flat_rows(rows):
    """``[T, B, ..] -> [T * B, ..]``: one batch of every (step, example) row."""
    return tf.reshape(rows, tf.concat([[-1], tf.shape(rows)[2:]], 0))


def _fused_vjps(run, a_tas, states, saved_a, state_like):
    """The backward of a core with a ``RecurrentSplit`` (see ``backward``)."""
    core, params, plan = run.core, run.params, run.plan
    split, second = core.split, core.split.second
    like = step_shapes(core, params, state_like, run.x)

    # Each recurrent matmul's Wᵀ, made once before the loop: inside it XLA:CPU's
    # dot against a transposed operand (what TF's MatMul gradient asks for) is
    # slower than a plain one (benchmarks/README.md, "Measurements behind the code").
    kernel_t = None if split.recurrent_kernel is None else tf.transpose(split.recurrent_kernel(params))
    second_kernel_t = (None if second is None or second.recurrent_kernel is None
                       else tf.transpose(second.recurrent_kernel(params)))

    def second_vjp(state, a_t, da_t):
        # Back through ``a += second.recurrent(second.input(state, a))``: one
        # ``drec2 @ U_h^T`` and the elementwise VJP of the second matmul's input.
        da_pass, drec2 = _linear_vjp(second.combine, [tf.nest.map_structure(tf.zeros_like, like.a), like.rec2],
                                     da_t)
        dstate, da_input = _matmul_input_vjp(second.recurrent, second.input, params, second_kernel_t,
                                             [state, a_t], drec2)
        return dstate, tf.nest.map_structure(tf.add, da_pass, da_input)

    # da_t may take a_t's place, which no later step reads: XLA then updates
    # the buffer in place and the backward needs no second [T, B, G] array.
    # Only for a single-array ``a`` whose step's VJP has a matmul and reads no
    # unit parameters: with several arrays, a write of one component may precede
    # a read of it for another's VJP; with an elementwise recurrence (IndRNN's
    # ``u * h``) or unit parameters, XLA:CPU fuses one step's read of ``a`` into
    # kernels that run after the next step's write. Either way XLA then copies
    # the whole buffer every step (all measured: benchmarks/README.md,
    # "Measurements behind the code").
    in_place = len(a_tas) == 1 and split.recurrent_kernel is not None and split.unit_params is None
    # The unit parameters (``RecurrentSplit.unit_params``), made once: per step the tape gives their gradient
    # (summed over the batch's rows), added up over the steps in the loop's carry.
    unit_like = None if split.unit_params is None else split.unit_params(params)
    units = [] if unit_like is None else tf.nest.flatten(unit_like)

    def one_vjp(t, dstate, das, dunits):
        state = run.read_state(t)
        a_t = tf.nest.pack_sequence_as(like.a, [ta.read(t) for ta in (das if in_place else a_tas)])
        with tf.GradientTape() as step_tape:
            step_tape.watch([state, a_t, units])
            new_state, y = masked_update(split, params, state, a_t, plan.validity.at(t),
                                         None if unit_like is None else tf.nest.pack_sequence_as(unit_like, units))
        dstate_direct, da_t, dunits_t = step_tape.gradient(
            [new_state, y], [state, a_t, units], output_gradients=[dstate, run.dys_at(t)],
            unconnected_gradients=tf.UnconnectedGradients.ZERO)
        dunits = tf.nest.map_structure(tf.add, dunits, dunits_t)
        if second is not None:
            dstate_second, da_t = second_vjp(state, a_t, da_t)
            dstate_direct = tf.nest.map_structure(tf.add, dstate_direct, dstate_second)
        _, drec_t = _linear_vjp(split.combine, [like.xp, like.rec], da_t)
        # d h_prev = drec @ recurrent_kernelᵀ.
        dstate_rec, = _matmul_input_vjp(split.recurrent, split.recurrent_input, params, kernel_t, [state], drec_t)
        dstate = tf.nest.map_structure(tf.add, dstate_direct, dstate_rec)
        return dstate, write_all(das, t, da_t), dunits

    das = list(a_tas) if in_place else tensor_arrays_like(like.a, plan.t_run)
    dstate, das, dunits = _reverse_loop(one_vjp, (run.dfinal, das, tf.nest.map_structure(tf.zeros_like, units)),
                                        plan.n_loop, run.unroll, plan.tail, run.parallel_iterations)
    da = tf.nest.pack_sequence_as(like.a, [ta.stack()[: plan.t_true] for ta in das])
    dx, dparams = _weight_grads(run, like, states, saved_a, da, dunits)
    return dx, dstate, (dparams, tuple(tf.zeros_like(v) for v in core.variables))


def _weight_grads(run, like, states, saved_a, da, dunits):
    """``(dx [T, B, D], dparams)`` of a core with a ``RecurrentSplit`` from every step's ``da`` (``[T, B, ..]``)
    and the unit parameters' summed gradient ``dunits`` (a flat list; empty without ``unit_params``)."""
    core, params, plan = run.core, run.params, run.plan
    split, second = core.split, core.split.second
    with tf.name_scope("weights_grad"):
        # Back through ``combine`` for all steps at once, then one large matmul
        # per weight, over all ``T * B`` (step, example) rows.
        dxp, drec = _linear_vjp(split.combine, [_stacked(like.xp, plan.t_true), _stacked(like.rec, plan.t_true)],
                                da)
        flat_h = _flat_rows(split.recurrent_input(states))
        dparams_rec = _linear_vjp(lambda p: split.recurrent(p, flat_h), params, _flat_rows(drec))
        if second is not None:
            # Only the rec2 slot of ``da`` matters here; ``second.input`` never
            # adds to it (see ``SecondMatmul``), so ``da`` after its VJP serves.
            _, drec2 = _linear_vjp(second.combine,
                                   [_stacked(like.a, plan.t_true), _stacked(like.rec2, plan.t_true)], da)
            flat_g = _flat_rows(second.input(states, tf.nest.pack_sequence_as(like.a, saved_a)))
            dparams_second = _linear_vjp(lambda p: second.recurrent(p, flat_g), params, _flat_rows(drec2))
            dparams_rec = tf.nest.map_structure(tf.add, dparams_rec, dparams_second)
        dparams_in, dx = _linear_vjp(core.project, [params, run.x], dxp)
        dparams = tf.nest.map_structure(tf.add, dparams_rec, dparams_in)
        if dunits:
            with tf.GradientTape() as tape:
                tape.watch(params)
                per_unit = tf.nest.flatten(split.unit_params(params))
            dparams_units = tape.gradient(per_unit, params, output_gradients=list(dunits),
                                          unconnected_gradients=tf.UnconnectedGradients.ZERO)
            dparams = tf.nest.map_structure(tf.add, dparams, dparams_units)
    return dx, dparams
