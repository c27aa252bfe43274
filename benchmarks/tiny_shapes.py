"""Inference at tiny shapes against Keras 3, in pairs, with a compiled call's floor and each side's loop body.

``python benchmarks/tiny_shapes.py`` writes benchmarks/results/tiny_shapes/ (results.json, .md, .png);
``--quick`` runs one tiny shape and prints the table only. The code is ``fastcarry/tools/tiny_bench.py``.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

from fastcarry.tools import cli as _cli  # noqa: E402

if __name__ == "__main__":
    _cli.start_tensorflow()
    from fastcarry.tools import tiny_bench  # noqa: E402
    from fastcarry.tools.report import run_rows_bench  # noqa: E402

    results = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "tiny_shapes")
    run_rows_bench(tiny_bench, sys.argv[1:], results)
