"""``fastcarry doctor``'s measurements: command buffers, projection, unroll, ``swap_memory``'s memory, Keras.

Each function takes the run's ``Plan`` and returns one ``Finding``
(``fastcarry.tools.doctor_report``). Times in one process are interleaved
medians (``fastcarry._measure.time_blocks``). XLA reads ``XLA_FLAGS`` once
per process, so the command-buffer settings run in child processes
(``python -m fastcarry.tools.doctor_timing --child``), alternated.
"""

import argparse
import json
import os
import statistics
import sys

from fastcarry.tools.doctor_report import Finding, gpu_present
from fastcarry.tools.report import run_child
from fastcarry.tools.workload import Workload, positive, random_data, workload_cell

COMMAND_BUFFER_FLAG = "--xla_gpu_enable_command_buffer"
# XLA:GPU's command buffers at their defaults, and with while loops too (CUDA graphs with conditional nodes,
# CUDA >= 12.3): a whole recurrent loop becomes one graph launch.
COMMAND_BUFFERS = (("defaults", ""), ("+WHILE", f"{COMMAND_BUFFER_FLAG}=+WHILE"))
CHILD_TIMEOUT_S = 600


def _ms(seconds):
    return f"{seconds * 1e3:.3f}"


def _without_command_buffer_flag(flags):
    return " ".join(f for f in flags.split() if not f.startswith(COMMAND_BUFFER_FLAG + "="))


def _in_child(kind, w, rounds, env):
    """Runs ``python -m fastcarry.tools.doctor_timing --child kind`` on workload ``w`` with environment ``env``;
    returns the JSON it prints."""
    argv = [sys.executable, "-m", "fastcarry.tools.doctor_timing", "--child", kind, "--batch", str(w.batch),
            "--time", str(w.time), "--input", str(w.input), "--units", str(w.units), "--rounds", str(rounds)]
    return run_child(argv, env, f"fastcarry doctor: the {kind} child", timeout=CHILD_TIMEOUT_S)


def command_buffers(plan):
    """The LSTM training step's time with XLA's command buffers at their defaults and with ``+WHILE``, each in
    ``plan.processes`` child processes (alternated); a command-buffer setting in ``XLA_FLAGS`` is replaced."""
    w = plan.workload
    base = _without_command_buffer_flag(os.environ.get("XLA_FLAGS", ""))
    runs = {name: [] for name, _ in COMMAND_BUFFERS}
    for p in range(plan.processes):
        for name, flag in (COMMAND_BUFFERS if p % 2 == 0 else COMMAND_BUFFERS[::-1]):
            env = dict(os.environ, XLA_FLAGS=f"{base} {flag}".strip())
            runs[name].append(_in_child("step", w, plan.rounds, env))
    median = {name: statistics.median(r["median_s"] for r in rs) for name, rs in runs.items()}
    rows = [(name, _ms(median[name]), ", ".join(_ms(r["median_s"]) for r in runs[name]),
             f"{statistics.median(r['first_s'] for r in runs[name]):.2f}") for name, _ in COMMAND_BUFFERS]
    ratio = median["defaults"] / median["+WHILE"]
    spread = max(r["median_s"] for rs in runs.values() for r in rs) / min(r["median_s"] for rs in runs.values()
                                                                         for r in rs)
    summary = (f"+WHILE {ratio:.2f}x the defaults' speed ({w.label} training; the median of {plan.processes} "
               f"process(es) each; the slowest process {spread:.2f}x the fastest: separate processes differ by "
               f"more than one's repeats)")
    needs = "" if gpu_present() else ("command buffers (CUDA graphs) are XLA:GPU's: here both settings run one "
                                      "program, and what differs is the processes")
    return Finding("command_buffers", "Command buffers (XLA:GPU's CUDA graphs)",
                   ("setting", "ms per step", "per process", "first call s"), rows, summary, needs,
                   data={"runs": runs, "flags": dict(COMMAND_BUFFERS), "speedup": ratio})


