"""Shared test fixtures: cells by name, random data, tolerance-checked comparison.

Tolerances are relative to the largest magnitude of the expected tensor, keyed
by dtype (``harness.TOLERANCE``; float32's 2e-5 is the acceptance bound).
"""

import importlib.util
import mmap
import os
import pathlib
import tempfile


def _xla_knows(flag):
    """Whether the installed TensorFlow's XLA defines ``flag`` (read from its library, before TF is imported)."""
    spec = importlib.util.find_spec("tensorflow")
    for root in spec.submodule_search_locations if spec else ():
        for lib in pathlib.Path(root).glob("libtensorflow_framework.so*"):
            with open(lib, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return data.find(flag.encode()) >= 0
    return False


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The suite's shapes are tiny, so most of its time is XLA compiling. Two codegen settings make compiles
# about twice as fast without changing the HLO the graph passes produce (so what is computed): LLVM's
# backend optimisation level 0 (how fast the machine code runs), and XLA:CPU's elemental IR emitters in
# place of its MLIR fusion emitters (the default since TF 2.20, about half of a compile at these shapes).
# A third setting makes them about 14% faster again: the LLVM module compiled as one part, not split for
# parallel codegen threads that each pytest-xdist worker (one per core) has no core for (16 jit cases of
# test_unroll: 21.6 s -> 18.5 s, means of 3 and 2 runs).
# XLA's default codegen is still tested: test_packaging runs `fastcarry check` in a child with
# `user_env()`, the environment without these flags. Set only where this TF's XLA knows the flag: XLA
# aborts on an unknown one.
_USER_XLA_FLAGS = os.environ.get("XLA_FLAGS")
SUITE_XLA_FLAGS = ["--xla_backend_optimization_level=0"]
if _xla_knows("xla_cpu_use_fusion_emitters"):
    SUITE_XLA_FLAGS.append("--xla_cpu_use_fusion_emitters=false")
if _xla_knows("xla_cpu_parallel_codegen_split_count"):
    SUITE_XLA_FLAGS.append("--xla_cpu_parallel_codegen_split_count=1")
SUITE_XLA_FLAGS = [f for f in SUITE_XLA_FLAGS if f.split("=")[0] not in os.environ.get("XLA_FLAGS", "")]
os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *SUITE_XLA_FLAGS]).strip()
# pytest-xdist runs one worker per core: each worker's ops on the suite's tiny shapes gain nothing from a
# thread pool of their own, whose idle threads spin on the cores the other worker compiles on.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
# Never the user's tune cache: config="auto" (fastcarry.keras's layers use it) reads it.
os.environ["FASTCARRY_CACHE_DIR"] = tempfile.mkdtemp(prefix="fastcarry-test-cache-")



def user_env(**extra):
    """``os.environ`` with ``XLA_FLAGS`` as the user's shell had it: without the suite's codegen flags
    (``SUITE_XLA_FLAGS``) and the profiler's hooks (``fastcarry.profiling``, imported below)."""
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    if _USER_XLA_FLAGS is not None:
        env["XLA_FLAGS"] = _USER_XLA_FLAGS
    env.update(extra)
    return env


import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Before the tests compile anything: it adds --xla_cpu_enable_xprof_traceme to
# XLA_FLAGS, and only programs compiled with it record op events (test_profiling;
# the compiled functions are shared across test files).
import fastcarry.profiling  # noqa: E402,F401
import harness  # noqa: E402
from fastcarry.tools import workload  # noqa: E402

CELL_KINDS = workload.CELLS

# float32 is compared with TF32 off: TF turns it on by default for matmuls on Ampere and later GPUs, whose
# float32 results then differ from the float64 reference by ~1e-3, far beyond float32's 2e-5 (no effect on a
# CPU; ``fastcarry check`` reports the TF32 error apart).
tf.config.experimental.enable_tensor_float_32_execution(False)


# A Keras-style mask for B=3, T=7: holes, left padding, a row with no real step.
MASK = np.array([[1, 0, 1, 1, 0, 0, 1], [0, 0, 0, 1, 1, 1, 1], [0] * 7], dtype=bool)


def make_cell(kind, units, *, dtype=tf.float32, seed=0, input_dim=None, **kw):
    """A fresh cell of ``kind`` (one of ``CELL_KINDS``), built if ``input_dim`` is given.

    Biases are randomised (they initialise to zeros/ones), so every weight matters.
    """
    cell = workload.make_cell(kind, units, input_size=input_dim, dtype=dtype, seed=seed, **kw)
    if input_dim is not None:
        rng = np.random.default_rng(seed + 100)
        cell.bias.assign(tf.cast(rng.standard_normal(cell.bias.shape) * 0.5, dtype))
    return cell


def random_state(cell, batch, seed=1, scale=0.5):
    """A random initial state in the cell's structure, numpy float64 ``[B, H]`` per component."""
    rng = np.random.default_rng(seed)
    flat = [rng.standard_normal((batch, n)) * scale for n in tf.nest.flatten(cell.state_size)]
    return tf.nest.pack_sequence_as(cell.state_size, flat)


def random_inputs(batch, time, dim, time_major=False, seed=2):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((time, batch, dim) if time_major else (batch, time, dim))


def assert_all_close(got, want, dtype=tf.float32, context=""):
    """Every tensor of ``got`` equals ``want``'s within ``TOLERANCE[dtype]`` relative to max |want|."""
    tol = harness.TOLERANCE[tf.as_dtype(dtype)]
    rows = harness.compare(got, want)
    bad = [r for r in rows if not r.relative <= tol]
    assert not bad, f"{context}: beyond {tol:g} relative: " + ", ".join(
        f"{r.name} {r.relative:.2e} (abs {r.max_abs:.2e})" for r in bad)
    return rows


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# The tests that run child processes for tens of seconds go first: xdist hands out tests in order, and one of
# them started last would leave a worker running alone at the end.
_LONG_FIRST = ("test_distribute.py", "test_keras_suite.py", "test_export.py", "test_bench.py", "test_packaging.py",
               "test_doctor.py")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: 0 if item.fspath.basename in _LONG_FIRST else 1)
