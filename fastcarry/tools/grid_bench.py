"""The cell grid's benchmark harness behind ``fastcarry bench`` (``fastcarry.tools.bench``) and ``benchmarks/run.py``.

Every contender of one workload (cell kind and ``B, T, D, H``) and mode (``infer``
is the forward pass; ``train`` is forward plus the gradient of
``reduce_sum(outputs * cotangent)`` w.r.t. all weights) is timed in this one
process, interleaved: each repeat times every contender once, in an order of its own
(``fastcarry._measure.round_order``), so machine noise (other jobs, frequency
scaling, what the previous contender left behind) spreads over all of them alike.

Contenders:

- ``fastcarry``: ``fc.unroll`` inside ``tf.function(jit_compile=True)``.
- ``keras``: the Keras 3 layer with the same weights, under a plain
  ``tf.function`` (``keras-graph``) and under ``jit_compile=True``
  (``keras-jit``); both are timed, the better median is reported as ``keras``.
- ``tf1``: ``tf.compat.v1.nn.dynamic_rnn`` with the tf_keras legacy cell
  (own random weights: only the timing matters).
- ``reference``: ``fc.reference.unroll`` in a ``tf.function``; small shapes only
  (``B*T*H <= REFERENCE_MAX``), its Python loop makes a huge graph otherwise.
- ``roofline``: one jitted ``tf.matmul`` with the FLOPs of the workload's
  matmuls: what the hardware does with the same arithmetic and no recurrence.
- ``torch``: PyTorch's ``nn.LSTM``/``nn.GRU``/``nn.RNN`` on the CPU holding a
  copy of the same weights, with as many threads as CPUs; when PyTorch is
  installed (an optional extra, never a dependency of fastcarry itself).

Outputs (``run``): ``results.json`` (every sample + machine info),
``results.md`` (speedup table) and ``results.png`` (speedup vs Keras plot).
"""

import os
import statistics
import sys
import warnings

import numpy as np

from fastcarry._measure import round_order, step_function, timed_call
from fastcarry.tools import report as _report
from fastcarry.tools.report import Progress, machine_info, require_matplotlib
from fastcarry.tools.workload import Workload, random_data, workload_cell

MODES = ("infer", "train")
# The grid's cells; "gru-reset-before" (reset_after=False, TF1 GRUCell's form) is
# benchmarked on request (``fastcarry bench --cell gru-reset-before``).
CELL_KINDS = ("lstm", "gru", "rnn")
BENCH_CELLS = CELL_KINDS + ("gru-reset-before",)
# Gate width G per unit: the cell's matmuls are [B, D+H] x [D+H, G*H] per step.
GATES = {"lstm": 4, "gru": 3, "rnn": 1, "gru-reset-before": 3}
# The largest B*T*H the reference path is run at (the smallest grid shape).
REFERENCE_MAX = 8 * 200 * 128
# What each mode costs in units of the forward matmul FLOPs (backward ~ 2x forward).
TRAIN_FLOP_FACTOR = 3
CONTENDERS = ("fastcarry", "keras", "tf1", "reference", "roofline", "torch")


FULL_SHAPES = ((8, 200, 64, 128), (32, 100, 128, 256), (64, 100, 256, 512), (16, 500, 128, 256))
FULL_GRID = tuple(Workload(c, *s) for c in CELL_KINDS for s in FULL_SHAPES)
# One small shape per cell: the whole --quick run takes about a minute on 2 cores.
QUICK_GRID = tuple(Workload(c, 8, 50, 32, 64) for c in CELL_KINDS)
FULL_REPEATS = 7
QUICK_REPEATS = 3
WARMUP_CALLS = 2


def matmul_flops(workload, mode):
    """FLOPs of the workload's matmuls: ``2*B*T*(D+H)*G*H`` forward, ``TRAIN_FLOP_FACTOR``x for train."""
    w = workload
    forward = 2 * w.batch * w.time * (w.input + w.units) * GATES[w.cell] * w.units
    return forward * (TRAIN_FLOP_FACTOR if mode == "train" else 1)


# --- contenders: each builder returns a zero-argument callable running one step ---------------

def fastcarry_step(workload, mode, x, cotangent):
    """``fc.unroll`` of the workload's cell inside ``tf.function(jit_compile=True)``: a zero-argument step."""
    import fastcarry as fc

    cell = workload_cell(workload)
    fn = step_function(lambda x: fc.unroll(cell, x)[0], cell.trainable_variables, mode, cotangent,
                       name="fastcarry")
    return lambda: fn(x)


