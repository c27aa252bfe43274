"""The default schedule's measurement: unroll 1, 2, 4 and fc.unroll's default per cell, shape and mode.

``python benchmarks/schedule.py`` writes benchmarks/results/schedule/ (results.json, .md, .png);
``--quick`` runs one tiny shape and prints the table only. The code is ``fastcarry/tools/schedule_bench.py``;
the default it checks is ``fastcarry._config.default_unroll``.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

from fastcarry.tools import cli as _cli  # noqa: E402

if __name__ == "__main__":
    _cli.start_tensorflow()
    from fastcarry.tools import schedule_bench  # noqa: E402
    from fastcarry.tools.report import run_rows_bench  # noqa: E402

    results = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "schedule")
    run_rows_bench(schedule_bench, sys.argv[1:], results)
