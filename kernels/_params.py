"""The weights every fused kernel takes, in Keras 3's layout."""

from typing import NamedTuple

import tensorflow as tf


class Params(NamedTuple):
    """A cell's weights: ``kernel [D, G]``, ``recurrent_kernel [H, G]``, ``bias``.

    G is 4H for LSTM (``bias [4H]``), 3H for GRU (``bias [2, 3H]`` reset-after,
    ``[3H]`` reset-before), H for SimpleRNN (``bias [H]``).
    """

    kernel: tf.Tensor
    recurrent_kernel: tf.Tensor
    bias: tf.Tensor