def keras_step(workload, mode, x, cotangent, jit_compile):
    """The Keras 3 layer holding the fastcarry cell's weights, as a zero-argument step."""
    from fastcarry.tools.check import KerasUnroll

    keras = KerasUnroll(workload_cell(workload), jit_compile=jit_compile)  # same weights as the fastcarry cell
    # The layer returns [outputs, *states] (return_sequences and return_state are on).
    fn = step_function(lambda x: keras.layer(x)[0], keras.weights, mode, cotangent, jit_compile=jit_compile,
                       name=f"keras_{'jit' if jit_compile else 'graph'}")
    return lambda: fn(x)


def _tf1(workload, mode, x, cotangent):
    import tensorflow as tf
    from tensorflow.python.util import deprecation as _tf_deprecation  # private; has silence() since TF 2.2
    from tf_keras.src.layers.rnn import legacy_cells

    units = workload.units
    with warnings.catch_warnings():  # the legacy cells warn that they are deprecated: known
        warnings.simplefilter("ignore")
        cell = {"lstm": lambda: legacy_cells.BasicLSTMCell(units, forget_bias=0.0),
                "gru": lambda: legacy_cells.GRUCell(units),
                "gru-reset-before": lambda: legacy_cells.GRUCell(units),
                "rnn": lambda: legacy_cells.BasicRNNCell(units)}[workload.cell]()
    # Built eagerly so the traced function creates no variables.
    cell.build(tf.TensorShape([None, workload.input]))

    def run(x):
        # TF1's API is deprecated and says so when traced (dynamic_rnn, the
        # legacy layer's ``updates``): known, and not the user's business here.
        with warnings.catch_warnings(), _tf_deprecation.silence():
            warnings.simplefilter("ignore")
            return tf.compat.v1.nn.dynamic_rnn(cell, x, dtype=tf.float32)[0]

    fn = step_function(run, cell.trainable_variables, mode, cotangent, jit_compile=False, name="tf1")
    return lambda: fn(x)


def _reference(workload, mode, x, cotangent):
    import fastcarry as fc

    cell = workload_cell(workload)
    fn = step_function(lambda x: fc.reference.unroll(cell, x)[0], cell.trainable_variables, mode, cotangent,
                       jit_compile=False, name="reference")
    return lambda: fn(x)


def _roofline(workload, mode):
    """One jitted ``[M, D+H] x [D+H, G*H]`` matmul with ``M = B*T`` (``x3`` for train): same FLOPs."""
    import tensorflow as tf

    w = workload
    rows = w.batch * w.time * (TRAIN_FLOP_FACTOR if mode == "train" else 1)
    rng = np.random.default_rng(3)
    a = tf.constant(rng.standard_normal((rows, w.input + w.units)), tf.float32)
    b = tf.constant(rng.standard_normal((w.input + w.units, GATES[w.cell] * w.units)), tf.float32)
    fn = tf.function(tf.matmul, jit_compile=True)
    return lambda: fn(a, b)


