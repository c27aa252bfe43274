"""``fastcarry doctor``'s checks of this machine: the device, exactness, loop trip counts, launches per step.

Each function takes the run's ``Plan`` and returns one ``Finding`` (both in
``fastcarry.tools.doctor_report``). Checks have a verdict (``ok``);
measurements have none.
"""

import argparse
from typing import NamedTuple

from fastcarry.tools.doctor_report import Finding, gpu_present
from fastcarry.tools.workload import Workload, random_data, workload_cell

# Where TF32 exists: NVIDIA compute capability 8.0 (Ampere) and later.
TF32_MIN_CAPABILITY = (8, 0)


def device(plan):
    """The device fastcarry runs on, TensorFlow's CUDA build, the TF32 setting and the XLA flags."""
    import os

    import tensorflow as tf

    from fastcarry._measure import device_info

    info = device_info()
    gpu = info["type"] == "GPU"
    build = tf.sysconfig.get_build_info()
    tf32 = tf.config.experimental.tensor_float_32_execution_enabled()
    rows = [("device", f"{info['type']}: {info['name']} ({info['cores']} {'GPUs' if gpu else 'cores'})"),
            ("TensorFlow", f"{tf.__version__}, built with CUDA {build.get('cuda_version', 'none')}, "
                           f"cuDNN {build.get('cudnn_version', 'none')}"),
            ("TF32 matmuls", ("enabled" if tf32 else "disabled")
             + ("" if gpu else " (no effect: TF32 is an NVIDIA GPU's, compute capability 8.0 or later)"))]
    capability = None
    if gpu:
        details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
        capability = details.get("compute_capability")
        has_tf32 = capability is not None and tuple(capability) >= TF32_MIN_CAPABILITY
        rows.append(("compute capability", f"{capability} ({'has' if has_tf32 else 'no'} TF32)"))
    rows.append(("XLA_FLAGS", os.environ.get("XLA_FLAGS", "") or "(none)"))
    summary = f"{info['type']} {info['name']}; TF32 {'enabled' if tf32 else 'disabled'}"
    return Finding("device", "Device", ("what", "value"), rows, summary,
                   data={"device": info, "tf32_enabled": tf32, "compute_capability": capability,
                         "cuda": build.get("cuda_version"), "cudnn": build.get("cudnn_version")})


def exactness(plan):
    """``fastcarry check`` per cell of ``plan.exactness_cells``: the worst error of each comparison (TF32 off),
    and the fused XLA path's with TF32 on, for information."""
    from fastcarry.tools import check

    rows, failed, tf32_worst = [], False, 0.0
    for cell in plan.exactness_cells:
        args = check.add_parser(argparse.ArgumentParser().add_subparsers()).parse_args(["--cell", cell])
        for c in check.comparisons(args):  # at fastcarry check's default workload
            if c.note:
                rows.append((cell, c.title, "", "", c.note))
                continue
            error = check.worst(c.rows)
            failed |= c.failed
            if c.tol is None:
                tf32_worst = max(tf32_worst, error)
            verdict = "info" if c.tol is None else ("FAIL" if c.failed else "PASS")
            rows.append((cell, c.title, f"{error:.2e}", "" if c.tol is None else f"{c.tol:g}", verdict))
    summary = (f"{'FAIL' if failed else 'PASS'}: {', '.join(plan.exactness_cells)} at B4 T16 D8 H16, float32 with "
               f"TF32 off against the float64 reference and Keras 3; TF32 on: worst relative error "
               f"{tf32_worst:.1e}")
    needs = "" if gpu_present() else "TF32 exists only on NVIDIA GPUs (Ampere and later): its rows match TF32 off here"
    return Finding("exactness", "Exactness (fastcarry check)", ("cell", "comparison", "worst relative error",
                                                                 "tolerance", "verdict"),
                   rows, summary, needs, ok=not failed, data={"tf32_worst_relative": tf32_worst})


class LoopCase(NamedTuple):
    """A compiled step whose loops are read: ``cell`` (a ``workload.CELLS`` name), ``mode``, ``fc.unroll``
    options; ``checked``: whether a loop without a known trip count fails the check (False: the loop is
    TensorFlow's, reported for information)."""

    label: str
    cell: str
    mode: str
    options: dict
    checked: bool = True


LOOP_CASES = (LoopCase("lstm inference", "lstm", "infer", {}), LoopCase("lstm training", "lstm", "train", {}),
              LoopCase("lstm training, chunk=4, unroll=1", "lstm", "train", {"chunk": 4, "unroll": 1}),
              LoopCase("gru training, hoisted projection", "gru", "train", {"projection": "hoisted"}),
              LoopCase("rnn training, unroll=4", "rnn", "train", {"unroll": 4}),
              # TF's gradient of its while loop runs as many iterations as the forward counted, a number XLA
              # does not know: reported, not failed (the default backward is fastcarry's own loop).
              LoopCase("lstm training, backward='autodiff'", "lstm", "train", {"backward": "autodiff"},
                       checked=False))
