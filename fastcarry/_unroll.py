"""``fastcarry.unroll``: normalise the arguments, validate them, dispatch to a strategy.

How the loops, the hand-written backward and the strategies work is in
``docs/architecture.md`` and ``docs/guide.md``; measured figures are in
``benchmarks/README.md``.
"""

import dataclasses
from typing import Any

import tensorflow as tf

# Private but stable since TF 2.4: whether any GradientTape could record now.
from tensorflow.python.eager import record as _record

from fastcarry import _strategies, _validate, tune_cache
from fastcarry._adapters import as_cell, for_inference
from fastcarry._config import Config, Options, default_unroll
from fastcarry._measure import device_info
from fastcarry._protocol import TensorLike, check_core
from fastcarry._records import Inputs
from fastcarry._stack import Stack, run_layers
from fastcarry._warn import warn_once


# Library code is plain Python over static facts: autograph must not turn its
# ifs into tf.cond when a caller's tf.function converts it.
@tf.autograph.experimental.do_not_convert
def unroll(cell: Any, inputs: TensorLike, initial_state: Any = None, *, sequence_length: TensorLike | None = None,
           mask: TensorLike | None = None, time_major: bool = False, reverse: bool = False, unroll: int | None = None,
           jit_compile: bool = True, backward: str = "fused", chunk: int | None = None,
           parallel_iterations: int | None = None, swap_memory: bool | None = None, projection: str | None = None,
           config: Config | str | None = None, training: bool | None = None) -> tuple[tf.Tensor, Any]:
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
    steps may be skipped (left padding, holes). With ``reverse=True`` each row
    runs backwards from its last real step (with lengths: *within its own
    length*, ``tf.reverse_sequence``, as ``bidirectional_dynamic_rnn``; with a
    mask: all of time), outputs stay aligned with their inputs, and the final
    state is the state after each row's last real step in processing order.

    Unlike that Python version:

    - the loop is compiled (XLA with ``jit_compile=True``, else a graph
      ``while_loop``), several steps per iteration (``unroll``), and the
      gradient is written by hand (``backward="fused"``): the forward saves
      the states and gate pre-activations, a reverse loop carries only the
      state gradient, and the weight and input gradients are large matmuls
      after it. ``backward="autodiff"`` is TF's own gradient of the same loop.
    - ``chunk=C`` is exact BPTT in bounded memory: the forward keeps the state
      at each C-step chunk's start, the backward re-runs each chunk before its
      backward (``ceil(T / C)`` states plus one chunk's activations, for one
      more forward pass).
    - a loss of the final state only builds no ``[B, T, H]`` cotangent inside
      a ``tf.function`` (the zeros a tape makes for unused outputs are
      recognised when traced).
    - the options that change speed or memory (``unroll``, ``chunk``,
      ``parallel_iterations``, ``swap_memory``, ``projection``, ``config``)
      never change results beyond float rounding.

    Args:
      cell: a cell of ``fc.CellProtocol`` (``fc.LSTM``, ``fc.GRU``,
        ``fc.SimpleRNN``, ``fc.FunctionCell``, ``fc.Stack``, or a user's), or a
        Keras or TF1 cell (through ``fc.as_cell``); built on first use from the
        inputs' D.
      inputs: ``[B, T, D]`` (``[T, B, D]`` if ``time_major``), floating, the
        cell's dtype; D static, B and T may be dynamic.
      initial_state: the cell's state structure, ``[B, H]`` per component
        (``fc.LSTMState(h, c)`` for LSTM); None means ``cell.zero_state``.
      sequence_length: ``[B]`` integers, or None (all T steps). Clipped to
        ``[0, T]``, as ``dynamic_rnn`` treats them.
      mask: ``[B, T]`` bool (``[T, B]`` if ``time_major``), or None: which
        steps are real. Not with ``sequence_length``.
      time_major: layout of ``inputs`` and outputs.
      reverse: run time backwards (see above).
      unroll: None or int >= 1, time steps per loop iteration (and the input
        projection's block); None: the config's, else the default for the
        cell, B, H and mode (``_config.default_unroll``: 1 for inference of
        small cells on a CPU, else 2 or 4).
      jit_compile: compile with XLA (True) or run a graph loop (False).
      backward: ``"fused"`` (hand-written gradient) or ``"autodiff"`` (TF's;
        with ``jit_compile=False`` and no ``chunk``, differentiable to any
        order).
      chunk: None or int >= 1, steps per recomputed chunk of the backward pass.
      parallel_iterations: None or int >= 1, the graph ``while_loop``'s
        (``jit_compile=False`` only; with XLA it has no effect and a warning
        says so, once).
      swap_memory: None (False) or bool: park the activations the forward
        saves in host memory between the passes, and bring them back ``chunk``
        steps at a time (all T without ``chunk``). Needs ``backward="fused"``;
        takes effect where fastcarry's functions run as calls of their own
        (eagerly or in a graph ``tf.function``), not inside a caller's XLA
        compilation.
      projection: None (``"per_iteration"``), ``"per_iteration"`` (one
        ``[unroll * B, D] @ [D, G]`` per loop iteration) or ``"hoisted"`` (one
        ``[T * B, D] @ [D, G]`` before the loop). No effect on a cell that
        projects inside its step.
      config: None, an ``fc.Config`` (from ``fc.tune``), or ``"auto"``: the
        cached ``fc.tune`` result for this device, cell and shape, if any
        (``"train"`` when a tape could record, else ``"infer"``). Its fields
        apply to the options this call leaves None; given values win.
      training: None (default) or True: in a graph the forward saves what a
        gradient needs. False (inference, as Keras's ``training=False``): in a
        graph the forward saves nothing, so an exported graph holds no
        ``TensorList`` whose element shape carries B (TFLite's builtin ops
        convert it at any batch size); a gradient, if one is asked for all the
        same, recomputes the saving forward (same values, one more forward).
        Eagerly, and for cells whose step reads variables itself, no effect.

    Returns:
      ``(outputs, state)``: ``outputs`` ``[B, T, H]`` (``[T, B, H]`` if
      ``time_major``), zeros at steps that are not real; ``state`` the final
      state in the cell's structure. With T == 0, empty outputs and the
      initial state.
    """
    options = Options(time_major, reverse, unroll, jit_compile, backward, chunk, parallel_iterations,
                      swap_memory, projection, training)
    if not (config is None or isinstance(config, Config) or (isinstance(config, str) and config == "auto")):
        raise TypeError(f"config must be None, an fc.Config or 'auto', got {config!r}")
    return _run(as_cell(cell), inputs, initial_state, options, config, sequence_length, mask)


def _run(cell, inputs, initial_state, options, config, sequence_length, mask):
    if isinstance(cell, Stack):  # layer by layer, each layer a call of its own
        def layer(c, x, state):
            return _run(c, x, state, options, config, sequence_length, mask)
        return run_layers(cell, layer, inputs, initial_state, options.time_major)
    tuned = tune_cache.for_call(config, cell, inputs, options.time_major)  # a Config, or None
    args = _validate.check(cell, inputs, initial_state, options, sequence_length=sequence_length, mask=mask)
    _validate.build_for(cell, args)
    core = check_core(cell.core(), type(cell).__name__)
    mode = _mode(options)
    batch = args.batch if isinstance(args.batch, int) else None
    options = options.resolve(tuned, default_unroll_for(core, batch, mode))
    if mode == "infer":
        core = check_core(for_inference(cell, core, options.unroll), type(cell).__name__)
    state = args.initial_state if args.initial_state is not None else cell.zero_state(args.batch, cell.dtype)
    if isinstance(args.time, int) and args.time == 0:
        shape = [0, args.batch, cell.output_size] if options.time_major else [args.batch, 0, cell.output_size]
        return tf.zeros(tf.stack(shape), cell.dtype), state
    if options.parallel_iterations is not None and options.jit_compile:
        warn_once("parallel_iterations has no effect with jit_compile=True: XLA runs while-loop iterations in "
                  "order and ignores it; it applies to the graph loop of jit_compile=False")
        options = dataclasses.replace(options, parallel_iterations=None)
    return _strategies.run(core, cell.params(), Inputs(args.inputs, state, args.validity), options)


def _mode(options):
    """``"infer"`` when ``training=False`` or no tape could record, else ``"train"``."""
    inference = options.training is False or (options.training is None and not _record.could_possibly_record())
    return "infer" if inference else "train"


def default_unroll_for(core, batch, mode):
    """``_config.default_unroll`` for ``core`` (a ``Core``) at ``batch`` (B, or None) in ``mode`` on this device."""
    return default_unroll(core.name, batch, core.output_size, mode, device_info()["type"])
