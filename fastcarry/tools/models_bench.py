"""Benchmarks of the models issue: ``fc.Stack``, the generic path and ``fc.bidirectional`` against Keras 3.

Three suites, each timed like ``fastcarry bench`` (one process, contenders
interleaved, medians; ``fastcarry.tools.bench.time_contenders``):

- ``stack``: a two-layer ``fc.Stack`` of LSTMs vs Keras ``Sequential([LSTM, LSTM])``
  holding the same weights; training step.
- ``generic``: a Keras ``LSTMCell`` and a user cell (``MinimalRNNCell``, Keras's
  guide's) through fastcarry's generic path (``fc.as_cell(cell, fused=False)``)
  vs ``keras.layers.RNN(cell)`` on the same cell, both under
  ``jit_compile=True``; inference and training step.
- ``bidirectional``: ``fc.bidirectional`` of two LSTMs vs Keras
  ``Bidirectional(LSTM)`` with the same weights; training step.

Both are timed inside a plain ``tf.function`` (``graph``: fastcarry's own
functions still compiled by XLA, launched one by one, so TF's executor may
run independent ones at once) and inside ``tf.function(jit_compile=True)``
(``jit``: one XLA program), and each one's better median counts; in
``generic`` Keras is timed under XLA only (the target is Keras's own loop
under XLA). Training = forward + the gradient of
``reduce_sum(outputs * cotangent)`` w.r.t. every weight.
"""

import os
import statistics
import sys

import numpy as np

from fastcarry._measure import step_function
from fastcarry.tools import grid_bench as _bench
from fastcarry.tools import report as _report
from fastcarry.tools.check import keras_rnn_layer
from fastcarry.tools.report import Progress, machine_info, require_matplotlib
from fastcarry.tools.workload import Workload

SUITES = ("stack", "generic", "bidirectional")
SHAPES = _bench.FULL_SHAPES
QUICK_SHAPES = ((4, 20, 8, 16),)
# The targets of the issue, as (statistic, factor): checked in the table.
TARGETS = {"stack": ("median", 1.8), "generic": ("min", 1.0), "bidirectional": ("median", 1.5)}


def minimal_rnn_cell_class():
    import keras
    import tensorflow as tf

    class MinimalRNNCell(keras.layers.Layer):
        """Keras's RNN guide's user cell: ``h' = tanh(x @ W + h @ U)``."""

        def __init__(self, units, **kwargs):
            super().__init__(**kwargs)
            self.units, self.state_size, self.output_size = units, units, units

        def build(self, input_shape):
            self.kernel = self.add_weight(shape=(input_shape[-1], self.units), name="kernel")
            self.recurrent_kernel = self.add_weight(shape=(self.units, self.units), name="recurrent_kernel",
                                                    initializer="orthogonal")

        def call(self, inputs, states):
            h = tf.tanh(tf.matmul(inputs, self.kernel) + tf.matmul(states[0], self.recurrent_kernel))
            return h, [h]

    return MinimalRNNCell


def _data(w, width, seed=0):
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    x = tf.constant(rng.standard_normal((w.batch, w.time, w.input)), tf.float32)
    cot = tf.constant(rng.standard_normal((w.batch, w.time, width)), tf.float32)
    return x, cot


def _pair(make_fast, make_keras, mode, x, cot, keras_jit=(False, True)):
    """``{name: step}``: fastcarry inside a jitted and inside a graph step, Keras under each of ``keras_jit``
    (``make_keras(jit_compile) -> (run, variables)``: its layers made for that step, ``keras_rnn_layer``)."""
    fast_run, fast_vars = make_fast()
    steps = {}
    for jit in (True, False):
        # In a graph step fastcarry's compiled functions run as launches of their
        # own, which TF's executor may overlap (both directions of bidirectional).
        name = f"fastcarry-{'jit' if jit else 'graph'}"
        steps[name] = step_function(fast_run, fast_vars, mode, cot, jit_compile=jit, name=name.replace("-", "_"))
    for jit in keras_jit:
        name = f"keras-{'jit' if jit else 'graph'}"
        keras_run, keras_vars = make_keras(jit)
        steps[name] = step_function(keras_run, keras_vars, mode, cot, jit_compile=jit, name=name.replace("-", "_"))
    return {name: (lambda fn=fn: fn(x)) for name, fn in steps.items()}


