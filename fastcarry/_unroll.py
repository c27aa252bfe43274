"""``fastcarry.unroll``: layouts, the compiled functions, and the gradient boundary."""

from typing import NamedTuple

import tensorflow as tf
# Private but stable since TF 2.4: whether any GradientTape could record now.
from tensorflow.python.eager import record as _record

from fastcarry import _loop, _validate


class _Options(NamedTuple):
    """The static options one compiled function is specialised for."""

    time_major: bool
    reverse: bool
    unroll: int


def _to_processing_order(seq, lengths, opts):
    """``[B, T, ...]`` / ``[T, B, ...]`` -> ``[T, B, ...]`` in the order the steps run.

    A permutation of time steps, so its adjoint is ``_from_processing_order``.
    """
    if not opts.time_major:
        seq = tf.transpose(seq, [1, 0] + list(range(2, seq.shape.rank)))
    if opts.reverse:
        # With lengths each row is reversed within its own length, as
        # bidirectional_dynamic_rnn does with tf.reverse_sequence.
        seq = (tf.reverse(seq, [0]) if lengths is None
               else tf.reverse_sequence(seq, lengths, seq_axis=0, batch_axis=1))
    return seq


def _from_processing_order(seq, lengths, opts):
    """The inverse of ``_to_processing_order`` (reversal is its own inverse)."""
    if opts.reverse:
        seq = (tf.reverse(seq, [0]) if lengths is None
               else tf.reverse_sequence(seq, lengths, seq_axis=0, batch_axis=1))
    if not opts.time_major:
        seq = tf.transpose(seq, [1, 0] + list(range(2, seq.shape.rank)))
    return seq


def _forward_fn(core, opts, save_states):
    def forward(x, state, lengths, params):
        with tf.name_scope(f"fastcarry_{core.key[0]}"):
            x_proc = _to_processing_order(x, lengths, opts)
            ys, final, saved = _loop.forward(core, params, x_proc, state, lengths, opts.unroll, save_states)
            return _from_processing_order(ys, lengths, opts), final, saved
    return forward


def _backward_fn(core, opts):
    def backward(x, state_like, lengths, params, saved, dys, dfinal):
        with tf.name_scope(f"fastcarry_{core.key[0]}_grad"):
            with tf.GradientTape() as tape:
                tape.watch(x)
                x_proc = _to_processing_order(x, lengths, opts)
            dx_proc, dstate, dparams = _loop.backward(
                core, params, x_proc, lengths, opts.unroll, state_like, saved,
                _to_processing_order(dys, lengths, opts), dfinal)
            dx = tape.gradient(x_proc, x, output_gradients=dx_proc)
            return dx, dstate, dparams
    return backward


# Compiled functions, shared by every cell whose math (core.key) and options
# match: a second cell of the same kind reuses the traces and XLA executables.
_FUNCTIONS = {}


_BUILDERS = {
    # kind: (python function, jit_compile)
    "graph": (lambda core, opts: _forward_fn(core, opts, save_states=False), False),
    "jit_forward": (lambda core, opts: _forward_fn(core, opts, save_states=True), True),
    "jit_infer": (lambda core, opts: _forward_fn(core, opts, save_states=False), True),
    "jit_backward": (_backward_fn, True),
}


def _function(kind, core, opts):
    # Everything the traced function closes over must be in the key: the math
    # (core.key), the output width baked into its TensorArrays, the options.
    key = (kind, core.key, core.output_size, opts)
    if key not in _FUNCTIONS:
        build, jit_compile = _BUILDERS[kind]
        _FUNCTIONS[key] = tf.function(build(core, opts), jit_compile=jit_compile, autograph=False)
    return _FUNCTIONS[key]


def _stop(tree):
    return tf.nest.map_structure(tf.stop_gradient, tree)


def _zeros_if_none(grads, like):
    return [tf.zeros_like(v) if g is None else g for g, v in zip(grads, like)]


def _no_second_order(outputs, inputs):
    """Identity on ``outputs`` whose gradient raises: the backward pass is not differentiable.

    The compiled backward is called on stop_gradient inputs (a tape must not see
    into a compiled loop), so without this a second-order gradient would come out
    silently zero. ``inputs`` ties the guard to what the outputs depend on.
    """
    @tf.custom_gradient
    def guard(*flat):
        def grad(*_):
            raise NotImplementedError(
                "fastcarry.unroll(jit_compile=True) has no second-order gradient (its backward is a "
                "compiled loop); use jit_compile=False, whose graph loop TF differentiates to any order")
        return list(flat[:len(outputs)]), grad
    return guard(*outputs, *inputs)


def _jit_unroll(core, opts, x, state, lengths, params):
    """The XLA path: a compiled forward and a compiled backward joined by a custom gradient."""
    forward = _function("jit_forward", core, opts)
    backward = _function("jit_backward", core, opts)
    n_state = len(tf.nest.flatten(state))

    @tf.custom_gradient
    def run(x, *flat):
        s0 = tf.nest.pack_sequence_as(state, flat[:n_state])
        p = tf.nest.pack_sequence_as(params, flat[n_state:])
        # stop_gradient: an active tape would otherwise ask the compiled function
        # for its loop accumulators (TensorLists), which cannot leave XLA.
        ys, final, saved = forward(_stop(x), _stop(s0), lengths, _stop(p))
        flat_final = tf.nest.flatten(final)

        def grad(dys, *dfinal):
            dys, = _zeros_if_none([dys], [ys])
            dfinal = tf.nest.pack_sequence_as(state, _zeros_if_none(dfinal, flat_final))
            dx, dstate, dparams = backward(_stop(x), _stop(s0), lengths, _stop(p), saved,
                                           _stop(dys), _stop(dfinal))
            flat_grads = [dx] + tf.nest.flatten(dstate) + tf.nest.flatten(dparams)
            return _no_second_order(flat_grads, [x, dys, *tf.nest.flatten(dfinal), *flat])

        return [ys] + flat_final, grad

    out = run(x, *tf.nest.flatten(state), *tf.nest.flatten(params))
    return out[0], tf.nest.pack_sequence_as(state, out[1:])


