"""Fused SimpleRNN step in Keras 3's layout::

    h' = activation(x_t @ kernel + bias + h @ recurrent_kernel)

``kernel [D, H]``, ``recurrent_kernel [H, H]``, ``bias [H]``.
"""

from typing import NamedTuple

import tensorflow as tf

from fastcarry.kernels._project import dense_over_time


class Params(NamedTuple):
    """SimpleRNN weights: ``kernel [D, H]``, ``recurrent_kernel [H, H]``, ``bias [H]``."""

    kernel: tf.Tensor
    recurrent_kernel: tf.Tensor
    bias: tf.Tensor


def project(params, x):
    """``x [T, B, D] -> xp [T, B, H]``."""
    return dense_over_time(x, params.kernel, params.bias)


def step(params, state, xp_t, activation=tf.tanh):
    """One step: ``state [B, H]``, ``xp_t [B, H]`` -> (``h' [B, H]``, ``h' [B, H]``)."""
    h = activation(xp_t + tf.matmul(state, params.recurrent_kernel))
    return h, h
