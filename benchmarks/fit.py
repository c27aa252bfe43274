"""``model.fit`` epoch time: a two-layer LSTM / GRU model with Keras's layers vs ``fastcarry.keras``'s.

Issue 13's measure: B32 T100 D32, 128 units, ``jit_compile=True``, same weights,
data and batch order (the loss curves must agree). ``python benchmarks/fit.py``
writes benchmarks/results/fit/<cell>/ (demo.json, demo.md, demo.png); ``--quick``
runs a tiny shape. Epochs alternate between the two models (``fastcarry/tools/fit_bench.py``).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

from fastcarry.tools import cli as _cli  # noqa: E402

if __name__ == "__main__":
    _cli.start_tensorflow()
    from fastcarry.tools import fit_bench  # noqa: E402

    quick = "--quick" in sys.argv[1:]
    results = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "fit")
    for cell in ("lstm", "gru"):
        shape = dict(batch=8, steps=20, dim=8, units=16, samples=64, epochs=3) if quick else \
            dict(batch=32, steps=100, dim=32, units=128, samples=2048, epochs=7)
        data = fit_bench.run(fit_bench.FitRun(cell, "random", depth=2, **shape),
                             out_dir=None if quick else os.path.join(results, cell))
        print(fit_bench.markdown(data), "\n")
