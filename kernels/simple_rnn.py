"""Fused SimpleRNN step in Keras 3's layout::

    h' = activation(x_t @ kernel + bias + h @ recurrent_kernel)

``kernel [D, H]``, ``recurrent_kernel [H, H]``, ``bias [H]``; ``activation`` one of ``ACTIVATIONS``.
"""

import tensorflow as tf

from fastcarry.kernels._params import Params as Params  # the weights, shared by every kernel
from fastcarry.kernels._project import dense_over_time

# The activations the fused SimpleRNN runs, by Keras's names.
ACTIVATIONS = {"tanh": tf.tanh, "relu": tf.nn.relu, "sigmoid": tf.sigmoid, "linear": tf.identity}


def project(params, x):
    """``x [T, B, D] -> xp [T, B, H]``."""
    return dense_over_time(x, params.kernel, params.bias)


def recurrent_input(state):
    """The ``[B, H]`` that multiplies ``recurrent_kernel``: the state itself."""
    return state


def recurrent_kernel(params):
    """``recurrent``'s weight ``[H, H]``: ``recurrent(params, h) == h @ kernel(params)``."""
    return params.recurrent_kernel


def recurrent(params, h):
    """``h [N, H] -> [N, H]``: the one recurrent matmul of a step."""
    return tf.matmul(h, params.recurrent_kernel)


def combine(xp_t, rec_t):
    """The pre-activation ``z [.., H]`` from ``xp_t`` and ``rec_t`` ``[.., H]`` (linear)."""
    return xp_t + rec_t


def update(state, z, activation=tf.tanh):
    """The elementwise rest of a step: ``activation(z)``, twice (state and output), ``[B, H]``."""
    h = activation(z)
    return h, h

