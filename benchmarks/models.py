"""fc.Stack, the generic path and fc.bidirectional against Keras 3, at the grid shapes.

``python benchmarks/models.py`` writes benchmarks/results/models/ (results.json, .md, .png);
``--quick`` runs one tiny shape. A thin wrapper over ``fastcarry bench --models``
(``fastcarry/tools/models_bench.py``).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

from fastcarry.tools import cli as _cli  # noqa: E402

if __name__ == "__main__":
    results = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "models")
    sys.exit(_cli.main(["bench", "--models", "--out", results, *sys.argv[1:]]))
