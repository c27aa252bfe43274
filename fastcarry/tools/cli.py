"""The ``fastcarry`` command line: ``fastcarry demo``, ``check``, ``bench``, ``profile`` and ``tune``.

Arguments are parsed before TensorFlow is imported (``--help`` and usage errors
answer at once), and TensorFlow is started quietly (``_start_tensorflow``).
"""

import argparse
import os
import re
import sys
import tempfile

from fastcarry.tools.workload import CELLS, Workload, make_cell  # no TensorFlow at import


def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text}")
    return value


def _non_negative(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an int >= 0, got {text}")
    return value


def _workload_arguments(parser, *, batch, time, input, units, time_type=_positive):
    """``--cell --batch --time --input --units`` with these defaults."""
    parser.add_argument("--cell", choices=CELLS, default="lstm")
    parser.add_argument("--batch", type=_positive, default=batch, metavar="B")
    parser.add_argument("--time", type=time_type, default=time, metavar="T")
    parser.add_argument("--input", type=_positive, default=input, metavar="D")
    parser.add_argument("--units", type=_positive, default=units, metavar="H")


def _parser():
    parser = argparse.ArgumentParser(prog="fastcarry", description="Fast, exact RNNs under XLA.")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser(
        "check", help="compare fastcarry.unroll with the float64 reference and Keras 3 on random data",
        description="Builds random weights and inputs, runs fastcarry.unroll (XLA and graph; autodiff, hoisted "
                    "projection, chunk, swap_memory), the float64 reference and the Keras 3 layer with the same "
                    "weights, and compares outputs, final state and every gradient under a random cotangent. "
                    "Exits 1 on any FAIL.")
    _workload_arguments(check, batch=4, time=16, input=8, units=16, time_type=_non_negative)
    check.add_argument("--seq-lengths", type=_non_negative, nargs="+", metavar="L",
                       help="one length per batch row, each in [0, T]")
    check.add_argument("--reverse", action="store_true")
    check.add_argument("--time-major", action="store_true")
    check.add_argument("--unroll", type=_positive, default=None, metavar="K",
                       help="steps per loop iteration (default: the cell's default)")
    check.add_argument("--chunk", type=_positive, default=None, metavar="C",
                       help="chunk for the chunk= and swap_memory rows (default: about T/3)")
    check.add_argument("--seed", type=int, default=0)
    _bench_parser(sub)
    _profile_parser(sub)
    _demo_parser(sub)
    _tune_parser(sub)
    return parser


def _tune_parser(sub):
    tune = sub.add_parser(
        "tune", help="measure fc.unroll's schedules for one shape on this device; cache the fastest",
        description="Measures candidate configurations of one cell and shape on this device, interleaved, "
                    "within --budget-s: unroll (and chunk where --memory-limit needs it), then the winner with "
                    "projection='hoisted' (and swap_memory on a GPU). Prints the candidates, the winner and its "
                    "speedup over the defaults (a candidate replaces them only when reliably faster), and caches "
                    "it for fc.unroll(..., config='auto'). --show lists the cache, --clear empties it.")
    _workload_arguments(tune, batch=32, time=100, input=128, units=256)
    tune.add_argument("--mode", choices=("train", "infer"), default="train")
    tune.add_argument("--memory-limit", default=None, metavar="BYTES", help="e.g. 2GiB, 300MiB, 1500000000")
    tune.add_argument("--budget-s", type=float, default=60.0, metavar="S", help="seconds in all (default 60)")
    tune.add_argument("--out", default=None, metavar="DIR", help="also write tune.json and tune.png here")
    tune.add_argument("--env", action="store_true",
                      help="instead: measure process-wide settings (allocator, XLA flags, threads), each in a child "
                           "process, for this workload; prints what each changed and sets none of them")
    tune.add_argument("--rounds", type=_positive, default=2, metavar="N", help="--env: rounds of children (2)")
    tune.add_argument("--show", action="store_true", help="list the cache and exit")
    tune.add_argument("--clear", action="store_true", help="empty the cache and exit")


def _mib(n):
    return "?" if n is None else f"{n / 2 ** 20:.1f}"


def tune(args, stream=sys.stderr):
    """Runs ``fastcarry tune``; prints the candidate table and the winner; returns 0."""
    import json

    from fastcarry import _tune

    if args.show or args.clear:
        entries = _tune.load()
        if args.clear:
            print(f"removed {_tune.clear()} entries from {_tune.cache_path()}")
            return 0
        print(f"{_tune.cache_path()}: {len(entries)} entries")
        for key, entry in entries.items():
            facts = json.loads(key)
            config = " ".join(f"{k}={v}" for k, v in entry["config"].items())
            print(f"  {facts['cell']} B<={facts['B']} T<={facts['T']} D={facts['D']} H={facts['H']} "
                  f"{facts['dtype']} {facts['mode']} on {facts['device']}: {config} "
                  f"({entry['record'].get('median_s', float('nan')) * 1e3:.2f} ms)")
        return 0
    from fastcarry._unroll import default_unroll
    from fastcarry.tools import report as _report

    if args.env:
        return _tune_env(args, stream)
    cell = make_cell(args.cell, args.units, input_size=args.input)
    device = _tune.device_info()
    progress = _report.Progress(len(_tune.candidates(args.time, args.mode, device))
                                + len(_tune.variants(_tune.Config(), cell.core(), args.mode, device)), stream)
    config, rows, key = _tune.run(cell, (args.batch, args.time, args.input), mode=args.mode,
                                  memory_limit=args.memory_limit, budget_s=args.budget_s,
                                  progress=lambda c: progress.step(c.describe()))
    progress.close()
    default = next((r for r in rows if r["config"] == _tune.Config(unroll=default_unroll(None, args.batch,
                                                                                          args.time))), None)
    lines = [f"fastcarry tune: {args.cell} B={args.batch} T={args.time} D={args.input} H={args.units} {args.mode}",
             "", "| config | median ms | peak MiB | compile s | vs defaults |", "|---|---:|---:|---:|---:|"]
    for row in rows:
        ratio = default["median_s"] / row["median_s"] if default and row["median_s"] == row["median_s"] else None
        lines.append(f"| {row['config'].describe()} | {row['median_s'] * 1e3:.2f} | {_mib(row['peak_bytes'])} | "
                     f"{row['compile_s']:.2f} | {'-' if ratio is None else f'{ratio:.2f}x'} |")
    best = next(r for r in rows if r["config"] == config)
    gain = f", {default['median_s'] / best['median_s']:.2f}x the defaults" if default else ""
    lines += ["", f"winner: {config.describe()} ({best['median_s'] * 1e3:.2f} ms{gain})"]
    print("\n".join(lines) + f"; cached in {_tune.cache_path()}")
    if args.out:
        _write_tune(args.out, args, config, rows, key, "\n".join(lines))
        print(f"wrote tune.json, tune.md and tune.png to {args.out}")
    return 0


def _tune_env(args, stream):
    from fastcarry import _tune
    from fastcarry.tools import env_tune
    from fastcarry.tools import report as _report

    settings = env_tune.settings_for(_tune.device_info()["kind"])
    progress = _report.Progress(args.rounds * (len(settings) + 1), stream)
    rows = env_tune.run(args.cell, args.batch, args.time, args.input, args.units, args.mode, settings,
                        rounds=args.rounds, progress=progress.step)
    progress.close()
    print(f"fastcarry tune --env: {args.cell} B={args.batch} T={args.time} D={args.input} H={args.units} "
          f"{args.mode}, each setting in its own process, {args.rounds} rounds\n")
    print(env_tune.markdown(rows))
    print("\nNone of these is set for you: they apply to a whole process (set them before TensorFlow starts).")
    return 0


def _write_tune(out, args, config, rows, key, markdown):
    import json

    from fastcarry.tools import report as _report

    data = {"machine": _report.machine_info(), "key": json.loads(key), "winner": config.as_kwargs(),
            "candidates": [{"config": r["config"].as_kwargs(), "median_s": r["median_s"],
                            "peak_bytes": r["peak_bytes"], "memory": r["memory"], "compile_s": r["compile_s"],
                            "samples_s": r["samples"]} for r in rows]}

    def plot(path):
        plt = _report.require_matplotlib()
        fig, ax = plt.subplots(figsize=(7, 3.5))
        labels = [r["config"].describe() for r in rows]
        ax.barh(labels, [r["median_s"] * 1e3 for r in rows],
                color=["tab:orange" if r["config"] == config else "tab:blue" for r in rows])
        ax.set(xlabel="median ms per step", title=f"fastcarry tune: {args.cell} {args.mode} (winner orange)")
        _report.save_figure(fig, path)

    _report.write(out, data, markdown, plot, stem="tune")


def _demo_parser(sub):
    demo = sub.add_parser(
        "demo", help="train a Keras model with Keras's LSTM and with fastcarry.keras's: same curve, less time",
        description="Trains the same model (same weights, data and batch order) on the adding problem, a task "
                    "that needs memory over the whole sequence, once with keras.layers and once with "
                    "fastcarry.keras (epochs alternate), under model.fit(jit_compile=True); prints both loss "
                    "curves' agreement, the time per epoch and the speedup, and writes demo.json, demo.md and "
                    "demo.png to --out.")
    demo.add_argument("--cell", choices=("lstm", "gru", "rnn"), default="lstm")
    demo.add_argument("--time", type=_positive, default=200, metavar="T", help="sequence length (default 200)")
    demo.add_argument("--units", type=_positive, default=64, metavar="H", help="units per layer (default 64)")
    demo.add_argument("--layers", type=_positive, default=2, metavar="N", help="recurrent layers (default 2)")
    demo.add_argument("--batch", type=_positive, default=32, metavar="B", help="batch size (default 32)")
    demo.add_argument("--samples", type=_positive, default=2048, metavar="N",
                      help="training samples (default 2048)")
    demo.add_argument("--epochs", type=_positive, default=4, metavar="N", help="epochs per model (default 4)")
    demo.add_argument("--out", default="fastcarry-demo", metavar="DIR", help="output directory")


def demo(args, stream=sys.stderr):
    """Runs ``fastcarry demo``; prints what it measured; returns 0."""
    from fastcarry.tools import fit_bench

    print(f"fastcarry demo: the adding problem (T={args.time}), {args.layers} x {args.cell} {args.units} units, "
          f"{args.samples} samples, batch {args.batch}: Keras's layers vs fastcarry.keras, model.fit with XLA",
          file=stream)
    data = fit_bench.run(args.cell, "adding", args.batch, args.time, 2, args.units, args.layers, args.samples,
                         args.epochs, out_dir=args.out, stream=stream)
    print(fit_bench.markdown(data).split("\n", 4)[-1])
    print(f"\nwrote demo.json, demo.md and the plot demo.png to {os.path.abspath(args.out)}")
    return 0


def _profile_parser(sub):
    prof = sub.add_parser(
        "profile", help="trace fastcarry (and the Keras 3 layer) with TensorBoard's profiler; time by phase",
        description="Traces a compiled training (or inference) step of one workload with TensorFlow's profiler, "
                    "one TensorBoard run per contender under --out, and prints where each step's time goes by "
                    "phase (input projection, recurrent matmul, gates, backward loop, weight gradients, ...), "
                    "side by side. Writes summary.json, summary.md and summary.png to --out, and prints the "
                    "tensorboard command that opens the runs.")
    _workload_arguments(prof, batch=32, time=100, input=128, units=256)
    prof.add_argument("--mode", choices=("train", "infer"), default="train")
    prof.add_argument("--against", choices=("keras",), action="append", default=[],
                      help="also trace the Keras 3 layer holding the same weights")
    prof.add_argument("--steps", type=_positive, default=5, metavar="N", help="traced steps (default 5)")
    prof.add_argument("--out", default="fastcarry-profile", metavar="DIR", help="output directory")


def profile(args, stream=sys.stderr):
    """Runs ``fastcarry profile``; prints the side-by-side table and the tensorboard command; returns 0."""
    from fastcarry.tools import profile as _profile

    workload = Workload(args.cell, args.batch, args.time, args.input, args.units)
    summaries = _profile.run(workload, args.mode, against=tuple(args.against), steps=args.steps,
                             out_dir=args.out, stream=stream)
    print(f"fastcarry profile: {workload.label} {args.mode}, {args.steps} traced steps\n")
    print(_profile.table(summaries))
    for name, summary in summaries.items():
        for advice in summary.advice:
            print(f"\n{name}: {advice.signal}: {advice.evidence}. {advice.action}")
    print(f"\nwrote summary.json, summary.md, summary.png to {args.out}")
    print(f"open the traces: tensorboard --logdir {os.path.abspath(args.out)}  (then the Profile tab)")
    return 0


def _bench_parser(sub):
    bench = sub.add_parser(
        "bench", help="time fastcarry against Keras 3, TF1 dynamic_rnn, the reference and a matmul roofline",
        description="Times every contender interleaved in this process and writes results.json, results.md "
                    "(speedup table) and results.png to --out. Without --cell/--batch/--time/--input/--units "
                    "it runs the full grid (slow; --quick for a one-minute grid); with any of them, that one "
                    "shape (defaults fill the rest). The TF1 contender needs tf_keras: pip install 'fastcarry[bench]'.")
    bench.add_argument("--quick", action="store_true", help="tiny grid, 3 repeats (about a minute)")
    bench.add_argument("--out", default="bench-results", metavar="DIR", help="output directory")
    bench.add_argument("--cell", choices=("lstm", "gru", "rnn", "gru-reset-before"),
                       help="benchmark your own shape (default lstm; gru-reset-before is GRU(reset_after=False))")
    bench.add_argument("--cells", type=_cell_list, metavar="A,B",
                       help="the grid's cells (default lstm,gru,rnn; also gru-reset-before)")
    bench.add_argument("--batch", type=_positive, metavar="B", help="default 8")
    bench.add_argument("--time", type=_positive, metavar="T", help="default 100")
    bench.add_argument("--input", type=_positive, metavar="D", help="default 64")
    bench.add_argument("--units", type=_positive, metavar="H", help="default 128")
    bench.add_argument("--mode", choices=("infer", "train", "both"), default="both")
    bench.add_argument("--repeats", type=_positive, metavar="N",
                       help="interleaved repeats per workload (default 7, 3 with --quick)")
    bench.add_argument("--models", nargs="?", const="stack,generic,bidirectional", type=_suite_list,
                       metavar="SUITES",
                       help="instead of the cell grid: fc.Stack vs Keras Sequential, the generic path vs "
                            "keras.layers.RNN(cell), fc.bidirectional vs Keras Bidirectional (comma-separated "
                            "subset of stack,generic,bidirectional; default all) at the grid shapes "
                            "(--quick: one tiny shape)")


def _suite_list(text):
    from fastcarry.tools.models_bench import SUITES

    suites = [s for s in text.split(",") if s]
    if not suites or any(s not in SUITES for s in suites):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(SUITES)}, got {text!r}")
    return suites


