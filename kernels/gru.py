"""Fused GRU steps in Keras 3's layout, both reset variants.

Gates are stored concatenated in the order **z, r, h** (update, reset,
candidate): ``kernel [D, 3H]``, ``recurrent_kernel [H, 3H]``.

Reset-after (Keras default, the cuDNN form), ``bias [2, 3H]`` = (input bias,
recurrent bias); one recurrent matmul per step::

    xz, xr, xh = split(x_t @ kernel + bias[0], 3)
    rz, rr, rh = split(h @ recurrent_kernel + bias[1], 3)
    z = sigmoid(xz + rz);  r = sigmoid(xr + rr)
    hh = tanh(xh + r * rh)
    h' = z * h + (1 - z) * hh

Reset-before (TF1 ``GRUCell``), ``bias [3H]``; the candidate's recurrent matmul
needs ``r`` first, so there are two matmuls per step::

    xz, xr, xh = split(x_t @ kernel + bias, 3)
    z = sigmoid(xz + h @ U_z);  r = sigmoid(xr + h @ U_r)
    hh = tanh(xh + (r * h) @ U_h)
    h' = z * h + (1 - z) * hh
"""

from typing import NamedTuple

import tensorflow as tf

from fastcarry.kernels._params import Params as Params  # the weights, shared by every kernel
from fastcarry.kernels._project import dense_over_time


def project(params, x, reset_after=True):
    """``x [T, B, D] -> xp [T, B, 3H]`` (input bias only; the recurrent bias stays in the step)."""
    bias = params.bias[0] if reset_after else params.bias
    return dense_over_time(x, params.kernel, bias)


def recurrent_input(state):
    """The ``[B, H]`` that multiplies ``recurrent_kernel``: the state itself."""
    return state


def recurrent_kernel(params):
    """``recurrent_reset_after``'s weight ``[H, 3H]`` (it adds ``bias[1]``, free of ``h``)."""
    return params.recurrent_kernel


def recurrent_reset_after(params, h):
    """``h [N, H] -> [N, 3H]`` = ``h @ recurrent_kernel + bias[1]`` (linear in params and h)."""
    return tf.matmul(h, params.recurrent_kernel) + params.bias[1]


class Preactivation(NamedTuple):
    """What a reset-after step keeps of ``xp_t`` and ``rec_t``: ``zr [.., 2H]``, ``xh [.., H]``, ``rh [.., H]``.

    The candidate needs ``xh`` and ``rh`` apart (``r`` multiplies only ``rh``),
    so unlike LSTM's they cannot be summed into one tensor.
    """

    zr: tf.Tensor
    xh: tf.Tensor
    rh: tf.Tensor


def combine_reset_after(xp_t, rec_t):
    """``xp_t``, ``rec_t`` ``[.., 3H]`` -> ``Preactivation`` (linear in both)."""
    units = xp_t.shape[-1] // 3
    return Preactivation(xp_t[..., : 2 * units] + rec_t[..., : 2 * units],
                         xp_t[..., 2 * units :], rec_t[..., 2 * units :])


def update_reset_after(state, a):
    """The elementwise rest of a reset-after step: ``Preactivation`` of ``[B, ..]`` -> (``h'``, ``h'``) ``[B, H]``."""
    z, r = tf.split(tf.sigmoid(a.zr), 2, axis=-1)
    hh = tf.tanh(a.xh + r * a.rh)
    h = z * state + (1 - z) * hh
    return h, h



class ResetBeforePreactivation(NamedTuple):
    """What a reset-before step keeps: ``zr [.., 2H]`` (``xz + h @ U_z``, ``xr + h @ U_r``), ``h [.., H]``
    (``xh + (r * h) @ U_h``)."""

    zr: tf.Tensor
    h: tf.Tensor


def recurrent_kernel_zr(params):
    """The first matmul's weight ``[U_z U_r] [H, 2H]``."""
    units = params.recurrent_kernel.shape[0]
    return params.recurrent_kernel[:, : 2 * units]


def recurrent_reset_before(params, h):
    """The first matmul: ``h [N, H] -> [N, 2H]`` = ``h @ [U_z U_r]``."""
    # Slicing a loop-invariant weight: XLA hoists the slice out of the loop.
    return tf.matmul(h, recurrent_kernel_zr(params))


def combine_reset_before(xp_t, rec_t):
    """``xp_t [.., 3H]``, ``rec_t [.., 2H]`` -> ``ResetBeforePreactivation`` with the candidate's input part only."""
    units = xp_t.shape[-1] // 3
    return ResetBeforePreactivation(xp_t[..., : 2 * units] + rec_t, xp_t[..., 2 * units :])


def reset_state(state, a):
    """The second matmul's input: ``r * h [B, H]``; reads only ``a.zr``, which the second matmul leaves alone."""
    r = tf.sigmoid(a.zr[..., state.shape[-1] :])
    return r * state


def recurrent_kernel_h(params):
    """The second matmul's weight ``U_h [H, H]``."""
    units = params.recurrent_kernel.shape[0]
    return params.recurrent_kernel[:, 2 * units :]


def recurrent_candidate(params, g):
    """The second matmul: ``g [N, H] -> [N, H]`` = ``g @ U_h``."""
    return tf.matmul(g, recurrent_kernel_h(params))


def add_candidate(a, rec_t):
    """Adds the second matmul's ``rec_t [.., H]`` into ``a.h`` (linear in ``rec_t``)."""
    return a._replace(h=a.h + rec_t)


def update_reset_before(state, a):
    """The elementwise rest of a reset-before step: ``ResetBeforePreactivation`` -> (``h'``, ``h'``) ``[B, H]``."""
    z = tf.sigmoid(a.zr[..., : state.shape[-1]])
    h = z * state + (1 - z) * tf.tanh(a.h)
    return h, h

