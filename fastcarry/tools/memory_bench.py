"""Peak memory and time of one training step with ``chunk=`` (``benchmarks/memory.py``).

Each configuration runs in its own Python process. The child sets up (imports,
cell, inputs), runs one training step (the first call: tracing and XLA
compilation, whose own memory would swamp small workloads), then runs more
steps. The reported peak is what one training step needs on top of the
weights, inputs and compiled program: the peak of TensorFlow's allocator
above its use just before those steps (``tf.config.experimental.
get_memory_info``; on CPU the child runs with ``TF_CPU_ALLOCATOR_USE_BFC=1``,
without which the CPU allocator keeps no statistics). The process's sampled
peak RSS above its RSS before the steps is recorded too (``rss_peak_bytes``),
but glibc keeps freed memory mapped as it sees fit, so it is not the measure.
The first call's ``ru_maxrss`` above the set-up RSS (compilation included) and
its time are reported; "compile s" is the first call's time minus a step's.

The training step is ``fc.unroll`` under ``tf.function(jit_compile=True)``; it
returns a loss and its gradient w.r.t. the cell's weights (returning the loss
keeps the outputs alive, as in real training). Inputs are batch-major
``[B, T, D]`` or time-major ``[T, B, D]``. The losses, with a fixed random
cotangent:

- ``final``: ``reduce_sum(final_h * cotangent_h)``, the final state only
  (sequence classification): no ``[B, T, H]`` outputs nor cotangent need exist.
- ``dot``: ``tf.tensordot(outputs, cotangent, 3)``, one XLA dot over the outputs.
- ``sum``: ``tf.reduce_sum(outputs * cotangent)``. The same number, but
  XLA:CPU materializes the product ``[T, B, H]`` (128 MiB in the full workload)
  before its tree reduction, while the outputs are still live: memory of the
  loss, not of the RNN, and the same in every row, so it caps the ratio.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time

from fastcarry._measure import RssSampler, rss_bytes
from fastcarry.tools import report as _report
from fastcarry.tools.workload import make_cell

# The workload: LSTM B=16, T=8192, D=64, H=256.
FULL = dict(cell="lstm", batch=16, time=8192, input=64, units=256, chunks=[None, 1024, 256, 64], repeats=3,
            cases=[("final", "batch-major"), ("dot", "batch-major"), ("dot", "time-major"), ("sum", "batch-major")])
QUICK = dict(cell="lstm", batch=2, time=64, input=3, units=8, chunks=[None, 16], repeats=2,
             cases=[("final", "batch-major")])
# The target: the final-state loss with chunk=256 at least 50x below chunk=None.
TARGET = dict(loss="final", layout="batch-major", chunk=256, ratio=50.0)
LOSSES = ("dot", "sum", "final")


def child(cell, batch, time_steps, input_dim, units, chunk, repeats, time_major=False, loss="dot"):
    """Runs in the measured process; returns the result dict."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    import fastcarry as fc

    gpu = bool(tf.config.list_physical_devices("GPU"))
    rnn = make_cell(cell, units, input_size=input_dim, seed=0)
    rng = np.random.default_rng(0)
    lead = (time_steps, batch) if time_major else (batch, time_steps)
    x = tf.constant(rng.standard_normal(lead + (input_dim,)), tf.float32)
    cot = tf.constant(rng.standard_normal(lead + (units,)), tf.float32)
    cot_h = cot[0] if time_major else cot[:, 0]  # [B, H]: the final-state loss's cotangent
    weights = rnn.trainable_variables
    objective = {"dot": lambda ys, final: tf.tensordot(ys, cot, 3),
                 "sum": lambda ys, final: tf.reduce_sum(ys * cot),
                 "final": lambda ys, final: tf.reduce_sum(tf.nest.flatten(final)[0] * cot_h)}[loss]

    @tf.function(jit_compile=True)
    def step(x):
        with tf.GradientTape() as tape:
            value = objective(*fc.unroll(rnn, x, chunk=chunk, time_major=time_major))
        return [value, *tape.gradient(value, weights)]

    setup = rss_bytes()
    start = time.perf_counter()
    [g.numpy() for g in step(x)]
    first_s = time.perf_counter() - start
    first_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - setup  # ru_maxrss is KiB on Linux
    device = "GPU:0" if gpu else "CPU:0"
    try:
        tf.config.experimental.reset_memory_stats(device)
        before = tf.config.experimental.get_memory_info(device)["current"]
    except ValueError:  # CPU without TF_CPU_ALLOCATOR_USE_BFC=1: no allocator statistics
        before = None
    baseline = rss_bytes()
    samples = []
    with RssSampler() as sampler:
        for _ in range(repeats):
            start = time.perf_counter()
            [g.numpy() for g in step(x)]
            samples.append(time.perf_counter() - start)
    rss_peak = sampler.peak - baseline
    if before is not None:
        peak = tf.config.experimental.get_memory_info(device)["peak"] - before
        source = f"{device} allocator's peak above its use before the step (get_memory_info)"
    else:
        peak, source = rss_peak, "sampled peak RSS of a training step above the RSS before it"
    return dict(chunk=chunk, layout="time-major" if time_major else "batch-major", loss=loss,
                peak_bytes=int(peak), memory_source=source, rss_peak_bytes=int(rss_peak), baseline_bytes=baseline,
                first_call_peak_bytes=int(first_peak), first_call_s=first_s,
                median_s=statistics.median(samples), samples_s=samples)


