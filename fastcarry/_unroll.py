"""``fastcarry.unroll``: layouts, the compiled functions, and the gradient boundary."""

import functools
import os
import sys
import warnings
from typing import NamedTuple

import tensorflow as tf
# Private but stable since TF 2.4: whether any GradientTape could record now.
from tensorflow.python.eager import record as _record

from fastcarry import _backward, _chunked, _config, _generic, _loop, _stack, _validate
from fastcarry._protocol import check_core
from fastcarry._step import weights


def default_unroll(core, batch, time):
    """``unroll=None``'s steps per loop iteration for ``core`` at ``[B, T]`` (ints, or None when dynamic).

    The one place a schedule is chosen without the caller; an autotuner
    replaces it. Measured on a 2-core CPU (medians of 7, inference and
    training step, under jit): 2 was never slower than 1 for the fused cells
    and up to 1.4x faster in inference (SimpleRNN B16 T500 D128 H256: 26.9 ->
    19.5 ms, GRU B32 T100 D128 H256: 29.0 -> 21.6 ms); 4 was slower again.
    """
    del core, batch, time  # the same answer everywhere, for now
    return 2


class Layout(NamedTuple):
    """What the data looks like: the caller's axes and direction. Changes the results' meaning."""

    time_major: bool
    reverse: bool


class Schedule(NamedTuple):
    """How the loop is computed. Changes speed and memory, never results: what an autotuner chooses."""

    unroll: int
    chunk: object = None  # int: exact BPTT in chunks of this many steps (only the saving forward and backward)
    parallel_iterations: object = None  # int: the graph while loops'; None: TF's default
    xla: bool = False  # compiled with XLA (set by ``_function`` from jit_compile)
    projection: str = "per_iteration"  # or "hoisted": the forward's input projection before the loop


class _Options(NamedTuple):
    """The static options one compiled function is specialised for: a layout and a schedule."""

    layout: Layout
    schedule: Schedule

    # Read-through names: the loops read the fields, not the grouping.
    time_major = property(lambda self: self.layout.time_major)
    reverse = property(lambda self: self.layout.reverse)
    unroll = property(lambda self: self.schedule.unroll)
    chunk = property(lambda self: self.schedule.chunk)
    parallel_iterations = property(lambda self: self.schedule.parallel_iterations)
    xla = property(lambda self: self.schedule.xla)
    hoisted = property(lambda self: self.schedule.projection == "hoisted")

    def with_schedule(self, **changes):
        return self._replace(schedule=self.schedule._replace(**changes))


def _to_processing_order(seq, lengths, opts):
    """``[B, T, ...]`` / ``[T, B, ...]`` -> ``[T, B, ...]`` in the order the steps run.

    A permutation of time steps, so its adjoint is ``_from_processing_order``.
    """
    with tf.name_scope("layout"):  # a phase of its own in fastcarry.profiling
        if not opts.time_major:
            seq = tf.transpose(seq, [1, 0] + list(range(2, seq.shape.rank)))
        return _reversed(seq, lengths) if opts.reverse else seq


def _from_processing_order(seq, lengths, opts):
    """The inverse of ``_to_processing_order`` (reversal is its own inverse)."""
    with tf.name_scope("layout"):
        if opts.reverse:
            seq = _reversed(seq, lengths)
        return seq if opts.time_major else tf.transpose(seq, [1, 0] + list(range(2, seq.shape.rank)))


def _reversed(seq, lengths):
    """``seq [T, B, ...]`` backwards in time; with lengths each row within its own length, as
    bidirectional_dynamic_rnn does with tf.reverse_sequence (with a mask, all of time: a mask has no length)."""
    if lengths is None or lengths.shape.rank == 2:
        return tf.reverse(seq, [0])
    return tf.reverse_sequence(seq, lengths, seq_axis=0, batch_axis=1)


def _valid_in_processing_order(lengths, opts):
    """``lengths`` as the loops read them: a ``[T, B]`` mask is reversed with the steps; lengths stay."""
    if opts.reverse and lengths is not None and lengths.shape.rank == 2:
        return tf.reverse(lengths, [0])
    return lengths


