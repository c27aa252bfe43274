"""What the tools run: cells by name, and the shapes they run at.

One place for the command line, the benchmarks, profiling and the tests.
"""

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
