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
    return doctor_report.Plan(True, TINY, (TINY._replace(cell="gru"),), ("train",), (1, 2), rounds=1, processes=1,
                              exactness_cells=("rnn",), loop_cases=1, out_dir=out_dir)


def test_doctor_quick_run_checks_measures_and_says_what_needs_a_gpu(tmp_path, monkeypatch):
    """One whole run at tiny shapes (one test: xdist would run a module fixture once per worker)."""
    monkeypatch.setattr(doctor, "plan", _tiny_plan)
    printed = io.StringIO()
    code = doctor.run(argparse.Namespace(quick=True, out=str(tmp_path)), out=printed, stream=io.StringIO())
    printed = printed.getvalue()
    assert code == 0, printed
    with open(tmp_path / "doctor.json") as f:
        data = json.load(f)
    md = (tmp_path / "doctor.md").read_text()
    findings = {f["key"]: f for f in data["findings"]}
    assert list(findings) == ["device", "exactness", "trip_counts", "launches", "command_buffers", "projection",
                              "unroll", "swap_memory", "keras"]
    for f in findings.values():
        assert f["title"] in md and f["title"] in printed and f["seconds"] > 0
    assert "checks PASS" in printed
    # On this CPU: TF32, launches, command buffers, swapping and cuDNN are a GPU's; the rest hold here.
    needs = {key for key, f in findings.items() if f["needs_gpu"]}
    assert needs == {"exactness", "trip_counts", "launches", "command_buffers", "swap_memory", "keras"}
    assert md.count("*Needs a GPU:*") == len(needs)
    _checks_pass(findings)
    _ops_per_time_step(findings["launches"])
    _command_buffers_in_children(findings["command_buffers"])
    _timings(findings)


def _checks_pass(findings):
    exactness = findings["exactness"]
    assert exactness["ok"] is True
    verdicts = [row[-1] for row in exactness["rows"]]
    assert verdicts.count("info") == 1 and verdicts.count("PASS") == len(verdicts) - 1  # TF32 on: no verdict
    trips = findings["trip_counts"]
    # LSTM inference at T=16 with the default unroll (1): one forward loop of 16 iterations.
    assert trips["ok"] is True and trips["rows"] == [["lstm inference", 1, 1, "16"]]


def _ops_per_time_step(launches):
    phases = {row[0]: row for row in launches["rows"]}
    assert phases["forward recurrent matmul"][1] >= TINY.time  # at least one recurrent dot per time step
    assert launches["data"]["per_time_step"] == pytest.approx(phases["all of the RNN"][1] / TINY.time)
    assert os.listdir(os.path.join(launches["data"]["logdir"], "plugins", "profile"))  # TensorBoard's run


def _command_buffers_in_children(finding):
    runs = finding["data"]["runs"]
    assert [doctor_timing.COMMAND_BUFFER_FLAG + "=+WHILE" in r["xla_flags"] for r in runs["+WHILE"]] == [True]
    assert [doctor_timing.COMMAND_BUFFER_FLAG in r["xla_flags"] for r in runs["defaults"]] == [False]
    assert all(r["median_s"] > 0 for rs in runs.values() for r in rs)


def _timings(findings):
    assert [row[0] for row in findings["projection"]["rows"]] == ["train"]
    unroll = findings["unroll"]
    assert set(unroll["data"]) == {"train unroll=1", "train unroll=2"}
    assert unroll["rows"][0][-1] == min((1, 2), key=lambda u: unroll["data"][f"train unroll={u}"])
    swap = findings["swap_memory"]
    assert [row[0].split(", ")[-1] for row in swap["rows"]] == ["XLA", "in a tf.function", "eagerly"]
    assert all(v["source"] in ("allocator", "rss") for v in swap["data"].values())
    keras = findings["keras"]
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