def _direct(opts, seq):
    """Whether the loops read and write batch-major ``seq [B, T, ..]`` as it is (no reversal, static T).

    Then no transposed copy of a whole sequence is made (see ``fastcarry._time.Time``).
    Only under XLA, which updates the ``[B, T, ..]`` result in place: TF's graph
    executor copies it on every loop iteration (6x slower inference at B16 T500).
    """
    return opts.xla and not opts.time_major and not opts.reverse and seq.shape[1] is not None


def _forward_fn(core, opts, save_states):
    def forward(x, state, lengths, params):
        with tf.name_scope(f"fastcarry_{core.name}"):
            direct = _direct(opts, x)
            x_in = x if direct else _to_processing_order(x, lengths, opts)
            valid = _valid_in_processing_order(lengths, opts)
            if save_states and opts.chunk is not None:
                # ``saved`` is only the state at each chunk's start.
                ys, final, saved = _chunked.forward(core, params, x_in, state, valid, opts.unroll, opts.chunk,
                                                    opts.parallel_iterations, batch_major=direct,
                                                    hoisted=opts.hoisted)
            else:
                ys, final, saved = _loop.forward(core, params, x_in, state, valid, opts.unroll, save_states,
                                                 opts.parallel_iterations, batch_major=direct, hoisted=opts.hoisted)
            return ys if direct else _from_processing_order(ys, lengths, opts), final, saved
    return forward


def _in_processing_order(x, dys, lengths, opts, grad, convert_dys=True):
    """Runs ``grad(x_proc, dys_proc) -> (dx_proc, dstate, dparams)`` in processing order; ``dx`` in the caller's layout.

    ``convert_dys=False`` hands ``dys`` over as it came (``grad`` reads it a step at a time);
    None (a zero cotangent) stays None.
    """
    with tf.GradientTape() as tape:
        tape.watch(x)
        x_proc = _to_processing_order(x, lengths, opts)
    dys_proc = _to_processing_order(dys, lengths, opts) if convert_dys and dys is not None else dys
    dx_proc, dstate, dparams = grad(x_proc, dys_proc)
    return tape.gradient(x_proc, x, output_gradients=dx_proc), dstate, dparams


def _chunked_backward(core, opts, chunk_grad, params, x, lengths, state_like, saved, dys, dfinal):
    """``_chunked.backward`` in the caller's layout, without transposed copies of whole sequences when it can."""
    def grad(x_in, dys_in, batch_major=False):
        return _chunked.backward(weights(core, params), x_in, _valid_in_processing_order(lengths, opts), opts.chunk,
                                 state_like, saved, dys_in, dfinal,
                                 chunk_grad(core, params, opts.unroll, opts.parallel_iterations, opts.hoisted),
                                 opts.parallel_iterations, batch_major=batch_major)

    if _direct(opts, x):
        return grad(x, dys, batch_major=True)
    return _in_processing_order(x, dys, lengths, opts, grad)


def _backward_fn(core, opts):
    """The hand-written backward (``backward="fused"``): a reverse loop over what ``forward`` saved."""
    def backward(x, state_like, lengths, params, saved, dys, dfinal):
        with tf.name_scope(f"fastcarry_{core.name}_grad"):
            if opts.chunk is not None:
                return _chunked_backward(core, opts, _chunked.fused_chunk_grad, params, x, lengths, state_like,
                                         saved, dys, dfinal)
            # A batch-major dys is read a step at a time; x is transposed all
            # the same, for the large matmuls after the loop.
            direct = _direct(opts, x)

            def grad(x_proc, dys_in):
                return _backward.backward(core, params, x_proc, _valid_in_processing_order(lengths, opts), opts.unroll,
                                          state_like, saved, dys_in, dfinal,
                                      opts.parallel_iterations, dys_batch_major=direct)

            return _in_processing_order(x, dys, lengths, opts, grad, convert_dys=not direct)
    return backward


