"""fastcarry: fast, exact recurrent networks under XLA.

Public surface::

    import fastcarry as fc
    cell = fc.LSTM(units)            # or fc.GRU(units, reset_after=True), fc.SimpleRNN(units)
    outputs, state = fc.unroll(cell, inputs)        # inputs [B, T, D] -> outputs [B, T, H]
    fc.reference.unroll(cell, inputs)               # the plain specification, same signature
    carry = fc.Carry(cell, batch_size=B)            # state carried across calls: y = carry(x_chunk)
"""

from fastcarry import reference as reference
from fastcarry._carry import Carry as Carry
from fastcarry._cells import GRU as GRU
from fastcarry._cells import LSTM as LSTM
from fastcarry._cells import Cell as Cell
from fastcarry._cells import SimpleRNN as SimpleRNN
from fastcarry._unroll import unroll as unroll
from fastcarry.kernels.lstm import LSTMState as LSTMState

__version__ = "0.1.0"

__all__ = ["Carry", "Cell", "GRU", "LSTM", "LSTMState", "SimpleRNN", "reference", "unroll"]