def run(config, out_dir, stream=sys.stderr):
    """Runs every chunk of ``config`` in a child process; writes results.json, results.md, results.png."""
    results = []
    rows = [(loss, layout, chunk) for loss, layout in config["cases"] for chunk in config["chunks"]]
    # Allocator statistics on CPU; set for the measuring children only.
    env = dict(os.environ, TF_CPU_ALLOCATOR_USE_BFC="1")
    for loss, layout, chunk in rows:
        print(f"memory bench: loss={loss} {layout} chunk={chunk} ...", file=stream, flush=True)
        argv = [sys.executable, "-m", "fastcarry.tools.memory_bench", "--child", "--loss", loss,
                "--cell", config["cell"],
                "--batch", str(config["batch"]), "--time", str(config["time"]), "--input", str(config["input"]),
                "--units", str(config["units"]), "--repeats", str(config["repeats"])]
        if chunk is not None:
            argv += ["--chunk", str(chunk)]
        if layout == "time-major":
            argv += ["--time-major"]
        results.append(_report.run_child(argv, env, f"memory bench child (chunk={chunk})"))
    report = dict(workload={k: config[k] for k in ("cell", "batch", "time", "input", "units")},
                  repeats=config["repeats"], machine=_report.machine_info(), results=results)
    _report.write(out_dir, report, markdown(report), lambda path: _plot(report, path))
    return report


def markdown(report):
    w = report["workload"]
    base = {(r["loss"], r["layout"]): r for r in report["results"] if r["chunk"] is None}
    first = report["results"][0]
    lines = [f"# fastcarry memory bench: {w['cell']} B={w['batch']} T={w['time']} D={w['input']} H={w['units']}, "
             f"one training step", "",
             f"{_report.describe(report['machine'])}; one process per row; memory: {first['memory_source']}; "
             f"time: median of {report['repeats']} steps after the first. The first call (tracing and XLA "
             f"compilation included) is reported apart; compile s = first call - one step.", "",
             "Loss `final` reads the final state only; `dot` is `tensordot(outputs, cotangent, 3)`; `sum` is "
             "`reduce_sum(outputs * cotangent)`, for which XLA:CPU materializes the product "
             "(see `fastcarry/tools/memory_bench.py`).", "",
             "| loss | layout | chunk | peak MiB | chunk=None / this | step ms | this / chunk=None | first call s | "
             "compile s | first call peak MiB |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        b = base[(r["loss"], r["layout"])]
        lines.append(f"| {r['loss']} | {r['layout']} | {r['chunk'] or 'None'} | {r['peak_bytes'] / 2**20:.1f} | "
                     f"{b['peak_bytes'] / max(r['peak_bytes'], 1):.1f}x | {r['median_s'] * 1e3:.0f} | "
                     f"{r['median_s'] / b['median_s']:.2f}x | {r['first_call_s']:.1f} | "
                     f"{r['first_call_s'] - r['median_s']:.1f} | {r['first_call_peak_bytes'] / 2**20:.0f} |")
    target = [r for r in report["results"]
              if (r["loss"], r["layout"], r["chunk"]) == (TARGET["loss"], TARGET["layout"], TARGET["chunk"])]
    if target:
        r, b = target[0], base[(TARGET["loss"], TARGET["layout"])]
        ratio = b["peak_bytes"] / max(r["peak_bytes"], 1)
        lines += ["", f"Target (issue 12): loss `{TARGET['loss']}`, chunk={TARGET['chunk']} at least "
                      f"{TARGET['ratio']:.0f}x below chunk=None: **{ratio:.1f}x** "
                      f"({'met' if ratio >= TARGET['ratio'] else 'missed'})."]
    return "\n".join(lines) + "\n"


def _plot(report, path):
    plt = _report.require_matplotlib()
    rows = report["results"]
    labels = [f"{r['loss']}\n{r['layout'].split('-')[0]}\n{r['chunk'] or 'None'}" for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(9, 1.1 * len(rows)), 4))
    left.bar(labels, [r["peak_bytes"] / 2**20 for r in rows], color="tab:blue")
    left.set(xlabel="loss, layout, chunk", ylabel="peak MiB above baseline", title="memory")
    right.bar(labels, [r["median_s"] * 1e3 for r in rows], color="tab:orange")
    right.set(xlabel="loss, layout, chunk", ylabel="ms per training step", title="time")
    w = report["workload"]
    fig.suptitle(f"{w['cell']} B={w['batch']} T={w['time']} D={w['input']} H={w['units']}")
    _report.save_figure(fig, path, dpi=100)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="benchmarks/memory.py", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny workload, to check the script runs")
    parser.add_argument("--out", default="bench-results/memory", metavar="DIR")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("batch", "time", "input", "units", "repeats", "chunk"):
        parser.add_argument(f"--{name}", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cell", default="lstm", help=argparse.SUPPRESS)
    parser.add_argument("--time-major", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--loss", default="dot", choices=LOSSES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.cell, args.batch, args.time, args.input, args.units, args.chunk, args.repeats,
                               args.time_major, args.loss)))
        return 0
    report = run(QUICK if args.quick else FULL, args.out)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
