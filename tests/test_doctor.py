"""``fastcarry doctor`` on this CPU: every section runs on tiny shapes, its report says what needs a GPU, and a
failed check fails the command."""

import argparse
import io
import json
import os

import pytest

from fastcarry.tools import doctor, doctor_checks, doctor_report, doctor_timing
from fastcarry.tools.workload import Workload

TINY = Workload("lstm", 2, 6, 3, 4)


def _tiny_plan(quick, out_dir):
    return doctor_report.Plan(True, TINY, (TINY._replace(cell="gru"),), ("train",), rounds=1, processes=1,
                              exactness_cells=("rnn",), loop_cases=1, out_dir=out_dir)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One whole run at tiny shapes: ``(exit code, printed text, doctor.json, doctor.md)``."""
    out_dir = str(tmp_path_factory.mktemp("doctor"))
    mp = pytest.MonkeyPatch()
    mp.setattr(doctor, "plan", _tiny_plan)
    try:
        printed = io.StringIO()
        code = doctor.run(argparse.Namespace(quick=True, out=out_dir), out=printed, stream=io.StringIO())
    finally:
        mp.undo()
    with open(os.path.join(out_dir, "doctor.json")) as f:
        data = json.load(f)
    with open(os.path.join(out_dir, "doctor.md")) as f:
        md = f.read()
    return code, printed.getvalue(), data, md


def _finding(data, key):
    return next(f for f in data["findings"] if f["key"] == key)


def test_doctor_runs_every_section_and_writes_its_report(report):
    code, printed, data, md = report
    assert code == 0, printed
    keys = [f["key"] for f in data["findings"]]
    assert keys == ["device", "exactness", "trip_counts", "launches", "command_buffers", "projection", "unroll",
                    "swap_memory", "keras"]
    for f in data["findings"]:
        assert f["title"] in md and f["title"] in printed
    assert "checks PASS" in printed


def test_doctor_says_which_sections_need_a_gpu(report):
    _, _, data, md = report
    needs = {f["key"] for f in data["findings"] if f["needs_gpu"]}
    # On this CPU: TF32, launches, command buffers, swapping and cuDNN are GPU matters; the rest hold here.
    assert needs == {"exactness", "trip_counts", "launches", "command_buffers", "swap_memory", "keras"}
    assert md.count("*Needs a GPU:*") == len(needs)


def test_doctor_checks_pass_with_their_figures(report):
    _, _, data, _ = report
    exactness = _finding(data, "exactness")
    assert exactness["ok"] is True
    verdicts = [row[-1] for row in exactness["rows"]]
    assert verdicts.count("info") == 1 and verdicts.count("PASS") == len(verdicts) - 1  # TF32 on: no verdict
    trips = _finding(data, "trip_counts")
    assert trips["ok"] is True
    label, loops, known, counts = trips["rows"][0]
    # LSTM inference at T=16 with the default unroll (1): one forward loop of 16 iterations.
    assert (label, loops, known, counts) == ("lstm inference", 1, 1, "16")


def test_doctor_counts_ops_per_time_step_from_a_trace(report):
    _, _, data, _ = report
    launches = _finding(data, "launches")
    phases = {row[0]: row for row in launches["rows"]}
    assert phases["forward recurrent matmul"][1] >= TINY.time  # at least one recurrent dot per time step
    assert launches["data"]["per_time_step"] == pytest.approx(phases["all of the RNN"][1] / TINY.time)
    assert os.listdir(os.path.join(launches["data"]["logdir"], "plugins", "profile"))  # TensorBoard's run


def test_doctor_times_command_buffers_in_children_with_the_flag(report):
    _, _, data, _ = report
    runs = _finding(data, "command_buffers")["data"]["runs"]
    assert [doctor_timing.COMMAND_BUFFER_FLAG + "=+WHILE" in r["xla_flags"] for r in runs["+WHILE"]] == [True]
    assert [doctor_timing.COMMAND_BUFFER_FLAG in r["xla_flags"] for r in runs["defaults"]] == [False]
    assert all(r["median_s"] > 0 for rs in runs.values() for r in rs)


def test_doctor_measures_projection_unroll_swap_and_keras(report):
    _, _, data, _ = report
    assert [row[0] for row in _finding(data, "projection")["rows"]] == ["train"]
    unroll = _finding(data, "unroll")
    assert set(unroll["data"]) == {f"train unroll={u}" for u in doctor_timing.UNROLLS}
    assert unroll["rows"][0][-1] == min(doctor_timing.UNROLLS, key=lambda u: unroll["data"][f"train unroll={u}"])
    swap = _finding(data, "swap_memory")
    assert [row[0].split(", ")[-1] for row in swap["rows"]] == ["XLA", "in a tf.function", "eagerly"]
    assert all(v["source"] in ("allocator", "rss") for v in swap["data"].values())
    keras = _finding(data, "keras")
    assert keras["rows"][0][:2] == ["gru 2x6x3x4", "train"] and keras["data"]["ratios"][0] > 0


def test_doctor_fails_when_a_check_fails(monkeypatch, tmp_path):
    """A loop without a known trip count (the parser's answer replaced) fails the section and the command."""
    from fastcarry.tools import hlo

    monkeypatch.setattr(hlo, "while_loops", lambda text: [("body", 8), ("body.1", None)])
    finding = doctor_checks.trip_counts(_tiny_plan(True, str(tmp_path)))
    assert finding.ok is False and "1 loop(s) without a known trip count" in finding.summary
    monkeypatch.setattr(doctor, "sections", lambda: [("trip counts", lambda plan: finding)])
    printed = io.StringIO()
    assert doctor.run(argparse.Namespace(quick=True, out=str(tmp_path)), out=printed, stream=io.StringIO()) == 1
    assert "FAIL: Loop trip counts" in printed.getvalue()
