"""``fastcarry doctor``'s records and report: what a run measures (``Plan``), what each section found
(``Finding``), and the Markdown and JSON written from them."""

from typing import NamedTuple

from fastcarry.tools.workload import Workload


class Plan(NamedTuple):
    """What one ``fastcarry doctor`` run measures.

    ``workload``: the LSTM step the single-workload sections run (launches, command buffers, projection,
    unroll, ``swap_memory``); ``grid`` and ``modes``: the fastcarry-vs-Keras comparison (``modes`` also the
    projection's and unroll's); ``unrolls``: the ``unroll=`` values timed; ``rounds``: interleaved rounds per
    timing; ``processes``: child processes per command-buffer setting (XLA reads its flags once per process);
    ``exactness_cells``: the cells ``fastcarry check`` runs; ``loop_cases``: how many of
    ``doctor_checks.LOOP_CASES`` are compiled; ``out_dir``: where files go.
    """

    quick: bool
    workload: Workload
    grid: tuple
    modes: tuple
    unrolls: tuple
    rounds: int
    processes: int
    exactness_cells: tuple
    loop_cases: int
    out_dir: str


class Finding(NamedTuple):
    """What one section found: a table (``columns``, ``rows`` of cells), a one-line ``summary``, ``needs_gpu``
    (why the figures mean little without a GPU; empty where they hold here), ``ok`` (a check's verdict; None for
    a measurement), ``data`` (raw figures for the JSON) and ``seconds`` (the section's run time, set by the
    runner)."""

    key: str
    title: str
    columns: tuple
    rows: list
    summary: str
    needs_gpu: str = ""
    ok: object = None
    data: object = None
    seconds: float = 0.0


def gpu_present():
    """Whether fastcarry runs on a GPU (``fastcarry._measure.device_info``, what the tuner and benchmarks read)."""
    from fastcarry._measure import device_info

    return device_info()["type"] == "GPU"


def section_markdown(finding):
    """One finding as Markdown: its title, summary, table and, without a GPU, what needs one."""
    verdict = "" if finding.ok is None else (" — **PASS**" if finding.ok else " — **FAIL**")
    lines = [f"## {finding.title}{verdict}", "", finding.summary, ""]
    if finding.rows:
        lines += ["| " + " | ".join(finding.columns) + " |", "|" + "---|" * len(finding.columns)]
        lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in finding.rows]
        lines.append("")
    if finding.needs_gpu:
        lines += [f"*Needs a GPU:* {finding.needs_gpu}.", ""]
    return "\n".join(lines)


def markdown(findings, machine, plan, seconds):
    """The whole report: the machine, a table of the sections (verdict, needs a GPU), then each section."""
    from fastcarry.tools.report import describe

    lines = ["# fastcarry doctor", "", f"Machine: {describe(machine)}. {'Quick run' if plan.quick else 'Full run'} "
             f"in {seconds:.0f} s.", "", "| section | result | needs a GPU to mean all it says | s |",
             "|---|---|---|---:|"]
    for f in findings:
        verdict = "measured" if f.ok is None else ("PASS" if f.ok else "FAIL")
        lines.append(f"| {f.title} | {verdict} | {'yes (see below)' if f.needs_gpu else 'no'} | {f.seconds:.0f} |")
    lines.append("")
    return "\n".join(lines + [section_markdown(f) for f in findings])


def to_json(findings, machine, plan, seconds):
    """The report as a JSON-ready dict: machine, plan, seconds, and every finding's fields."""
    fields = plan._asdict() | {"workload": plan.workload._asdict(), "grid": [w._asdict() for w in plan.grid]}
    return {"machine": machine, "quick": plan.quick, "seconds": seconds, "plan": fields,
            "findings": [f._asdict() for f in findings]}


def plot(findings, path):
    """``doctor.png``: fastcarry's speed over Keras 3's per grid case, and the step's time per ``unroll``."""
    from fastcarry.tools.report import require_matplotlib, save_figure

    plt = require_matplotlib()
    by_key = {f.key: f for f in findings}
    fig, (speed, unrolls) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    keras = by_key.get("keras")
    if keras is not None and keras.rows:
        labels = [f"{row[0]} {row[1]}" for row in keras.rows]
        ratios = keras.data["ratios"]
        speed.bar(range(len(ratios)), ratios, color=["tab:blue" if r >= 1 else "tab:red" for r in ratios])
        speed.axhline(1.0, color="black", linewidth=0.8)
        speed.set_xticks(range(len(labels)), labels, rotation=75, fontsize=7)
    speed.set_ylabel("Keras 3 time / fastcarry time")
    speed.set_title("fastcarry vs Keras 3 (cuDNN where it can run, outside XLA)")
    unroll = by_key.get("unroll")
    if unroll is not None and unroll.rows:
        for row in unroll.rows:
            unrolls.plot(range(len(row) - 2), [float(v) for v in row[1:-1]], marker="o", label=row[0])
        unrolls.set_xticks(range(len(unroll.columns) - 2), [c.split()[0] for c in unroll.columns[1:-1]])
        unrolls.legend()
    unrolls.set_ylabel("ms per step")
    unrolls.set_title("unroll")
    save_figure(fig, path)
