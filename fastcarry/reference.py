"""The reference path: the specification of ``fastcarry.unroll``, run as written.

A plain Python loop over time with per-gate, unfused math written from the
equations; it shares nothing with ``fastcarry.kernels`` or ``fastcarry._loop``
but the cell's variables. It is slow on purpose and works in any float dtype
(float64 included), so the fused path can be held against it.

Masking and reversal are also written independently: with ``reverse=True`` the
loop walks ``t = T-1 .. 0`` and a row's steps at ``t >= length`` are masked, which
is the same thing as reversing each row within its own length.
"""

from typing import Any

import tensorflow as tf

from fastcarry import _validate
from fastcarry._adapters import FunctionCell, LayerCell, as_cell
from fastcarry._cells import GRU, LSTM, LSTMState, SimpleRNN
from fastcarry._config import Config, Options
from fastcarry._keras_fused import KerasFusedCell
from fastcarry._protocol import TensorLike
from fastcarry._stack import Stack

__all__ = ["unroll"]


def _gate(w, h_units, k):
    """Column block ``k`` (of width H) of a ``[*, G]`` weight or ``[G]`` bias."""
    return w[..., k * h_units:(k + 1) * h_units]


def _lstm_step(cell):
    kernel, recurrent, bias, h_units = cell.kernel, cell.recurrent_kernel, cell.bias, cell.units
    w_i, w_f, w_c, w_o = (_gate(kernel, h_units, k) for k in range(4))
    u_i, u_f, u_c, u_o = (_gate(recurrent, h_units, k) for k in range(4))
    b_i, b_f, b_c, b_o = (_gate(bias, h_units, k) for k in range(4))

    def step(state, x):
        h, c = state
        i = tf.sigmoid(x @ w_i + h @ u_i + b_i)
        f = tf.sigmoid(x @ w_f + h @ u_f + b_f + cell.forget_bias)
        g = tf.tanh(x @ w_c + h @ u_c + b_c)
        o = tf.sigmoid(x @ w_o + h @ u_o + b_o)
        c = f * c + i * g
        h = o * tf.tanh(c)
        return LSTMState(h, c), h
    return step


def _gru_step(cell):
    kernel, recurrent, bias, h_units = cell.kernel, cell.recurrent_kernel, cell.bias, cell.units
    w_z, w_r, w_h = (_gate(kernel, h_units, k) for k in range(3))
    u_z, u_r, u_h = (_gate(recurrent, h_units, k) for k in range(3))
    if cell.reset_after:
        bx_z, bx_r, bx_h = (_gate(bias[0], h_units, k) for k in range(3))
        bh_z, bh_r, bh_h = (_gate(bias[1], h_units, k) for k in range(3))

        def step(h, x):
            z = tf.sigmoid(x @ w_z + bx_z + h @ u_z + bh_z)
            r = tf.sigmoid(x @ w_r + bx_r + h @ u_r + bh_r)
            hh = tf.tanh(x @ w_h + bx_h + r * (h @ u_h + bh_h))
            h = z * h + (1 - z) * hh
            return h, h
    else:
        b_z, b_r, b_h = (_gate(bias, h_units, k) for k in range(3))

        def step(h, x):
            z = tf.sigmoid(x @ w_z + h @ u_z + b_z)
            r = tf.sigmoid(x @ w_r + h @ u_r + b_r)
            hh = tf.tanh(x @ w_h + (r * h) @ u_h + b_h)
            h = z * h + (1 - z) * hh
            return h, h
    return step


# Written again, not imported from the kernels: the reference shares nothing with the fused path.
_ACTIVATIONS = {"tanh": tf.tanh, "relu": tf.nn.relu, "sigmoid": tf.sigmoid, "linear": lambda v: v}


def _simple_rnn_step(cell):
    act = _ACTIVATIONS[cell.activation]

    def step(h, x):
        h = act(x @ cell.kernel + h @ cell.recurrent_kernel + cell.bias)
        return h, h
    return step


