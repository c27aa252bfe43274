"""``fastcarry doctor``: one command that checks and measures fastcarry on this machine (run it first on a GPU).

Sections, in order (``SECTIONS``): the device and TF32 setting; ``fastcarry
check``'s exactness with TF32 off and on; every compiled loop's trip count
from the optimized HLO; ops (on a GPU, kernel launches) per time step from a
traced LSTM training step; the step with XLA's command buffers at their
defaults and with ``+WHILE``; hoisted against per-iteration input
projection; ``unroll`` 1/2/4/8; ``swap_memory``'s peak memory eagerly and in
a ``tf.function``; fastcarry against Keras 3 outside XLA (cuDNN where it can
run) on the grid. Each section prints as it finishes; ``doctor.md``,
``doctor.json`` and ``doctor.png`` go to ``--out``, with the trace for TensorBoard under
``<out>/profile``. The report says which figures need a GPU to mean what
they say. Exit code 1 when a check fails (exactness, trip counts) or a
section cannot run (reported with its error; the others still run).
"""

import os
import sys
import time
import traceback

from fastcarry.tools.workload import Workload

FULL_WORKLOAD = Workload("lstm", 32, 100, 128, 256)
QUICK_WORKLOAD = Workload("lstm", 4, 20, 8, 16)


def plan(quick, out_dir):
    """The ``Plan`` of a full run (the benchmark grid; minutes on a CPU) or a quick one (``quick``: tiny
    shapes)."""
    from fastcarry.tools.doctor_report import Plan
    from fastcarry.tools.grid_bench import FULL_GRID

    if quick:
        return Plan(True, QUICK_WORKLOAD, (QUICK_WORKLOAD,), ("train",), (1, 2, 4, 8), rounds=3, processes=1,
                    exactness_cells=("lstm",), loop_cases=2, out_dir=out_dir)
    return Plan(False, FULL_WORKLOAD, FULL_GRID, ("train", "infer"), (1, 2, 4, 8), rounds=5, processes=3,
                exactness_cells=("lstm", "gru", "rnn"), loop_cases=6, out_dir=out_dir)


def sections():
    """``[(name, function of a Plan returning a Finding)]`` in the order they run."""
    from fastcarry.tools import doctor_checks as checks
    from fastcarry.tools import doctor_timing as timing

    return [("device", checks.device), ("exactness", checks.exactness), ("trip counts", checks.trip_counts),
            ("launches", checks.launches), ("command buffers", timing.command_buffers),
            ("projection", timing.projection), ("unroll", timing.unroll), ("swap_memory", timing.swap_memory),
            ("keras", timing.keras)]


def add_parser(subparsers):
    doctor = subparsers.add_parser(
        "doctor", help="check and measure fastcarry on this machine (on a GPU, run this first)",
        description="Checks exactness (TF32 off and on) and every compiled loop's trip count, traces an LSTM "
                    "training step, and times command buffers, the projection, unroll 1/2/4/8, swap_memory's "
                    "memory and fastcarry against Keras 3. Prints each section and writes doctor.md, "
                    "doctor.json and doctor.png. Exits 1 if a check fails or a section cannot run (its error is "
                    "reported, and the other sections still run).")
    doctor.add_argument("--quick", action="store_true",
                        help="tiny shapes, one mode, fewer repeats: checks the machinery in about a minute")
    doctor.add_argument("--out", default="fastcarry-doctor", help="output directory (default: fastcarry-doctor)")
    return doctor


def run(args, out=sys.stdout, stream=sys.stderr):
    """Runs every section of ``plan(args.quick, args.out)``; returns the exit code (1: a check failed, or a
    section could not run)."""
    import fastcarry.profiling  # noqa: F401  (before anything compiles: XLA:CPU then records per-op events)
    from fastcarry.tools import doctor_report as report
    from fastcarry.tools.report import Progress, machine_info, require_matplotlib, write

    require_matplotlib()  # before minutes of measuring, not after
    os.makedirs(args.out, exist_ok=True)
    the_plan = plan(args.quick, args.out)
    machine = machine_info()
    start, findings = time.perf_counter(), []
    todo = sections()
    bar = Progress(len(todo), stream)
    for name, section in todo:
        bar.step(name)
        findings.append(_run_section(name, section, the_plan, stream))
        print("\n" + report.section_markdown(findings[-1]), file=out, flush=True)
    bar.close()
    seconds = time.perf_counter() - start
    write(args.out, report.to_json(findings, machine, the_plan, seconds),
          report.markdown(findings, machine, the_plan, seconds), lambda path: report.plot(findings, path),
          stem="doctor")
    failed = [f.title for f in findings if f.ok is False]
    print(f"\nfastcarry doctor: {'FAIL: ' + ', '.join(failed) if failed else 'checks PASS'}; "
          f"{sum(bool(f.needs_gpu) for f in findings)} of {len(findings)} sections need a GPU to mean what they "
          f"say; {seconds:.0f} s; report in {os.path.join(args.out, 'doctor.md')}", file=out)
    return 1 if failed else 0


def _run_section(name, section, the_plan, stream):
    """``section(the_plan)``'s ``Finding`` with its run time; one that raised is a failed finding naming the
    error (its traceback on ``stream``), so a first run on new hardware still reports every other section."""
    from fastcarry.tools.doctor_report import Finding

    began = time.perf_counter()
    try:
        finding = section(the_plan)
    except Exception as err:  # noqa: BLE001  (any failure is the section's result; the rest still run)
        print(f"\nfastcarry doctor: section {name!r} failed:\n{traceback.format_exc()}", file=stream)
        finding = Finding(name.replace(" ", "_"), f"{name} (could not run)", (), [],
                          f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}", ok=False)
    return finding._replace(seconds=time.perf_counter() - began)
