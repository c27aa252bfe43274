"""LSTM inference on a CPU: fastcarry's schedules and issue 24's untried directions, against PyTorch's ``nn.LSTM``.

Per shape, in one process, interleaved (``fastcarry._measure.time_blocks``):

- ``default``, ``unroll1``, ``unroll2``, ``unroll4``: ``fc.unroll`` of an ``fc.LSTM`` under
  ``tf.function(jit_compile=True)``;
- ``halves``: the batch cut in two, each half its own ``fc.unroll`` loop in the same compiled program, so
  XLA:CPU's thunk executor may run the two loops on the two cores without a hand-off per small dot;
- ``one_dot``: a loop written here with one matmul per step, ``[x_t, h] @ [W; U]`` (inference only: no
  gradient flows through the concat), on the same weights;
- ``torch``: PyTorch's ``nn.LSTM`` (oneDNN) on the same weights, ``torch.inference_mode()``, its threads set
  to ``os.cpu_count()`` (TensorFlow's default), if PyTorch is installed (the ``torch`` extra).

Before timing, every contender's outputs are compared with ``default``'s: a case beyond float32's 2e-5
(relative to the largest magnitude) fails the run. XLA flags are process-wide, so XNNPACK and oneDNN are
measured by running this script under ``XLA_FLAGS`` (``benchmarks/README.md``).
"""

import sys

from fastcarry.tools import report as _report

SHAPES = ((8, 200, 64, 128), (32, 100, 128, 256), (64, 100, 256, 512), (16, 500, 128, 256))  # the speed grid
QUICK_SHAPES = ((2, 5, 3, 4),)
ROUNDS = 9
TOLERANCE = 2e-5
UNROLLS = (1, 2, 4)


def _one_dot_loop(params, x):
    """``x [B, T, D] -> outputs [B, T, H]``: the LSTM with one ``[x_t, h] @ [W; U]`` per step, then the fused
    kernel's own gates (``fastcarry.kernels.lstm.update``)."""
    import tensorflow as tf

    from fastcarry.kernels import lstm

    kernel = tf.concat([params.kernel, params.recurrent_kernel], 0)  # [D + H, 4H]
    b, t = x.shape[0], x.shape[1]
    xs = tf.transpose(x, [1, 0, 2])

    def body(i, state, ys):
        state, h = lstm.update(state, tf.matmul(tf.concat([xs[i], state.h], 1), kernel) + params.bias)
        return i + 1, state, ys.write(i, h)

    zeros = tf.zeros([b, params.recurrent_kernel.shape[0]], x.dtype)
    _, _, ys = tf.while_loop(lambda i, *_: i < t, body, (0, lstm.LSTMState(zeros, zeros), tf.TensorArray(x.dtype, t)),
                             maximum_iterations=t)
    return tf.transpose(ys.stack(), [1, 0, 2])


def _torch_lstm(cell, x):
    """``() -> outputs [B, T, H]`` of PyTorch's ``nn.LSTM`` holding ``cell``'s weights
    (``grid_bench.torch_module``), its threads set as the grid's; None without PyTorch."""
    import importlib.util
    import os

    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    from fastcarry.tools.grid_bench import torch_module

    torch.set_num_threads(os.cpu_count())  # the same cores TensorFlow uses
    module, inputs = torch_module(cell), torch.from_numpy(x.numpy())

    def run():
        with torch.inference_mode():
            return module(inputs)[0]
    return run


def _contenders(shape, seed=0):
    """``{name: () -> outputs [B, T, H]}`` for one shape (see the module docstring)."""
    import functools

    import numpy as np
    import tensorflow as tf

    import fastcarry as fc

    b, t, d, h = shape
    cell = fc.LSTM(h, input_size=d, seed=seed)
    params = cell.params()
    x = tf.constant(np.random.default_rng(seed + 1).standard_normal((b, t, d)), tf.float32)

    def unroll(x, unroll=None):
        return fc.unroll(cell, x, unroll=unroll)[0]

    def halves(x):
        k = max(b // 2, 1)
        return tf.concat([fc.unroll(cell, x[:k])[0], fc.unroll(cell, x[k:])[0]], 0) if b > 1 else unroll(x)

    fns = {"default": unroll, **{f"unroll{u}": functools.partial(unroll, unroll=u) for u in UNROLLS},
           "halves": halves, "one_dot": functools.partial(_one_dot_loop, params)}
    out = {name: functools.partial(tf.function(fn, jit_compile=True), x) for name, fn in fns.items()}
    torch_run = _torch_lstm(cell, x)
    if torch_run is not None:
        out["torch"] = torch_run
    return out


def check_equal(contenders):
    """The largest relative difference of any contender's outputs from ``default``'s."""
    import numpy as np

    want = np.asarray(contenders["default"](), np.float64)
    scale = max(np.abs(want).max(), 1e-30)
    return max(float(np.abs(np.asarray(run(), np.float64) - want).max() / scale) for run in contenders.values())


def run(shapes=SHAPES, rounds=ROUNDS, out_dir=None, stream=sys.stderr):
    """One row per shape: ``{"shape", "max_relative_error", "ms": {contender: ms per call}}``."""
    from fastcarry._measure import time_blocks

    progress = _report.Progress(len(shapes), stream)
    rows = []
    for shape in shapes:
        progress.step("x".join(map(str, shape)))
        contenders = _contenders(shape)
        error = check_equal(contenders)
        if not error <= TOLERANCE:
            raise AssertionError(f"LSTM {shape}: a contender's outputs differ from fc.unroll's by {error:.2e} "
                                 f"relative (tolerance {TOLERANCE:g})")
        ms = {k: v * 1e3 for k, v in time_blocks(contenders, rounds).items()}
        rows.append({"shape": list(shape), "max_relative_error": error, "ms": ms})
    progress.close()
    if out_dir is not None:
        _report.write_rows(out_dir, rows, rounds, markdown(rows), lambda path: plot(rows, path))
    return rows


def _names(rows):
    return [n for n in ("default", *(f"unroll{u}" for u in UNROLLS), "halves", "one_dot", "torch")
            if any(n in r["ms"] for r in rows)]


def markdown(rows):
    """ms per call for each contender; with PyTorch, each one's speed relative to it (``torch ms / ms``)."""
    names = _names(rows)
    lines = ["| B×T×D×H | " + " | ".join(f"{n} ms" for n in names) + " | max rel. error |",
             "|---|" + "---:|" * (len(names) + 1)]
    for r in rows:
        ms = r["ms"]
        cells = [f"{ms[n]:.3f}" + (f" ({ms['torch'] / ms[n]:.2f}x)" if "torch" in ms and n != "torch" else "")
                 for n in names]
        shape = "×".join(map(str, r["shape"]))
        lines.append(f"| {shape} | " + " | ".join(cells) + f" | {r['max_relative_error']:.1e} |")
    if any("torch" in r["ms"] for r in rows):
        lines.append("\n(x): PyTorch's time over this contender's; ≥ 0.8x is issue 24's target 4 for inference.")
    return "\n".join(lines)


def plot(rows, path):
    """ms per call per contender and shape, grouped by shape (log scale)."""
    plt = _report.require_matplotlib()
    names = _names(rows)
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        ax.bar([k + i * width for k in range(len(rows))], [r["ms"].get(name, 0.0) for r in rows], width, label=name)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(rows))], ["x".join(map(str, r["shape"])) for r in rows])
    ax.set_yscale("log")
    ax.set_ylabel("ms per call (inference)")
    ax.legend(fontsize=8)
    _report.save_figure(fig, path, dpi=100)
