"""``fc.tune`` on the grid (tuned vs defaults, time to tune) and a memory-limited tune (issue 14's measure).

``python benchmarks/tune.py`` writes benchmarks/results/tune/ (results.json, .md, .png); ``--quick`` runs
two tiny shapes and prints the table only. The code is ``fastcarry/tools/tune_bench.py``.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

from fastcarry.tools import cli as _cli  # noqa: E402

if __name__ == "__main__":
    _cli.start_tensorflow()
    from fastcarry.tools import tune_bench  # noqa: E402

    quick = "--quick" in sys.argv[1:]
    results = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "tune")
    data = tune_bench.run(tune_bench.QUICK_GRID if quick else tune_bench.GRID, budget_s=3 if quick else 20,
                          memory_case=None if quick else tune_bench.MEMORY_CASE,
                          out_dir=None if quick else results)
    print(tune_bench.markdown(data))