# Library code is plain Python over static facts: autograph must not turn its
# ifs into tf.cond when a caller's tf.function converts it.
@tf.autograph.experimental.do_not_convert
def unroll(cell, inputs, initial_state=None, *, sequence_length=None, time_major=False, reverse=False,
           unroll=1, jit_compile=True):
    """Runs ``cell`` over time; fused, XLA-compiled, exactly differentiable.

    Type (with ``S`` the state, ``X`` one step of inputs, ``Y`` one output)::

        unroll :: Cell -> [B, T, X] -> S -> ([B, T, Y], S)

    Semantics, as the plain Python loop it equals (``fastcarry.reference.unroll``
    is that loop, and the tests hold the two equal, gradients included)::

        def unroll(cell, inputs, initial_state=None, *, sequence_length=None, reverse=False, ...):
            x = inputs if time_major else transpose(inputs)          # [T, B, D]
            state = initial_state or cell.zero_state(B, cell.dtype)
            lengths = sequence_length if given else [T] * B
            ys = [None] * T
            for t in (reversed(range(T)) if reverse else range(T)):
                new_state, y = cell_step(state, x[t])
                valid = t < lengths                                  # [B]
                state = where(valid, new_state, state)               # copied through past the end
                ys[t] = where(valid, y, 0)                           # zeros past the end
            return (ys if time_major else transpose(ys)), state

    so with ``reverse=True`` each row runs backwards *within its own length*
    (``tf.reverse_sequence``, as ``bidirectional_dynamic_rnn``), outputs stay
    aligned with their inputs, and the final state is the state after each row's
    last valid step (``dynamic_rnn``'s semantics).

    Unlike that Python version:

    - ``x[t] @ kernel + bias`` for all ``t`` is one matmul before the loop, and
      all gates come from one ``h @ recurrent_kernel`` per step (two for a
      reset-before GRU); the elementwise gate math is left to XLA to fuse.
    - ``jit_compile=True`` compiles the forward pass and, separately, its
      gradient (a reverse loop over the saved states carrying only the state
      gradient, weight gradients as one matmul after it) with XLA,
      also when called eagerly or inside a user's ``tf.function``. Under XLA a
      caller's ``GradientTape`` cannot see into a compiled loop, hence the
      explicit gradient. ``jit_compile=False`` runs the same loop as a TF graph
      ``while_loop`` and lets TF differentiate it. The numbers agree to rounding.
    - ``unroll=k`` runs ``k`` steps per loop iteration (T need not be a multiple
      of k); it changes speed, never results.

    Args:
      cell: ``fc.LSTM``, ``fc.GRU`` or ``fc.SimpleRNN``; built on first use from
        the inputs' D.
      inputs: ``[B, T, D]`` (``[T, B, D]`` if ``time_major``), floating, the
        cell's dtype.
      initial_state: the cell's state structure, ``[B, H]`` per component
        (``fc.LSTMState(h, c)`` for LSTM); None means zeros.
      sequence_length: ``[B]`` integers in ``[0, T]``, or None (all T steps).
      time_major: layout of ``inputs`` and outputs.
      reverse: run time backwards (see above).
      unroll: int >= 1, time steps per loop iteration.
      jit_compile: compile with XLA (True) or run a graph loop (False).

    Returns:
      ``(outputs, state)``: ``outputs`` ``[B, T, H]`` (``[T, B, H]`` if
      ``time_major``), zeros past each row's length; ``state`` the final state,
      ``fc.LSTMState(h [B, H], c [B, H])`` for LSTM, ``[B, H]`` otherwise.
      With T == 0, empty outputs and the initial state.
    """
    args = _validate.check(cell, inputs, initial_state, sequence_length, time_major, reverse, unroll, jit_compile)
    state = args.initial_state if args.initial_state is not None else cell.zero_state(args.batch, cell.dtype)
    opts = _Options(time_major, reverse, int(unroll))
    if isinstance(args.time, int) and args.time == 0:
        shape = [0, args.batch, cell.output_size] if time_major else [args.batch, 0, cell.output_size]
        return tf.zeros(tf.stack(shape), cell.dtype), state
    core, params = cell._core(), cell._params()
    if jit_compile and tf.executing_eagerly() and not _record.could_possibly_record():
        # Eager inference: nothing can ask for a gradient, so save nothing for
        # one (~15% of the forward at B32 T100 D128 H256). In a graph the saved
        # tensors stay (tf.gradients needs no tape); under an outer XLA
        # compilation they are dead code and removed.
        ys, final, _ = _function("jit_infer", core, opts)(args.inputs, state, args.lengths, params)
        return ys, final
    if jit_compile:
        return _jit_unroll(core, opts, args.inputs, state, args.lengths, params)
    ys, final, _ = _function("graph", core, opts)(args.inputs, state, args.lengths, params)
    return ys, final
