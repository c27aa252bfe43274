"""Fused LSTM step in Keras 3's layout.

Gates are stored concatenated in the order **i, f, c, o** (input, forget,
candidate, output), so one matmul computes all four::

    z   = x_t @ kernel + bias + h @ recurrent_kernel        [B, 4H]
    i, f, g, o = split(z, 4)
    c'  = sigmoid(f) * c + sigmoid(i) * tanh(g)
    h'  = sigmoid(o) * tanh(c')

``x_t @ kernel + bias`` (plus a constant ``forget_bias`` on the f slice, which is
how TF1's ``BasicLSTMCell`` differs) is done for several steps at once by
``project``; ``recurrent``, ``combine`` and ``update`` do the rest (a step is
``update(state, combine(xp_t, recurrent(params, state.h)))``, composed by
``fastcarry.Core``).
"""

from typing import NamedTuple

import tensorflow as tf

from fastcarry.kernels._params import Params as Params  # the weights, shared by every kernel
from fastcarry.kernels._project import dense_over_time


class LSTMState(NamedTuple):
    """LSTM carry: hidden state ``h [B, H]`` and cell state ``c [B, H]``."""

    h: tf.Tensor
    c: tf.Tensor


def project(params, x, forget_bias=0.0):
    """``x [T, B, D] -> xp [T, B, 4H]``; ``forget_bias`` is added to the f gate."""
    bias = params.bias
    if forget_bias:
        b_i, b_f, b_c, b_o = tf.split(bias, 4)
        bias = tf.concat([b_i, b_f + forget_bias, b_c, b_o], 0)
    return dense_over_time(x, params.kernel, bias)


def recurrent_input(state):
    """The ``[B, H]`` that multiplies ``recurrent_kernel``: ``state.h``."""
    return state.h


def recurrent_kernel(params):
    """``recurrent``'s weight ``[H, 4H]``: ``recurrent(params, h) == h @ recurrent_kernel(params)``."""
    return params.recurrent_kernel


def recurrent(params, h):
    """``h [N, H] -> [N, 4H]``: the one recurrent matmul of a step (linear in params and h)."""
    return tf.matmul(h, params.recurrent_kernel)


def combine(xp_t, rec_t):
    """The gate pre-activations ``z [.., 4H]`` from ``xp_t`` and ``rec_t`` ``[.., 4H]`` (linear)."""
    return xp_t + rec_t


def update(state, z):
    """The elementwise rest of a step: ``z [B, 4H]`` -> (LSTMState, ``h' [B, H]``)."""
    i, f, g, o = tf.split(z, 4, axis=-1)
    c = tf.sigmoid(f) * state.c + tf.sigmoid(i) * tf.tanh(g)
    h = tf.sigmoid(o) * tf.tanh(c)
    return LSTMState(h, c), h

