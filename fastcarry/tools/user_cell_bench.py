"""Users' own cells through ``fc.unroll`` (the generic path) against ``keras.layers.RNN(cell)``.

Four Keras cells of the kinds users write, none of which fastcarry knows:

- ``PeepholeLSTMCell``: an LSTM whose gates also read the cell state through per-unit peephole vectors;
- ``MinimalGatedUnitCell``: one forget gate, which also gates the state the candidate reads (Zhou et al. 2016);
- ``IndRNNCell``: ``h' = relu(x W + u * h + b)``, a per-unit recurrent vector instead of a matrix;
- ``LayerNormGatedCell``: a GRU-like update gate and candidate, each pre-activation layer-normalised with a
  learned gain and bias.

For every cell, shape and mode, one Keras cell object (so one set of weights) is run by both sides:
``fc.unroll(fc.as_cell(cell, fused=False), x)`` inside ``tf.function(jit_compile=True)`` (as fastcarry runs it by
default: the call split at its input projection, ``fastcarry._hoist``, except in inference with one step per loop
iteration), the same with ``hoist=True`` (split in every mode) and with ``hoist=False`` (the call as written,
once per step), the cell's math written on the public fused protocol on the same variables
(``fastcarry.tools.protocol_cells``: the hand-written backward), and
``keras.layers.RNN(cell, return_sequences=True)`` under a plain ``tf.function`` and under
``jit_compile=True``, the faster of the two counting. Before timing, the outputs and the gradients of
``sum(outputs * cotangent)`` (random cotangent) w.r.t. the inputs and every weight are compared: a case whose
two sides differ beyond float32's 2e-5 (relative to the largest magnitude) fails the run. Timing is
``fastcarry._measure.time_blocks``: interleaved rounds, each in its own order, blocks of calls, medians.
"""

import functools
import sys

from fastcarry.tools import report as _report

MODES = ("infer", "train")
SHAPES = ((8, 200, 64, 128), (32, 100, 128, 256))  # (B, T, D, H): the speed grid's two smaller shapes
QUICK_SHAPES = ((2, 5, 3, 4),)
ROUNDS = 11
TOLERANCE = 2e-5


def cell_classes():
    """``{name: Keras cell class}``; each ``Class(units)``, state ``[h]`` (``[h, c]`` for the peephole LSTM)."""
    import keras
    import tensorflow as tf

    class UserCell(keras.layers.Layer):
        """A Keras cell of ``units`` outputs whose state is ``states`` arrays of ``[B, units]``."""

        states = 1

        def __init__(self, units, **kwargs):
            super().__init__(**kwargs)
            self.units, self.output_size = units, units
            self.state_size = units if self.states == 1 else [units] * self.states

    class PeepholeLSTMCell(UserCell):
        states = 2

        def build(self, input_shape):
            h = self.units
            self.kernel = self.add_weight(shape=(input_shape[-1], 4 * h), name="kernel")
            self.recurrent_kernel = self.add_weight(shape=(h, 4 * h), name="recurrent_kernel",
                                                    initializer="orthogonal")
            self.bias = self.add_weight(shape=(4 * h,), name="bias", initializer="zeros")
            self.peepholes = self.add_weight(shape=(3, h), name="peepholes", initializer="random_normal")

        def call(self, inputs, states):
            h, c = states
            z = tf.matmul(inputs, self.kernel) + tf.matmul(h, self.recurrent_kernel) + self.bias
            zi, zf, zc, zo = tf.split(z, 4, axis=-1)
            i = tf.sigmoid(zi + c * self.peepholes[0])
            f = tf.sigmoid(zf + c * self.peepholes[1])
            c = f * c + i * tf.tanh(zc)
            h = tf.sigmoid(zo + c * self.peepholes[2]) * tf.tanh(c)
            return h, [h, c]

    class MinimalGatedUnitCell(UserCell):

        def build(self, input_shape):
            h = self.units
            self.kernel = self.add_weight(shape=(input_shape[-1], 2 * h), name="kernel")
            self.recurrent_forget = self.add_weight(shape=(h, h), name="recurrent_forget", initializer="orthogonal")
            self.recurrent_candidate = self.add_weight(shape=(h, h), name="recurrent_candidate",
                                                       initializer="orthogonal")
            self.bias = self.add_weight(shape=(2 * h,), name="bias", initializer="zeros")

        def call(self, inputs, states):
            h = states[0]
            xf, xc = tf.split(tf.matmul(inputs, self.kernel) + self.bias, 2, axis=-1)
            f = tf.sigmoid(xf + tf.matmul(h, self.recurrent_forget))
            candidate = tf.tanh(xc + tf.matmul(f * h, self.recurrent_candidate))
            h = (1.0 - f) * h + f * candidate
            return h, [h]

    class IndRNNCell(UserCell):

        def build(self, input_shape):
            self.kernel = self.add_weight(shape=(input_shape[-1], self.units), name="kernel")
            self.recurrent = self.add_weight(shape=(self.units,), name="recurrent",
                                             initializer=keras.initializers.RandomUniform(0.0, 1.0))
            self.bias = self.add_weight(shape=(self.units,), name="bias", initializer="zeros")

        def call(self, inputs, states):
            h = tf.nn.relu(tf.matmul(inputs, self.kernel) + self.recurrent * states[0] + self.bias)
            return h, [h]

    class LayerNormGatedCell(UserCell):

        def build(self, input_shape):
            h = self.units
            self.kernel = self.add_weight(shape=(input_shape[-1], 2 * h), name="kernel")
            self.recurrent_kernel = self.add_weight(shape=(h, 2 * h), name="recurrent_kernel",
                                                    initializer="orthogonal")
            self.gain = self.add_weight(shape=(2, h), name="gain", initializer="ones")
            self.shift = self.add_weight(shape=(2, h), name="shift", initializer="zeros")

        def norm(self, z, k):
            mean, variance = tf.nn.moments(z, axes=[-1], keepdims=True)
            return (z - mean) * tf.math.rsqrt(variance + 1e-5) * self.gain[k] + self.shift[k]

        def call(self, inputs, states):
            h = states[0]
            zz, zc = tf.split(tf.matmul(inputs, self.kernel) + tf.matmul(h, self.recurrent_kernel), 2, axis=-1)
            update = tf.sigmoid(self.norm(zz, 0))
            h = (1.0 - update) * h + update * tf.tanh(self.norm(zc, 1))
            return h, [h]

    return {"peephole_lstm": PeepholeLSTMCell, "minimal_gated_unit": MinimalGatedUnitCell, "indrnn": IndRNNCell,
            "layer_norm_gated": LayerNormGatedCell}


