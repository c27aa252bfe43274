"""Inference at tiny shapes against Keras 3, in pairs, with each side's compiled loop body.

For each cell and tiny shape (one step of one row, as in RL and streaming; the
issue's 4x20x8x16 and 16x50x32x64), three inference steps run under
``tf.function(jit_compile=True)`` in one process:

- ``fastcarry``: ``fc.unroll(cell, x)`` with the default schedule;
- ``keras``: the Keras 3 layer with the same weights (``fastcarry.tools.check.KerasUnroll``);
- ``floor``: a compiled function that only doubles ``x``: what any compiled call costs here.

Only these three are interleaved (``fastcarry._measure.time_blocks``): a
neighbour that hands work to XLA's thread pool leaves its threads spinning,
which slows whatever runs next on a 2-core machine, and at these sizes that
is larger than the difference being measured. Each side's loop body is read
from its optimized HLO: the instructions that run as kernels (``body_kernels``).
"""

import collections
import re
import sys

from fastcarry.tools import report as _report
from fastcarry.tools.workload import make_cell

CELLS = ("lstm", "gru", "rnn")
SHAPES = ((1, 1, 64, 128), (4, 20, 8, 16), (16, 50, 32, 64))  # (B, T, D, H)
QUICK_SHAPES = ((2, 5, 3, 4),)
ROUNDS = 21
# HLO instructions that run as a kernel of their own on XLA:CPU (a bitcast, tuple or parameter does not).
KERNEL_OPCODES = ("dot", "fusion", "copy", "custom-call", "dynamic-slice", "dynamic-update-slice", "convolution",
                  "reduce", "transpose", "concatenate")


def body_kernels(hlo):
    """``{opcode: count}`` of ``KERNEL_OPCODES`` instructions in the bodies of the while loops of ``hlo`` (optimized
    HLO text); empty when it has no loop."""
    bodies = set(re.findall(r"\bwhile\([^)]*\).*?\bbody=%?([\w.\-]+)", hlo))
    counts = collections.Counter()
    for computation in re.split(r"\n(?=\S)", hlo):
        name = re.match(r"%?([\w.\-]+)", computation)
        if name is None or name.group(1) not in bodies:
            continue
        for line in computation.splitlines()[1:]:
            op = re.search(r"=\s*\S+\s+([\w\-]+)\(", line)
            if op and op.group(1) in KERNEL_OPCODES:
                counts[op.group(1)] += 1
    return dict(counts)


def _steps(kind, shape, seed=0):
    """``({name: zero-argument step}, {name: compiled function}, x)`` of ``fastcarry``, ``keras`` and ``floor``."""
    import numpy as np
    import tensorflow as tf

    import fastcarry as fc
    from fastcarry._measure import step_function
    from fastcarry.tools.check import KerasUnroll

    b, t, d, h = shape
    cell = make_cell(kind, h, input_size=d, seed=seed)
    x = tf.constant(np.random.default_rng(seed + 1).standard_normal((b, t, d)), tf.float32)
    keras = KerasUnroll(cell, jit_compile=True)
    functions = {
        "fastcarry": step_function(lambda x: fc.unroll(cell, x)[0], cell.trainable_variables, "infer",
                                   name="fastcarry"),
        "keras": step_function(lambda x: keras.layer(x)[0], keras.weights, "infer", name="keras"),
        "floor": step_function(lambda x: x * 2.0, [], "infer", name="floor"),
    }
    return {name: (lambda fn=fn: fn(x)) for name, fn in functions.items()}, functions, x


def run(cells=CELLS, shapes=SHAPES, rounds=ROUNDS, out_dir=None, stream=sys.stderr):
    """One row per cell x shape: ``{"cell", "shape", "ms": {name: ms per call}, "speedup", "body": {side: {opcode:
    count}}, "same_body"}`` (``speedup``: keras over fastcarry; ``same_body``: the two loop bodies have the same
    kernels). With ``out_dir``, writes results.json, results.md and results.png there."""
    from fastcarry._measure import time_blocks

    progress = _report.Progress(len(cells) * len(shapes), stream)
    rows = []
    for kind in cells:
        for shape in shapes:
            progress.step(f"{kind} {'x'.join(map(str, shape))}")
            steps, functions, x = _steps(kind, shape)
            ms = {k: v * 1e3 for k, v in time_blocks(steps, rounds).items()}
            body = {side: body_kernels(functions[side].experimental_get_compiler_ir(x)(stage="optimized_hlo"))
                    for side in ("fastcarry", "keras")}
            rows.append({"cell": kind, "shape": list(shape), "ms": ms, "speedup": ms["keras"] / ms["fastcarry"],
                         "body": body, "same_body": body["fastcarry"] == body["keras"]})
    progress.close()
    if out_dir is not None:
        _report.write_rows(out_dir, rows, rounds, markdown(rows), lambda path: plot(rows, path))
    return rows


def _kernels(counts):
    return ", ".join(f"{n} {op}" for op, n in sorted(counts.items())) or "no loop"


def markdown(rows):
    """The table: ms per call of each side and the floor, vs Keras, and the two loop bodies' kernels."""
    lines = ["| cell | B×T×D×H | fastcarry ms | keras ms | floor ms | vs keras | loop body: fastcarry | "
             "loop body: keras | same kernels |",
             "|---|---|---:|---:|---:|---:|---|---|---|"]
    for r in rows:
        ms = r["ms"]
        lines.append(f"| {r['cell']} | {'×'.join(map(str, r['shape']))} | {ms['fastcarry']:.3f} | "
                     f"{ms['keras']:.3f} | {ms['floor']:.3f} | {r['speedup']:.2f}x | "
                     f"{_kernels(r['body']['fastcarry'])} | {_kernels(r['body']['keras'])} | "
                     f"{'yes' if r['same_body'] else 'no'} |")
    return "\n".join(lines)


def plot(rows, path):
    """Per case the speedup over Keras, with the floor's share of Keras's call as a second bar; a line at 1x."""
    plt = _report.require_matplotlib()
    fig, ax = plt.subplots(figsize=(10, 4))
    labels = [f"{r['cell']} {'x'.join(map(str, r['shape']))}" for r in rows]
    ax.bar([k - 0.2 for k in range(len(rows))], [r["speedup"] for r in rows], 0.4, label="keras / fastcarry")
    ax.bar([k + 0.2 for k in range(len(rows))], [r["ms"]["floor"] / r["ms"]["keras"] for r in rows], 0.4,
           label="floor / keras (a compiled call's fixed cost)")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=8)
    ax.legend(fontsize=8)
    _report.save_figure(fig, path, dpi=100)