def _cell_list(text):
    from fastcarry.tools import bench as _bench

    cells = [c for c in text.split(",") if c]
    bad = [c for c in cells if c not in _bench.BENCH_CELLS]
    if bad or not cells:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(_bench.BENCH_CELLS)}, "
                                         f"got {text!r}")
    return cells


def bench_workloads(args):
    """The ``Workload`` list ``fastcarry bench`` arguments ask for."""
    from fastcarry.tools import bench as _bench

    custom = {"cell": args.cell, "batch": args.batch, "time": args.time, "input": args.input,
              "units": args.units}
    if any(v is not None for v in custom.values()):
        if args.quick or args.cells:
            raise SystemExit("fastcarry bench: --quick and --cells choose a fixed grid; drop them to time your "
                             "own shape")
        defaults = dict(cell="lstm", batch=8, time=100, input=64, units=128)
        return [Workload(**{k: defaults[k] if v is None else v for k, v in custom.items()})]
    grid = _bench.QUICK_GRID if args.quick else _bench.FULL_GRID
    if not args.cells:
        return list(grid)
    shapes = list(dict.fromkeys(w[1:] for w in grid))  # the grid's shapes, in order
    return [Workload(c, *shape) for c in args.cells for shape in shapes]


def bench(args, stream=sys.stderr):
    """Runs the benchmark the arguments describe, prints the Markdown table; returns 0."""
    from fastcarry.tools import bench as _bench

    if args.models:
        return _bench_models(args, stream)
    workloads = bench_workloads(args)
    repeats = _repeats(args)
    modes = _bench.MODES if args.mode == "both" else (args.mode,)
    report = _bench.run(workloads, modes, repeats, out_dir=args.out, stream=stream)
    print(_bench.markdown(report))
    print(f"wrote results.json, results.md, results.png to {args.out}", file=stream)
    return 0


