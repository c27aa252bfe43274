"""The hoisted input projection shared by every cell."""

import tensorflow as tf


def dense_over_time(x, kernel, bias):
    """``x [T, B, D] @ kernel [D, G] + bias [G] -> [T, B, G]`` as ONE matmul.

    Reshaping to ``[T*B, D]`` gives a single large GEMM instead of T small ones,
    which is the whole point of hoisting the projection out of the loop.
    """
    t, b = tf.shape(x)[0], tf.shape(x)[1]
    flat = tf.reshape(x, [-1, tf.shape(x)[2]])
    out = tf.matmul(flat, kernel) + bias
    return tf.reshape(out, tf.stack([t, b, tf.shape(kernel)[1]]))