CELLS = ("peephole_lstm", "minimal_gated_unit", "indrnn", "layer_norm_gated")


def _sides(kind, shape, seed=0):
    """``(cell, x [B, T, D], cotangent [B, T, H], {name: fastcarry(x) -> outputs}, keras(x) -> outputs)``: one
    cell object; fastcarry as it runs users' cells (``"fastcarry"``), split in every mode (``"fastcarry-split"``,
    ``hoist=True``), with the call as written, once per step (``"fastcarry-as-written"``, ``hoist=False``), and
    the same math on the fused protocol (``"fastcarry-protocol"``, ``protocol_cells.ProtocolCell``)."""
    import keras
    import numpy as np
    import tensorflow as tf

    import fastcarry as fc
    from fastcarry.tools.protocol_cells import ProtocolCell

    b, t, d, h = shape
    keras.utils.set_random_seed(seed)
    cell = cell_classes()[kind](h)
    cell.build((None, d))
    rng = np.random.default_rng(seed + 1)
    for w in cell.weights:  # random biases and gains too, so every weight matters
        w.assign(w + tf.constant(rng.standard_normal(w.shape) * 0.1, w.dtype))
    x = tf.constant(rng.standard_normal((b, t, d)), tf.float32)
    cot = tf.constant(rng.standard_normal((b, t, h)), tf.float32)
    fast = {}
    for name, hoist in (("fastcarry", None), ("fastcarry-split", True), ("fastcarry-as-written", False)):
        fast[name] = functools.partial(_outputs, fc.as_cell(cell, fused=False, hoist=hoist))
    fast["fastcarry-protocol"] = functools.partial(_outputs, ProtocolCell(kind, cell))
    layer = keras.layers.RNN(cell, return_sequences=True)
    return cell, x, cot, fast, layer


def _outputs(cell, x):
    import fastcarry as fc

    return fc.unroll(cell, x)[0]


def check_equal(kind, shape, variants=None):
    """The largest relative difference, over outputs and every gradient, between fastcarry's ``variants``
    (names of ``_sides``'s; None: all) and Keras (eager)."""
    import numpy as np
    import tensorflow as tf

    cell, x, cot, fast, layer = _sides(kind, shape)

    def evaluate(run):
        with tf.GradientTape() as tape:
            tape.watch(x)
            outputs = run(x)
            loss = tf.reduce_sum(outputs * cot)
        return [outputs, *tape.gradient(loss, [x, *cell.trainable_variables])]

    want, worst = evaluate(layer), 0.0
    for name, run in fast.items():
        if variants is not None and name not in variants:
            continue
        for g, w in zip(evaluate(run), want):
            g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
            worst = max(worst, float(np.abs(g - w).max() / max(np.abs(w).max(), 1e-30)))
    return worst


