"""Users' own cells (peephole LSTM, minimal gated unit, IndRNN, layer-normalised gated cell) through fc.unroll
against keras.layers.RNN(cell), gradients checked equal before timing.

``python benchmarks/user_cells.py`` writes benchmarks/results/user_cells/ (results.json, .md, .png);
``--quick`` runs one tiny shape and prints the table only. The code is ``fastcarry/tools/user_cell_bench.py``.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

from fastcarry.tools import cli as _cli  # noqa: E402

if __name__ == "__main__":
    _cli.start_tensorflow()
    from fastcarry.tools import user_cell_bench  # noqa: E402
    from fastcarry.tools.report import run_rows_bench  # noqa: E402

    results = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "user_cells")
    run_rows_bench(user_cell_bench, sys.argv[1:], results)
