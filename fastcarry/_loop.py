"""The time loop: runs a cell's pure ``step`` over time; knows no cell math.

Everything here is in *processing order* (the order the steps run in) and
time-major: ``x [T, B, D]``, ``xp [T, B, G]``, ``ys [T, B, H]``, a ``Validity``.
Reversal is the caller's (``fastcarry._layout``); so is a
batch-major layout, except that under XLA ``x``, ``ys`` and ``dys`` may stay
``[B, T, ..]`` and are then read and written a step at a time (``Time``),
instead of as transposed copies.

``forward`` runs the loop once; its gradient is ``fastcarry._backward``. The
cell protocol is ``fastcarry._protocol``, the cutting of time ``fastcarry._time``.
"""

import tensorflow as tf

from fastcarry._protocol import preactivation
from fastcarry._records import Residuals
from fastcarry._step import masked_step, masked_update, step_shapes
from fastcarry._time import Time, counted_loop, has_loop, make_plan, tensor_arrays_like, write_all


def forward(core, params, x, state, validity, schedule, *, save=False, batch_major=False):
    """Runs the loop.

    By default the input projection runs per loop iteration, for its
    ``unroll`` steps at once (``[unroll * B, D] @ [D, G]``): on CPU an
    all-steps ``xp [T, B, G]`` mostly costs more in memory traffic than the
    larger matmul saves (``benchmarks/README.md``). ``unroll`` then sets both
    the steps per iteration and the projection's block.
    ``schedule.projection == "hoisted"`` makes it one ``[T * B, D] @ [D, G]``
    before the loop (one large GEMM, what a GPU favours); the loop then reads
    each iteration's rows one iteration ahead (see ``_hoisted``).

    Args:
      core: the cell's ``Core``.
      params: the cell's weights (a NamedTuple of tensors).
      x: ``[T, B, D]`` inputs in processing order (``[B, T, D]`` with ``batch_major``).
      state: initial state (the cell's structure of ``[B, ...]`` tensors).
      validity: ``Validity`` in processing order.
      schedule: ``Schedule``; reads ``unroll``, ``parallel_iterations`` (a graph
        loop's; XLA runs iterations in order) and ``projection``.
      save: also return the ``Residuals`` ``fastcarry._backward.backward`` needs.
      batch_major: ``x [B, T, D]`` and ``ys [B, T, H]`` (static T, processing
        order), read and written an iteration at a time (see ``Time``);
        the residuals stay time-major.

    Returns:
      ``(ys [T, B, H], final_state, residuals)``: ``Residuals`` with ``save``, else None.
    """
    unroll, parallel_iterations, hoisted = schedule.unroll, schedule.parallel_iterations, schedule.hoisted
    plan = make_plan(x, validity, unroll, time_axis=1 if batch_major else 0)
    time = Time(plan, unroll, batch_major, per_step=True)
    split = core.split if save else None
    saved = tensor_arrays_like(state, plan.t_run) if save else []
    n_state = len(saved)

    def one_step(t, state, xp_t, saved):
        valid = plan.validity.at(t)
        # Scopes name the phases a trace shows (fastcarry.profiling).
        if split is None:
            saved = write_all(saved, t, state)
            with tf.name_scope("step"):
                state, y = masked_step(core, params, state, xp_t, valid)
            return state, y, saved
        with tf.name_scope("recurrent_matmul"):
            a_t = preactivation(split, params, state, xp_t)
        saved = write_all(saved[:n_state], t, state) + write_all(saved[n_state:], t, a_t)
        with tf.name_scope("gates"):
            state, y = masked_update(split, params, state, a_t, valid)
        return state, y, saved

    def project(x_block):
        with tf.name_scope("project"):
            return core.project(params, x_block)

    def run_block(t0, xp, steps, state, saved):
        """``steps`` steps from ``t0``: ``xp [steps, B, G]`` -> ``steps`` outputs ``[B, H]``."""
        ys = []
        for j in range(steps):
            state, y, saved = one_step(t0 + j, state, xp[j], saved)
            ys.append(y)
        return state, ys, saved

    if split is not None:
        # The arrays for ``a`` must exist before the loop.
        saved = saved + tensor_arrays_like(step_shapes(core, params, state, plan.x, 1 if batch_major else 0).a,
                                  plan.t_run)
    if hoisted:
        xp_block, xp_tail = _hoisted(project, plan, unroll, batch_major)
    else:
        x_block, x_tail = time.reader(plan.x)
        xp_block = lambda i: project(x_block(i))  # noqa: E731
        xp_tail = project(x_tail) if plan.tail else None
    ys = time.new(x, core.output_size)
    with tf.name_scope("recurrence"):
        def body(i, state, ys, saved, *ahead):
            if hoisted:
                # Read one iteration ahead (the last one reads itself again).
                xp, ahead = ahead[0], (xp_block(tf.minimum(i + 1, plan.n_loop - 1)),)
            else:
                xp = xp_block(i)
            state, ys_b, saved = run_block(i * unroll, xp, unroll, state, saved)
            return (i + 1, state, time.put(ys, i, ys_b), saved, *ahead)

        if has_loop(plan):
            # (A run-time T is padded to at least one iteration: block 0 exists.)
            ahead = (xp_block(0),) if hoisted else ()
            _, state, ys, saved, *_ = counted_loop(body, (tf.constant(0), state, ys, saved, *ahead), plan.n_loop,
                                                   parallel_iterations)
        ys_tail = None
        if plan.tail:
            state, ys_tail, saved = run_block(plan.tail.start, xp_tail, len(plan.tail), state, saved)
    stacked = [ta.stack()[: plan.t_true] for ta in saved]
    residuals = Residuals(stacked[:n_state], stacked[n_state:]) if save else None
    return time.finish(ys, ys_tail), state, residuals


def _hoisted(project, plan, unroll, batch_major):
    """The input projection of all T steps before the loop: ``(read(i) -> [unroll, B, G], tail or None)``.

    One ``[T * B, D] @ [D, G]`` GEMM. Read inside the loop from the ``[T, B, G]``
    result, XLA:CPU fuses that read (a dynamic slice) into every gate fusion of
    the step, which then run several times slower (benchmarks/README.md);
    the loop therefore carries the next iteration's rows as a loop variable,
    read one iteration ahead, and the step's fusions see a plain operand.
    ``xp`` is time-major even for a batch-major ``x`` (``Core.project`` takes
    ``[T, B, D]``).
    """
    xp = project(tf.transpose(plan.x, [1, 0, 2]) if batch_major else plan.x)
    return Time(plan, unroll, batch_major=False).reader(xp)
