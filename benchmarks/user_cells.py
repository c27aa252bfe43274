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

    quick = "--quick" in sys.argv[1:]
    results = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "user_cells")
    rows = user_cell_bench.run(shapes=user_cell_bench.QUICK_SHAPES if quick else user_cell_bench.SHAPES,
                               rounds=3 if quick else user_cell_bench.ROUNDS, out_dir=None if quick else results)
    print(user_cell_bench.markdown(rows))