def _generic_step(cell):
    """For a cell this module has no equations for: its own step as written (a Keras or TF1 cell's call, a
    ``FunctionCell``'s function, never the split ``fastcarry.unroll`` runs), else its core, one step at a time."""
    if isinstance(cell, (LayerCell, FunctionCell)):
        return cell.step
    core, params = cell.core(), cell.params()

    def step(state, x):
        return core.run_step(params, state, core.project(params, x[None])[0])
    return step


def _stack_step(stack):
    """All layers inside one step, as ``MultiRNNCell`` does (``fastcarry.unroll`` runs them layer by layer).

    Each layer by its own reference step: ``Stack.core()`` would run the layers' fused kernels.
    """
    steps = [_step_for(cell) for cell in stack.cells]

    def step(states, x):
        new_states = []
        for layer_step, state in zip(steps, states):
            state, x = layer_step(state, x)
            new_states.append(state)
        return tuple(new_states), x
    return step


def _step_for(cell):
    for kind, make in ((LSTM, _lstm_step), (GRU, _gru_step), (SimpleRNN, _simple_rnn_step), (Stack, _stack_step)):
        if isinstance(cell, kind):
            return make(cell)
    if isinstance(cell, KerasFusedCell):
        # The Keras layer's own call, not the fused kernel that fastcarry.unroll runs on its weights.
        return LayerCell(cell.layer).step
    return _generic_step(cell)


@tf.autograph.experimental.do_not_convert
def unroll(cell: Any, inputs: TensorLike, initial_state: Any = None, *, sequence_length: TensorLike | None = None,
           mask: TensorLike | None = None, time_major: bool = False, reverse: bool = False, unroll: int | None = None,
           jit_compile: bool = True, backward: str = "fused", chunk: int | None = None,
           parallel_iterations: int | None = None, swap_memory: bool | None = None, projection: str | None = None,
           config: Config | str | None = None, training: bool | None = None) -> tuple[tf.Tensor, Any]:
    """Same signature, arguments and results as ``fastcarry.unroll``; see there.

    ``unroll``, ``jit_compile``, ``backward``, ``chunk``, ``parallel_iterations``, ``swap_memory``,
    ``projection`` and ``config`` are validated like ``fastcarry.unroll``'s and
    then have no effect: this is a Python loop of one step per iteration, run
    as written (eagerly, or traced as written inside a ``tf.function``). T must
    be static. Shapes: ``inputs [B, T, D]`` (``[T, B, D]`` if ``time_major``) ->
    ``(outputs [B, T, H], state)``.
    """
    options = Options(time_major, reverse, unroll, jit_compile, backward, chunk, parallel_iterations,
                      swap_memory, projection, training).resolve()
    if not (config is None or isinstance(config, Config) or (isinstance(config, str) and config == "auto")):
        raise TypeError(f"config must be None, an fc.Config or 'auto', got {config!r}")
    cell = as_cell(cell)
    args = _validate.check(cell, inputs, initial_state, options, sequence_length=sequence_length, mask=mask)
    _validate.build_for(cell, args)
    if not isinstance(args.time, int):
        raise ValueError(f"reference.unroll needs a static T, got inputs of shape {args.inputs.shape}")
    x = args.inputs if time_major else tf.transpose(args.inputs, [1, 0, 2])
    state = args.initial_state if args.initial_state is not None else cell.zero_state(args.batch, cell.dtype)
    step = _step_for(cell)
    ys = [None] * args.time
    for t in (reversed(range(args.time)) if reverse else range(args.time)):
        new_state, y = step(state, x[t])
        if not args.validity.all_real:  # [B] lengths or a [T, B] mask
            real = args.validity
            valid = (real.mask[t] if real.mask is not None else t < real.lengths)[:, None]
            new_state = tf.nest.map_structure(lambda n, o: tf.where(valid, n, o), new_state, state)
            y = tf.where(valid, y, tf.zeros_like(y))
        ys[t] = y
        state = new_state
    if not ys:
        shape = [0, args.batch, cell.output_size]
        outputs = tf.zeros(tf.stack(shape), cell.dtype)
    else:
        outputs = tf.stack(ys)
    return (outputs if time_major else tf.transpose(outputs, [1, 0, 2])), state
