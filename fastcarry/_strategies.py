"""The forward/backward strategies, each a pair side by side (``jax.experimental.rnn``'s ``lstm_fwd``/``lstm_bwd``).

Every pair has the same two sides, compiled (``fastcarry._functions``):

    forward(inputs, params) -> (ys, final_state, residuals)
    backward(inputs, params, residuals, cotangents) -> (dx, dstate0, (dparams, dvariables))

``inputs`` is ``Inputs(x, state, validity)`` in the caller's layout, ``ys`` and
``dx`` are in it too; ``residuals`` is what the forward saves for the
backward, ``cotangents`` a ``Cotangents``. ``fastcarry._boundary`` joins the
two sides with a custom gradient; ``pair_for`` chooses the pair, ``run`` runs it.

- ``PLAIN``: saves every step's state and pre-activations (``Residuals``); the
  hand-written reverse loop (``fastcarry._backward``).
- ``CHUNKED``: saves the state at each chunk's start (``Boundaries``); the
  backward re-runs each chunk's forward before its backward (``fastcarry._chunked``).
- ``AUTODIFF``: saves nothing; TF's own gradient of the forward, recomputed
  under a tape inside the compiled backward (chunk by chunk with ``chunk``).
- ``SWAPPED``: ``PLAIN``'s forward with its residuals parked in host memory;
  the backward fetches them back a piece at a time.
"""

import dataclasses
from typing import Callable, NamedTuple

import tensorflow as tf

# Private but stable since TF 2.4: whether any GradientTape could record now.
from tensorflow.python.eager import record as _record

from fastcarry import _backward, _boundary, _chunked, _loop
from fastcarry._config import Layout
from fastcarry._functions import compiled
from fastcarry._layout import direct, from_processing_order, in_processing_order, to_processing_order
from fastcarry._records import Cotangents, Inputs
from fastcarry._step import weights


def _forward(loop):
    """A forward side: ``loop(core, params, x, state, validity, schedule, batch_major=) -> (ys, final, saved)``
    run in processing order, its ``ys`` in the caller's layout."""
    def build(core, layout, schedule):
        def forward(inputs, params):
            with tf.name_scope(f"fastcarry_{core.name}"):
                x, validity = inputs.x, inputs.validity
                batch_major = direct(layout, schedule, x)
                x_in = x if batch_major else to_processing_order(x, validity, layout)
                ys, final, saved = loop(core, params, x_in, inputs.state, validity.reversed_in_time(layout.reverse),
                                        schedule, batch_major=batch_major)
                return (ys if batch_major else from_processing_order(ys, validity, layout)), final, saved
        return forward
    return build


def _no_saving_loop(core, params, x, state, validity, schedule, batch_major):
    return _loop.forward(core, params, x, state, validity, schedule, batch_major=batch_major)


def _saving_loop(core, params, x, state, validity, schedule, batch_major):
    return _loop.forward(core, params, x, state, validity, schedule, save=True, batch_major=batch_major)


def infer(core, layout, schedule):
    """The compiled forward that saves nothing (inference; ``AUTODIFF``'s forward)."""
    # Chunks and swapping change nothing where nothing is saved: one function for all of them.
    schedule = schedule._replace(chunk=None, swap_memory=False)
    return compiled("infer", core, layout, schedule, _forward(_no_saving_loop))


# -- plain: every step's state and pre-activations saved; a reverse loop over them ----------------------------

def _plain_backward(core, layout, schedule):
    def backward(inputs, params, residuals, cotangents):
        with tf.name_scope(f"fastcarry_{core.name}_grad"):
            # A batch-major dys is read a step at a time; x is transposed all
            # the same, for the large matmuls after the loop.
            batch_major = direct(layout, schedule, inputs.x)
            validity = inputs.validity.reversed_in_time(layout.reverse)

            def grad(x_proc, dys_in):
                return _backward.backward(core, params, x_proc, validity, schedule, residuals,
                                          Cotangents(dys_in, cotangents.state), dys_batch_major=batch_major)

            return in_processing_order(inputs.x, cotangents.outputs, inputs.validity, layout, grad,
                                       convert_dys=not batch_major)
    return backward


def plain_forward(core, layout, schedule):
    schedule = schedule._replace(chunk=None, swap_memory=False)
    return compiled("forward", core, layout, schedule, _forward(_saving_loop))


def plain_backward(core, layout, schedule):
    schedule = schedule._replace(chunk=None, swap_memory=False)
    return compiled("fused", core, layout, schedule, _plain_backward)


# -- chunked: the state at each chunk's start saved; each chunk recomputed before its backward ----------------