def _lstm_layer(units, input_dim, jit_compile=False, like=None):
    """A built Keras ``LSTM`` for a step compiled with XLA or not (``keras_rnn_layer``), with ``like``'s weights
    when given."""
    layer = keras_rnn_layer("LSTM", units, jit_compile=jit_compile, return_sequences=True)
    layer.build((None, None, input_dim))
    if like is not None:
        layer.set_weights(like.get_weights())
    return layer


def stack_steps(w, mode):
    """Two LSTM layers: ``fc.Stack`` vs ``keras.Sequential``, the same weights."""
    import keras

    import fastcarry as fc

    x, cot = _data(w, w.units)
    layers = [_lstm_layer(w.units, w.input), _lstm_layer(w.units, w.units)]
    stack = fc.Stack([fc.LSTM.from_keras(layer) for layer in layers])

    def keras_model(jit_compile):
        model = keras.Sequential([keras.Input((w.time, w.input))] + [
            _lstm_layer(w.units, d, jit_compile, like=layer) for layer, d in zip(layers, (w.input, w.units))])
        return model, model.trainable_variables

    return _pair(lambda: ((lambda x: fc.unroll(stack, x)[0]), stack.trainable_variables), keras_model, mode, x,
                 cot)


def generic_steps(w, mode, cell_kind):
    """One Keras cell object run by both: fastcarry's generic path and ``keras.layers.RNN`` under XLA."""
    import keras

    import fastcarry as fc

    x, cot = _data(w, w.units)
    cell = keras.layers.LSTMCell(w.units) if cell_kind == "lstm_cell" else minimal_rnn_cell_class()(w.units)
    cell.build((None, w.input))
    rnn = keras.layers.RNN(cell, return_sequences=True)
    generic = fc.as_cell(cell, fused=False)
    return _pair(lambda: ((lambda x: fc.unroll(generic, x)[0]), cell.trainable_variables),
                 lambda jit_compile: (rnn, cell.trainable_variables), mode, x, cot, keras_jit=(True,))


def bidirectional_steps(w, mode):
    """``fc.bidirectional`` vs ``keras.layers.Bidirectional(LSTM)``, the same weights, outputs concatenated."""
    import keras
    import tensorflow as tf

    import fastcarry as fc

    x, cot = _data(w, 2 * w.units)

    def keras_bidirectional(jit_compile, like=None):
        layer = keras.layers.Bidirectional(keras_rnn_layer("LSTM", w.units, jit_compile=jit_compile,
                                                           return_sequences=True))
        layer.build((None, None, w.input))
        if like is not None:
            layer.set_weights(like.get_weights())
        return layer

    layer = keras_bidirectional(False)
    fw, bw = fc.LSTM.from_keras(layer.forward_layer), fc.LSTM.from_keras(layer.backward_layer)

    def fast(x):
        (y_fw, y_bw), _ = fc.bidirectional(fw, bw, x)
        return tf.concat([y_fw, y_bw], -1)

    def keras_run(jit_compile):
        made = keras_bidirectional(jit_compile, like=layer)
        return made, made.trainable_variables

    return _pair(lambda: (fast, list(fw.trainable_variables) + list(bw.trainable_variables)), keras_run, mode, x,
                 cot)


GENERIC_CELLS = ("lstm_cell", "minimal_rnn_cell")  # the generic suite's cells: Keras's LSTMCell, the guide's cell


def cases(suites, shapes):
    """``[(suite, label, mode, build)]``: every benchmark case of ``suites`` at ``shapes``."""
    out = []
    for b, t, d, h in shapes:
        w = Workload("lstm", b, t, d, h)
        shape = f"{b}x{t}x{d}x{h}"
        if "stack" in suites:
            out.append(("stack", f"2-layer LSTM {shape}", "train", lambda w=w: stack_steps(w, "train")))
        if "generic" in suites:
            for kind in GENERIC_CELLS:
                for mode in _bench.MODES:
                    out.append(("generic", f"{kind} {shape}", mode,
                                lambda w=w, kind=kind, mode=mode: generic_steps(w, mode, kind)))
        if "bidirectional" in suites:
            out.append(("bidirectional", f"bi-LSTM {shape}", "train",
                        lambda w=w: bidirectional_steps(w, "train")))
    return out


