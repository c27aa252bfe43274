"""What every tool's run writes and shows: machine facts, a progress bar, JSON + Markdown + PNG."""

import json
import os
import platform
import subprocess
import sys

from fastcarry._measure import cpu_model


def machine_info():
    """Platform, CPU model and ISA, Python, CPU count, TensorFlow and numpy versions."""
    import numpy as np
    import tensorflow as tf

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu": cpu_model(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "tensorflow": tf.__version__, "numpy": np.__version__}


def describe(machine):
    """One line naming the machine for a results table: CPU model, core count, TensorFlow."""
    cpu = machine.get("cpu", machine["processor"])  # results written before "cpu" was recorded
    return f"{cpu}, {machine['cpu_count']} CPUs, {machine['platform']}, TensorFlow {machine['tensorflow']}"


def run_child(argv, env, what, timeout=None):
    """Runs ``argv`` (a child Python process) with environment ``env``; returns the JSON of its last stdout line.
    A child that fails raises ``RuntimeError`` naming ``what`` with the end of its stderr."""
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def require_matplotlib():
    """Imports matplotlib with the Agg backend, or fails saying how to install it (a dependency gone missing)."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("fastcarry's demo, benchmarks and profile need matplotlib for their plots (a "
                          "dependency of fastcarry that is missing here): pip install matplotlib") from e
    matplotlib.use("Agg")  # no display: the plot only goes to a file
    import matplotlib.pyplot as plt

    return plt


class Progress:
    """A one-line text bar on ``stream``: ``[#####.....] 5/10 lstm 8x50x32x64 train keras-jit``."""

    def __init__(self, total, stream=sys.stderr, width=30):
        self.total, self.done, self.stream, self.width = total, 0, stream, width

    def step(self, label):
        self.done += 1
        self.total = max(self.total, self.done)  # a total that was only an estimate grows
        filled = self.width * self.done // max(self.total, 1)
        bar = "#" * filled + "." * (self.width - filled)
        # \r rewrites the line in a terminal; padding clears a longer previous label.
        self.stream.write(f"\r[{bar}] {self.done}/{self.total} {label:<50}")
        self.stream.flush()

    def close(self):
        self.stream.write("\n")
        self.stream.flush()


def save_figure(fig, path, dpi=110):
    """Lays ``fig`` out, writes it to ``path`` as PNG and frees it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def write(out_dir, data, markdown, plot, *, stem="results"):
    """``<stem>.json`` (``data``), ``<stem>.md`` (``markdown``) and ``<stem>.png`` (``plot(path)``) in ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{stem}.json"), "w") as f:
        json.dump(data, f, indent=1)
    with open(os.path.join(out_dir, f"{stem}.md"), "w") as f:
        f.write(markdown if markdown.endswith("\n") else markdown + "\n")
    plot(os.path.join(out_dir, f"{stem}.png"))


def write_rows(out_dir, rows, rounds, markdown, plot):
    """``write`` for a measurement of ``rows`` in ``rounds`` rounds: the JSON holds the machine, the rounds and
    the rows; the Markdown table is headed by the machine's line."""
    machine = machine_info()
    write(out_dir, {"machine": machine, "rounds": rounds, "rows": rows},
          f"Machine: {describe(machine)}\n\n{markdown}", plot)


def run_rows_bench(bench, argv, out_dir):
    """The command line of a rows benchmark (``schedule_bench``, ``user_cell_bench``): its ``SHAPES`` for
    ``ROUNDS`` rounds, writing to ``out_dir``, or with ``--quick`` in ``argv`` its ``QUICK_SHAPES`` for 3 rounds,
    writing nothing; the table is printed either way."""
    quick = "--quick" in argv
    rows = bench.run(shapes=bench.QUICK_SHAPES if quick else bench.SHAPES, rounds=3 if quick else bench.ROUNDS,
                     out_dir=None if quick else out_dir)
    print(bench.markdown(rows))