def _steps(kind, shape, mode):
    from fastcarry._measure import step_function

    cell, x, cot, fast, layer = _sides(kind, shape)
    variables = cell.trainable_variables
    steps = {name: step_function(run, variables, mode, cot, name=name.replace("-", "_")) for name, run in fast.items()}
    for jit in (False, True):
        name = f"keras-{'jit' if jit else 'graph'}"
        steps[name] = step_function(lambda x: layer(x), variables, mode, cot, jit_compile=jit,
                                    name=name.replace("-", "_"))
    return {name: (lambda fn=fn: fn(x)) for name, fn in steps.items()}


def run(cells=CELLS, shapes=SHAPES, modes=MODES, rounds=ROUNDS, out_dir=None, stream=sys.stderr):
    """One row per cell x shape x mode: ``{"cell", "shape", "mode", "max_relative_error", "ms", "keras",
    "speedup", "protocol_speedup"}`` (``keras``: the faster Keras variant; ``speedup``: its time over
    fastcarry's; ``protocol_speedup``: over the protocol cell's)."""
    from fastcarry._measure import time_blocks

    progress = _report.Progress(len(cells) * len(shapes) * len(modes), stream)
    rows = []
    for kind in cells:
        for shape in shapes:
            error = check_equal(kind, shape)
            if not error <= TOLERANCE:
                raise AssertionError(f"{kind} {shape}: fastcarry and keras.layers.RNN differ by {error:.2e} "
                                     f"relative (tolerance {TOLERANCE:g})")
            for mode in modes:
                progress.step(f"{kind} {'x'.join(map(str, shape))} {mode}")
                ms = {k: v * 1e3 for k, v in time_blocks(_steps(kind, shape, mode), rounds).items()}
                keras = min(("keras-graph", "keras-jit"), key=ms.get)
                rows.append({"cell": kind, "shape": list(shape), "mode": mode, "max_relative_error": error,
                             "ms": ms, "keras": keras, "speedup": ms[keras] / ms["fastcarry"],
                             "protocol_speedup": ms[keras] / ms["fastcarry-protocol"]})
    progress.close()
    if out_dir is not None:
        _report.write_rows(out_dir, rows, rounds, markdown(rows), lambda path: plot(rows, path))
    return rows


def markdown(rows):
    """The table (ms per call, each side; the speedup over the faster Keras variant), then medians per mode."""
    import statistics

    lines = ["| cell | B×T×D×H | mode | fastcarry ms | split ms | as written ms | protocol ms | keras graph ms | "
             "keras jit ms | vs keras | split vs as written | protocol vs keras | max rel. error |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ms = r["ms"]
        lines.append(f"| {r['cell']} | {'×'.join(map(str, r['shape']))} | {r['mode']} | {ms['fastcarry']:.3f} | "
                     f"{ms['fastcarry-split']:.3f} | {ms['fastcarry-as-written']:.3f} | "
                     f"{ms['fastcarry-protocol']:.3f} | {ms['keras-graph']:.3f} | {ms['keras-jit']:.3f} | "
                     f"{r['speedup']:.2f}x | {ms['fastcarry-as-written'] / ms['fastcarry-split']:.2f}x | "
                     f"{r['protocol_speedup']:.2f}x | {r['max_relative_error']:.1e} |")
    for mode in MODES:
        speedups = [r["speedup"] for r in rows if r["mode"] == mode]
        protocol = [r["protocol_speedup"] for r in rows if r["mode"] == mode]
        if speedups:
            lines.append(f"| **median** | | {mode} | | | | | | | **{statistics.median(speedups):.2f}x** "
                         f"(lowest {min(speedups):.2f}x) | | **{statistics.median(protocol):.2f}x** "
                         f"(lowest {min(protocol):.2f}x) | |")
    return "\n".join(lines)


def plot(rows, path):
    """Speedup over the faster Keras variant per case: fastcarry's default and the protocol cell, per mode; a line
    at 1x."""
    plt = _report.require_matplotlib()
    cases = sorted({(r["cell"], tuple(r["shape"])) for r in rows}, key=lambda c: (CELLS.index(c[0]), c[1]))
    fig, ax = plt.subplots(figsize=(12, 4.5))
    bars = [(mode, key, label) for mode in MODES
            for key, label in (("speedup", f"{mode}: fastcarry"), ("protocol_speedup", f"{mode}: protocol cell"))]
    for i, (mode, key, label) in enumerate(bars):
        by_case = {(r["cell"], tuple(r["shape"])): r[key] for r in rows if r["mode"] == mode}
        ax.bar([k + i * 0.2 for k in range(len(cases))], [by_case.get(c, 0.0) for c in cases], 0.2, label=label)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([k + 0.3 for k in range(len(cases))], [f"{c} {'x'.join(map(str, s))}" for c, s in cases],
                  rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("keras.layers.RNN time / fastcarry time")
    ax.legend()
    _report.save_figure(fig, path, dpi=100)
