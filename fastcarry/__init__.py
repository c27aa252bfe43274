"""fastcarry: fast, exact recurrent networks under XLA.

Public surface::

    import fastcarry as fc
    cell = fc.LSTM(units, input_size=D)  # or fc.GRU(units, reset_after=True), fc.SimpleRNN(units)
    outputs, state = fc.unroll(cell, inputs)        # inputs [B, T, D] -> outputs [B, T, H]
    fc.reference.unroll(cell, inputs)               # the plain specification, same signature
    carry = fc.Carry(cell, batch_size=B)            # state carried across calls: y = carry(x_chunk)
    fc.unroll(keras.layers.GRUCell(H), inputs)      # Keras and TF1 cells too (fc.as_cell)
    fc.unroll(fc.FunctionCell(step, H, H, variables), inputs)   # a step function
    fc.unroll(fc.Stack([cell1, cell2]), inputs)     # MultiRNNCell
    fc.bidirectional(cell_fw, cell_bw, inputs)      # bidirectional_dynamic_rnn
    fc.keras.LSTM(units, return_sequences=True)     # keras.layers.LSTM, run by the fused loop
    config = fc.tune(cell, (B, T, D))               # an fc.Config, cached for fc.unroll(..., config="auto")
    fc.default_config(cell, (B, T, D), mode="infer")  # what runs when nothing chooses
    fc.tune_cache.load(), fc.weights.to_torch(...)  # the tune cache; every weight-layout conversion

The cell protocol (``fc.CellProtocol``, ``fc.Core``, ``fc.RecurrentSplit``,
``fc.SecondMatmul``) is public: a cell that gives its step as a split gets
the hand-written backward.

The names are imported on first use, not by ``import fastcarry``: the command
line (``fastcarry --help``) must not wait seconds for TensorFlow to start.
"""

import importlib
from typing import TYPE_CHECKING

from fastcarry._version import __version__ as __version__

# name -> (module, attribute; None for the module itself)
_EXPORTS = {
    "Carry": ("fastcarry._carry", "Carry"),
    "Config": ("fastcarry._config", "Config"),
    "Cell": ("fastcarry._cells", "Cell"),
    "CellProtocol": ("fastcarry._protocol", "CellProtocol"),
    "Core": ("fastcarry._protocol", "Core"),
    "FunctionCell": ("fastcarry._adapters", "FunctionCell"),
    "RecurrentSplit": ("fastcarry._protocol", "RecurrentSplit"),
    "SecondMatmul": ("fastcarry._protocol", "SecondMatmul"),
    "Stack": ("fastcarry._stack", "Stack"),
    "TuneReport": ("fastcarry._tune", "TuneReport"),
    "as_cell": ("fastcarry._adapters", "as_cell"),
    "bidirectional": ("fastcarry._bidirectional", "bidirectional"),
    "default_config": ("fastcarry._tune", "default_config"),
    "keras": ("fastcarry.keras", None),
    "GRU": ("fastcarry._cells", "GRU"),
    "LSTM": ("fastcarry._cells", "LSTM"),
    "LSTMState": ("fastcarry.kernels.lstm", "LSTMState"),
    "SimpleRNN": ("fastcarry._cells", "SimpleRNN"),
    "reference": ("fastcarry.reference", None),
    "tune": ("fastcarry._tune", "tune"),
    "tune_cache": ("fastcarry.tune_cache", None),
    "weights": ("fastcarry.weights", None),
    "unroll": ("fastcarry._unroll", "unroll"),
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # what type checkers and IDEs see; the same names as _EXPORTS
    from fastcarry import keras as keras
    from fastcarry import reference as reference
    from fastcarry import tune_cache as tune_cache
    from fastcarry import weights as weights
    from fastcarry._adapters import FunctionCell as FunctionCell
    from fastcarry._adapters import as_cell as as_cell
    from fastcarry._bidirectional import bidirectional as bidirectional
    from fastcarry._carry import Carry as Carry
    from fastcarry._cells import GRU as GRU
    from fastcarry._cells import LSTM as LSTM
    from fastcarry._cells import Cell as Cell
    from fastcarry._cells import SimpleRNN as SimpleRNN
    from fastcarry._config import Config as Config
    from fastcarry._protocol import CellProtocol as CellProtocol
    from fastcarry._protocol import Core as Core
    from fastcarry._protocol import RecurrentSplit as RecurrentSplit
    from fastcarry._protocol import SecondMatmul as SecondMatmul
    from fastcarry._stack import Stack as Stack
    from fastcarry._tune import TuneReport as TuneReport
    from fastcarry._tune import default_config as default_config
    from fastcarry._tune import tune as tune
    from fastcarry._unroll import unroll as unroll
    from fastcarry.kernels.lstm import LSTMState as LSTMState


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fastcarry' has no attribute {name!r}")
    module_name, attribute = _EXPORTS[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
