"""One step of a ``Core`` as the loops run it: ``dynamic_rnn``'s masking, the pieces' shapes, what is differentiated.

Shapes: ``state`` a structure of ``[B, ..]``, ``xp_t [B, G]``, ``y_t [B, H]``.
"""

from typing import NamedTuple

import tensorflow as tf

from fastcarry._protocol import run_update


def mask(valid, new_state, y, state):
    """``dynamic_rnn``'s masking (``valid [B, 1]`` from ``Validity.at``, None: all real): at a step that is not
    real the state is copied through and the output is zero."""
    if valid is None:
        return new_state, y
    new_state = tf.nest.map_structure(lambda n, o: tf.where(valid, n, o), new_state, state)
    return new_state, tf.where(valid, y, tf.zeros_like(y))


def masked_step(core, params, state, xp_t, valid):
    return mask(valid, *core.run_step(params, state, xp_t), state)


def masked_update(split, params, state, a_t, valid, units=None):
    """``run_update`` masked. ``units``: the split's unit parameters already made (the backward's, which its tape
    watches), or None: made from ``params``."""
    return mask(valid, *run_update(split, params, state, a_t, units), state)


def weights(core, params):
    """What the weight gradients are taken of: ``(params, core.variables)``."""
    return params, tuple(core.variables)


class StepShapes(NamedTuple):
    """Zeros shaped like one step's pieces (``[B, ..]``); dead code once traced."""

    xp: tf.Tensor     # [B, G]
    rec: tf.Tensor    # [B, G1]
    a: object         # the structure of ``a``
    rec2: object      # [B, G2], or None without a second matmul


def step_shapes(core, params, state, x, time_axis=0):
    split = core.split
    # A sum, not ``[0]``: T may be 0.
    first = x[:1] if time_axis == 0 else x[:, :1]
    xp = tf.zeros_like(tf.reduce_sum(core.project(params, first), time_axis))
    rec = tf.zeros_like(split.recurrent(params, split.recurrent_input(state)))
    a = split.combine(xp, rec)
    rec2 = None
    if split.second is not None:
        rec2 = tf.zeros_like(split.second.recurrent(params, split.second.input(state, a)))
        a = split.second.combine(a, rec2)
    return StepShapes(xp, rec, a, rec2)
