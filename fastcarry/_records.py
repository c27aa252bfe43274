"""The records that pass between a forward pass and its backward (``jax.experimental.rnn``'s residuals,
xformers' ``Inputs``/``Context``/``Gradients``): what goes in, what is saved, what comes back.

Shapes: ``x [B, T, D]`` (``[T, B, D]`` time-major), states ``[B, ..]`` per component, saved sequences
``[T, B, ..]`` (time-major, processing order).
"""

from typing import NamedTuple, Optional

import tensorflow as tf

from fastcarry._validity import Validity


class Inputs(NamedTuple):
    """A forward pass's inputs: ``x`` in the caller's layout, the initial state, which steps are real."""

    x: tf.Tensor
    state: object        # the cell's state structure of [B, ..]
    validity: Validity


class Residuals(NamedTuple):
    """What the plain forward saves for its backward, time-major in processing order.

    states: one ``[T, B, ..]`` per flattened state component: the state *before* every step.
    preactivations: one ``[T, B, ..]`` per flattened component of each step's ``a`` (a core with a
      ``RecurrentSplit``; ``[]`` without one).
    """

    states: list
    preactivations: list


class Boundaries(NamedTuple):
    """What the chunked forward saves: per flattened state component ``[N, B, ..]``, the state each of the
    ``N = ceil(T / chunk)`` chunks starts from."""

    states: list


class Cotangents(NamedTuple):
    """What the backward gets: dL/d outputs (the caller's layout; None for a zero cotangent, which is then
    never made) and dL/d final state (the state's structure)."""

    outputs: Optional[tf.Tensor]
    state: object
