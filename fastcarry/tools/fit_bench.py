"""``model.fit`` with Keras's layers against the same model with ``fastcarry.keras``'s: ``fastcarry demo``.

Both models get the same weights, data, optimizer and batch order, so their
loss curves must agree to float rounding; epochs alternate between them (the
order flips every epoch) and each epoch is timed. The first epoch includes
tracing and XLA compilation and is reported apart.

Tasks: ``signed_sum`` (the demo's): each step has a value in [0, 1) and a sign
of +1 or -1, and the target is the sum of value times sign over the whole
sequence, scaled to unit variance; a model must integrate every step, and an
LSTM learns it within the demo's epochs (the mean predictor scores about 1).
``adding``: the adding problem (Hochreiter & Schmidhuber 1997), two marked
values to add, which needs memory but takes thousands of steps to learn.
``random`` inputs and targets serve as a pure speed workload.

Shapes: inputs ``[N, T, D]``, targets ``[N, 1]``.
"""

import dataclasses
import sys
import time

from fastcarry.tools import report as _report

LAYERS = {"lstm": "LSTM", "gru": "GRU", "rnn": "SimpleRNN"}


def signed_sum_problem(n, steps, seed=0):
    """``(x [n, T, 2], y [n, 1])``: a value in [0, 1) and a sign per step; y = sum(value * sign) / sqrt(T / 3)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    values = rng.random((n, steps))
    signs = rng.choice([-1.0, 1.0], (n, steps))
    x = np.stack([values, signs], -1).astype("float32")
    # E[(v s)^2] = 1/3 per step: the scale gives the target unit variance at any T.
    return x, ((values * signs).sum(1, keepdims=True) / np.sqrt(steps / 3)).astype("float32")


def adding_problem(n, steps, seed=0):
    """``(x [n, T, 2], y [n, 1])``: values in [0, 1) and a 0/1 marker on two steps; y = the marked values' sum."""
    import numpy as np

    rng = np.random.default_rng(seed)
    values = rng.random((n, steps))
    marks = np.zeros((n, steps))
    first = rng.integers(0, steps // 2, n)
    second = rng.integers(steps // 2, steps, n)
    marks[np.arange(n), first] = 1.0
    marks[np.arange(n), second] = 1.0
    x = np.stack([values, marks], -1).astype("float32")
    y = (values * marks).sum(1, keepdims=True).astype("float32")
    return x, y


def random_task(n, steps, dim, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, steps, dim)).astype("float32"), rng.standard_normal((n, 1)).astype("float32")


def build_model(module, cell, steps, dim, units, depth):
    """``depth`` recurrent layers of ``units`` (the last returns its final output) and a Dense(1)."""
    import keras

    layer = getattr(module, LAYERS[cell])
    stack = [layer(units, return_sequences=i < depth - 1) for i in range(depth)]
    return keras.Sequential([keras.Input((steps, dim)), *stack, keras.layers.Dense(1)])


@dataclasses.dataclass(frozen=True)
class FitRun:
    """One comparison: ``depth`` layers of ``units`` over ``[samples, steps, dim]`` (``task``: ``"signed_sum"``
    or ``"adding"``, whose D is 2, or ``"random"``), ``epochs`` per model at ``batch``, Adam at ``learning_rate``."""

    cell: str = "lstm"
    task: str = "signed_sum"
    batch: int = 32
    steps: int = 100
    dim: int = 32
    units: int = 128
    depth: int = 2
    samples: int = 1024
    epochs: int = 4
    learning_rate: float = 1e-3
    jit_compile: bool = True
    seed: int = 0


def run(config=FitRun(), out_dir=None, stream=sys.stderr):
    """Trains the Keras model and the fastcarry.keras model of ``config`` side by side; returns the results dict."""
    import keras

    from fastcarry import keras as fck

    c = config
    if c.task in ("adding", "signed_sum"):
        x, y = (adding_problem if c.task == "adding" else signed_sum_problem)(c.samples, c.steps, c.seed)
        dim = 2  # a value and a marker (or sign) per step
    else:
        x, y = random_task(c.samples, c.steps, c.dim, c.seed)
        dim = c.dim
    keras.utils.set_random_seed(c.seed)
    models = {"keras": build_model(keras.layers, c.cell, c.steps, dim, c.units, c.depth),
              "fastcarry": build_model(fck, c.cell, c.steps, dim, c.units, c.depth)}
    models["fastcarry"].set_weights(models["keras"].get_weights())
    for model in models.values():
        model.compile(optimizer=keras.optimizers.Adam(c.learning_rate), loss="mse", jit_compile=c.jit_compile)
    history = {name: {"loss": [], "epoch_s": []} for name in models}
    progress = _report.Progress(2 * c.epochs, stream)
    for epoch in range(c.epochs):
        order = list(models) if epoch % 2 == 0 else list(reversed(models))
        for name in order:
            progress.step(f"epoch {epoch + 1}/{c.epochs} {name}")
            timer = _EpochTimer()
            fit = models[name].fit(x, y, batch_size=c.batch, epochs=1, shuffle=False, verbose=0, callbacks=[timer])
            history[name]["epoch_s"].append(timer.seconds)
            history[name]["loss"].append(float(fit.history["loss"][0]))
    progress.close()
    data = {"machine": _report.machine_info(),
            "config": dict(dataclasses.asdict(config), dim=dim),
            "history": history, "mean_predictor_loss": float(y.var()), **summarise(history)}
    if out_dir:
        _report.write(out_dir, data, markdown(data), lambda path: plot(data, path), stem="demo")
    return data


def _EpochTimer():
    """A Keras callback timing the epoch as Keras runs it (without ``fit``'s set-up around it)."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds = time.perf_counter() - self.start

    return EpochTimer()


def summarise(history):
    """Median epoch time after the first (which compiles), speedup, and the largest loss difference."""
    import statistics

    def warm(name):
        times = history[name]["epoch_s"]
        return statistics.median(times[1:] if len(times) > 1 else times)

    losses = [history[name]["loss"] for name in ("keras", "fastcarry")]
    worst = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(*losses))
    return {"epoch_s": {name: warm(name) for name in history},
            "first_epoch_s": {name: history[name]["epoch_s"][0] for name in history},
            "speedup": warm("keras") / warm("fastcarry"), "max_relative_loss_difference": worst}


def markdown(data):
    c = data["config"]
    lines = [f"# model.fit: Keras layers vs fastcarry.keras ({c['cell']}, {c['depth']} layers of {c['units']})",
             "", f"Machine: {_report.describe(data['machine'])}.",
             f"Task {c['task']}: {c['samples']} samples of B{c['batch']} T{c['steps']} D{c['dim']}, "
             f"jit_compile={c['jit_compile']}, {c['epochs']} epochs alternating between the models.", "",
             "| | epoch (median after the first) | first epoch (compiles) | final loss |", "|---|---:|---:|---:|"]
    for name in ("keras", "fastcarry"):
        lines.append(f"| {name} | {data['epoch_s'][name]:.2f} s | {data['first_epoch_s'][name]:.2f} s | "
                     f"{data['history'][name]['loss'][-1]:.5f} |")
    lines += ["", f"Speedup per epoch: **{data['speedup']:.2f}x**; loss curves agree to "
              f"{data['max_relative_loss_difference']:.1e} (largest relative difference over the epochs: float32 "
              f"rounding, which training amplifies; Keras's own LSTM with and without XLA drifts apart as much). "
              f"Predicting the mean would score {data['mean_predictor_loss']:.4f}"
              + (" (the adding problem takes thousands of steps to learn; more --epochs and --samples)."
                 if c["task"] == "adding" else ".")]
    return "\n".join(lines)


def plot(data, path):
    plt = _report.require_matplotlib()
    fig, (ax_loss, ax_time) = plt.subplots(1, 2, figsize=(10, 4))
    for name, style in (("keras", "o-"), ("fastcarry", "x--")):
        h = data["history"][name]
        epochs = range(1, len(h["loss"]) + 1)
        ax_loss.plot(epochs, h["loss"], style, label=name)
        ax_time.plot(epochs, h["epoch_s"], style, label=name)
    ax_loss.axhline(data["mean_predictor_loss"], ls=":", color="gray", label="predicting the mean")
    ax_loss.set(xlabel="epoch", ylabel="training loss (mse)", title="loss: the same curve")
    ax_time.set(xlabel="epoch", ylabel="seconds", title=f"epoch time: {data['speedup']:.2f}x faster")
    for ax in (ax_loss, ax_time):
        ax.legend()
    _report.save_figure(fig, path)