def _autodiff_backward_fn(core, opts):
    """``backward="autodiff"``: TF's own gradient of the same forward, recomputed inside one function.

    Under XLA a tape outside the compiled forward cannot reach into its loop,
    so the forward is run again here under a tape, in the same compiled
    function as its gradient. With ``chunk`` it is run again one chunk at a
    time, from the chunk start states the forward saved.
    """
    # xla=False: the time-major loop, whose ops all have TF gradients (the
    # batch-major one writes with XLA's dynamic-update-slice, which has none).
    forward = _forward_fn(core, opts.with_schedule(xla=False), save_states=False)

    def backward(x, state, lengths, params, saved, dys, dfinal):
        if opts.chunk is not None:
            return _chunked_backward(core, opts, _chunked.autodiff_chunk_grad, params, x, lengths, state, saved,
                                     dys, dfinal)
        del saved  # nothing is saved: the forward is recomputed
        w = weights(core, params)
        with tf.GradientTape() as tape:
            tape.watch([x, state, w])
            ys, final, _ = forward(x, state, lengths, params)
        return tape.gradient([ys, final], [x, state, w], output_gradients=[tf.zeros_like(ys) if dys is None else dys, dfinal],
                             unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return backward


class _Named(functools.partial):
    """A function under the name ``__name__``, with no ``__code__`` of its own.

    TF's "N out of the last N calls ... triggered tf.function retracing"
    detector counts traces per Python code object
    (``Function._get_key_for_call_stats``), and every configuration's function
    is a closure of the same code: five configurations traced once each read as
    five retraces of one function. TF keys a partial by the object itself, so
    each compiled function has its own counter and the warning appears only
    when that function really retraces (a new shape), naming it.
    """

    def __repr__(self):
        return self.__name__


# Compiled functions, shared by every cell whose math (core.name, core.key)
# and options match: a second cell of the same kind reuses the traces and XLA
# executables. A core with variables has its own, kept on its owner: its
# functions close over those variables.
_FUNCTIONS = {}


def _code(fn):
    """What identifies ``fn``'s code across calls of ``core()``: code objects and partial arguments."""
    if isinstance(fn, functools.partial):
        return (_code(fn.func), fn.args, tuple(sorted(fn.keywords.items())))
    return getattr(fn, "__code__", fn)


def _fingerprint(core):
    split = core.split
    parts = [core.project, core.step]
    if split is not None:
        parts += list(split[:4]) + [split.recurrent_kernel]
        if split.second is not None:
            parts += list(split.second)
    return tuple(_code(f) for f in parts)


def _cache_for(core):
    """The dict of compiled functions ``core`` may use; raises if its key is taken by different code."""
    if core.owner is not None:
        return _generic.attached(core.owner, "_fastcarry_functions")
    fingerprint = _fingerprint(core)
    known = _FINGERPRINTS.setdefault((core.name, core.key), fingerprint)
    if known != fingerprint:
        raise ValueError(f"two different cores use name={core.name!r}, key={core.key!r}: compiled functions are "
                         f"shared by (name, key), so give each cell math a key of its own")
    return _FUNCTIONS


_FINGERPRINTS = {}


_BUILDERS = {
    "infer": lambda core, opts: _forward_fn(core, opts, save_states=False),
    "forward": lambda core, opts: _forward_fn(core, opts, save_states=True),
    "fused": _backward_fn,
    "autodiff": _autodiff_backward_fn,
}


def _function(kind, core, opts, jit_compile):
    # Everything the traced function closes over must be in the key: the math
    # (core.key), the output width baked into its TensorArrays, the options.
    if kind == "infer":
        opts = opts.with_schedule(chunk=None)  # inference saves nothing: chunking changes nothing there
    opts = opts.with_schedule(xla=bool(jit_compile))
    cache = _cache_for(core)
    key = (kind, core.name, core.key, core.output_size, opts, jit_compile)
    if key not in cache:
        fn = _Named(_BUILDERS[kind](core, opts))
        fn.__name__ = f"fastcarry_{core.name}_{kind}"  # the name traces and HLO modules show
        cache[key] = tf.function(fn, jit_compile=jit_compile, autograph=False)
    return cache[key]


def _stop(tree):
    return tf.nest.map_structure(tf.stop_gradient, tree)


def _zeros_if_none(grads, like):
    return [tf.zeros_like(v) if g is None else g for g, v in zip(grads, like)]


def _statically_zero(cotangent):
    """Whether ``cotangent`` is None or zeros known when tracing (what a tape makes for an unused output).

    TF's tapes hand a custom gradient zeros (``tf.zeros``: a ``Fill`` or a
    small ``Const``; ``tf.gradients``: ``ZerosLike``) for the outputs the loss
    does not use; JAX calls them symbolic zeros. Seeing them lets a loss of the
    final state skip the ``[B, T, H]`` cotangent altogether. An eager tensor is
    never treated as zero (that would need its values).
    """
    if cotangent is None:
        return True
    if not tf.is_symbolic_tensor(cotangent):
        return False
    op = cotangent.op
    if op.type == "ZerosLike":
        return True
    if op.type not in ("Fill", "Const"):
        return False
    value = tf.get_static_value(op.inputs[1] if op.type == "Fill" else cotangent)  # Fill(dims, value)
    return value is not None and not value.any()


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
                "fastcarry.unroll has no second-order gradient with jit_compile=True, backward='fused' "
                "or chunk= (the backward is a separately compiled loop); use jit_compile=False, "
                "backward='autodiff', chunk=None, whose graph loop TF differentiates to any order")
        return list(flat[:len(outputs)]), grad
    return guard(*outputs, *inputs)


