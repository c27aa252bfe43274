"""The cell protocol the loops run: ``Core`` (a cell's math), ``Split`` and ``Inner`` (its step split at the
recurrent matmul, for the fused backward), and the step under ``dynamic_rnn``'s masking.

Shapes: ``state`` a structure of ``[B, ..]``, ``xp_t [B, G]``, ``y_t [B, H]``.
"""

from typing import Callable, Hashable, NamedTuple, Optional

import tensorflow as tf


class Inner(NamedTuple):
    """A second recurrent matmul whose input needs the first one's result (reset-before GRU's ``(r * h) @ U_h``).

    input: ``(state, a) -> g [B, K]``, elementwise; it may read only the parts of
      ``a`` that ``combine`` leaves unchanged (GRU: ``r`` from ``a.zr``).
    recurrent: ``(params, g [N, K]) -> rec [N, G2]``, linear in params and g.
    combine: ``(a, rec) -> a``, linear in both; adds ``rec`` into ``a``.
    kernel: optional ``params -> W [K, G2]`` with ``recurrent(params, g) == g @ W``
      (plus terms free of ``g``); lets the backward loop use a pre-transposed ``W``.
    """

    input: Callable
    recurrent: Callable
    combine: Callable
    kernel: Optional[Callable] = None


class Split(NamedTuple):
    """A step split at its recurrent matmul (see ``fastcarry.kernels``)::

        a = combine(xp_t, recurrent(params, recurrent_input(state)))
        a = inner.combine(a, inner.recurrent(params, inner.input(state, a)))   # only with an inner
        step(params, state, xp_t) == update(state, a)

    recurrent_input: ``state -> h [B, H]``.
    recurrent: ``(params, h [N, H]) -> rec [N, G1]``, linear in params and h.
    combine: ``(xp [.., G], rec [.., G1]) -> a``, linear in both (LSTM: ``xp + rec``);
      ``a`` (a tensor or a NamedTuple of them) is what the forward pass saves per step.
    update: ``(state, a_t) -> (state, y_t)``, elementwise.
    inner: an ``Inner``, or None for cells with one recurrent matmul.
    kernel: optional ``params -> W [H, G1]`` with ``recurrent(params, h) == h @ W``
      (plus terms free of ``h``, such as a recurrent bias); see ``Inner.kernel``.
    """

    recurrent_input: Callable
    recurrent: Callable
    combine: Callable
    update: Callable
    inner: Optional[Inner] = None
    kernel: Optional[Callable] = None


def preactivation(split, params, state, xp_t):
    """One step's ``a`` from ``state`` and ``xp_t [B, G]``: the recurrent matmul(s), no nonlinearity but the inner input's."""
    a = split.combine(xp_t, split.recurrent(params, split.recurrent_input(state)))
    if split.inner is not None:
        inner = split.inner
        a = inner.combine(a, inner.recurrent(params, inner.input(state, a)))
    return a


class Core(NamedTuple):
    """What the loop needs from a cell.

    key: hashable, names the math; cores with equal keys and output sizes share
      compiled functions, so the key must determine ``project`` and ``step``.
    project: ``(params, x [T, B, D]) -> xp [T, B, G]``, the input projection of all steps.
    step: ``(params, state, xp_t [B, G]) -> (state, y_t [B, output_size])``.
    output_size: H, the last dimension of ``y_t``.
    split: the same step as a ``Split``, or None; with it the backward pass
      does one ``drec @ recurrent_kernelᵀ`` per step and the weight gradients
      as single large matmuls after the loop (as cuDNN does).
    """

    key: Hashable
    project: Callable
    step: Callable
    output_size: int
    split: Optional[Split] = None


def valid_rows(t, lengths):
    """``[B, 1]`` bool: which rows have a real step at time ``t`` (None: all)."""
    return None if lengths is None else tf.expand_dims(t < lengths, -1)


def mask(valid, new_state, y, state):
    """``dynamic_rnn``'s masking: past a row's length the state is copied through, the output is zero."""
    if valid is None:
        return new_state, y
    new_state = tf.nest.map_structure(lambda n, o: tf.where(valid, n, o), new_state, state)
    return new_state, tf.where(valid, y, tf.zeros_like(y))


def masked_step(core, params, state, xp_t, valid):
    return mask(valid, *core.step(params, state, xp_t), state)


def masked_update(split, state, a_t, valid):
    return mask(valid, *split.update(state, a_t), state)


class StepShapes(NamedTuple):
    """Zeros shaped like one step's pieces (``[B, ..]``); dead code once traced."""

    xp: tf.Tensor     # [B, G]
    rec: tf.Tensor    # [B, G1]
    a: object         # the structure of ``a``
    rec2: object      # [B, G2], or None without an inner matmul


def step_shapes(core, params, state, x, time_axis=0):
    split = core.split
    # A sum, not ``[0]``: T may be 0.
    first = x[:1] if time_axis == 0 else x[:, :1]
    xp = tf.zeros_like(tf.reduce_sum(core.project(params, first), time_axis))
    rec = tf.zeros_like(split.recurrent(params, split.recurrent_input(state)))
    a = split.combine(xp, rec)
    rec2 = None
    if split.inner is not None:
        rec2 = tf.zeros_like(split.inner.recurrent(params, split.inner.input(state, a)))
        a = split.inner.combine(a, rec2)
    return StepShapes(xp, rec, a, rec2)