LOOP_SHAPE = (2, 16, 3, 8)  # B, T, D, H: small, the loops' structure does not depend on it


def trip_counts(plan):
    """Every while loop in the optimized HLO of the ``LOOP_CASES`` steps (on this machine's device): whether XLA
    knows its trip count."""
    from fastcarry._measure import step_function
    from fastcarry.tools.hlo import while_loops

    rows, missing, unchecked = [], 0, []
    for case in LOOP_CASES[:plan.loop_cases]:
        w = Workload(case.cell, *LOOP_SHAPE)
        x, _ = random_data(w)
        cell = workload_cell(w)
        step = step_function(_unroll_of(cell, case.options), cell.trainable_variables, case.mode, wrt_inputs=True,
                             name="fastcarry_doctor")
        loops = while_loops(step.experimental_get_compiler_ir(x)(stage="optimized_hlo"))
        unknown = sum(trip is None for _, trip in loops)
        if case.checked:
            missing += unknown
        elif unknown:
            unchecked.append(case.label)
        counts = ", ".join("?" if trip is None else str(trip) for _, trip in loops)
        rows.append((case.label + ("" if case.checked else " (TF's loop: not checked)"), len(loops),
                     len(loops) - unknown, counts))
    summary = ("every loop of fastcarry's has a trip count XLA knows" if not missing
               else f"{missing} loop(s) without a known trip count: on a GPU each iteration waits for the host")
    if unchecked:
        summary += (f"; {', '.join(unchecked)}: TF's gradient loop has none (on a GPU it waits for the host every "
                    f"iteration: prefer the default backward there)")
    needs = "" if gpu_present() else ("read from XLA:CPU's HLO: the loops are fastcarry's, the same on a GPU; what "
                                      "a missing count costs (a host sync per iteration) shows only there")
    return Finding("trip_counts", f"Loop trip counts (optimized HLO, B{LOOP_SHAPE[0]} T{LOOP_SHAPE[1]})",
                   ("step", "loops", "with a known trip count", "trip counts"), rows, summary, needs, ok=not missing)


def _unroll_of(cell, options):
    """``x -> fc.unroll(cell, x, **options)``'s outputs (a closure: a ``tf.function`` takes no default args)."""
    import fastcarry as fc

    return lambda x: fc.unroll(cell, x, **options)[0]


def launches(plan):
    """One LSTM training step traced with ``fastcarry.profiling``: the ops (on a GPU, kernels) per time step by
    phase."""
    import os

    import fastcarry.profiling as fcp
    from fastcarry.profiling import PHASES
    from fastcarry.tools import grid_bench

    w = plan.workload
    x, cot = random_data(w)
    step = grid_bench.fastcarry_step(w, "train", x, cot)
    prof = fcp.trace(step, logdir=os.path.join(plan.out_dir, "profile"), steps=3, warmup=2)
    summary = prof.summary(label="fastcarry", calibrate=False)
    outside = set(PHASES[-3:])  # outside the RNN, tracing and compilation, no op running
    rows = [(r.phase, r.ops, f"{r.ops / w.time:.1f}", f"{r.ms:.3f}") for r in summary.rows if r.phase not in outside]
    total = sum(r[1] for r in rows)
    rows.append(("all of the RNN", total, f"{total / w.time:.1f}", f"{sum(float(r[3]) for r in rows):.3f}"))
    what, needs = what_was_counted(gpu_present(), summary.device, os.environ.get("XLA_FLAGS", ""))
    summary_line = f"{total / w.time:.1f} {what} per time step ({w.label}, training, {summary.step_ms:.2f} ms/step)"
    return Finding("launches", f"Ops per time step ({w.label}, one training step traced)",
                   ("phase", "ops per step", "per time step", "ms per step"), rows, summary_line, needs,
                   data={"summary": summary.to_dict(), "per_time_step": total / w.time, "logdir": prof.logdir})


def what_was_counted(gpu, planes, xla_flags):
    """``(what the ops counted are, why they need a GPU or "")`` for a trace whose ops ran on ``planes`` (its
    ``Summary.device``), taken with a GPU present or not (``gpu``) and ``xla_flags``."""
    if not gpu:
        return "XLA:CPU op runs", ("a GPU launches a kernel per op: the ops here are XLA:CPU's, run on the calling "
                                   "thread without a launch")
    if not any(p.startswith("/device:GPU") for p in planes):
        # TF's profiler records GPU kernels through CUPTI; without it the trace holds host events only.
        return "host op runs", ("the trace holds no GPU kernels (is CUPTI, libcupti, on the library path?): the "
                                "ops counted ran on the host")
    traced_with = "--xla_enable_command_buffers_during_profiling=true" in xla_flags.split()
    return "kernels" + ("" if traced_with else " (traced with command buffers off, XLA's default under a profiler: "
                                               "every kernel its own launch)"), ""