def _repeats(args):
    from fastcarry.tools import bench as _bench

    return args.repeats or (_bench.QUICK_REPEATS if args.quick else _bench.FULL_REPEATS)


def _bench_models(args, stream):
    from fastcarry.tools import models_bench as _models

    if any(getattr(args, k) is not None for k in ("cell", "cells", "batch", "time", "input", "units")) \
            or args.mode != "both":
        raise SystemExit("fastcarry bench: --models runs its own grid; drop --cell/--cells/--batch/--time/"
                         "--input/--units/--mode")
    repeats = _repeats(args)
    shapes = _models.QUICK_SHAPES if args.quick else _models.SHAPES
    data = _models.run(args.models, shapes, repeats, out_dir=args.out, stream=stream)
    print(_models.markdown(data))
    print(f"wrote results.json, results.md, results.png to {args.out}", file=stream)
    return 0


def check(args, out=sys.stdout):
    """Runs the comparisons; returns the process exit code (0 all PASS, 1 any FAIL)."""
    import numpy as np
    import tensorflow as tf

    import fastcarry as fc
    from fastcarry.tools import check as _check

    if args.seq_lengths is not None:
        if len(args.seq_lengths) != args.batch:
            raise SystemExit(f"fastcarry check: --seq-lengths needs {args.batch} values (--batch), "
                             f"got {len(args.seq_lengths)}")
        if max(args.seq_lengths) > args.time:
            raise SystemExit(f"fastcarry check: --seq-lengths values must be in [0, T={args.time}], "
                             f"got {args.seq_lengths}")
    rng = np.random.default_rng(args.seed)
    cell = make_cell(args.cell, args.units, input_size=args.input, seed=args.seed)
    shape = (args.time, args.batch, args.input) if args.time_major else (args.batch, args.time, args.input)
    inputs = rng.standard_normal(shape)
    initial = [rng.standard_normal((args.batch, n)) * 0.5 for n in tf.nest.flatten(cell.state_size)]
    initial = tf.nest.pack_sequence_as(cell.state_size, initial)
    cot = _check.random_cotangents(cell, args.batch, args.time, args.time_major, seed=args.seed + 1)
    options = dict(sequence_length=args.seq_lengths, time_major=args.time_major, reverse=args.reverse,
                   unroll=args.unroll)
    ref_cell = cell.copy(dtype=tf.float64)
    want = _check.evaluate(fc.reference.unroll, ref_cell, inputs, initial, cot, **options)
    keras = _check.KerasUnroll(cell)
    contenders = [
        ("fused jit  vs reference(float64)", fc.unroll, dict(jit_compile=True), want, None),
        ("fused graph vs reference(float64)", fc.unroll, dict(jit_compile=False), want, None),
        ("autodiff jit vs reference(float64)", fc.unroll, dict(jit_compile=True, backward="autodiff"), want, None),
        ("hoisted jit vs reference(float64)", fc.unroll, dict(jit_compile=True, projection="hoisted"), want, None),
    ]
    chunk = args.chunk or max(1, (args.time + 2) // 3)
    if args.time > 0:
        contenders += [
            (f"chunk={chunk} jit vs reference(float64)", fc.unroll, dict(chunk=chunk), want, None),
            (f"chunk={chunk} swap_memory jit vs reference(float64)", fc.unroll,
             dict(chunk=chunk, swap_memory=True), want, None),
        ]
    tol = _check.TOLERANCE[cell.dtype]
    print(f"fastcarry check: cell={args.cell} B={args.batch} T={args.time} D={args.input} H={args.units} "
          f"seq_lengths={args.seq_lengths} reverse={args.reverse} time_major={args.time_major} "
          f"unroll={args.unroll}; {cell.dtype.name}, tolerance {tol:g} relative to max |reference|", file=out)
    failed = False
    fused_jit = None
    for title, impl, extra, reference, weights in contenders:
        got = _check.evaluate(impl, cell, inputs, initial, cot, weights=weights, **options, **extra)
        fused_jit = fused_jit or got
        failed |= _report(title, _check.compare(got, reference), tol, out)
    if args.time > 0:
        keras_got = _check.evaluate(keras, cell, inputs, initial, cot, weights=keras.weights, **options)
        failed |= _report("fused jit  vs keras 3", _check.compare(fused_jit, keras_got), tol, out)
    else:  # Keras 3's layers fail on an empty sequence (a StridedSlice out of bounds inside their loop)
        print("\nfused jit  vs keras 3: skipped, Keras 3's layers cannot run T = 0", file=out)
    print("FAIL" if failed else "PASS", file=out)
    return 1 if failed else 0


def _report(title, rows, tol, out):
    print(f"\n{title}\n  {'tensor':<24}{'max abs err':>14}{'relative':>12}", file=out)
    failed = False
    for row in rows:
        ok = row.relative <= tol
        failed |= not ok
        print(f"  {row.name:<24}{row.max_abs:>14.3e}{row.relative:>12.3e}  {'PASS' if ok else 'FAIL'}", file=out)
    return failed


# What TensorFlow's C++ runtime prints while it starts: absl logs everything to
# stderr until it is initialised (TF_CPP_MIN_LOG_LEVEL does not apply yet), and
# a CPU-only machine hears about the GPU it does not have. Nothing else is
# dropped: any other line said during the start is passed on.
_START_UP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog"
    r"|\] oneDNN custom operations are on"
    r"|cudart_stub\.cc:\d+\] Could not find cuda drivers"
    r"|cuda_platform\.cc:\d+\] failed call to cuInit"
    r"|cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized"
    r"|^To enable the following instructions:")


def _start_tensorflow():
    """Imports TensorFlow quietly: log level 2 (errors only) unless the user set one, and no start-up lines.

    ``TF_CPP_MIN_LOG_LEVEL`` must be set before TensorFlow loads. If the user
    set it, nothing is filtered. Otherwise file descriptor 2 is pointed at a
    temporary file while TensorFlow loads and finds its devices, and every line
    said then that is not ``_START_UP_NOISE`` is written to stderr afterwards.
    """
    if "tensorflow" in sys.modules or "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        import tensorflow as tf

        return tf
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as said:
        os.dup2(said.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # where the CUDA probe speaks
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            said.seek(0)
            for line in said.read().decode(errors="replace").splitlines():
                if not _START_UP_NOISE.search(line):
                    print(line, file=sys.stderr)
    return tf


def main(argv=None):
    args = _parser().parse_args(argv)
    _start_tensorflow()
    if args.command == "check":
        return check(args)
    if args.command == "bench":
        return bench(args)
    if args.command == "profile":
        return profile(args)
    if args.command == "demo":
        return demo(args)
    if args.command == "tune":
        return tune(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
