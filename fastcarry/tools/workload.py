"""What the tools run: cells by name, and the shapes they run at.

One place for the command line, the benchmarks, profiling and the tests.
"""

import argparse
from typing import NamedTuple

# The names on the command line and in results; "rnn" is fc.SimpleRNN and
# "gru-reset-before" fc.GRU(reset_after=False), TF1 GRUCell's form.
CELLS = ("lstm", "gru", "gru-reset-before", "rnn")


class Workload(NamedTuple):
    """One shape: a ``cell`` (one of ``CELLS``) over inputs ``[batch, time, input]`` with ``units`` hidden units."""

    cell: str
    batch: int
    time: int
    input: int
    units: int

    @property
    def label(self):
        return f"{self.cell} {self.batch}x{self.time}x{self.input}x{self.units}"


def make_cell(kind, units, *, input_size=None, seed=0, dtype=None, **kw):
    """A new fastcarry cell of ``kind`` (one of ``CELLS``), built when ``input_size`` is given."""
    import tensorflow as tf

    import fastcarry as fc

    if kind not in CELLS:
        raise ValueError(f"cell must be one of {CELLS}, got {kind!r}")
    options = dict(input_size=input_size, seed=seed, dtype=tf.float32 if dtype is None else dtype, **kw)
    if kind == "lstm":
        return fc.LSTM(units, **options)
    if kind == "rnn":
        return fc.SimpleRNN(units, **options)
    return fc.GRU(units, reset_after=kind == "gru", **options)


def workload_cell(workload, seed=0):
    """The built cell a ``Workload`` runs."""
    return make_cell(workload.cell, workload.units, input_size=workload.input, seed=seed)


def random_data(workload, seed=0):
    """``(x [B, T, D], cotangent [B, T, H])``, float32 standard normal: a workload's inputs and the
    weights of its loss ``sum(outputs * cotangent)`` (never a plain sum, which hides layout errors)."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    w = workload
    x = tf.constant(rng.standard_normal((w.batch, w.time, w.input)), tf.float32)
    cot = tf.constant(rng.standard_normal((w.batch, w.time, w.units)), tf.float32)
    return x, cot


def unroll_step(cell, mode, config=None):
    """``fc.unroll(cell, x)`` as ``fc.tune`` times it (``mode`` ``"infer"``, or ``"train"``: the gradient
    w.r.t. ``x`` and the cell's variables of a square loss), with ``config``'s schedule (``fc.Config``)."""
    import fastcarry as fc
    from fastcarry._measure import step_function

    config = config or fc.Config()  # nothing chosen: fc.unroll's defaults for the workload
    return step_function(lambda x: fc.unroll(cell, x, config=config)[0], cell.trainable_variables, mode,
                         wrt_inputs=True, jit_compile=not config.swap_memory, name="fastcarry_tune")


# -- the command line's workload arguments (no TensorFlow here: parsing answers at once) ------------------------

def positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text}")
    return value


def non_negative(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an int >= 0, got {text}")
    return value


def add_workload_arguments(parser, *, batch, time, input, units, time_type=positive):
    """``--cell --batch --time --input --units`` with these defaults."""
    parser.add_argument("--cell", choices=CELLS, default="lstm", help="default: lstm")
    parser.add_argument("--batch", type=positive, default=batch, metavar="B", help=f"batch size (default {batch})")
    parser.add_argument("--time", type=time_type, default=time, metavar="T", help=f"time steps (default {time})")
    parser.add_argument("--input", type=positive, default=input, metavar="D", help=f"input features (default {input})")
    parser.add_argument("--units", type=positive, default=units, metavar="H", help=f"units (default {units})")
