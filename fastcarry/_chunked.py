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
``[B, T, ..]`` read and written a chunk at a time; ``lengths [B]`` int32 or None.
"""

import tensorflow as tf

from fastcarry import _backward, _loop, _time
from fastcarry._step import weights


def shift(lengths, start, size):
    """A chunk's own lengths (or ``[size, B]`` mask): steps ``[start, start + size)`` are its ``[0, size)``."""
    if lengths is None:
        return None
    # A slice of static size: XLA needs static shapes inside the chunk loop.
    return tf.slice(lengths, [start, 0], [size, -1]) if lengths.shape.rank == 2 else lengths - start


def _n_chunks(plan):
    return plan.n_loop + (1 if plan.tail else 0)


def forward(core, params, x, state, lengths, unroll, chunk, parallel_iterations=None, batch_major=False,
            hoisted=False):
    """Runs the loop chunk by chunk, keeping the state at every chunk's start.

    Args:
      core, params, x, state, lengths, unroll: as for ``fastcarry._loop.forward``.
      chunk: static int >= 1, steps per chunk (T need not be a multiple).
      parallel_iterations: for every while loop (graph only).
      batch_major: ``x [B, T, D]`` and ``ys [B, T, H]`` (static T, processing
        order), read and written a chunk at a time (see ``fastcarry._time.Time``).
      hoisted: each chunk's input projection before its loop (``_loop.forward``'s).

    Returns:
      ``(ys [T, B, H], final_state, boundaries)``: ``boundaries`` is a list, one
      per flattened state component, of ``[N, B, ..]`` with N the number of
      chunks (``ceil(T / chunk)``): the state each chunk starts from.
    """
    plan = _time.make_plan(x, lengths, chunk, time_axis=1 if batch_major else 0)
    time = _time.Time(plan, chunk, batch_major)
    bounds = _time.tensor_arrays_like(state, _n_chunks(plan))
    x_chunk, x_tail = time.reader(plan.x)
    ys = time.new(x, core.output_size)

    def body(i, state, ys, bounds):
        bounds = _time.write_all(bounds, i, state)
        ys_c, state, _ = _loop.forward(core, params, x_chunk(i), state, shift(plan.lengths, i * chunk, chunk), unroll,
                                       parallel_iterations=parallel_iterations, hoisted=hoisted)
        return i + 1, state, time.put(ys, i, ys_c), bounds

    with tf.name_scope("chunks"):
        if _time.has_loop(plan):
            _, state, ys, bounds = tf.while_loop(lambda i, *_: i < plan.n_loop, body, (0, state, ys, bounds),
                                                 maximum_iterations=plan.n_loop,
                                                 **_time.while_options(parallel_iterations))
        ys_tail = None
        if plan.tail:
            bounds = _time.write_all(bounds, plan.n_loop, state)
            tail_lengths = shift(plan.lengths, plan.tail.start, len(plan.tail))
            ys_tail, state, _ = _loop.forward(core, params, x_tail, state, tail_lengths, unroll,
                                              parallel_iterations=parallel_iterations, hoisted=hoisted)
    return time.finish(ys, ys_tail), state, [b.stack() for b in bounds]


def fused_chunk_grad(core, params, unroll, parallel_iterations=None, hoisted=False):
    """One chunk's ``(x, s0, lengths, dys, dfinal) -> (dx, ds0, dparams)`` by the fused backward."""
    def grad(x, state, lengths, dys, dfinal):
        with tf.name_scope("recompute"):  # a phase of its own in fastcarry.profiling
            _, _, saved = _loop.forward(core, params, x, state, lengths, unroll, True, parallel_iterations,
                                        hoisted=hoisted)
        return _backward.backward(core, params, x, lengths, unroll, state, saved, dys, dfinal, parallel_iterations)
    return grad


def autodiff_chunk_grad(core, params, unroll, parallel_iterations=None, hoisted=False):
    """One chunk's gradient by TF's autodiff of its forward loop (``backward="autodiff"``)."""
    def grad(x, state, lengths, dys, dfinal):
        w = weights(core, params)
        with tf.GradientTape() as tape, tf.name_scope("recompute"):
            tape.watch([x, state, w])
            ys, final, _ = _loop.forward(core, params, x, state, lengths, unroll,
                                         parallel_iterations=parallel_iterations, hoisted=hoisted)
        dys = tf.zeros_like(ys) if dys is None else dys  # one chunk's worth
        return tape.gradient([ys, final], [x, state, w], output_gradients=[dys, dfinal],
                             unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return grad


def backward(weights_like, x, lengths, chunk, state_like, boundaries, dys, dfinal, chunk_grad, parallel_iterations=None,
             batch_major=False):
    """The gradient of ``forward``: chunks in reverse, each recomputed from its start state.

    Args:
      weights_like: ``weights(core, params)``, the structure of the weight gradients.
      x, lengths: as given to ``forward``; ``chunk`` and ``batch_major`` likewise.
      state_like: any value with the state's structure.
      boundaries: ``forward``'s boundary states.
      dys: ``[T, B, H]`` cotangent of ``ys`` (``[B, T, H]`` with ``batch_major``),
        or None for zeros; dfinal: of the final state.
      chunk_grad: ``fused_chunk_grad(...)`` or ``autodiff_chunk_grad(...)``.
      parallel_iterations: for the chunk loop (graph only).

    Returns:
      ``(dx [T, B, D] ([B, T, D] with batch_major), dstate0, dweights)``.
    """
    plan = _time.make_plan(x, lengths, chunk, time_axis=1 if batch_major else 0)
    time = _time.Time(plan, chunk, batch_major)
    bounds = [_time.tensor_array(b.dtype, _n_chunks(plan), b.shape[1:]).unstack(b) for b in boundaries]

    def start_state(i):
        return tf.nest.pack_sequence_as(state_like, [ta.read(i) for ta in bounds])

    def add(a, b):
        return tf.nest.map_structure(tf.add, a, b)

    x_chunk, x_tail = time.reader(plan.x)
    if dys is None:  # a zero cotangent (a loss of the final state only): none is made
        dys_chunk, dys_tail = (lambda i: None), None
    else:
        # Dynamic T: x was padded to whole chunks; dys likewise.
        dys_chunk, dys_tail = time.reader(_time.pad_time(plan, dys))
    dxs = time.new(x, x.shape[-1])
    dparams = tf.nest.map_structure(tf.zeros_like, weights_like)
    dstate = dfinal
    dx_tail = None
    with tf.name_scope("chunks_grad"):
        if plan.tail:
            start = plan.tail.start
            dx_tail, dstate, dp = chunk_grad(x_tail, start_state(plan.n_loop),
                                             shift(plan.lengths, start, len(plan.tail)), dys_tail, dstate)
            dparams = add(dparams, dp)
        if _time.has_loop(plan):
            def body(i, dstate, dparams, dxs):
                dx_c, dstate, dp = chunk_grad(x_chunk(i), start_state(i), shift(plan.lengths, i * chunk, chunk),
                                              dys_chunk(i), dstate)
                return i - 1, dstate, add(dparams, dp), time.put(dxs, i, dx_c)

            _, dstate, dparams, dxs = tf.while_loop(
                lambda i, *_: i >= 0, body, (plan.n_loop - 1, dstate, dparams, dxs),
                maximum_iterations=plan.n_loop, **_time.while_options(parallel_iterations))
    return time.finish(dxs, dx_tail), dstate, dparams