# Where swap_memory parks the saved activations between the passes.
HOST = "/device:CPU:0"


def _to_host(tensors):
    """Copies of ``tensors`` in host memory (a no-op copy on a CPU-only machine)."""
    with tf.device(HOST), tf.name_scope("fastcarry_swap/to_host"):
        return [tf.identity(t) for t in tensors]


def _swapped_backward(core, opts, jit_compile):
    """``swap_memory=True``'s backward: the host-parked activations come back one chunk at a time.

    The loop over chunks runs outside the compiled functions (in Python when T
    is static; one piece when it is not), so each chunk's slice of the saved
    tensors is copied to the compute device just before the compiled backward
    of that chunk runs, and the device never holds more than one chunk of them.
    Nothing is recomputed. Same signature as the compiled backward functions.
    """
    # Per chunk, inputs are already in processing order: time-major, not reversed.
    per_chunk = _function("fused", core, _Options(Layout(True, False), opts.schedule._replace(chunk=None)),
                          jit_compile)

    def backward(x, state_like, lengths, params, saved, dys, dfinal):
        x_proc = _to_processing_order(x, lengths, opts)
        valid = _valid_in_processing_order(lengths, opts)
        dys_proc = None if dys is None else _to_processing_order(dys, lengths, opts)
        time = x_proc.shape[0]
        step = opts.chunk if (opts.chunk is not None and time is not None) else (time or tf.shape(x_proc)[0])
        starts = list(range(0, time, step)) if isinstance(time, int) else [0]
        dstate, dweights, dxs = dfinal, None, []
        for start in reversed(starts):
            stop = min(start + step, time) if isinstance(time, int) else time
            with tf.device(HOST), tf.name_scope("fastcarry_swap/fetch"):
                piece = [s[start:stop] for s in saved]
            dx, dstate, dp = per_chunk(x_proc[start:stop], state_like, _chunked.shift(valid, start, stop - start),
                                       params, piece, None if dys is None else dys_proc[start:stop], dstate)
            dweights = dp if dweights is None else tf.nest.map_structure(tf.add, dweights, dp)
            dxs.insert(0, dx)
        dx = _from_processing_order(dxs[0] if len(dxs) == 1 else tf.concat(dxs, 0), lengths, opts)
        return dx, dstate, dweights
    return backward