def _step_child(w, rounds):
    """In a child process: the workload's fastcarry training step, first call and interleaved median."""
    from fastcarry._measure import time_blocks, timed_call
    from fastcarry.tools import grid_bench

    x, cot = random_data(w)
    step = grid_bench.fastcarry_step(w, "train", x, cot)
    first = timed_call(step)
    return {"first_s": first, "median_s": time_blocks({"step": step}, rounds)["step"],
            "xla_flags": os.environ.get("XLA_FLAGS", "")}


def _configs_timed(plan, configs):
    """``{(mode, name): median s}`` of the workload's ``fc.unroll`` step under each ``fc.Config`` of
    ``configs`` (``{name: Config}``), interleaved within each mode."""
    from fastcarry._measure import time_blocks
    from fastcarry.tools.workload import unroll_step

    w = plan.workload
    x, _ = random_data(w)
    cell = workload_cell(w)
    out = {}
    for mode in plan.modes:
        steps = {name: (lambda fn=unroll_step(cell, mode, config): fn(x)) for name, config in configs.items()}
        out.update({(mode, name): t for name, t in time_blocks(steps, plan.rounds).items()})
    return out


def projection(plan):
    """The input projection inside the loop (``"per_iteration"``) against before it (``"hoisted"``)."""
    import fastcarry as fc

    names = ("per_iteration", "hoisted")
    times = _configs_timed(plan, {p: fc.Config(projection=p) for p in names})
    rows = [(mode, *(_ms(times[mode, p]) for p in names), f"{times[mode, names[0]] / times[mode, names[1]]:.2f}x")
            for mode in plan.modes]
    summary = "; ".join(f"{mode}: hoisted {times[mode, names[0]] / times[mode, names[1]]:.2f}x per-iteration's speed"
                        for mode in plan.modes)
    return Finding("projection", f"Input projection ({plan.workload.label})",
                   ("mode", "per_iteration ms", "hoisted ms", "hoisted speed-up"), rows, summary,
                   data={f"{m} {p}": t for (m, p), t in times.items()})


def unroll(plan):
    """Steps per loop iteration: each ``unroll=`` of ``plan.unrolls``."""
    import fastcarry as fc

    unrolls = plan.unrolls
    times = _configs_timed(plan, {u: fc.Config(unroll=u) for u in unrolls})
    rows = [(mode, *(_ms(times[mode, u]) for u in unrolls), min(unrolls, key=lambda u: times[mode, u]))
            for mode in plan.modes]
    summary = "; ".join(f"{mode}: fastest unroll={row[-1]}" for mode, row in zip(plan.modes, rows))
    return Finding("unroll", f"Unroll ({plan.workload.label})",
                   ("mode", *(f"unroll={u} ms" for u in unrolls), "fastest"), rows, summary,
                   data={f"{m} unroll={u}": t for (m, u), t in times.items()})


def swap_memory(plan):
    """Peak memory of one training step without ``chunk``, with it, and with ``swap_memory`` too, in a
    ``tf.function`` and called eagerly, measured in a child process whose CPU allocator keeps statistics."""
    w = plan.workload
    # Without TF_CPU_ALLOCATOR_USE_BFC=1 TF's CPU allocator keeps no statistics (a GPU's always does); it must be
    # set before TensorFlow starts.
    result = _in_child("memory", w, plan.rounds, dict(os.environ, TF_CPU_ALLOCATOR_USE_BFC="1"))
    rows = [(name, "—" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.1f}", r["source"],
             _ms(r["seconds"])) for name, r in result["steps"].items()]
    summary = (f"peak memory of a training step above what was in use before it ({w.label}, "
               f"chunk={result['chunk']}, read from the {result['device']} allocator)")
    needs = "" if gpu_present() else ("on a CPU the host is the device: swap_memory parks the activations where "
                                      "they already were, so it saves nothing here")
    return Finding("swap_memory", f"swap_memory's peak memory ({w.label})",
                   ("step", "peak MiB", "read from", "ms (one call)"), rows, summary, needs, data=result)


