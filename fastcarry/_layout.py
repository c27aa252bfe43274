"""The caller's layout and the loops' processing order: ``[B, T, ..]`` / ``[T, B, ..]``, forwards or reversed.

The loops run time-major in *processing order* (the order the steps run in);
``to_processing_order`` and ``from_processing_order`` move whole sequences
between that and the caller's ``Layout``, and ``direct`` says when the loops
read and write the caller's batch-major sequences as they are instead.
"""

import tensorflow as tf


def to_processing_order(seq, validity, layout):
    """``[B, T, ...]`` / ``[T, B, ...]`` -> ``[T, B, ...]`` in the order the steps run.

    A permutation of time steps, so its adjoint is ``from_processing_order``.
    With ``layout.reverse`` and lengths each row is reversed within its own
    length (``Validity.reverse_rows``).
    """
    with tf.name_scope("layout"):  # a phase of its own in fastcarry.profiling
        if not layout.time_major:
            seq = tf.transpose(seq, [1, 0] + list(range(2, seq.shape.rank)))
        return validity.reverse_rows(seq) if layout.reverse else seq


def from_processing_order(seq, validity, layout):
    """The inverse of ``to_processing_order`` (reversal is its own inverse)."""
    with tf.name_scope("layout"):
        if layout.reverse:
            seq = validity.reverse_rows(seq)
        return seq if layout.time_major else tf.transpose(seq, [1, 0] + list(range(2, seq.shape.rank)))


def direct(layout, schedule, seq):
    """Whether the loops read and write batch-major ``seq [B, T, ..]`` as it is (no reversal, static T).

    Then no transposed copy of a whole sequence is made (see ``fastcarry._time.Time``).
    Only under XLA, which updates the ``[B, T, ..]`` result in place: TF's graph
    executor would copy it on every loop iteration.
    """
    return schedule.xla and not layout.time_major and not layout.reverse and seq.shape[1] is not None


def in_processing_order(x, dys, validity, layout, grad, convert_dys=True):
    """Runs ``grad(x_proc, dys_proc) -> (dx_proc, dstate, dparams)`` in processing order; ``dx`` in the caller's
    layout.

    ``convert_dys=False`` hands ``dys`` over as it came (``grad`` reads it a step at a time);
    None (a zero cotangent) stays None.
    """
    with tf.GradientTape() as tape:
        tape.watch(x)
        x_proc = to_processing_order(x, validity, layout)
    dys_proc = to_processing_order(dys, validity, layout) if convert_dys and dys is not None else dys
    dx_proc, dstate, dparams = grad(x_proc, dys_proc)
    return tape.gradient(x_proc, x, output_gradients=dx_proc), dstate, dparams