def _check_variables_known(core, variables):
    """Raises if the compiled functions read a trainable variable the core does not list (it would get no gradient)."""
    known = {v.ref() for v in core.variables}
    unknown = [v for v in variables if v.ref() not in known]
    if unknown:
        raise ValueError(f"{core.name}'s step reads {', '.join(repr(v.name) for v in unknown)}, a trainable "
                         f"tf.Variable not in its variables, so it would get no gradient: list every variable "
                         f"the step reads (fc.FunctionCell(..., variables=[...]))")


def _unrecorded(core, fn, *args):
    """``fn(*args)`` with no tape recording the call when ``fn`` reads variables.

    Every tape watches trainable variables, so a call of a compiled function
    that captures them would be recorded, and eagerly TF builds that
    function's gradient at once (and fails on XLA's loop ops). Recording is
    stopped for the call only: the function is traced first, with recording
    on, because the tapes inside it (the backward's VJPs) must record. (The
    concrete function costs no more to call than ``fn`` itself.)
    """
    if not hasattr(fn, "get_concrete_function"):  # swap_memory's backward, a loop over compiled calls
        return fn(*args)
    concrete = fn.get_concrete_function(*args)
    captured = concrete.trainable_variables
    if not captured:
        return concrete(*args)
    _check_variables_known(core, captured)
    with _record.stop_recording():
        return concrete(*args)


def _custom_gradient_unroll(core, opts, jit_compile, backward_kind, x, state, lengths, params,
                            swap_memory=False):
    """A forward function and a backward function joined by a custom gradient."""
    if swap_memory:
        forward = _function("forward", core, opts.with_schedule(chunk=None), jit_compile)
        backward = _swapped_backward(core, opts, jit_compile)
    else:
        saving = backward_kind == "fused" or opts.chunk is not None
        forward = _function("forward" if saving else "infer", core, opts, jit_compile)
        backward = _function(backward_kind, core, opts, jit_compile)
    n_state, n_params = len(tf.nest.flatten(state)), len(tf.nest.flatten(params))
    # A generic cell's functions read its variables themselves; their values
    # read here are what the caller's tape sees, and their gradients are
    # returned for these reads (so they reach the variables).
    var_values = [v.read_value() for v in core.variables]

    @tf.custom_gradient
    def run(x, *flat):
        s0 = tf.nest.pack_sequence_as(state, flat[:n_state])
        p = tf.nest.pack_sequence_as(params, flat[n_state:n_state + n_params])
        # No tape may see the compiled call: it would ask for the function's own
        # gradient, whose loop accumulators (TensorLists) cannot leave XLA. The
        # inputs are cut (stop_gradient); captured variables are cut below.
        ys, final, saved = _unrecorded(core, forward, _stop(x), _stop(s0), lengths, _stop(p))
        if swap_memory:
            saved = _to_host(saved)
        flat_final = tf.nest.flatten(final)

        # ``variables``: TF passes the variables it saw read inside (a generic
        # cell's, captured by the compiled call); their gradients go through
        # ``var_values`` instead, so nothing more is returned for them here.
        def grad(dys, *dfinal, variables=None):
            # A loss of the final state only: no [B, T, H] cotangent is made or read.
            dys = None if _statically_zero(dys) else _stop(dys)
            dfinal = tf.nest.pack_sequence_as(state, _zeros_if_none(dfinal, flat_final))
            dx, dstate, (dparams, dvars) = _unrecorded(core, backward, _stop(x), _stop(s0), lengths, _stop(p),
                                                       saved, dys, _stop(dfinal))
            flat_grads = [dx] + tf.nest.flatten(dstate) + tf.nest.flatten(dparams) + list(dvars)
            ties = [x] + ([] if dys is None else [dys]) + tf.nest.flatten(dfinal) + list(flat)
            guarded = _no_second_order(flat_grads, ties)
            return guarded if not variables else (guarded, [None] * len(variables))

        return [ys] + flat_final, grad

    out = run(x, *tf.nest.flatten(state), *tf.nest.flatten(params), *var_values)
    return out[0], tf.nest.pack_sequence_as(state, out[1:])


_WARNED = set()
_LIBRARY_PATHS = (os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.abspath(tf.__file__)))


