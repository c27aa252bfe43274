"""Profiling overhead: an LSTM 32x100x128x256 training step untraced, with XLA:CPU's profiler hooks, and traced.

``python benchmarks/profile_overhead.py`` writes benchmarks/results/profiling/ (results.json, .md, .png);
``--quick`` runs a tiny workload. The code is ``fastcarry/tools/profile_bench.py``.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

from fastcarry.tools import profile_bench as _profile_bench  # noqa: E402

if __name__ == "__main__":
    results = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "profiling")
    sys.exit(_profile_bench.main(["--out", results, *sys.argv[1:]]))
