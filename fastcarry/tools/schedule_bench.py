"""The default schedule's measurement: ``unroll`` 1, 2 and 4 per cell, shape and mode, against Keras 3.

For every cell x shape x mode the candidates run in one process, interleaved,
each sample a block of consecutive calls, and the median per call is kept
(``fastcarry._measure.time_blocks``). ``keras`` is the Keras 3 layer under
``tf.function(jit_compile=True)`` with the same weights (inference only: it is
the target's comparison, not a candidate). ``default`` is what ``fc.unroll``
runs when nothing is chosen (``fastcarry._config.default_unroll``), timed as
a candidate of its own so its figure comes from the same rounds.

The table the default is read from is ``benchmarks/README.md`` ("The default
schedule").
"""

import sys

from fastcarry.tools import report as _report
from fastcarry.tools.workload import make_cell

CELLS = ("lstm", "gru", "rnn")
MODES = ("infer", "train")
UNROLLS = (1, 2, 4)
# (B, T, D, H): the tiny shapes, the speed grid, and the corners between them (one row, many rows,
# a wide cell at a small batch).
SHAPES = ((4, 20, 8, 16), (16, 50, 32, 64), (1, 100, 64, 128), (8, 200, 64, 128), (128, 50, 64, 128),
          (8, 50, 256, 512), (32, 100, 128, 256), (16, 500, 128, 256), (64, 100, 256, 512))
QUICK_SHAPES = ((2, 5, 3, 4),)
ROUNDS = 11


def _steps(kind, shape, mode, seed=0):
    """``{name: zero-argument step}``: ``unroll=u`` for each of ``UNROLLS``, ``default``, and ``keras`` (infer)."""
    import numpy as np
    import tensorflow as tf

    import fastcarry as fc
    from fastcarry._measure import step_function
    from fastcarry.tools.check import KerasUnroll

    b, t, d, h = shape
    cell = make_cell(kind, h, input_size=d, seed=seed)
    x = tf.constant(np.random.default_rng(seed + 1).standard_normal((b, t, d)), tf.float32)
    cot = tf.constant(np.random.default_rng(seed + 2).standard_normal((b, t, h)), tf.float32)

    def fastcarry_step(unroll):
        fn = step_function(lambda x: fc.unroll(cell, x, unroll=unroll)[0], cell.trainable_variables, mode, cot,
                           name=f"unroll_{unroll or 'default'}")
        return lambda: fn(x)

    steps = {f"unroll={u}": fastcarry_step(u) for u in UNROLLS}
    steps["default"] = fastcarry_step(None)
    if mode == "infer":
        keras = KerasUnroll(cell, jit_compile=True)
        fn = step_function(lambda x: keras.layer(x)[0], keras.weights, mode, cot, name="keras")
        steps["keras"] = lambda: fn(x)
    return steps


def run(cells=CELLS, shapes=SHAPES, modes=MODES, rounds=ROUNDS, out_dir=None, stream=sys.stderr):
    """One row per cell x shape x mode: ``{"cell", "shape", "mode", "ms": {name: ms per call}, "best", "default"}``
    (``best``: the fastest unroll; ``default``: ``fc.unroll``'s). With ``out_dir``, writes results.json (the
    machine and the rows), results.md and results.png there."""
    import fastcarry as fc
    from fastcarry._measure import time_blocks

    progress = _report.Progress(len(cells) * len(shapes) * len(modes), stream)
    rows = []
    for kind in cells:
        for shape in shapes:
            for mode in modes:
                progress.step(f"{kind} {'x'.join(map(str, shape))} {mode}")
                ms = {k: v * 1e3 for k, v in time_blocks(_steps(kind, shape, mode), rounds).items()}
                unrolls = {u: ms[f"unroll={u}"] for u in UNROLLS}
                default = fc.default_config(make_cell(kind, shape[3]), shape[:3], mode=mode)
                rows.append({"cell": kind, "shape": list(shape), "mode": mode, "ms": ms,
                             "best": min(unrolls, key=unrolls.get), "default": default.unroll})
    progress.close()
    if out_dir is not None:
        _report.write_rows(out_dir, rows, rounds, markdown(rows), lambda path: plot(rows, path))
    return rows


def markdown(rows):
    """The table: per row the ms per call of each unroll, the best, the default's ratio to the best, vs Keras."""
    lines = ["| cell | B×T×D×H | mode | " + " | ".join(f"unroll={u} ms" for u in UNROLLS)
             + " | best | default | default vs best | default vs keras |",
             "|---|---|---|" + "---:|" * (len(UNROLLS) + 4)]
    for row in rows:
        ms = row["ms"]
        best = ms[f"unroll={row['best']}"]
        keras = f"{ms['keras'] / ms['default']:.2f}x" if "keras" in ms else "—"
        lines.append(f"| {row['cell']} | {'×'.join(map(str, row['shape']))} | {row['mode']} | "
                     + " | ".join(f"{ms[f'unroll={u}']:.3f}" for u in UNROLLS)
                     + f" | {row['best']} | {row['default']} | {best / ms['default']:.2f}x | {keras} |")
    return "\n".join(lines)


def plot(rows, path):
    """Each case's unroll candidates and the default as speed relative to the best unroll, a panel per mode."""
    plt = _report.require_matplotlib()
    fig, axes = plt.subplots(len(MODES), 1, figsize=(14, 4 * len(MODES)), squeeze=False)
    for ax, mode in zip(axes[:, 0], MODES):
        cases = [r for r in rows if r["mode"] == mode]
        best = [min(r["ms"][f"unroll={u}"] for u in UNROLLS) for r in cases]
        width = 0.8 / (len(UNROLLS) + 1)
        for i, name in enumerate([f"unroll={u}" for u in UNROLLS] + ["default"]):
            ax.bar([k + i * width for k in range(len(cases))], [b / r["ms"][name] for b, r in zip(best, cases)],
                   width, label=name)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks([k + 0.4 for k in range(len(cases))],
                      [f"{r['cell']} {'x'.join(map(str, r['shape']))}" for r in cases], rotation=60, ha="right",
                      fontsize=7)
        ax.set_ylabel("speed / best unroll")
        ax.set_title(mode)
        ax.legend(fontsize=7)
    _report.save_figure(fig, path, dpi=100)
