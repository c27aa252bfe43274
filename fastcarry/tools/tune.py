"""``fastcarry tune``: ``fc.tune`` for one cell and shape, its candidate table and winner; the cache's
``--show`` and ``--clear``; ``--env`` (``fastcarry.tools.env_tune``)."""

import json
import sys

from fastcarry.tools.workload import Workload, add_workload_arguments, make_cell, positive


def add_parser(subparsers):
    tune = subparsers.add_parser(
        "tune", help="measure fc.unroll's schedules for one shape on this device; cache the fastest",
        description="Measures candidate configurations of one cell and shape on this device, interleaved, "
                    "within --budget-s: unroll (and chunk where --memory-limit needs it), then the winner with "
                    "projection='hoisted' (and swap_memory on a GPU). Prints the candidates, the winner and its "
                    "speedup over the defaults (a candidate replaces them only when reliably faster), and caches "
                    "it for fc.unroll(..., config='auto'). --show lists the cache, --clear empties it.")
    add_workload_arguments(tune, batch=32, time=100, input=128, units=256)
    tune.add_argument("--mode", choices=("train", "infer"), default="train")
    tune.add_argument("--memory-limit", default=None, metavar="BYTES", help="e.g. 2GiB, 300MiB, 1500000000")
    tune.add_argument("--budget-s", type=float, default=60.0, metavar="S", help="seconds in all (default 60)")
    tune.add_argument("--out", default=None, metavar="DIR", help="also write tune.json and tune.png here")
    tune.add_argument("--env", action="store_true",
                      help="instead: measure process-wide settings (allocator, XLA flags, threads), each in a child "
                           "process, for this workload; prints what each changed and sets none of them")
    tune.add_argument("--rounds", type=positive, default=2, metavar="N", help="--env: rounds of children (2)")
    tune.add_argument("--force", action="store_true", help="measure even if the cache holds a result")
    tune.add_argument("--show", action="store_true", help="list the cache and exit")
    tune.add_argument("--clear", action="store_true", help="empty the cache and exit")
    return tune


def _mib(n):
    return "?" if n is None else f"{n / 2 ** 20:.1f}"


def _show(clear):
    import fastcarry.tune_cache as cache

    if clear:
        print(f"removed {cache.clear()} entries from {cache.cache_path()}")
        return 0
    entries = cache.load()
    print(f"{cache.cache_path()}: {len(entries)} entries")
    for key, entry in entries.items():
        facts = json.loads(key)
        config = " ".join(f"{k}={v}" for k, v in entry["config"].items())
        print(f"  {facts['cell']} B<={facts['B']} T<={facts['T']} D={facts['D']} H={facts['H']} "
              f"{facts['dtype']} {facts['mode']} on {facts['device']}: {config} "
              f"({entry['record'].get('median_s', float('nan')) * 1e3:.2f} ms)")
    return 0


def table(args, report):
    """The candidate table and the winner line (Markdown)."""
    default = report.row(report.defaults)
    lines = [f"fastcarry tune: {args.cell} B={args.batch} T={args.time} D={args.input} H={args.units} {args.mode}",
             "", "| config | median ms | peak MiB | compile s | vs defaults |", "|---|---:|---:|---:|---:|"]
    for row in report.rows:
        ratio = default["median_s"] / row["median_s"] if default and row["median_s"] == row["median_s"] else None
        label = row["config"].describe() + (" (defaults)" if row is default else "")
        lines.append(f"| {label} | {row['median_s'] * 1e3:.2f} | {_mib(row['peak_bytes'])} | "
                     f"{row['compile_s']:.2f} | {'-' if ratio is None else f'{ratio:.2f}x'} |")
    best = report.row(report.config)
    gain = f", {default['median_s'] / best['median_s']:.2f}x the defaults" if default else ""
    source = ("cached: measured earlier for this key (--force measures again)" if report.cached
              else "measured now")
    return "\n".join(lines + ["", f"winner: {report.config.describe()} ({best['median_s'] * 1e3:.2f} ms{gain}); "
                                  f"{source}"] + [f"not chosen: {line}" for line in report.reasons()])


def run(args, stream=sys.stderr):
    """Runs ``fastcarry tune``; prints the candidate table and the winner; returns 0."""
    if args.show or args.clear:
        return _show(args.clear)
    if args.env:
        return _env(args, stream)
    import fastcarry as fc
    import fastcarry.tune_cache as cache
    from fastcarry.tools import report as _report

    cell = make_cell(args.cell, args.units, input_size=args.input)
    # The first stage's unrolls and the second stage's projection (a fastcarry cell has one): a total to grow.
    progress = _report.Progress(len([u for u in (1, 2, 4) if u <= args.time]) + 1, stream)
    report = fc.tune(cell, (args.batch, args.time, args.input), mode=args.mode, memory_limit=args.memory_limit,
                     budget_s=args.budget_s, force=args.force, report=True,
                     progress=lambda c: progress.step(c.describe()))
    progress.close()
    markdown = table(args, report)
    print(markdown + f"\ncache: {cache.cache_path()}")
    if args.out:
        _write(args.out, args, report, markdown)
        print(f"wrote tune.json, tune.md and tune.png to {args.out}")
    return 0


def _env(args, stream):
    from fastcarry._measure import device_info
    from fastcarry.tools import env_tune
    from fastcarry.tools import report as _report

    settings = env_tune.settings_for(device_info()["type"])
    progress = _report.Progress(args.rounds * (len(settings) + 1), stream)
    workload = Workload(args.cell, args.batch, args.time, args.input, args.units)
    rows = env_tune.run(workload, args.mode, settings, rounds=args.rounds, progress=progress.step)
    progress.close()
    print(f"fastcarry tune --env: {args.cell} B={args.batch} T={args.time} D={args.input} H={args.units} "
          f"{args.mode}, each setting in its own process, {args.rounds} rounds\n")
    print(env_tune.markdown(rows))
    print("\nNone of these is set for you: they apply to a whole process (set them before TensorFlow starts).")
    return 0


def _write(out, args, report, markdown):
    from fastcarry.tools import report as _report

    config = report.config
    data = {"machine": _report.machine_info(), "key": json.loads(report.key), "winner": config.as_kwargs(),
            "candidates": [{"config": r["config"].as_kwargs(), "median_s": r["median_s"],
                            "peak_bytes": r["peak_bytes"], "memory": r["memory"], "compile_s": r["compile_s"],
                            "samples_s": r["samples"]} for r in report.rows]}

    def plot(path):
        plt = _report.require_matplotlib()
        fig, ax = plt.subplots(figsize=(7, 3.5))
        labels = [r["config"].describe() for r in report.rows]
        ax.barh(labels, [r["median_s"] * 1e3 for r in report.rows],
                color=["tab:orange" if r["config"] == config else "tab:blue" for r in report.rows])
        ax.set(xlabel="median ms per step", title=f"fastcarry tune: {args.cell} {args.mode} (winner orange)")
        _report.save_figure(fig, path)

    _report.write(out, data, markdown, plot, stem="tune")
