"""``fc.tune`` on the benchmark grid: the tuned config against the defaults, and a memory-limited tune.

For every grid workload and mode, ``fc.tune`` measures its candidates (the
defaults among them) interleaved in one process; ``gain`` is the defaults'
median over the winner's from that measurement (never below 1 by
construction), ``recheck`` the same ratio from a second, separate measurement
of the two (fresh functions, ``RECHECK_ROUNDS`` interleaved rounds), which is
what says whether the choice holds up. Then a tune of the memory benchmark's
LSTM (B16 T8192 D64 H256, training) under a memory limit.
"""

import statistics
import sys
import time

from fastcarry.tools import report as _report
from fastcarry.tools.grid_bench import FULL_GRID
from fastcarry.tools.workload import make_cell, unroll_step

GRID = [(w.cell, w.batch, w.time, w.input, w.units) for w in FULL_GRID]
QUICK_GRID = [("lstm", 4, 20, 8, 16), ("gru", 4, 20, 8, 16)]
MEMORY_CASE = ("lstm", 16, 8192, 64, 256)
# Training steps on this VM drift by up to 20% within a minute and two medians of one config differ by up to
# 5%: the recheck compares the two back to back in every round and takes the median of those ratios.
RECHECK_ROUNDS = 15


def recheck(cell, shape, mode, tuned, default, rounds=RECHECK_ROUNDS):
    """From a separate measurement with fresh functions: the median over rounds of the defaults' time over
    the tuned config's, the two timed back to back in alternating order (1.0 when they are the same)."""
    import numpy as np
    import tensorflow as tf

    from fastcarry._measure import timed_call

    if tuned == default:
        return 1.0
    x = tf.constant(np.random.default_rng(1).standard_normal(shape), cell.dtype)
    fns = {c: unroll_step(cell, mode, c) for c in (default, tuned)}
    for fn in fns.values():
        for _ in range(2):
            timed_call(fn, x)
    ratios = []
    for r in range(rounds):
        seconds = {}
        for c in (list(fns) if r % 2 == 0 else list(reversed(fns))):
            seconds[c] = timed_call(fns[c], x)
        ratios.append(seconds[default] / seconds[tuned])
    return statistics.median(ratios)


def run(grid, modes=("train", "infer"), budget_s=20, memory_limit="300MiB", memory_case=MEMORY_CASE,
        out_dir=None, stream=sys.stderr):
    import fastcarry as fc

    progress = _report.Progress(len(grid) * len(modes) + (1 if memory_case else 0), stream)
    results = []
    for cell_kind, b, t, d, h in grid:
        for mode in modes:
            progress.step(f"{cell_kind} {b}x{t}x{d}x{h} {mode}")
            start = time.perf_counter()
            cell = make_cell(cell_kind, h, input_size=d)
            tuned = fc.tune(cell, (b, t, d), mode=mode, budget_s=budget_s, cache=False, report=True)
            tune_s = time.perf_counter() - start
            config, default = tuned.config, tuned.defaults
            results.append({"workload": f"{cell_kind} {b}x{t}x{d}x{h}", "mode": mode, "winner": config.as_kwargs(),
                            "tune_s": tune_s, "recheck": recheck(cell, (b, t, d), mode, config, default),
                            "default_ms": tuned.row(default)["median_s"] * 1e3,
                            "tuned_ms": tuned.row(config)["median_s"] * 1e3, "gain": tuned.gain(config),
                            "candidates": {r["config"].describe(): r["median_s"] * 1e3 for r in tuned.rows}})
    memory = None
    if memory_case:
        cell_kind, b, t, d, h = memory_case
        progress.step(f"{cell_kind} {b}x{t}x{d}x{h} train, memory_limit={memory_limit}")
        start = time.perf_counter()
        tuned = fc.tune(make_cell(cell_kind, h, input_size=d), (b, t, d), mode="train", memory_limit=memory_limit,
                        budget_s=60, cache=False, report=True)
        config, rows, best = tuned.config, tuned.rows, tuned.row(tuned.config)
        memory = {"workload": f"{cell_kind} {b}x{t}x{d}x{h}", "memory_limit": memory_limit,
                  "winner": config.as_kwargs(), "peak_bytes": best["peak_bytes"], "memory": best["memory"],
                  "median_ms": best["median_s"] * 1e3, "tune_s": time.perf_counter() - start,
                  "candidates": {r["config"].describe(): {"median_ms": _ms(r["median_s"]),
                                                          "peak_bytes": r["peak_bytes"]} for r in rows}}
    progress.close()
    data = {"machine": _report.machine_info(), "budget_s": budget_s, "results": results, "memory": memory}
    if out_dir:
        _report.write(out_dir, data, markdown(data), lambda path: plot(data, path))
    return data


def _ms(seconds):
    """Milliseconds, or None for a candidate that was not timed (it did not fit the memory limit)."""
    return None if seconds != seconds else seconds * 1e3


def markdown(data):
    from fastcarry import Config

    lines = ["# fc.tune on the grid: tuned config vs the defaults", "",
             f"Machine: {_report.describe(data['machine'])}. Budget {data['budget_s']} s per tune. Gain: the "
             f"median over the tune's rounds of the defaults' time over the winner's in the same round; recheck: "
             f"the same from a separate measurement with fresh functions ({RECHECK_ROUNDS} rounds, the two back "
             f"to back in alternating order).", "",
             "| workload | mode | winner | defaults ms | tuned ms | gain | recheck | tune s |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in data["results"]:
        winner = Config(**r["winner"]).describe()
        lines.append(f"| {r['workload']} | {r['mode']} | {winner} | {r['default_ms']:.2f} | {r['tuned_ms']:.2f} | "
                     f"{r['gain']:.2f}x | {r['recheck']:.2f}x | {r['tune_s']:.1f} |")
    gains = [r["gain"] for r in data["results"]]
    checks = [r["recheck"] for r in data["results"]]
    if gains:
        lines += ["", f"Median gain {statistics.median(gains):.2f}x (lowest {min(gains):.2f}x, highest "
                      f"{max(gains):.2f}x); rechecked separately: median {statistics.median(checks):.2f}x, lowest "
                      f"{min(checks):.2f}x, highest {max(checks):.2f}x; longest tune "
                      f"{max(r['tune_s'] for r in data['results']):.1f} s."]
    m = data.get("memory")
    if m:
        peak = "?" if m["peak_bytes"] is None else f"{m['peak_bytes'] / 2 ** 20:.1f} MiB"
        lines += ["", f"Memory-limited tune, {m['workload']} train, memory_limit={m['memory_limit']}: "
                      f"{Config(**m['winner']).describe()}, peak {peak} ({m['memory']}), "
                      f"{m['median_ms']:.0f} ms per step, tuned in {m['tune_s']:.0f} s."]
    return "\n".join(lines)


def plot(data, path):
    plt = _report.require_matplotlib()
    fig, ax = plt.subplots(figsize=(8, 5))
    labels = [f"{r['workload']} {r['mode']}" for r in data["results"]]
    ax.barh(labels, [r["recheck"] for r in data["results"]])
    ax.axvline(1.0, color="gray", ls=":")
    ax.set(xlabel="tuned / defaults speed (separate recheck)", title="fc.tune on the grid")
    _report.save_figure(fig, path)

