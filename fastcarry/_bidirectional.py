"""``fc.bidirectional``: ``tf.compat.v1.nn.bidirectional_dynamic_rnn`` on ``fc.unroll``."""

from typing import Any

from fastcarry._unroll import unroll


def bidirectional(cell_fw: Any, cell_bw: Any, inputs: Any, initial_state_fw: Any = None, initial_state_bw: Any = None,
                  *, sequence_length: Any = None, time_major: bool = False,
                  **unroll_options: Any) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    """Runs ``cell_fw`` forwards and ``cell_bw`` backwards over ``inputs``; ``bidirectional_dynamic_rnn``'s semantics.

    The backward cell runs each row reversed *within its own length* (as
    ``tf.reverse_sequence`` does) and its outputs are re-aligned with the
    inputs: ``outputs_bw[:, t]`` is the backward cell's output after reading
    steps ``length - 1 .. t``. Both directions share ``sequence_length`` (one
    argument, so they cannot disagree); past a row's length both output zeros.
    With ``mask`` (in ``unroll_options``) instead, the backward cell runs all
    of time backwards, skipping masked steps, as Keras's ``Bidirectional`` does.
    Concatenate the two outputs on the last axis for Keras's
    ``Bidirectional(merge_mode="concat")``.

    Args:
      cell_fw, cell_bw: cells (anything ``fc.unroll`` takes, ``fc.Stack`` too).
      inputs: ``[B, T, D]`` (``[T, B, D]`` if ``time_major``).
      initial_state_fw, initial_state_bw: each cell's state, or None for its zero state.
      sequence_length: ``[B]`` ints, or None.
      time_major: layout of inputs and outputs.
      **unroll_options: ``mask``, ``unroll``, ``jit_compile``, ``backward``, ``chunk``,
        ``parallel_iterations``, ``swap_memory``, ``projection``, ``config``: as for ``fc.unroll``, for both
        directions (``reverse`` is this function's to set).

    Returns:
      ``((outputs_fw, outputs_bw), (state_fw, state_bw))``: outputs
      ``[B, T, H_fw]`` and ``[B, T, H_bw]`` (time-major if ``time_major``); the
      final states (the backward one after each row's step 0).
    """
    if "reverse" in unroll_options:
        raise TypeError("bidirectional runs cell_bw with reverse=True itself; reverse is not an option here")
    common = dict(sequence_length=sequence_length, time_major=time_major, **unroll_options)
    outputs_fw, state_fw = unroll(cell_fw, inputs, initial_state_fw, **common)
    outputs_bw, state_bw = unroll(cell_bw, inputs, initial_state_bw, reverse=True, **common)
    return (outputs_fw, outputs_bw), (state_fw, state_bw)
