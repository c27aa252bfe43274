"""Runs the full benchmark grid into benchmarks/results/: ``python benchmarks/run.py [fastcarry bench options]``.

A thin wrapper over ``fastcarry bench`` (``fastcarry.tools.bench`` does the work), so the
numbers in the repository come from the same code users run.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

from fastcarry.tools import cli as _cli  # noqa: E402

if __name__ == "__main__":
    results = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    sys.exit(_cli.main(["bench", "--out", results, *sys.argv[1:]]))