def _warn_once(message):
    """Warns once per process, attributed to the caller's line (not fastcarry's or TensorFlow's wrappers)."""
    if message in _WARNED:
        return
    _WARNED.add(message)
    level, frame = 2, sys._getframe(1)  # stacklevel 2 is the caller of this function
    while frame is not None and any(p in frame.f_code.co_filename for p in _LIBRARY_PATHS):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, UserWarning, stacklevel=level)


def _configured(config, cell, inputs, time_major, given):
    """``given`` (the knobs ``fc.Config`` has, as the call gave them) after ``config`` (an ``fc.Config`` or
    ``"auto"``) fills those left at their defaults."""
    if isinstance(config, str) and config == "auto":
        shape = getattr(inputs, "shape", None)
        if shape is None or len(shape) != 3 or shape[-1] is None:
            return given  # check() will say what is wrong
        from fastcarry import _tune  # the cache: read on the first "auto" call only

        cell.build(int(shape[-1]))
        batch, steps = (shape[1], shape[0]) if time_major else (shape[0], shape[1])
        mode = "train" if _record.could_possibly_record() else "infer"
        config = _tune.lookup(cell.core(), int(shape[-1]), cell.dtype, mode, batch, steps)
        if config is None:
            return given
    elif not isinstance(config, _config.Config):
        raise TypeError(f"config must be None, an fc.Config or 'auto', got {config!r}")
    return _config.merge(config, given)