def _chunked_backward(chunk_grad):
    def build(core, layout, schedule):
        def backward(inputs, params, boundaries, cotangents):
            with tf.name_scope(f"fastcarry_{core.name}_grad"):
                validity = inputs.validity.reversed_in_time(layout.reverse)

                def grad(x_in, dys_in, batch_major=False):
                    return _chunked.backward(weights(core, params), x_in, validity, schedule, boundaries,
                                             Cotangents(dys_in, cotangents.state), chunk_grad(core, params, schedule),
                                             batch_major=batch_major)

                # Without transposed copies of whole sequences when it can.
                if direct(layout, schedule, inputs.x):
                    return grad(inputs.x, cotangents.outputs, batch_major=True)
                return in_processing_order(inputs.x, cotangents.outputs, inputs.validity, layout, grad)
        return backward
    return build


def chunked_forward(core, layout, schedule):
    return compiled("forward", core, layout, schedule._replace(swap_memory=False), _forward(_chunked.forward))


def chunked_backward(core, layout, schedule):
    return compiled("fused", core, layout, schedule._replace(swap_memory=False),
                    _chunked_backward(_chunked.fused_chunk_grad))


# -- autodiff: nothing saved; TF's gradient of the forward, recomputed inside the backward ---------------------

def _autodiff_backward(core, layout, schedule):
    """Under XLA a tape outside the compiled forward cannot reach into its loop, so the forward is run again
    here under a tape, in the same compiled function as its gradient."""
    # xla=False: the time-major loop, whose ops all have TF gradients (the
    # batch-major one writes with XLA's dynamic-update-slice, which has none).
    forward = _forward(_no_saving_loop)(core, layout, schedule._replace(xla=False))

    def backward(inputs, params, residuals, cotangents):
        del residuals  # nothing is saved: the forward is recomputed
        x, state, w = inputs.x, inputs.state, weights(core, params)
        with tf.GradientTape() as tape:
            tape.watch([x, state, w])
            ys, final, _ = forward(inputs, params)
        dys = tf.zeros_like(ys) if cotangents.outputs is None else cotangents.outputs
        return tape.gradient([ys, final], [x, state, w], output_gradients=[dys, cotangents.state],
                             unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return backward


def autodiff_backward(core, layout, schedule):
    if schedule.chunk is not None:  # the chunk start states the forward saved, each chunk recomputed
        return compiled("autodiff", core, layout, schedule._replace(swap_memory=False),
                        _chunked_backward(_chunked.autodiff_chunk_grad))
    return compiled("autodiff", core, layout, schedule._replace(swap_memory=False), _autodiff_backward)


def autodiff_forward(core, layout, schedule):
    if schedule.chunk is not None:
        return chunked_forward(core, layout, schedule)
    return infer(core, layout, schedule)


# -- swapped: plain's residuals parked in host memory, fetched back a piece at a time -------------------------

# Where swap_memory parks the saved activations between the passes.
HOST = "/device:CPU:0"


def to_host(residuals):
    """Copies of ``residuals`` in host memory (a no-op copy on a CPU-only machine)."""
    with tf.device(HOST), tf.name_scope("fastcarry_swap/to_host"):
        return tf.nest.map_structure(tf.identity, residuals)


def swapped_backward(core, layout, schedule):
    """The backward as a Python loop over fetches of ``schedule.chunk`` steps (all T without a chunk, or when T
    is dynamic), each a call of ``PLAIN``'s compiled backward.

    The loop runs outside the compiled functions, so each fetch's slice of the
    parked residuals is copied to the compute device just before the compiled
    backward of those steps runs, and the device never holds more than one
    fetch of them. Nothing is recomputed. In a graph each fetch waits for the
    backward of the fetch before it (a control edge from its state gradient):
    without one, TF's executor may run every slice, and copy every piece to the
    device, as soon as the forward is done. Eagerly they run in order anyway.
    """
    # Per fetch, inputs are already in processing order: time-major, not reversed.
    per_fetch = plain_backward(core, Layout(True, False), schedule)

    def backward(inputs, params, residuals, cotangents):
        x, validity = inputs.x, inputs.validity
        x_proc = to_processing_order(x, validity, layout)
        valid = validity.reversed_in_time(layout.reverse)
        dys = cotangents.outputs
        dys_proc = None if dys is None else to_processing_order(dys, validity, layout)
        time = x_proc.shape[0]
        fetch = schedule.chunk if (schedule.chunk is not None and time is not None) else (time or tf.shape(x_proc)[0])
        starts = list(range(0, time, fetch)) if isinstance(time, int) else [0]
        dstate, dweights, dxs = cotangents.state, None, []
        done = []  # the previous fetch's state gradient: the next fetch waits for it
        for start in reversed(starts):
            stop = min(start + fetch, time) if isinstance(time, int) else time
            with tf.device(HOST), tf.name_scope("fastcarry_swap/fetch"), tf.control_dependencies(done):
                piece = tf.nest.map_structure(lambda s: s[start:stop], residuals)
            steps = Inputs(x_proc[start:stop], inputs.state, valid.shift(start, stop - start))
            dx, dstate, dw = per_fetch(steps, params, piece,
                                       Cotangents(None if dys is None else dys_proc[start:stop], dstate))
            dweights = dw if dweights is None else tf.nest.map_structure(tf.add, dweights, dw)
            dxs.insert(0, dx)
            done = tf.nest.flatten(dstate)
        dx = from_processing_order(dxs[0] if len(dxs) == 1 else tf.concat(dxs, 0), validity, layout)
        return dx, dstate, dweights
    return backward


def _keep(residuals):
    return residuals


class Pair(NamedTuple):
    """A strategy: its two sides, each ``(core, layout, schedule) -> function``, and where residuals wait."""

    name: str
    forward: Callable
    backward: Callable
    park: Callable = _keep  # residuals -> residuals, applied between the passes


PLAIN = Pair("plain", plain_forward, plain_backward)
CHUNKED = Pair("chunked", chunked_forward, chunked_backward)
AUTODIFF = Pair("autodiff", autodiff_forward, autodiff_backward)
SWAPPED = Pair("swapped", plain_forward, swapped_backward, to_host)


def pair_for(backward, schedule):
    """The ``Pair`` for ``backward`` (``"fused"`` or ``"autodiff"``) and a resolved ``Schedule``."""
    if backward == "autodiff":
        return AUTODIFF
    if schedule.swap_memory:
        return SWAPPED
    return PLAIN if schedule.chunk is None else CHUNKED


def run(core, params, inputs, options):
    """``(ys, final_state)`` of ``core`` at ``inputs`` (an ``Inputs``) by the strategy resolved ``options`` choose.

    Eager inference calls the compiled ``infer`` function: nothing can ask for a
    gradient, so nothing is saved for one (in a graph the saved tensors stay, since
    ``tf.gradients`` needs no tape; under an outer XLA compilation they are dead
    code). Graph autodiff without chunks also calls it: a ``while_loop`` that TF
    differentiates itself, to any order. Otherwise ``pair_for`` chooses a pair,
    joined by ``fastcarry._boundary``.
    """
    layout, schedule = options.layout, options.schedule()
    layout = layout._replace(batch_known=inputs.x.shape[1 if layout.time_major else 0] is not None)
    if options.training is False and not tf.executing_eagerly() and not core.variables:
        return recomputing(core, params, inputs, layout, schedule, options)
    eager_inference = tf.executing_eagerly() and not _record.could_possibly_record()
    graph_autodiff = options.backward == "autodiff" and not options.jit_compile and options.chunk is None
    if eager_inference or graph_autodiff:
        ys, final, _ = infer(core, layout, schedule)(inputs, params)
        return ys, final
    pair = pair_for(options.backward, schedule)
    return _boundary.call(core, pair, pair.forward(core, layout, schedule), pair.backward(core, layout, schedule),
                          inputs, params)


def recomputing(core, params, inputs, layout, schedule, options):
    """``(ys, final_state)`` by the forward that saves nothing; a gradient, if asked for, recomputes.

    For inference in a graph (``fc.unroll(..., training=False)``; a
    ``fastcarry.keras`` layer called with ``training`` False: ``model.export``,
    ``predict``): nothing is written for a backward
    pass, so the graph holds no ``TensorList`` whose element shape carries B,
    and TFLite's builtin ops convert it with B unknown. A graph may still be
    differentiated (``tf.gradients``, a tape around ``model(x)``): then the
    saving forward runs again and its backward gives the gradients (equal to
    the saving path's: the same loops).
    """
    flat_state, flat_params = tf.nest.flatten(inputs.state), tf.nest.flatten(params)
    n_state = len(flat_state)
    saving = dataclasses.replace(options, training=None)

    @tf.custom_gradient
    def forward(x, *tensors):
        state = tf.nest.pack_sequence_as(inputs.state, tensors[:n_state])
        weights = tf.nest.pack_sequence_as(params, tensors[n_state:])
        step_inputs = Inputs(x, state, inputs.validity)
        ys, final, _ = infer(core, layout, schedule)(step_inputs, weights)

        def grad(*cotangents):
            sources = [x, *tensors]
            with tf.GradientTape() as tape:
                tape.watch(sources)
                again, again_final = run(core, weights, step_inputs, saving)
            targets = [again, *tf.nest.flatten(again_final)]
            cotangents = [tf.zeros_like(t) if c is None else c for t, c in zip(targets, cotangents)]
            return tape.gradient(targets, sources, output_gradients=cotangents,
                                 unconnected_gradients=tf.UnconnectedGradients.ZERO)

        return (ys, *tf.nest.flatten(final)), grad

    out = forward(inputs.x, *flat_state, *flat_params)
    return out[0], tf.nest.pack_sequence_as(inputs.state, list(out[1:]))