def _memory_child(w):
    """In a child process: each step's peak memory (``fastcarry._measure.peak_memory``) and time, after a call
    that traces and compiles it."""
    import tensorflow as tf

    import fastcarry as fc
    from fastcarry._measure import block, device_info, peak_memory, timed_call
    from fastcarry.tools.workload import unroll_step

    x, _ = random_data(w)
    cell = workload_cell(w)
    chunk = max(1, w.time // 4)

    def eager():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fc.unroll(cell, x, chunk=chunk, swap_memory=True)[0]
            loss = tf.reduce_sum(y * y)  # unroll_step's loss
        return tape.gradient(loss, [x] + list(cell.trainable_variables))

    compiled = {name: unroll_step(cell, "train", config) for name, config in (
        ("no chunk, XLA", fc.Config()), (f"chunk={chunk}, XLA", fc.Config(chunk=chunk)),
        (f"chunk={chunk} + swap_memory, in a tf.function", fc.Config(chunk=chunk, swap_memory=True)))}
    steps = {name: (lambda fn=fn: fn(x)) for name, fn in compiled.items()}
    steps[f"chunk={chunk} + swap_memory, eagerly"] = eager
    device, out = device_info(), {}
    for name, step in steps.items():
        block(step())
        seconds = timed_call(step)
        peak, source = peak_memory(lambda step=step: block(step()), device)
        out[name] = {"peak_bytes": peak, "source": source, "seconds": seconds}
    return {"chunk": chunk, "device": device["type"], "steps": out}


def keras(plan):
    """fastcarry's XLA step against Keras 3's layer outside XLA, as a GPU user runs it (cuDNN where it can run)."""
    import tensorflow as tf

    from fastcarry._measure import time_blocks
    from fastcarry.tools import grid_bench

    rows, ratios = [], []
    for w in plan.grid:
        for mode in plan.modes:
            x, cot = random_data(w)
            times = time_blocks({"fastcarry": grid_bench.fastcarry_step(w, mode, x, cot),
                                 "keras": grid_bench.keras_step(w, mode, x, cot, jit_compile=False)}, plan.rounds)
            ratios.append(times["keras"] / times["fastcarry"])
            rows.append((w.label, mode, _ms(times["fastcarry"]), _ms(times["keras"]), f"{ratios[-1]:.2f}x"))
            tf.keras.backend.clear_session()  # this case's layers go before the next
    summary = (f"fastcarry {statistics.median(ratios):.2f}x Keras 3's speed at the median "
               f"(lowest {min(ratios):.2f}x) over {len(ratios)} cases")
    needs = "" if gpu_present() else ("Keras 3's LSTM and GRU run cuDNN kernels only on a GPU: here both run their "
                                      "CPU loops")
    return Finding("keras", "fastcarry vs Keras 3 (cuDNN where it can run, outside XLA)",
                   ("workload", "mode", "fastcarry ms", "keras ms", "speed-up"), rows, summary, needs,
                   data={"ratios": ratios})


def main(argv=None):
    """A child of ``command_buffers`` (``--child step``) or ``swap_memory`` (``--child memory``), on the LSTM
    workload ``--batch --time --input --units``; prints one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m fastcarry.tools.doctor_timing")
    parser.add_argument("--child", choices=("step", "memory"), required=True)
    for name in ("batch", "time", "input", "units", "rounds"):
        parser.add_argument(f"--{name}", type=positive, required=True)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    w = Workload("lstm", args.batch, args.time, args.input, args.units)
    print(json.dumps(_step_child(w, args.rounds) if args.child == "step" else _memory_child(w)))


if __name__ == "__main__":
    main()
