"""The input projection of several steps at once, shared by every cell."""

import tensorflow as tf


def dense_over_time(x, kernel, bias):
    """``x [T, B, D] @ kernel [D, G] + bias [G] -> [T, B, G]`` as ONE matmul.

    Reshaping to ``[T*B, D]`` gives one GEMM instead of T small ones (the loop
    calls this per chunk of ``unroll`` steps, the backward for all T).
    """
    t, b = tf.shape(x)[0], tf.shape(x)[1]
    flat = tf.reshape(x, [-1, tf.shape(x)[2]])
    out = tf.matmul(flat, kernel) + bias
    return tf.reshape(out, tf.stack([t, b, tf.shape(kernel)[1]]))
