"""``fastcarry demo``: the quickstart's main job, Keras's layers against fastcarry.keras's in ``model.fit``
(``fastcarry.tools.fit_bench`` does the work)."""

import os
import sys

from fastcarry.tools.workload import positive


def add_parser(subparsers):
    demo = subparsers.add_parser(
        "demo", help="train a Keras model with Keras's LSTM and with fastcarry.keras's: same curve, less time",
        description="Trains the same model (same weights, data and batch order) on a signed sum, a task "
                    "that needs every step of the sequence, once with keras.layers and once with "
                    "fastcarry.keras (epochs alternate), under model.fit(jit_compile=True); prints both loss "
                    "curves' agreement, the time per epoch and the speedup, and writes demo.json, demo.md and "
                    "demo.png to --out.")
    demo.add_argument("--cell", choices=("lstm", "gru", "rnn"), default="lstm")
    demo.add_argument("--time", type=positive, default=200, metavar="T", help="sequence length (default 200)")
    demo.add_argument("--units", type=positive, default=64, metavar="H", help="units per layer (default 64)")
    demo.add_argument("--layers", type=positive, default=2, metavar="N", help="recurrent layers (default 2)")
    demo.add_argument("--batch", type=positive, default=32, metavar="B", help="batch size (default 32)")
    demo.add_argument("--samples", type=positive, default=2048, metavar="N",
                      help="training samples (default 2048)")
    demo.add_argument("--epochs", type=positive, default=4, metavar="N", help="epochs per model (default 4)")
    demo.add_argument("--out", default="fastcarry-demo", metavar="DIR", help="output directory")
    return demo


def run(args, stream=sys.stderr):
    """Runs ``fastcarry demo``; prints what it measured; returns 0."""
    from fastcarry.tools import fit_bench

    print(f"fastcarry demo: a signed sum over T={args.time} steps, {args.layers} x {args.cell} {args.units} units, "
          f"{args.samples} samples, batch {args.batch}: Keras's layers vs fastcarry.keras, model.fit with XLA",
          file=stream)
    data = fit_bench.run(fit_bench.FitRun(cell=args.cell, task="signed_sum", batch=args.batch, steps=args.time, dim=2,
                                          units=args.units, depth=args.layers, samples=args.samples,
                                          epochs=args.epochs), out_dir=args.out, stream=stream)
    print(fit_bench.markdown(data).split("\n", 4)[-1])
    print(f"\nwrote demo.json, demo.md and the plot demo.png to {os.path.abspath(args.out)}")
    return 0
