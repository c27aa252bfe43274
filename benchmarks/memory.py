"""Peak memory and time of one LSTM training step (B=16, T=8192, D=64, H=256) with and without ``chunk=``.

``python benchmarks/memory.py`` writes benchmarks/results/memory/ (results.json, .md, .png);
``--quick`` runs a tiny workload. The code is ``fastcarry/tools/memory_bench.py``.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

from fastcarry.tools import memory_bench as _memory_bench  # noqa: E402

if __name__ == "__main__":
    results = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "memory")
    sys.exit(_memory_bench.main(["--out", results, *sys.argv[1:]]))
