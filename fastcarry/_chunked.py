"""Exact BPTT in bounded memory (``unroll(..., chunk=C)``): time in chunks, activations recomputed per chunk.

The seed's ``grad_ys`` chaining (``../shared/seeds``, document 001), automated:
the forward runs chunk after chunk and keeps only the state at each chunk's
start; the backward walks the chunks in reverse, re-runs each chunk's forward
from its start state (saving what ``fastcarry._backward.backward`` needs, for this
chunk only), and carries dL/dstate from one chunk into the one before.

Memory for the backward pass: ``ceil(T / C)`` boundary states plus one chunk's
activations, instead of T steps' worth; the price is one more forward pass.

Everything is in processing order, like ``fastcarry._loop``: time-major
(``x [T, B, D]``, ``ys [T, B, H]``), or with ``batch_major`` (XLA only)
``[B, T, ..]`` read and written a chunk at a time; a ``Validity``.
"""

import tensorflow as tf

from fastcarry import _backward, _loop, _time
from fastcarry._records import Boundaries, Cotangents, Inputs
from fastcarry._step import weights


def _n_chunks(plan):
    return plan.n_loop + (1 if plan.tail else 0)


def forward(core, params, x, state, validity, schedule, *, batch_major=False):
    """Runs the loop chunk by chunk (``schedule.chunk`` steps each), keeping the state at every chunk's start.

    Args:
      core, params, x, state, validity, schedule: as for ``fastcarry._loop.forward``; T need not be a
        multiple of the chunk.
      batch_major: ``x [B, T, D]`` and ``ys [B, T, H]`` (static T, processing
        order), read and written a chunk at a time (see ``fastcarry._time.Time``).

    Returns:
      ``(ys [T, B, H], final_state, Boundaries)``.
    """
    chunk = schedule.chunk
    plan = _time.make_plan(x, validity, chunk, time_axis=1 if batch_major else 0)
    time = _time.Time(plan, chunk, batch_major)
    bounds = _time.tensor_arrays_like(state, _n_chunks(plan))
    x_chunk, x_tail = time.reader(plan.x)
    ys = time.new(x, core.output_size)

    def body(i, state, ys, bounds):
        bounds = _time.write_all(bounds, i, state)
        ys_c, state, _ = _loop.forward(core, params, x_chunk(i), state, plan.validity.shift(i * chunk, chunk),
                                       schedule)
        return i + 1, state, time.put(ys, i, ys_c), bounds

    with tf.name_scope("chunks"):
        if _time.has_loop(plan):
            _, state, ys, bounds = _time.counted_loop(body, (0, state, ys, bounds), plan.n_loop,
                                                      schedule.parallel_iterations)
        ys_tail = None
        if plan.tail:
            bounds = _time.write_all(bounds, plan.n_loop, state)
            tail_validity = plan.validity.shift(plan.tail.start, len(plan.tail))
            ys_tail, state, _ = _loop.forward(core, params, x_tail, state, tail_validity, schedule)
    return time.finish(ys, ys_tail), state, Boundaries([b.stack() for b in bounds])


def fused_chunk_grad(core, params, schedule):
    """One chunk's ``(Inputs, Cotangents) -> (dx, ds0, dweights)`` by the fused backward."""
    def grad(inputs, cotangents):
        with tf.name_scope("recompute"):  # a phase of its own in fastcarry.profiling
            _, _, residuals = _loop.forward(core, params, inputs.x, inputs.state, inputs.validity, schedule,
                                            save=True)
        return _backward.backward(core, params, inputs.x, inputs.validity, schedule, residuals, cotangents)
    return grad


def autodiff_chunk_grad(core, params, schedule):
    """One chunk's gradient by TF's autodiff of its forward loop (``backward="autodiff"``)."""
    def grad(inputs, cotangents):
        x, state, w = inputs.x, inputs.state, weights(core, params)
        with tf.GradientTape() as tape, tf.name_scope("recompute"):
            tape.watch([x, state, w])
            ys, final, _ = _loop.forward(core, params, x, state, inputs.validity, schedule)
        dys = tf.zeros_like(ys) if cotangents.outputs is None else cotangents.outputs  # one chunk's worth
        return tape.gradient([ys, final], [x, state, w], output_gradients=[dys, cotangents.state],
                             unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return grad


def backward(weights_like, x, validity, schedule, boundaries, cotangents, chunk_grad, *, batch_major=False):
    """The gradient of ``forward``: chunks in reverse, each recomputed from its start state.

    Args:
      weights_like: ``weights(core, params)``, the structure of the weight gradients.
      x, validity, schedule: as given to ``forward``; ``batch_major`` likewise.
      boundaries: ``forward``'s ``Boundaries``.
      cotangents: ``Cotangents``: of ``ys`` (``[T, B, H]``, ``[B, T, H]`` with
        ``batch_major``; None for zeros) and of the final state.
      chunk_grad: ``fused_chunk_grad(...)`` or ``autodiff_chunk_grad(...)``.

    Returns:
      ``(dx [T, B, D] ([B, T, D] with batch_major), dstate0, dweights)``.
    """
    chunk, state_like = schedule.chunk, cotangents.state
    plan = _time.make_plan(x, validity, chunk, time_axis=1 if batch_major else 0)
    time = _time.Time(plan, chunk, batch_major)
    bounds = [_time.tensor_array(b.dtype, _n_chunks(plan), b.shape[1:]).unstack(b) for b in boundaries.states]

    def start_state(i):
        return tf.nest.pack_sequence_as(state_like, [ta.read(i) for ta in bounds])

    def add(a, b):
        return tf.nest.map_structure(tf.add, a, b)

    x_chunk, x_tail = time.reader(plan.x)
    dys = cotangents.outputs
    if dys is None:  # a zero cotangent (a loss of the final state only): none is made
        dys_chunk, dys_tail = (lambda i: None), None
    else:
        # Dynamic T: x was padded to whole chunks; dys likewise.
        dys_chunk, dys_tail = time.reader(_time.pad_time(plan, dys))
    dxs = time.new(x, x.shape[-1])
    dparams = tf.nest.map_structure(tf.zeros_like, weights_like)
    dstate = cotangents.state
    dx_tail = None
    with tf.name_scope("chunks_grad"):
        if plan.tail:
            start = plan.tail.start
            tail = Inputs(x_tail, start_state(plan.n_loop), plan.validity.shift(start, len(plan.tail)))
            dx_tail, dstate, dp = chunk_grad(tail, Cotangents(dys_tail, dstate))
            dparams = add(dparams, dp)
        if _time.has_loop(plan):
            def body(i, dstate, dparams, dxs):
                piece = Inputs(x_chunk(i), start_state(i), plan.validity.shift(i * chunk, chunk))
                dx_c, dstate, dp = chunk_grad(piece, Cotangents(dys_chunk(i), dstate))
                return i - 1, dstate, add(dparams, dp), time.put(dxs, i, dx_c)

            _, dstate, dparams, dxs = _time.counted_loop(body, (plan.n_loop - 1, dstate, dparams, dxs), plan.n_loop,
                                                         schedule.parallel_iterations)
    return time.finish(dxs, dx_tail), dstate, dparams
