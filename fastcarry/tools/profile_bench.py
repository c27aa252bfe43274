"""The cost of profiling a training step: ``python benchmarks/profile_overhead.py``.

Three contenders, one process, interleaved, median over repeats (each repeat
times ``steps`` consecutive calls and takes their mean):

- ``plain``: the step compiled without XLA:CPU's profiler hooks
  (``--xla_cpu_enable_xprof_traceme``), run with no profiler;
- ``hooks``: the same step compiled with the hooks (what importing
  ``fastcarry.profiling`` leads to), run with no profiler;
- ``traced``: that step inside ``fastcarry.profiling.capture``, each call a
  ``prof.step()`` (only the steps are timed, not the profiler's start and stop).

Then the time ``Profile.summary()`` takes for a trace of 5 steps (the
calibration matmul excluded and reported apart). Writes ``results.json``,
``results.md`` and ``results.png`` to ``--out``.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

from fastcarry._measure import block
from fastcarry.tools import report
from fastcarry.tools.workload import Workload, random_data

FLAG = "--xla_cpu_enable_xprof_traceme"


def _without_flag():
    """XLA_FLAGS without the hooks' flag (restored by the caller)."""
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = " ".join(f for f in flags.split() if not f.startswith(FLAG))
    return flags


def _step(workload, seed):
    """A new compiled training step of ``workload``: the one ``fastcarry bench`` times."""
    from fastcarry.tools import grid_bench

    x, cot = random_data(workload, seed)
    return grid_bench.fastcarry_step(workload, "train", x, cot)


def run(workload, repeats=7, steps=5, stream=sys.stderr):
    """The measurements as a dict (see the module docstring)."""
    saved = _without_flag()
    try:
        plain = _step(workload, 0)
        block(plain())  # compiled now, without the hooks
    finally:
        os.environ["XLA_FLAGS"] = saved
    import fastcarry.profiling as fcp  # adds the flag (again) for what compiles next

    hooked = _step(workload, 0)
    block(hooked())
    times = {"plain": [], "hooks": [], "traced": []}
    logdir = tempfile.mkdtemp(prefix="fastcarry-profile-bench-")

    def timed(fn, prof=None):
        start = time.perf_counter()
        for _ in range(steps):
            if prof is None:
                block(fn())
            else:
                with prof.step():
                    block(fn())
        return (time.perf_counter() - start) / steps

    for r in range(repeats):
        times["plain"].append(timed(plain))
        times["hooks"].append(timed(hooked))
        with fcp.capture(os.path.join(logdir, f"r{r}")) as prof:
            times["traced"].append(timed(hooked, prof))
        stream.write(f"\rrepeat {r + 1}/{repeats}")
        stream.flush()
    stream.write("\n")
    start = time.perf_counter()
    rate = fcp.calibrate_matmul()
    calibrate_s = time.perf_counter() - start
    start = time.perf_counter()
    summary = prof.summary(calibrate=False)
    summary_s = time.perf_counter() - start
    medians = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    return {"workload": workload._asdict(), "repeats": repeats, "steps_per_repeat": steps,
            "median_ms": medians, "samples_ms": {k: [t * 1e3 for t in v] for k, v in times.items()},
            "traced_over_plain": medians["traced"] / medians["plain"],
            "hooks_over_plain": medians["hooks"] / medians["plain"],
            "summary_s": summary_s, "summary_steps": summary.steps, "calibrate_s": calibrate_s,
            "matmul_gflops": rate, "summary_markdown": summary.to_markdown()}


def markdown(result):
    w = result["workload"]
    m = result["median_ms"]
    return "\n".join([
        f"LSTM {w['batch']}x{w['time']}x{w['input']}x{w['units']} train, median of {result['repeats']} "
        f"interleaved repeats of {result['steps_per_repeat']} steps", "",
        "| contender | ms / step | vs plain |", "|---|---:|---:|",
        f"| plain (no profiler hooks) | {m['plain']:.2f} | 1.00x |",
        f"| hooks compiled in, not tracing | {m['hooks']:.2f} | {result['hooks_over_plain']:.2f}x |",
        f"| traced (fastcarry.profiling.capture) | {m['traced']:.2f} | {result['traced_over_plain']:.2f}x |",
        "", f"`summary()` of a {result['summary_steps']}-step trace: {result['summary_s']:.2f} s "
        f"(plus {result['calibrate_s']:.2f} s once per process for the calibration matmul, "
        f"{result['matmul_gflops']:.0f} GFLOP/s)"])


def plot(result, path):
    plt = report.require_matplotlib()
    m = result["median_ms"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = ["plain", "hooks", "traced"]
    ax.bar(names, [m[n] for n in names], color=["#4c72b0", "#55a868", "#c44e52"])
    ax.set_ylabel("ms per step (median)")
    w = result["workload"]
    ax.set_title(f"profiling overhead, LSTM {w['batch']}x{w['time']}x{w['input']}x{w['units']} train")
    report.save_figure(fig, path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="profile-bench")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="a small shape, 3 repeats")
    args = parser.parse_args(argv)
    workload = Workload("lstm", 8, 20, 16, 32) if args.quick else Workload("lstm", 32, 100, 128, 256)
    result = run(workload, repeats=3 if args.quick else args.repeats)
    text = markdown(result)
    report.write(args.out, result, text, lambda path: plot(result, path))
    print(text)
    return 0
