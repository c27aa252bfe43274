"""``fastcarry tune --env``: what process-wide settings do for one workload, each measured in a child process.

These settings apply to a whole process (an allocator, XLA's flags, TF's
thread pools), so they are tried in child processes, never set in the
caller's: each child starts TensorFlow with one setting, compiles the
workload's step and times it; the parent runs every setting's child in turn,
``rounds`` times (interleaved, so drift falls on all of them alike), and
reports each setting's median against the baseline's.

The CPU list is what the profiling and speed issues found to matter on CPU;
the GPU list is what is known to matter there (not measured here: no GPU).
"""

import json
import os
import statistics
import sys

from fastcarry.tools.report import run_child

CPU_SETTINGS = (
    ("TF_CPU_ALLOCATOR_USE_BFC=1", {"TF_CPU_ALLOCATOR_USE_BFC": "1"}),
    ("TF_NUM_INTRAOP_THREADS=1", {"TF_NUM_INTRAOP_THREADS": "1"}),
    ("--xla_cpu_multi_thread_eigen=false", {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"}),
    ("--xla_cpu_use_xnnpack=true", {"XLA_FLAGS": "--xla_cpu_use_xnnpack=true"}),
)
GPU_SETTINGS = (
    ("TF_GPU_ALLOCATOR=cuda_malloc_async", {"TF_GPU_ALLOCATOR": "cuda_malloc_async"}),
    ("--xla_gpu_autotune_level=0", {"XLA_FLAGS": "--xla_gpu_autotune_level=0"}),
)


def settings_for(device_kind):
    return GPU_SETTINGS if device_kind == "GPU" else CPU_SETTINGS


def child_env(base, setting):
    """``base`` with ``setting`` applied; an ``XLA_FLAGS`` setting is appended to the flags already there."""
    env = dict(base)
    for name, value in setting.items():
        env[name] = f"{env[name]} {value}" if name == "XLA_FLAGS" and env.get(name) else value
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


def _run_child(job, env):
    """Runs this module as a child with ``job`` (a dict); returns its JSON result."""
    return run_child([sys.executable, "-m", "fastcarry.tools.env_tune", json.dumps(job)], env,
                     f"fastcarry tune --env: the child for {job['label']}")


def run(workload, mode, settings, rounds=2, repeats=7, progress=None, runner=_run_child):
    """``[{"setting", "median_s", "compile_s", "vs_baseline"}]`` for ``workload`` (a ``Workload``), the baseline
    first."""
    jobs = [("baseline", {})] + list(settings)
    samples = {label: [] for label, _ in jobs}
    compiles = {label: [] for label, _ in jobs}
    for r in range(rounds):
        for label, setting in jobs:
            if progress:
                progress(f"round {r + 1}/{rounds} {label}")
            job = dict(label=label, cell=workload.cell, batch=workload.batch, steps=workload.time,
                       dim=workload.input, units=workload.units, mode=mode, repeats=repeats)
            result = runner(job, child_env(os.environ, setting))
            samples[label].append(result["median_s"])
            compiles[label].append(result["compile_s"])
    base = statistics.median(samples["baseline"])
    return [{"setting": label, "median_s": statistics.median(samples[label]),
             "compile_s": statistics.median(compiles[label]), "vs_baseline": base / statistics.median(samples[label])}
            for label, _ in jobs]


def markdown(rows):
    lines = ["| setting | median ms | compile s | vs baseline |", "|---|---:|---:|---:|"]
    lines += [f"| {r['setting']} | {r['median_s'] * 1e3:.2f} | {r['compile_s']:.2f} | {r['vs_baseline']:.2f}x |"
              for r in rows]
    return "\n".join(lines)


def _child(job):
    """In the child: build the workload, compile its step, time ``repeats`` calls; print the JSON result."""
    import numpy as np
    import tensorflow as tf

    from fastcarry._measure import timed_call
    from fastcarry.tools.workload import make_cell, unroll_step

    cell = make_cell(job["cell"], job["units"], input_size=job["dim"])
    x = tf.constant(np.random.default_rng(0).standard_normal((job["batch"], job["steps"], job["dim"])), cell.dtype)
    fn = unroll_step(cell, job["mode"])

    compile_s = timed_call(fn, x)
    timed_call(fn, x)
    times = [timed_call(fn, x) for _ in range(job["repeats"])]
    print(json.dumps({"median_s": statistics.median(times), "compile_s": compile_s}))


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
