"""fastcarry at a git revision against the work tree, in one process, interleaved: ``python benchmarks/ab.py``.

What says whether a change moved speed (``--base`` a revision, default ``HEAD~1``):
the base revision's package is exported with ``git archive`` and imported
under another name (``fastcarry_base``), each grid workload's cell is built in
both with the same weights, and the two ``fc.unroll`` steps (inference, and
training: forward plus the weight gradients under a random cotangent, both
inside ``tf.function(jit_compile=True)``) are timed in interleaved rounds
(``fastcarry.tools.grid_bench.time_contenders``). The ratio is the base's
median over the work tree's: above 1, the work tree is faster. Writes
``results.json``, ``results.md`` and ``results.png`` to ``--out``.
"""

import argparse
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

REPO = pathlib.Path(__file__).resolve().parents[1]
BASE_NAME = "fastcarry_base"


def export_base(revision, into):
    """The package at ``revision`` under ``into/fastcarry_base`` (kernels and profiling inside it), renamed."""
    source = into / "source"
    source.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision, "fastcarry", "kernels", "profiling"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    package = into / BASE_NAME
    shutil.copytree(source / "fastcarry", package)
    for sub in ("kernels", "profiling"):
        shutil.copytree(source / sub, package / sub)
    for path in package.rglob("*.py"):
        # The word only: scope and function names such as fastcarry_lstm_forward stay.
        path.write_text(re.sub(r"\bfastcarry\b", BASE_NAME, path.read_text()))
    return package


def base_cell(base, workload, weights):
    """The base revision's cell of ``workload``, holding ``weights`` (Keras layout)."""
    make = {"lstm": lambda: base.LSTM(workload.units), "gru": lambda: base.GRU(workload.units, reset_after=True),
            "rnn": lambda: base.SimpleRNN(workload.units)}[workload.cell]
    cell = make()
    cell.set_weights(weights)
    return cell


def run(base, revision, workloads, modes, repeats, out_dir, stream=sys.stderr):
    import fastcarry as fc
    from fastcarry._measure import step_function
    from fastcarry.tools import report
    from fastcarry.tools.grid_bench import time_contenders
    from fastcarry.tools.workload import random_data, workload_cell

    bar = report.Progress(len(workloads) * len(modes) * (2 + repeats), stream)
    results = []
    for w in workloads:
        for mode in modes:
            x, cot = random_data(w)
            after = workload_cell(w)
            before = base_cell(base, w, after.get_weights())
            steps = {}
            for name, lib, cell in (("before", base, before), ("after", fc, after)):
                fn = step_function(lambda x, lib=lib, cell=cell: lib.unroll(cell, x)[0], cell.trainable_variables,
                                   mode, cot, name=name)
                steps[name] = lambda fn=fn: fn(x)
            timings = time_contenders(steps, repeats, lambda name, phase: bar.step(f"{w.label} {mode} {name or phase}"))
            ratios = [b / a for b, a in zip(timings["before"]["samples_s"], timings["after"]["samples_s"])]
            results.append({"label": w.label, "mode": mode, "timings": timings,
                            "ratio": timings["before"]["median_s"] / timings["after"]["median_s"],
                            "paired_ratio": statistics.median(ratios)})
    bar.close()
    data = {"machine": report.machine_info(), "base": revision, "repeats": repeats, "results": results}
    report.write(out_dir, data, markdown(data), lambda path: plot(data, path))
    return data


def markdown(data):
    from fastcarry.tools import report

    lines = [f"# fastcarry at `{data['base']}` (before) vs the work tree (after)", "",
             f"{report.describe(data['machine'])}; one process, {data['repeats']} interleaved rounds, ms per step; "
             f"ratio = before's median over after's (> 1: the work tree is faster); paired = the median of the "
             f"per-round ratios.", "",
             "| workload | mode | before ms | after ms | ratio | paired |", "|---|---|---:|---:|---:|---:|"]
    for r in data["results"]:
        t = r["timings"]
        lines.append(f"| {r['label']} | {r['mode']} | {t['before']['median_s'] * 1e3:.2f} | "
                     f"{t['after']['median_s'] * 1e3:.2f} | {r['ratio']:.2f}x | {r['paired_ratio']:.2f}x |")
    for mode in ("infer", "train"):
        rows = [r["paired_ratio"] for r in data["results"] if r["mode"] == mode]
        if rows:
            lines.append(f"| **median** | {mode} | | | | **{statistics.median(rows):.2f}x** |")
    return "\n".join(lines) + "\n"


def plot(data, path):
    from fastcarry.tools import report

    plt = report.require_matplotlib()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    labels = [f"{r['label']} {r['mode']}" for r in data["results"]]
    ax.barh(labels, [r["paired_ratio"] for r in data["results"]])
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set(xlabel="before / after (paired median; > 1: faster now)", title=f"{data['base']} vs the work tree")
    report.save_figure(fig, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD~1", help="the git revision to compare with (default HEAD~1)")
    parser.add_argument("--quick", action="store_true", help="one tiny shape per cell, 3 rounds")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", default="bench-results/ab")
    args = parser.parse_args(argv)
    from fastcarry.tools.grid_bench import FULL_GRID, MODES, QUICK_GRID

    with tempfile.TemporaryDirectory(prefix="fastcarry-ab-") as tmp:
        export_base(args.base, pathlib.Path(tmp))
        sys.path.insert(0, tmp)
        import importlib

        base = importlib.import_module(BASE_NAME)
        data = run(base, args.base, list(QUICK_GRID if args.quick else FULL_GRID), MODES,
                   3 if args.quick else args.repeats, args.out)
    print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
