"""``fastcarry profile``: one workload traced for fastcarry (and the Keras 3 layer), phases side by side.

Each contender is a compiled step of the workload (``fastcarry bench``'s: forward, or
forward plus the weight gradients under a random cotangent), traced with
``fastcarry.profiling.trace`` into its own TensorBoard run ``<out>/<name>``,
and summarised by phase. Written to ``out``: ``summary.json`` (every
contender's ``Summary``), ``summary.md`` (the side-by-side table and each
contender's advice) and ``summary.png`` (stacked bars: ms per step by phase).
"""

import os
import sys

from fastcarry.tools import report
from fastcarry.tools.workload import Workload, add_workload_arguments, positive, random_data, workload_cell

CONTENDERS = ("fastcarry", "keras")


def _contenders(workload, mode, against, seed=0):
    """``{name: (step callable, what marks its RNN's ops)}``."""
    from fastcarry._measure import step_function
    from fastcarry.tools import grid_bench as _bench
    from fastcarry.tools.check import KerasUnroll

    w = workload
    x, cot = random_data(w, seed)
    out = {"fastcarry": (_bench.fastcarry_step(w, mode, x, cot), "fastcarry_")}
    if "keras" in against:
        keras = KerasUnroll(workload_cell(w), jit_compile=True)  # the same weights as fastcarry's cell
        step = step_function(lambda x: keras.layer(x)[0], keras.weights, mode, cot, name="keras")
        out["keras"] = (lambda: step(x), keras.layer.name)
    return out


def trace_all(workload, mode, against=(), steps=5, warmup=2, out_dir="fastcarry-profile", stream=sys.stderr):
    """Traces and summarises every contender; writes the files; returns ``{name: Summary}``."""
    import fastcarry.profiling as fcp

    report.require_matplotlib()  # before minutes of tracing, not after
    contenders = _contenders(workload, mode, against)
    bar = report.Progress(2 * len(contenders), stream)
    summaries = {}
    for name, (step, scope) in contenders.items():
        bar.step(f"{name}: warm-up and {steps} traced steps")
        prof = fcp.trace(step, logdir=os.path.join(out_dir, name), steps=steps, warmup=warmup)
        bar.step(f"{name}: summary")
        summaries[name] = prof.summary(label=name, scope=scope)
    bar.close()
    write(summaries, workload, mode, out_dir)
    return summaries


def table(summaries):
    """The side-by-side Markdown table: a row per phase, ``ms (share)`` per contender."""
    from fastcarry.profiling import PHASES

    names = list(summaries)
    lines = ["| phase | " + " | ".join(f"{n} ms" for n in names) + " |",
             "|---|" + "---:|" * len(names)]
    for phase in PHASES:
        rows = [summaries[n].row(phase) for n in names]
        if all(r.ms == 0 for r in rows):
            continue
        lines.append(f"| {phase} | " + " | ".join(f"{r.ms:.2f} ({r.share:.0%})" if r.ms else "–" for r in rows)
                     + " |")
    lines.append("| **step** | " + " | ".join(f"**{summaries[n].step_ms:.2f}**" for n in names) + " |")
    return "\n".join(lines)


def write(summaries, workload, mode, out_dir):
    """``summary.json``, ``summary.md`` and ``summary.png`` in ``out_dir``."""
    title = f"{workload.label} {mode}"
    data = {"workload": workload._asdict(), "mode": mode, "machine": report.machine_info(),
            "contenders": {n: s.to_dict() for n, s in summaries.items()}}
    parts = [f"# fastcarry profile: {title}", "", table(summaries)]
    for name, summary in summaries.items():
        parts += ["", f"## {name}", "", summary.to_markdown()]
    report.write(out_dir, data, "\n".join(parts), lambda path: plot(summaries, path, title), stem="summary")


def plot(summaries, path, title):
    """Stacked bars, one per contender: ms per step by phase."""
    from fastcarry.profiling import PHASES

    plt = report.require_matplotlib()
    names = list(summaries)
    fig, ax = plt.subplots(figsize=(2.2 * len(names) + 4, 4.5))
    bottoms = [0.0] * len(names)
    colors = plt.get_cmap("tab20").colors
    for k, phase in enumerate(PHASES):
        heights = [summaries[n].row(phase).ms for n in names]
        if not any(heights):
            continue
        ax.bar(names, heights, 0.6, bottom=bottoms, label=phase, color=colors[k % len(colors)])
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    ax.set_ylabel("ms per step")
    ax.set_title(f"where a step's time goes: {title}")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    report.save_figure(fig, path, dpi=110)


# -- the command ----------------------------------------------------------------------------------------------

def add_parser(subparsers):
    prof = subparsers.add_parser(
        "profile", help="trace fastcarry (and the Keras 3 layer) with TensorBoard's profiler; time by phase",
        description="Traces a compiled training (or inference) step of one workload with TensorFlow's profiler, "
                    "one TensorBoard run per contender under --out, and prints where each step's time goes by "
                    "phase (input projection, recurrent matmul, gates, backward loop, weight gradients, ...), "
                    "side by side. Writes summary.json, summary.md and summary.png to --out, and prints the "
                    "tensorboard command that opens the runs.")
    add_workload_arguments(prof, batch=32, time=100, input=128, units=256)
    prof.add_argument("--mode", choices=("train", "infer"), default="train")
    prof.add_argument("--against", choices=("keras",), action="append", default=[],
                      help="also trace the Keras 3 layer holding the same weights")
    prof.add_argument("--steps", type=positive, default=5, metavar="N", help="traced steps (default 5)")
    prof.add_argument("--out", default="fastcarry-profile", metavar="DIR", help="output directory")
    return prof


def run(args, stream=sys.stderr):
    """Runs ``fastcarry profile``; prints the side-by-side table and the tensorboard command; returns 0."""
    workload = Workload(args.cell, args.batch, args.time, args.input, args.units)
    summaries = trace_all(workload, args.mode, against=tuple(args.against), steps=args.steps, out_dir=args.out,
                          stream=stream)
    print(f"fastcarry profile: {workload.label} {args.mode}, {args.steps} traced steps\n")
    print(table(summaries))
    for name, summary in summaries.items():
        for advice in summary.advice:
            print(f"\n{name}: {advice.signal}: {advice.evidence}. {advice.action}")
    print(f"\nwrote summary.json, summary.md, summary.png to {args.out}")
    print(f"open the traces: tensorboard --logdir {os.path.abspath(args.out)}  (then the Profile tab)")
    return 0
