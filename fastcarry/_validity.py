"""Which time steps of each row are real: ``sequence_length`` or ``mask``, one type for both.

``Validity(lengths=[B] int32)``: step ``t`` of row ``b`` is real when
``t < lengths[b]`` (``dynamic_rnn``'s lengths, clipped to ``[0, T]``).
``Validity(mask=[T, B] bool)``: any steps may be real (left padding, holes).
``Validity()``: every step is real. The loops ask it what they need
(``at``, ``shift``, ``padded``); nothing looks at a tensor's rank to tell the
two apart. A NamedTuple of tensors (None for the absent field), so it passes
into compiled functions as it is.
"""

from typing import NamedTuple, Optional

import tensorflow as tf


class Validity(NamedTuple):
    """Real steps, by ``lengths [B]`` int32 or ``mask [T, B]`` bool (time-major), or neither (all real)."""

    lengths: Optional[tf.Tensor] = None
    mask: Optional[tf.Tensor] = None

    @property
    def all_real(self):
        """True when every step is real (no lengths, no mask)."""
        return self.lengths is None and self.mask is None

    def at(self, t):
        """``[B, 1]`` bool: which rows have a real step at time ``t``; None when all do."""
        if self.mask is not None:
            return tf.expand_dims(self.mask[t], -1)
        if self.lengths is not None:
            return tf.expand_dims(t < self.lengths, -1)
        return None

    def shift(self, start, size):
        """This validity for steps ``[start, start + size)`` counted from 0 (one chunk's)."""
        if self.mask is not None:
            # A slice of static size: XLA needs static shapes inside the chunk loop.
            return Validity(mask=tf.slice(self.mask, [start, 0], [size, -1]))
        if self.lengths is not None:
            return Validity(lengths=self.lengths - start)
        return self

    def reversed_in_time(self, reverse):
        """This validity in processing order: a mask is reversed with the steps; lengths stay as they are."""
        if reverse and self.mask is not None:
            return Validity(mask=tf.reverse(self.mask, [0]))
        return self

    def reverse_rows(self, seq):
        """``seq [T, B, ..]`` backwards in time; with lengths each row within its own length, as
        ``bidirectional_dynamic_rnn`` does with ``tf.reverse_sequence`` (with a mask, all of time)."""
        if self.lengths is None:
            return tf.reverse(seq, [0])
        return tf.reverse_sequence(seq, self.lengths, seq_axis=0, batch_axis=1)

    def padded(self, time, pad, batch):
        """This validity for ``time`` real steps followed by ``pad`` padded ones, which are never real.

        ``time`` and ``pad`` may be scalar tensors (a T known only at run time); ``batch`` is B.
        """
        if self.mask is not None:
            return Validity(mask=tf.pad(self.mask, [[0, pad], [0, 0]]))
        if self.lengths is not None:
            return Validity(lengths=tf.minimum(self.lengths, time))
        return Validity(lengths=tf.fill(tf.reshape(batch, [1]), time))