def torch_skipped(workload):
    """Why PyTorch is not run at ``workload``, or ``None`` if it is."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return "skipped: PyTorch is not installed (pip install 'fastcarry[torch]', a CPU wheel)"
    if workload.cell == "gru-reset-before":
        return "skipped: PyTorch has no reset-before GRU"
    return None


def torch_module(cell):
    """A batch-first ``torch.nn.LSTM``/``GRU``/``RNN`` holding a copy of the fastcarry cell's weights
    (``fastcarry.weights.to_torch``: PyTorch's layout and gate orders)."""
    import torch

    import fastcarry as fc
    from fastcarry.weights import to_torch

    d, h = cell.input_dim, cell.units
    if isinstance(cell, fc.LSTM):
        kind, module = "lstm", torch.nn.LSTM(d, h, batch_first=True)
    elif isinstance(cell, fc.GRU) and cell.reset_after:
        kind, module = "gru", torch.nn.GRU(d, h, batch_first=True)
    elif isinstance(cell, fc.SimpleRNN) and cell.activation in ("tanh", "relu"):
        kind, module = "simple_rnn", torch.nn.RNN(d, h, nonlinearity=cell.activation, batch_first=True)
    else:
        raise ValueError(f"PyTorch has no counterpart of {cell!r}")
    with torch.no_grad():
        for name, value in to_torch(kind, cell.get_weights(), getattr(cell, "forget_bias", 0.0)).items():
            getattr(module, name).copy_(torch.from_numpy(value))
    return module


def _torch(workload, mode, x, cotangent):
    import torch

    torch.set_num_threads(os.cpu_count())  # the same cores TensorFlow uses
    module = torch_module(workload_cell(workload))
    x, cotangent = torch.from_numpy(x.numpy()), torch.from_numpy(cotangent.numpy())
    params = list(module.parameters())
    if mode == "infer":
        def step():
            with torch.inference_mode():
                return module(x)[0]
    else:
        def step():
            outputs = module(x)[0]
            return torch.autograd.grad((outputs * cotangent).sum(), params)
    return step


def reference_skipped(workload):
    """Why the reference path is not run at ``workload``, or ``None`` if it is."""
    size = workload.batch * workload.time * workload.units
    if size > REFERENCE_MAX:
        return f"skipped: B*T*H = {size} > {REFERENCE_MAX} (its unrolled Python loop is too slow to build)"
    return None


def build_contenders(workload, mode, seed=0):
    """``{timing name: step callable}`` for one workload and mode; ``keras`` is timed as two variants."""
    w = workload
    x, cot = random_data(w, seed)
    steps = {
        "fastcarry": fastcarry_step(w, mode, x, cot),
        "keras-graph": keras_step(w, mode, x, cot, jit_compile=False),
        "keras-jit": keras_step(w, mode, x, cot, jit_compile=True),
        "tf1": _tf1(w, mode, x, cot),
    }
    if reference_skipped(w) is None:
        steps["reference"] = _reference(w, mode, x, cot)
    steps["roofline"] = _roofline(w, mode)
    if torch_skipped(w) is None:
        steps["torch"] = _torch(w, mode, x, cot)
    return steps


# --- timing -------------------------------------------------------------------------------------

def _summary(samples):
    return {"median_s": statistics.median(samples), "min_s": min(samples), "max_s": max(samples),
            "samples_s": list(samples)}


def time_contenders(steps, repeats, progress=None):
    """Times every step: first call (``compile_s``), warm-up, then ``repeats`` interleaved rounds.

    Each round visits every contender once, in a new order (``round_order``), so
    no contender always runs right after the same neighbour.
    ``progress(name, phase)`` is called before each contender's compile and each round.
    Returns ``{name: {compile_s, median_s, min_s, max_s, samples_s}}``.
    """
    names = list(steps)
    compile_s = {}
    for name in names:
        if progress:
            progress(name, "compile")
        compile_s[name] = timed_call(steps[name])  # trace + XLA compile + first run
        for _ in range(WARMUP_CALLS):
            timed_call(steps[name])
    samples = {name: [] for name in names}
    for r in range(repeats):
        if progress:
            progress(None, f"repeat {r + 1}/{repeats}")
        for name in round_order(names, r):
            samples[name].append(timed_call(steps[name]))
    return {name: {"compile_s": compile_s[name], **_summary(samples[name])} for name in names}


def fold_variants(timings, who):
    """Replaces ``timings``' ``<who>-<variant>`` entries by ``who``: the one with the lowest median, named in
    ``variant``, all of them kept under ``variants``."""
    variants = {name[len(who) + 1:]: timings.pop(name) for name in list(timings) if name.startswith(f"{who}-")}
    best = min(variants, key=lambda v: variants[v]["median_s"])
    timings[who] = {**variants[best], "variant": best, "variants": variants}
    return timings


# --- the run ------------------------------------------------------------------------------------

def validate(workloads, modes, repeats):
    """Raises ``ValueError`` with a clear message for an unusable grid."""
    if repeats < 1:
        raise ValueError(f"fastcarry bench: repeats must be >= 1, got {repeats}")
    for m in modes:
        if m not in MODES:
            raise ValueError(f"fastcarry bench: mode must be one of {MODES}, got {m!r}")
    for w in workloads:
        if w.cell not in BENCH_CELLS:
            raise ValueError(f"fastcarry bench: cell must be one of {BENCH_CELLS}, got {w.cell!r}")
        bad = [f for f in ("batch", "time", "input", "units") if getattr(w, f) < 1]
        if bad:
            raise ValueError(f"fastcarry bench: {', '.join(bad)} must be >= 1 in {w}")


def run_grid(workloads, modes=MODES, repeats=FULL_REPEATS, out_dir="bench-results", stream=sys.stderr):
    """Benchmarks every workload x mode and writes ``results.json``, ``results.md``, ``results.png``.

    Returns the result dict (what ``results.json`` holds).
    """
    validate(workloads, modes, repeats)
    plt = require_matplotlib()  # fail before the long run, not after it
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    cases = [(w, m) for w in workloads for m in modes]
    # Per case: one compile step per timed contender, then one step per round.
    per_case = {(w, m): 4 + (reference_skipped(w) is None) + (torch_skipped(w) is None) + repeats for w, m in cases}
    bar = Progress(sum(per_case.values()), stream)
    results = []
    for w, mode in cases:
        steps = build_contenders(w, mode)
        timings = time_contenders(
            steps, repeats, lambda name, phase: bar.step(f"{w.label} {mode} {name or phase}"))
        timings = fold_variants(timings, "keras")
        for name, skipped in (("reference", reference_skipped(w)), ("torch", torch_skipped(w))):
            if skipped:
                timings[name] = {"skipped": skipped}
        results.append({"workload": w._asdict(), "label": w.label, "mode": mode,
                        "flops": matmul_flops(w, mode), "timings": timings})
        tf.keras.backend.clear_session()  # drop this case's layers before the next
    bar.close()
    report = {"machine": machine_info(), "repeats": repeats, "warmup_calls": WARMUP_CALLS,
              "contenders": list(CONTENDERS), "results": results}
    _report.write(out_dir, report, markdown(report), lambda path: plot(report, path, plt))
    return report


# --- reporting ----------------------------------------------------------------------------------

def speedups(entry):
    """``(vs keras, vs tf1, roofline fraction)`` for one result entry, from medians."""
    t = entry["timings"]
    fast = t["fastcarry"]["median_s"]
    return t["keras"]["median_s"] / fast, t["tf1"]["median_s"] / fast, t["roofline"]["median_s"] / fast


def vs_torch(entry):
    """PyTorch's median over fastcarry's, or ``None`` where PyTorch was skipped."""
    t = entry["timings"]
    return None if "skipped" in t["torch"] else t["torch"]["median_s"] / t["fastcarry"]["median_s"]


def _ratio(value):
    return "—" if value is None else f"{value:.2f}x"


def _ms(timing):
    return "skipped" if "skipped" in timing else f"{timing['median_s'] * 1e3:.2f}"


def markdown(report):
    """The speedup table: one row per workload x mode, then the grid medians per mode."""
    m = report["machine"]
    lines = [
        "# fastcarry bench\n",
        f"{_report.describe(m)}; "
        f"median of {report['repeats']} interleaved repeats, milliseconds per step.\n",
        "| workload | mode | fastcarry ms | keras ms (variant) | tf1 ms | reference ms | roofline ms | torch ms "
        "| vs keras | vs tf1 | vs torch | of roofline |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in report["results"]:
        t = e["timings"]
        vk, vt, roof = speedups(e)
        lines.append(f"| {e['label']} | {e['mode']} | {_ms(t['fastcarry'])} | {_ms(t['keras'])} "
                     f"({t['keras']['variant']}) | {_ms(t['tf1'])} | {_ms(t['reference'])} | "
                     f"{_ms(t['roofline'])} | {_ms(t['torch'])} | {vk:.2f}x | {vt:.2f}x | {_ratio(vs_torch(e))} | "
                     f"{roof:.0%} |")
    for mode in MODES + ("all",):
        entries = [e for e in report["results"] if mode in ("all", e["mode"])]
        if entries:
            vk, vt, roof = (statistics.median(col) for col in zip(*map(speedups, entries)))
            torch_rows = [r for r in map(vs_torch, entries) if r is not None]
            vp = _ratio(statistics.median(torch_rows) if torch_rows else None)
            lines.append(f"| **grid median** | {mode} | | | | | | | **{vk:.2f}x** | **{vt:.2f}x** | **{vp}** | "
                         f"**{roof:.0%}** |")
    skipped = {e["label"] for e in report["results"] if "skipped" in e["timings"]["reference"]}
    if skipped:
        lines.append(f"\nreference skipped (B*T*H > {REFERENCE_MAX}) at: {', '.join(sorted(skipped))}.")
    torch_rows = [e["timings"]["torch"] for e in report["results"]]
    reasons = sorted({t["skipped"] for t in torch_rows if "skipped" in t})
    if reasons:
        lines.append(f"\ntorch {'; '.join(reasons)}.")
    return "\n".join(lines) + "\n"


def plot(report, path, plt=None):
    """Grouped bars: speedup of fastcarry over Keras per workload, one bar per mode."""
    plt = plt or require_matplotlib()
    labels = list(dict.fromkeys(e["label"] for e in report["results"]))
    modes = [m for m in MODES if any(e["mode"] == m for e in report["results"])]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(labels) + 2), 4.5))
    width = 0.8 / len(modes)
    for k, mode in enumerate(modes):
        by_label = {e["label"]: speedups(e)[0] for e in report["results"] if e["mode"] == mode}
        xs = [i + (k - (len(modes) - 1) / 2) * width for i in range(len(labels))]
        ax.bar(xs, [by_label.get(lab, 0.0) for lab in labels], width, label=mode)
    ax.axhline(1.0, color="black", linewidth=0.8)  # parity with Keras
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("speedup vs Keras 3 (x, median)")
    ax.set_title(f"fastcarry vs Keras 3 ({report['machine']['cpu_count']} CPUs, "
                 f"TF {report['machine']['tensorflow']})")
    ax.legend()
    _report.save_figure(fig, path, dpi=120)
