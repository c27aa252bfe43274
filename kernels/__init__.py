"""Fused per-step math for fastcarry's cells (imported as ``fastcarry.kernels``).

One module per cell, all pure functions of tensors (no variables, no loops),
each the pieces of a ``fastcarry.Core`` with a ``fastcarry.RecurrentSplit``:

- ``Params``: a NamedTuple of the weights, in Keras 3's layout (one type for all three: ``_params``).
- ``project(params, x) -> xp``: the input projection for several steps at
  once, ``x [T, B, D] -> xp [T, B, G]``, as one matmul; the loop calls it per
  chunk of ``unroll`` steps, and the backward for all T at once.
- ``recurrent_input(state) -> h [B, H]`` and ``recurrent(params, h) -> rec [B, G1]``,
  linear in ``params`` and ``h`` (``h @ recurrent_kernel``, plus GRU's recurrent
  bias), with ``recurrent_kernel(params)`` its weight;
- ``combine(xp, rec) -> a``, linear: the gate pre-activations, what the forward
  pass saves per step (LSTM, SimpleRNN: ``xp + rec``; GRU: a NamedTuple);
- ``update(state, a_t) -> (state, y_t)``, elementwise.

A step is ``update(state, combine(xp_t, recurrent(params, recurrent_input(state))))``,
composed once by ``Core.run_step``. The reset-before GRU has a second,
dependent matmul, ``(r * h) @ U_h``, given as ``reset_state(state, a) -> r * h``,
``recurrent_candidate(params, g)`` and ``add_candidate(a, rec)`` (a
``fastcarry.SecondMatmul``).

The time loop lives in ``fastcarry._loop``; nothing here knows about time.
"""

from fastcarry.kernels import gru as gru
from fastcarry.kernels import lstm as lstm
from fastcarry.kernels import simple_rnn as simple_rnn

__all__ = ["gru", "lstm", "simple_rnn"]