def run(suites=SUITES, shapes=SHAPES, repeats=_bench.FULL_REPEATS, out_dir="bench-results/models",
        stream=sys.stderr):
    """Runs the suites; writes ``results.json``, ``results.md`` and ``results.png`` to ``out_dir``."""
    bad = [s for s in suites if s not in SUITES]
    if bad:
        raise ValueError(f"fastcarry bench --models: suite must be one of {SUITES}, got {bad}")
    if repeats < 1:
        raise ValueError(f"fastcarry bench --models: repeats must be >= 1, got {repeats}")
    plt = require_matplotlib()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    todo = cases(suites, shapes)
    bar = Progress(sum((3 if suite == "generic" else 4) + repeats for suite, *_ in todo), stream)
    results = []
    for suite, label, mode, build in todo:
        steps = build()
        timings = _bench.time_contenders(steps, repeats,
                                         lambda name, phase: bar.step(f"{label} {mode} {name or phase}"))
        for who in ("fastcarry", "keras"):  # each at its better variant, named
            _bench.fold_variants(timings, who)
        results.append({"suite": suite, "label": label, "mode": mode, "timings": timings})
        tf.keras.backend.clear_session()
    bar.close()
    data = {"machine": machine_info(), "repeats": repeats, "targets": TARGETS, "results": results}
    _report.write(out_dir, data, markdown(data), lambda path: plot(data, path, plt))
    return data


def speedup(entry):
    t = entry["timings"]
    return t["keras"]["median_s"] / t["fastcarry"]["median_s"]


def summary(data):
    """``{suite: (statistic value, target statistic, target, met)}`` over the suite's rows."""
    out = {}
    for suite, (stat, target) in data["targets"].items():
        values = [speedup(e) for e in data["results"] if e["suite"] == suite]
        if values:
            value = statistics.median(values) if stat == "median" else min(values)
            out[suite] = (value, stat, target, value >= target)
    return out


def markdown(data):
    m = data["machine"]
    lines = ["# fastcarry models benchmarks\n",
             f"{_report.describe(m)}; median of "
             f"{data['repeats']} interleaved repeats, milliseconds per step.\n",
             "| suite | workload | mode | fastcarry ms (variant) | keras ms (variant) | speedup |",
             "|---|---|---|---:|---:|---:|"]
    for e in data["results"]:
        t = e["timings"]
        lines.append(f"| {e['suite']} | {e['label']} | {e['mode']} | {t['fastcarry']['median_s'] * 1e3:.2f} "
                     f"({t['fastcarry']['variant']}) | "
                     f"{t['keras']['median_s'] * 1e3:.2f} ({t['keras']['variant']}) | {speedup(e):.2f}x |")
    lines += ["", "| suite | target | measured | met |", "|---|---|---:|---|"]
    for suite, (value, stat, target, met) in summary(data).items():
        lines.append(f"| {suite} | {stat} >= {target}x | {value:.2f}x | {'yes' if met else 'no'} |")
    return "\n".join(lines) + "\n"


def plot(data, path, plt=None):
    """One bar per case: speedup over Keras 3, coloured by suite, the targets as dashed lines."""
    plt = plt or require_matplotlib()
    entries = data["results"]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(entries) + 2), 4.5))
    colours = dict(zip(SUITES, ("tab:blue", "tab:orange", "tab:green")))
    for i, e in enumerate(entries):
        ax.bar(i, speedup(e), color=colours[e["suite"]], label=e["suite"])
    for suite, (_, target) in data["targets"].items():
        if any(e["suite"] == suite for e in entries):
            ax.axhline(target, color=colours[suite], linestyle="--", linewidth=0.8)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(entries)))
    ax.set_xticklabels([f"{e['label']} {e['mode']}" for e in entries], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("speedup vs Keras 3 (x, median)")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys())
    ax.set_title(f"fastcarry models vs Keras 3 ({data['machine']['cpu_count']} CPUs)")
    _report.save_figure(fig, path, dpi=120)
