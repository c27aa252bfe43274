"""``fastcarry bench``: the cell grid (``fastcarry.tools.grid_bench``) or the models suites
(``fastcarry.tools.models_bench``), timed interleaved in this process; JSON, Markdown and PNG to ``--out``."""

import argparse
import sys

from fastcarry.tools.grid_bench import (
    BENCH_CELLS,
    FULL_GRID,
    FULL_REPEATS,
    MODES,
    QUICK_GRID,
    QUICK_REPEATS,
    markdown,
    run_grid,
)
from fastcarry.tools.workload import Workload, positive


def add_parser(subparsers):
    bench = subparsers.add_parser(
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
    bench.add_argument("--batch", type=positive, metavar="B", help="default 8")
    bench.add_argument("--time", type=positive, metavar="T", help="default 100")
    bench.add_argument("--input", type=positive, metavar="D", help="default 64")
    bench.add_argument("--units", type=positive, metavar="H", help="default 128")
    bench.add_argument("--mode", choices=("infer", "train", "both"), default="both")
    bench.add_argument("--repeats", type=positive, metavar="N",
                       help="interleaved repeats per workload (default 7, 3 with --quick)")
    bench.add_argument("--models", nargs="?", const="stack,generic,bidirectional", type=_suite_list,
                       metavar="SUITES",
                       help="instead of the cell grid: fc.Stack vs Keras Sequential, the generic path vs "
                            "keras.layers.RNN(cell), fc.bidirectional vs Keras Bidirectional (comma-separated "
                            "subset of stack,generic,bidirectional; default all) at the grid shapes "
                            "(--quick: one tiny shape)")
    return bench


def _suite_list(text):
    from fastcarry.tools.models_bench import SUITES

    suites = [s for s in text.split(",") if s]
    if not suites or any(s not in SUITES for s in suites):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(SUITES)}, got {text!r}")
    return suites


def _cell_list(text):
    cells = [c for c in text.split(",") if c]
    bad = [c for c in cells if c not in BENCH_CELLS]
    if bad or not cells:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(BENCH_CELLS)}, got {text!r}")
    return cells


def workloads_for(args):
    """The ``Workload`` list ``fastcarry bench`` arguments ask for."""
    custom = {"cell": args.cell, "batch": args.batch, "time": args.time, "input": args.input,
              "units": args.units}
    if any(v is not None for v in custom.values()):
        if args.quick or args.cells:
            raise SystemExit("fastcarry bench: --quick and --cells choose a fixed grid; drop them to time your "
                             "own shape")
        defaults = dict(cell="lstm", batch=8, time=100, input=64, units=128)
        return [Workload(**{k: defaults[k] if v is None else v for k, v in custom.items()})]
    grid = QUICK_GRID if args.quick else FULL_GRID
    if not args.cells:
        return list(grid)
    shapes = list(dict.fromkeys(w[1:] for w in grid))  # the grid's shapes, in order
    return [Workload(c, *shape) for c in args.cells for shape in shapes]


def run(args, stream=sys.stderr):
    """Runs the benchmark the arguments describe, prints the Markdown table; returns 0."""
    if args.models:
        return _run_models(args, stream)
    modes = MODES if args.mode == "both" else (args.mode,)
    report = run_grid(workloads_for(args), modes, _repeats(args), out_dir=args.out, stream=stream)
    print(markdown(report))
    print(f"wrote results.json, results.md, results.png to {args.out}", file=stream)
    return 0


def _repeats(args):
    return args.repeats or (QUICK_REPEATS if args.quick else FULL_REPEATS)


def _run_models(args, stream):
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