# Library code is plain Python over static facts: autograph must not turn its
# ifs into tf.cond when a caller's tf.function converts it.
@tf.autograph.experimental.do_not_convert
def unroll(cell, inputs, initial_state=None, *, sequence_length=None, mask=None, time_major=False, reverse=False,
           unroll=None, jit_compile=True, backward="fused", chunk=None, parallel_iterations=None,
           swap_memory=False, projection="per_iteration", config=None):
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

    With ``mask`` instead of ``sequence_length``, ``valid = mask[:, t]``: any
    steps may be skipped (left padding, holes). So with ``reverse=True`` each
    row runs backwards from its last real step (with lengths: *within its own
    length*, ``tf.reverse_sequence``, as ``bidirectional_dynamic_rnn``), outputs
    stay aligned with their inputs, and the final state is the state after each
    row's last real step in processing order (``dynamic_rnn``'s semantics).

    Unlike that Python version:

    - all gates come from one ``h @ recurrent_kernel`` per step (two for a
      reset-before GRU) and the elementwise gate math is left to XLA to fuse;
      ``x[t] @ kernel + bias`` is one matmul per loop iteration for its
      ``unroll`` steps (on CPU that mostly beats one matmul for all T before
      the loop, whose ``[T, B, 4H]`` result costs more memory traffic than it
      saves; ``projection="hoisted"`` chooses that one).
    - ``backward="fused"`` (default): the gradient is written by hand, as cuDNN
      does it: the forward saves the states and gate pre-activations, a reverse
      loop carries only the state gradient with one ``drec @ recurrent_kernelᵀ``
      per step (two for a reset-before GRU), and the weight and input gradients are single large matmuls
      after it. ``jit_compile=True`` compiles forward and backward with XLA,
      also when called eagerly or inside a user's ``tf.function``.
      ``backward="autodiff"``: TF differentiates the same forward loop itself
      (with ``jit_compile=True`` by recomputing it under a tape inside the
      compiled backward, since a caller's tape cannot see into a compiled
      loop). It exists to check the fused gradient and for second-order
      gradients (``jit_compile=False`` only). The numbers agree to rounding.
    - ``unroll=k`` runs ``k`` steps per loop iteration (T need not be a multiple
      of k); it changes speed, never results.
    - batch-major inputs under XLA (static T, no ``reverse``) are read, and the
      outputs written, one step at a time in the caller's layout, and the
      backward reads the outputs' cotangent the same way: no transposed copy
      of those whole sequences is made (the backward still transposes ``x``
      once, for its large matmuls; with ``chunk`` not even that).
    - ``chunk=C`` is exact BPTT in bounded memory: the forward keeps only the
      state at the start of every C-step chunk, and the backward re-runs each
      chunk's forward (in reverse chunk order) before its backward, carrying
      dL/dstate from chunk to chunk. Memory for the gradient falls from T steps
      of activations to ``ceil(T / C)`` states plus one chunk's; the price is
      one more forward pass. The gradients are those of ``chunk=None`` (to
      float rounding); T need not be a multiple of C. Without a gradient it
      changes nothing.
    - a loss of the final state only (sequence classification) costs no
      ``[B, T, H]`` memory inside a ``tf.function``: the zeros a tape makes
      for the unused outputs are recognised when traced and never built or
      read (the backward makes a zero row per step instead), and under XLA
      the unused outputs are not written. With ``chunk=C`` such a training
      step needs ``ceil(T / C)`` states and one chunk's activations, nothing
      of size T. (Eagerly, TF builds those zeros before fastcarry sees them.)

    Args:
      cell: ``fc.LSTM``, ``fc.GRU`` or ``fc.SimpleRNN``; built on first use from
        the inputs' D.
      inputs: ``[B, T, D]`` (``[T, B, D]`` if ``time_major``), floating, the
        cell's dtype.
      initial_state: the cell's state structure, ``[B, H]`` per component
        (``fc.LSTMState(h, c)`` for LSTM); None means zeros.
      sequence_length: ``[B]`` integers, or None (all T steps). Values are
        clipped to ``[0, T]`` in every mode, as ``dynamic_rnn`` treats them:
        a length above T runs all T steps, a negative one none. (Not an error:
        XLA drops ``Assert`` ops, and checking eager values would copy them to
        the host on every call.)
      mask: ``[B, T]`` bool (``[T, B]`` if ``time_major``), or None: which
        steps are real; at the others the state is copied through and the
        output is zero (Keras's mask semantics for the state; Keras's layers
        repeat the previous output instead, which ``fastcarry.keras`` does).
        Not with ``sequence_length``. With ``reverse``, all T steps run
        backwards (a mask has no length to reverse within).
      time_major: layout of ``inputs`` and outputs.
      reverse: run time backwards (see above).
      unroll: int >= 1, time steps per loop iteration (and the input
        projection's chunk); None: the cell's measured default,
        ``fastcarry._unroll.DEFAULT_UNROLL`` (2 for every cell today).
      jit_compile: compile with XLA (True) or run a graph loop (False).
      backward: ``"fused"`` (hand-written gradient) or ``"autodiff"`` (TF's).
      chunk: None or int >= 1, steps per recomputed chunk of the backward pass.
      parallel_iterations: None or int >= 1, ``tf.while_loop``'s: how many
        iterations a graph loop may run at once (``dynamic_rnn``'s knob; TF's
        default is 10). Used with ``jit_compile=False`` only: XLA runs loop
        iterations in order and ignores it, so with ``jit_compile=True`` it has
        no effect and a warning says so (once). A recurrence leaves little to
        overlap but the input projection and the backward's weight work.
      swap_memory: bool (``dynamic_rnn``'s knob, which TF2's ``while_loop``
        silently drops). True: the activations the forward saves for the
        backward pass are copied to host memory (``HOST``) between the passes,
        and the backward brings them back to the compute device one chunk at a
        time (``chunk`` steps, or all T at once without ``chunk``), running the
        compiled backward chunk by chunk; nothing is recomputed, so with
        ``swap_memory`` ``chunk`` only sets the fetch size. Needs
        ``backward="fused"``. It takes effect when fastcarry's functions run as
        calls of their own (eagerly, or in a caller's graph ``tf.function``);
        inside a caller's ``tf.function(jit_compile=True)`` XLA compiles all of
        it for one device and the host placement is lost. On a CPU-only machine
        host and device are the same memory: it changes nothing numerically.
      projection: where the forward's input projection ``x @ kernel + bias``
        runs: ``"per_iteration"`` (default), one ``[unroll * B, D] @ [D, G]``
        per loop iteration; ``"hoisted"``, one ``[T * B, D] @ [D, G]`` for all
        T before the loop, its ``[T, B, G]`` result read one iteration ahead
        (with ``chunk``: one per chunk, ``[C * B, D]``, also when the backward
        recomputes it). Hoisting is one large GEMM (what a GPU favours) for a
        ``[T, B, G]`` buffer; on this project's CPU it measured 0.76-1.12x the
        per-iteration projection (``benchmarks/README.md``). It changes speed,
        never results. The backward's input and weight gradients are large
        matmuls after its loop either way. A generic cell projects inside its
        step: no effect there.
      config: None, an ``fc.Config`` (from ``fc.tune``), or ``"auto"``: the
        cached ``fc.tune`` result for this device, cell and shape (B and T
        bucketed; ``"train"`` when a tape could record, else ``"infer"``), or
        the defaults when there is none (logged once at info level). Its
        ``unroll``, ``chunk``, ``swap_memory`` and ``projection`` apply where
        the call leaves them at their defaults; given values win. Never tunes
        by itself.

    Returns:
      ``(outputs, state)``: ``outputs`` ``[B, T, H]`` (``[T, B, H]`` if
      ``time_major``), zeros past each row's length; ``state`` the final state,
      ``fc.LSTMState(h [B, H], c [B, H])`` for LSTM, ``[B, H]`` otherwise.
      With T == 0, empty outputs and the initial state.
    """
    options = dict(sequence_length=sequence_length, mask=mask, time_major=time_major, reverse=reverse, unroll=unroll,
                   jit_compile=jit_compile, backward=backward, chunk=chunk, parallel_iterations=parallel_iterations,
                   swap_memory=swap_memory, projection=projection, config=config)
    if isinstance(cell, _stack.Stack):
        return _stack.unroll_stack(cell, inputs, initial_state, **options)
    cell = _generic.as_cell(cell)
    if config is not None:
        knobs = _configured(config, cell, inputs, time_major,
                            dict(unroll=unroll, chunk=chunk, swap_memory=swap_memory, projection=projection))
        unroll, chunk, swap_memory, projection = (knobs[k] for k in ("unroll", "chunk", "swap_memory", "projection"))
    args = _validate.check(cell, inputs, initial_state, sequence_length, time_major, reverse, unroll, jit_compile,
                           backward, chunk, parallel_iterations, swap_memory, mask, projection)
    _validate.build_for(cell, args)
    state = args.initial_state if args.initial_state is not None else cell.zero_state(args.batch, cell.dtype)
    if isinstance(args.time, int) and args.time == 0:
        shape = [0, args.batch, cell.output_size] if time_major else [args.batch, 0, cell.output_size]
        return tf.zeros(tf.stack(shape), cell.dtype), state
    core, params = check_core(cell.core(), type(cell).__name__), cell.params()
    if parallel_iterations is not None and jit_compile:
        _warn_once("parallel_iterations has no effect with jit_compile=True: XLA runs while-loop iterations in "
                   "order and ignores it; it applies to the graph loop of jit_compile=False")
        parallel_iterations = None
    steps = int(unroll) if unroll is not None else default_unroll(core, args.batch, args.time)
    opts = _Options(Layout(time_major, reverse),
                    Schedule(steps, None if chunk is None else int(chunk),
                             None if parallel_iterations is None else int(parallel_iterations),
                             projection=projection))
    if tf.executing_eagerly() and not _record.could_possibly_record():
        # Eager inference: nothing can ask for a gradient, so save nothing for
        # one (~15% of the forward at B32 T100 D128 H256). In a graph the saved
        # tensors stay (tf.gradients needs no tape); under an outer XLA
        # compilation they are dead code and removed.
        ys, final, _ = _function("infer", core, opts, jit_compile)(args.inputs, state, args.lengths, params)
        return ys, final
    if backward == "autodiff" and not jit_compile and chunk is None:
        # A graph while_loop that TF differentiates itself, to any order.
        ys, final, _ = _function("infer", core, opts, False)(args.inputs, state, args.lengths, params)
        return ys, final
    return _custom_gradient_unroll(core, opts, jit_compile, backward, args.inputs, state, args.lengths, params,
                                   swap_memory)
