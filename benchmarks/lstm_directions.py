"""LSTM inference: fastcarry's schedules and issue 24's directions (two batch halves in one program, one dot per
step) against PyTorch's CPU nn.LSTM, outputs checked equal before timing.

``python benchmarks/lstm_directions.py`` writes benchmarks/results/lstm_directions/ (results.json, .md, .png);
``--quick`` runs one tiny shape and prints the table only. PyTorch is timed if installed (the ``torch`` extra).
The code is ``fastcarry/tools/lstm_directions_bench.py``.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

from fastcarry.tools import cli as _cli  # noqa: E402

if __name__ == "__main__":
    _cli.start_tensorflow()
    from fastcarry.tools import lstm_directions_bench  # noqa: E402
    from fastcarry.tools.report import run_rows_bench  # noqa: E402

    results = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "lstm_directions")
    run_rows_bench(lstm_directions_bench, sys.argv[1:], results)
