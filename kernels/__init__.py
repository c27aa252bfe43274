"""Fused per-step math for fastcarry's cells (imported as ``fastcarry.kernels``).

One module per cell. Each exposes the same three pieces, all pure functions of
tensors (no variables, no loops):

- ``Params``: a NamedTuple of the weights, in Keras 3's layout.
- ``project(params, x) -> xp``: the input projection for every step at once,
  ``x [T, B, D] -> xp [T, B, G]``. It is hoisted out of the time loop so that
  the loop body keeps only the recurrent matmul(s).
- ``step(params, state, xp_t) -> (state, y_t)``: one time step on a projected
  input ``xp_t [B, G]``; ``y_t [B, H]``.

The time loop lives in ``fastcarry._loop``; nothing here knows about time.
"""

from fastcarry.kernels import gru as gru
from fastcarry.kernels import lstm as lstm
from fastcarry.kernels import simple_rnn as simple_rnn

__all__ = ["gru", "lstm", "simple_rnn"]
