"""Capturing traces with TensorFlow's own profiler: ``trace``, ``capture``, ``Profile``.

Everything recorded is TF's: ``tf.profiler.experimental.start/stop`` writes
``<logdir>/plugins/profile/<run>/<host>.xplane.pb``, the file TensorBoard's
profile plugin (xprof) opens, and each step is a
``tf.profiler.experimental.Trace(name, step_num=i, _r=1)`` event, which is
what TensorBoard's overview page counts as a step.
"""

import contextlib
import os
import resource
import tempfile
import time
from typing import Any, Callable, Iterator

import tensorflow as tf

from fastcarry._measure import block
from fastcarry.profiling import _summary, _xspace

STEP_NAME = "train"


def _count(value, name, least):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {least}, got {value!r}")
    if value < least:
        raise ValueError(f"{name} must be an int >= {least}, got {value}")


def _writable(logdir):
    """``logdir`` made (if needed) and proven writable, before anything runs; its absolute path."""
    if not isinstance(logdir, (str, os.PathLike)) or not str(logdir):
        raise TypeError(f"logdir must be a directory path, got {logdir!r}")
    path = os.path.abspath(os.fspath(logdir))
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise ValueError(f"logdir {path!r} is not a writable directory ({err.strerror or err})") from err
    return path


def _runs(logdir):
    root = os.path.join(logdir, "plugins", "profile")
    return set(os.listdir(root)) if os.path.isdir(root) else set()


class Profile:
    """One captured run: where its files are, and ``summary()`` of them.

    ``logdir`` is what ``tensorboard --logdir`` opens; ``run_dir`` is
    ``<logdir>/plugins/profile/<run>``; ``xplane_paths`` the ``.xplane.pb``
    files in it (one per host). ``minor_faults_per_step``: page faults the
    process took per traced step (``getrusage``), a signal for the advice.
    """

    def __init__(self, logdir, step_name=STEP_NAME):
        self.logdir = logdir
        self.step_name = step_name
        self.run_dir = None
        self.xplane_paths = []
        self.steps = 0
        self.minor_faults_per_step = None
        self._faults = None

    def step(self):
        """A context manager around one step: ``with prof.step(): train_step(x)``.

        The step is a ``tf.profiler.experimental.Trace`` event with ``step_num``;
        force your step's results inside it (``.numpy()``), or the step ends
        before its work does.
        """
        number = self.steps
        self.steps += 1
        return tf.profiler.experimental.Trace(self.step_name, step_num=number, _r=1)

    def summary(self, *, label: str = "", scope: str = "fastcarry_", calibrate: bool = True) -> _summary.Summary:
        """The ``Summary`` of the captured steps (see ``fastcarry.profiling.Summary``).

        ``scope``: what marks the RNN's ops, ``"fastcarry_"``, or another RNN's
        layer name (a Keras layer's ``"lstm"``: phases from its loop structure).
        ``calibrate``: measure this device's matmul rate once per process
        (``calibrate_matmul()``) for the "slow matmuls" advice.
        """
        if not self.xplane_paths:
            raise ValueError(f"no trace was captured in {self.logdir!r} (the capture has not ended, or TF's "
                             f"profiler wrote no .xplane.pb)")
        path = self.xplane_paths[0]
        try:
            space = _xspace.read(path, self.step_name)
        except Exception as err:  # a truncated or foreign file: say which, keep it
            raise RuntimeError(f"could not parse the trace {path!r} with TensorFlow's XSpace protobuf "
                               f"({type(err).__name__}: {err}); the raw trace is kept there") from err
        rate = calibrate_matmul() if calibrate else None
        return _summary.summarize(space, label=label, scope=scope, matmul_gflops=rate,
                                  minor_faults_per_step=self.minor_faults_per_step)

    def __repr__(self):
        return f"Profile(run_dir={self.run_dir!r}, steps={self.steps})"


@contextlib.contextmanager
def capture(logdir: str | os.PathLike, *, step_name: str = STEP_NAME, host_tracer_level: int = 2,
            device_tracer_level: int = 1) -> Iterator[Profile]:
    """Profiles a block of your own loop into ``logdir``: ``with capture(logdir) as prof:``.

    Mark each step with ``with prof.step(): ...``. The profiler is stopped
    when the block ends, also when it raises (the exception propagates).
    Raises ``RuntimeError`` if a TensorFlow profiler is already running.
    """
    logdir = _writable(logdir)
    prof = Profile(logdir, step_name)
    before = _runs(logdir)
    options = tf.profiler.experimental.ProfilerOptions(host_tracer_level=host_tracer_level, python_tracer_level=0,
                                                       device_tracer_level=device_tracer_level)
    try:
        tf.profiler.experimental.start(logdir, options=options)
    except (tf.errors.AlreadyExistsError, tf.errors.UnavailableError) as err:
        raise RuntimeError("a TensorFlow profiler is already running in this process (your own "
                           "tf.profiler.experimental.start?); stop it before fastcarry.profiling captures "
                           f"({err.message})") from err
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    try:
        yield prof
    finally:
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        tf.profiler.experimental.stop()
        if prof.steps:
            prof.minor_faults_per_step = faults / prof.steps
        new = sorted(_runs(logdir) - before)
        if new:
            prof.run_dir = os.path.join(logdir, "plugins", "profile", new[-1])
            prof.xplane_paths = sorted(os.path.join(prof.run_dir, f) for f in os.listdir(prof.run_dir)
                                       if f.endswith(".xplane.pb"))


def trace(fn: Callable, *args: Any, logdir: str | os.PathLike, steps: int = 5, warmup: int = 2,
          **kwargs: Any) -> Profile:
    """Profiles ``fn(*args, **kwargs)``: ``warmup`` untraced calls, then ``steps`` traced ones.

    Compilation happens in the warm-up calls. Each traced call is one step
    (``Profile.step``) and its results are forced to completion inside it.

    Args:
      fn: the step to profile, e.g. a ``tf.function`` training step.
      logdir: directory for TensorBoard (``tensorboard --logdir logdir``); made
        if missing, checked writable before anything runs.
      steps: int >= 1, traced calls.
      warmup: int >= 0, untraced calls first.

    Returns:
      a ``Profile``; ``.summary()`` reads it.
    """
    _count(steps, "steps", 1)
    _count(warmup, "warmup", 0)
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    logdir = _writable(logdir)
    for _ in range(warmup):
        block(fn(*args, **kwargs))
    with capture(logdir) as prof:
        for _ in range(steps):
            with prof.step():
                block(fn(*args, **kwargs))
    return prof


_CALIBRATION = {}


def calibrate_matmul(size: int = 1024, repeats: int = 5) -> float:
    """This device's float32 matmul rate in GFLOP/s: one ``size``² XLA matmul, best of ``repeats``; cached."""
    device = tf.config.list_logical_devices("GPU")
    device = device[0].name if device else "/device:CPU:0"
    if device not in _CALIBRATION:
        with tf.device(device):
            a = tf.random.stateless_normal([size, size], seed=[1, 2])
            matmul = tf.function(tf.matmul, jit_compile=True)
            block(matmul(a, a))
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                block(matmul(a, a))
                best = min(best, time.perf_counter() - start)
        _CALIBRATION[device] = 2 * size ** 3 / best / 1e9
    return _CALIBRATION[device]
