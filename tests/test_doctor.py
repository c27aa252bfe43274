"""``fastcarry doctor`` on this CPU: every section runs on tiny shapes, its report says what needs a GPU, and a
failed check fails the command."""

import argparse
import contextlib
import io
import json
import os
import subprocess

import pytest

from fastcarry.tools import doctor, doctor_checks, doctor_report, doctor_timing
from fastcarry.tools.workload import Workload

TINY = Workload("lstm", 2, 6, 3, 4)


def _tiny_plan(quick, out_dir):
    return doctor_report.Plan(True, TINY, (TINY._replace(cell="gru"),), ("train",), (1, 2), rounds=1, processes=1,
                              exactness_cells=("rnn",), loop_cases=1, out_dir=out_dir)


def _step_children_in_process(monkeypatch):
    """The command-buffer children run their ``main`` in this process (each real child is ~7 s of TensorFlow
    starting; the memory child still runs as one, through the same launcher); returns the environments they
    were given."""
    real_run, given = subprocess.run, []

    def run(argv, env=None, **kw):
        if argv[3:5] != ["--child", "step"]:
            return real_run(argv, env=env, **kw)
        given.append(env)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            doctor_timing.main(argv[3:])
        return subprocess.CompletedProcess(argv, 0, printed.getvalue(), "")

    monkeypatch.setattr(subprocess, "run", run)  # the children are started through fastcarry.tools.report
    return given


def test_doctor_quick_run_checks_measures_and_says_what_needs_a_gpu(tmp_path, monkeypatch):
    """One whole run at tiny shapes (one test: xdist would run a module fixture once per worker)."""
    monkeypatch.setattr(doctor, "plan", _tiny_plan)
    step_children = _step_children_in_process(monkeypatch)
    printed = io.StringIO()
    code = doctor.run(argparse.Namespace(quick=True, out=str(tmp_path)), out=printed, stream=io.StringIO())
    printed = printed.getvalue()
    assert code == 0, printed
    with open(tmp_path / "doctor.json") as f:
        data = json.load(f)
    md = (tmp_path / "doctor.md").read_text()
    assert (tmp_path / "doctor.png").read_bytes()[:4] == b"\x89PNG"
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
    _command_buffers_in_children(findings["command_buffers"], step_children)
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


def _command_buffers_in_children(finding, environments):
    flags = [env["XLA_FLAGS"] for env in environments]  # processes=1: defaults, then +WHILE
    assert [doctor_timing.COMMAND_BUFFER_FLAG in f for f in flags] == [False, True]
    assert flags[1].endswith(doctor_timing.COMMAND_BUFFER_FLAG + "=+WHILE")
    assert flags[0] == os.environ["XLA_FLAGS"]  # the rest of the user's flags kept (here the profiler's)
    runs = finding["data"]["runs"]
    assert all(len(rs) == 1 and rs[0]["median_s"] > 0 for rs in runs.values())


def _timings(findings):
    assert [row[0] for row in findings["projection"]["rows"]] == ["train"]
    unroll = findings["unroll"]
    assert set(unroll["data"]) == {"train unroll=1", "train unroll=2"}
    assert unroll["rows"][0][-1] == min((1, 2), key=lambda u: unroll["data"][f"train unroll={u}"])
    swap = findings["swap_memory"]
    assert [row[0].split(", ")[-1] for row in swap["rows"]] == ["XLA", "XLA", "in a tf.function", "eagerly"]
    # Its child's CPU allocator keeps statistics (TF_CPU_ALLOCATOR_USE_BFC=1): every step's peak is read there.
    assert [(v["source"], v["peak_bytes"] > 0) for v in swap["data"]["steps"].values()] == [("allocator", True)] * 4
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


def test_with_a_gpu_the_device_and_exactness_sections_need_nothing_more(monkeypatch, tmp_path):
    """A faked GPU, with the device details TF reports for one (``get_device_details``: ``device_name``,
    ``compute_capability``): the device section reads them, and TF32's rows stand for themselves."""
    import tensorflow as tf

    from fastcarry import _measure
    from fastcarry.tools import check

    gpu = tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")
    real_list = tf.config.list_physical_devices
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: [gpu] if kind == "GPU" else real_list(kind))
    monkeypatch.setattr(tf.config.experimental, "get_device_details",
                        lambda device: {"device_name": "NVIDIA A100-SXM4-40GB", "compute_capability": (8, 0)})
    monkeypatch.setattr(_measure, "device_info", lambda: {"type": "GPU", "name": "NVIDIA A100-SXM4-40GB",
                                                          "cores": 1})
    device = doctor_checks.device(_tiny_plan(True, str(tmp_path)))
    rows = dict(device.rows)
    assert rows["device"].startswith("GPU: NVIDIA A100") and rows["compute capability"] == "(8, 0) (has TF32)"
    assert "no effect" not in rows["TF32 matmuls"] and not device.needs_gpu
    tf32 = check.Comparison("fused jit with TF32 on ...", [check.Row("outputs", 1e-3, 2e-3)], None)
    ok = check.Comparison("fused jit  vs reference(float64)", [check.Row("outputs", 1e-7, 1e-7)], 2e-5)
    monkeypatch.setattr(check, "comparisons", lambda args: [ok, tf32])
    exactness = doctor_checks.exactness(_tiny_plan(True, str(tmp_path)))
    assert exactness.ok is True and not exactness.needs_gpu and "TF32 on: worst relative error 2.0e-03" in \
        exactness.summary
    monkeypatch.setattr(check, "comparisons", lambda args: [ok._replace(rows=[check.Row("outputs", 1, 1e-4)]), tf32])
    assert doctor_checks.exactness(_tiny_plan(True, str(tmp_path))).ok is False


def test_a_section_that_raises_is_reported_and_the_others_still_run(monkeypatch, tmp_path):
    def broken(plan):
        raise RuntimeError("XLA:GPU: command buffers need CUDA 12.3\nmore detail")

    ran = []
    monkeypatch.setattr(doctor, "sections", lambda: [
        ("command buffers", broken),
        ("after", lambda plan: ran.append(plan) or doctor_report.Finding("after", "After", (), [], "fine"))])
    printed, errors = io.StringIO(), io.StringIO()
    assert doctor.run(argparse.Namespace(quick=True, out=str(tmp_path)), out=printed, stream=errors) == 1
    assert len(ran) == 1
    assert "FAIL: command buffers (could not run)" in printed.getvalue()
    assert "RuntimeError: XLA:GPU: command buffers need CUDA 12.3" in (tmp_path / "doctor.md").read_text()
    assert "Traceback" in errors.getvalue()


def test_what_the_launch_count_counts_on_each_kind_of_trace():
    assert doctor_checks.what_was_counted(False, ["/host:CPU"], "")[0] == "XLA:CPU op runs"
    what, needs = doctor_checks.what_was_counted(True, ["/device:GPU:0 (pid 1)", "/host:CPU"], "")
    assert what.startswith("kernels (traced with command buffers off") and needs == ""
    flag = "--xla_enable_command_buffers_during_profiling=true"
    assert doctor_checks.what_was_counted(True, ["/device:GPU:0"], f"--xla_foo=1 {flag}") == ("kernels", "")
    what, needs = doctor_checks.what_was_counted(True, ["/host:CPU"], "")  # a GPU, but no kernels traced
    assert what == "host op runs" and "CUPTI" in needs
