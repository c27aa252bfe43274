"""``fastcarry check`` in-process: it passes on the real thing and fails on a wrong one."""

import io

import pytest

import fastcarry as fc
import harness
from fastcarry.tools import check as _check_tool
from fastcarry.tools import cli as _cli
from fastcarry.tools import demo as _demo
from fastcarry.tools import profile as _profile
from fastcarry.tools import tune as _tune_tool


def _run(argv):
    out = io.StringIO()
    code = _check_tool.run(_cli.parser().parse_args(["check", *argv]), out=out)
    return code, out.getvalue()


def test_the_tools_evaluation_agrees_with_the_test_harness():
    """``fastcarry check`` measures with code of its own: on the same run it reports what the harness does."""
    from conftest import make_cell, random_inputs, random_state

    cell = make_cell("gru", 4, input_dim=3)
    x, s0 = random_inputs(2, 5, 3), random_state(cell, 2)
    cot = harness.random_cotangents(cell, 2, 5, seed=3)
    want = harness.evaluate(fc.unroll, cell, x, s0, cot, sequence_length=[5, 2])
    got = _check_tool.evaluate(fc.unroll, cell, x, s0, _check_tool.Cotangents(*cot), sequence_length=[5, 2])
    assert sorted(got) == sorted(want)
    assert harness.compare(got, want) == [harness.Row(n, 0.0, 0.0) for n in want]
    rows = _check_tool.compare({**got, "outputs": got["outputs"] * 1.5}, want)
    assert [r.name for r in rows if r.relative > 0] == ["outputs"]


# [] is the default workload (LSTM 4x16x8x16, float32).
@pytest.mark.parametrize("argv", [
    [],
    ["--cell", "gru-reset-before", "--batch", "3", "--time", "5", "--input", "3", "--units", "4",
     "--seq-lengths", "5", "0", "2", "--reverse", "--time-major", "--unroll", "2"],
])
def test_check_passes(argv):
    code, text = _run(argv)
    assert code == 0, text
    assert text.rstrip().endswith("PASS")
    # Every tensor of all seven comparisons is reported, and of the TF32 row.
    assert text.count("d_recurrent_kernel") == 7 + 1 and "vs keras 3" in text and "autodiff jit" in text
    assert "hoisted jit" in text
    assert ("chunk=6 jit" if not argv else "chunk=2 jit") in text and "swap_memory jit" in text
    if not argv:
        assert "cell=lstm" in text and "float32, tolerance 2e-05" in text


def test_check_compares_with_tf32_off_reports_it_on_apart_and_puts_the_setting_back():
    import tensorflow as tf

    tf.config.experimental.enable_tensor_float_32_execution(True)  # TF's default, which the suite turns off
    try:
        code, text = _run(["--cell", "gru", "--batch", "2", "--time", "3", "--input", "3", "--units", "4"])
        assert tf.config.experimental.tensor_float_32_execution_enabled()
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(False)
    assert code == 0, text
    assert "TF32 off for the comparisons (this process had it on)" in text
    # The TF32 rows come last, every tensor's errors and no verdict; then the verdict of the comparisons.
    tf32 = text.split("fused jit with TF32 on vs reference(float64), for information (no GPU")[1].splitlines()
    assert [line.split()[0] for line in tf32[2:-1]] == ["outputs", "state", "d_inputs", "d_initial_state",
                                                         "d_kernel", "d_recurrent_kernel", "d_bias"]
    assert not any("PASS" in line or "FAIL" in line for line in tf32[:-1]) and tf32[-1] == "PASS"


def test_compiled_functions_are_made_per_tf32_setting():
    """TF's lowering to XLA writes each matmul's precision from the TF32 setting (full precision with it off):
    fastcarry keys its compiled functions by it, so none compiled under one setting runs under the other."""
    import numpy as np
    import tensorflow as tf

    from fastcarry import _functions

    cell = fc.LSTM(4, input_size=3, seed=0)
    x = tf.constant(np.ones((2, 5, 3)), tf.float32)
    assert not tf.config.experimental.tensor_float_32_execution_enabled()  # conftest: float32 compared without
    hlo = tf.function(lambda x: fc.unroll(cell, x)[0], jit_compile=True).experimental_get_compiler_ir(x)(
        stage="hlo")
    assert hlo.count(" dot(") == hlo.count("operand_precision={highest,highest}") == 2
    made = set(_functions._FUNCTIONS)
    tf.config.experimental.enable_tensor_float_32_execution(True)
    try:
        fc.unroll(cell, x, jit_compile=False)
        fc.unroll(cell, x, jit_compile=False)
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(False)
    new = set(_functions._FUNCTIONS) - made
    assert new and all(key[-1] is True for key in new)  # one new function, for TF32 on only


def test_check_fails_on_a_wrong_implementation(monkeypatch):
    real = fc.unroll

    def off_by_a_little(cell, inputs, initial_state=None, **kw):
        outputs, state = real(cell, inputs, initial_state, **kw)
        return outputs * (1 + 1e-3), state

    monkeypatch.setattr(fc, "unroll", off_by_a_little)
    code, text = _run(["--cell", "rnn", "--batch", "2", "--time", "4", "--input", "3", "--units", "4"])
    assert code == 1
    assert "outputs" in text and "FAIL" in text and text.rstrip().endswith("FAIL")


def test_check_rejects_bad_seq_lengths():
    with pytest.raises(SystemExit, match="--seq-lengths needs 2 values"):
        _run(["--batch", "2", "--seq-lengths", "1"])
    with pytest.raises(SystemExit, match=r"in \[0, T=4\]"):
        _run(["--batch", "1", "--time", "4", "--seq-lengths", "5"])


def test_check_with_no_time_steps_passes_and_skips_keras():
    code, text = _run(["--cell", "gru", "--batch", "2", "--time", "0", "--input", "3", "--units", "4"])
    assert code == 0, text
    assert "keras 3: skipped" in text and text.rstrip().endswith("PASS")


def test_check_default_workload():
    """(Its output, float32 with the issue's tolerance, is checked by test_check_passes[argv0].)"""
    args = _cli.parser().parse_args(["check"])
    assert (args.cell, args.batch, args.time, args.input, args.units) == ("lstm", 4, 16, 8, 16)


# What TensorFlow 2.21 printed on this project's CPU machine while it started,
# before its log level applied (and the CUDA probe's error): all of it dropped.
START_UP = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1795701036.596684    2295 port.cc:153] oneDNN custom operations are on. You may see slightly different numerical results due to floating-point round-off errors from different computation orders. To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.
I0000 00:00:1795701036.597140    2295 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
I0000 00:00:1795701036.672014    2295 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use available CPU instructions in performance-critical operations.
To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags.
E0000 00:00:1795701040.380983    2295 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)
"""


def test_start_up_noise_is_dropped_and_nothing_else():
    assert [line for line in START_UP.splitlines() if not _cli._START_UP_NOISE.search(line)] == []
    kept = ["E0000 00:00:1795701040.380983    2295 some_op.cc:52] a real error",
            "Traceback (most recent call last):",
            "W0000 00:00:1795701040.3 cuda_executor.cc:1] could not open file to read NUMA node"]
    assert [line for line in kept if _cli._START_UP_NOISE.search(line)] == []


def test_profile_side_by_side_with_keras(tmp_path, capsys):
    import json

    out = tmp_path / "prof"
    args = _cli.parser().parse_args(["profile", "--cell", "gru", "--batch", "2", "--time", "6", "--input", "3",
                                      "--units", "4", "--against", "keras", "--steps", "2", "--out", str(out)])
    assert _profile.run(args, stream=io.StringIO()) == 0
    text = capsys.readouterr().out
    assert "| phase | fastcarry ms | keras ms |" in text and "| **step** |" in text
    assert f"tensorboard --logdir {out}" in text
    data = json.loads((out / "summary.json").read_text())
    assert set(data["contenders"]) == {"fastcarry", "keras"}
    for name, summary in data["contenders"].items():
        phases = {r["phase"] for r in summary["rows"]}
        assert "backward loop" in phases, (name, phases)  # the Keras layer's phases are found too
        assert (out / name / "plugins" / "profile").is_dir()
    assert (out / "summary.png").stat().st_size > 1000 and "## keras" in (out / "summary.md").read_text()


def test_demo_trains_both_models_to_the_same_curve(tmp_path, capsys):
    import json

    out = tmp_path / "demo"
    args = _cli.parser().parse_args(["demo", "--cell", "gru", "--time", "12", "--units", "4", "--layers", "1",
                                      "--batch", "8", "--samples", "32", "--epochs", "2", "--out", str(out)])
    progress = io.StringIO()
    assert _demo.run(args, stream=progress) == 0
    text = capsys.readouterr().out
    assert "| keras |" in text and "| fastcarry |" in text and "Speedup per epoch" in text
    assert f"demo.png to {out}" in text
    assert "epoch 2/2" in progress.getvalue()
    data = json.loads((out / "demo.json").read_text())
    assert data["max_relative_loss_difference"] < 1e-4
    assert [len(h["loss"]) for h in data["history"].values()] == [2, 2]
    assert (out / "demo.png").stat().st_size > 1000


def test_the_demo_task_needs_every_step_and_has_unit_variance():
    from fastcarry.tools import fit_bench

    x, y = fit_bench.signed_sum_problem(4096, 50, seed=1)
    assert x.shape == (4096, 50, 2) and 0.9 < float(y.var()) < 1.1  # the mean predictor scores about 1
    flipped = x.copy()
    flipped[:, -1, 1] *= -1  # the last step's sign alone moves every target
    moved = (flipped[..., 0] * flipped[..., 1]).sum(1) / (50 / 3) ** 0.5 - y[:, 0]
    assert (abs(moved) > 1e-6).all()


def test_tune_prints_the_candidates_caches_the_winner_and_shows_it(tmp_path, monkeypatch, capsys):
    import json

    monkeypatch.setenv("FASTCARRY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(fc.tune_cache, "_MEMO", {})
    argv = ["tune", "--cell", "rnn", "--batch", "2", "--time", "3", "--input", "3", "--units", "4", "--mode", "infer",
            "--budget-s", "1", "--out", str(tmp_path / "out")]
    progress = io.StringIO()
    assert _tune_tool.run(_cli.parser().parse_args(argv), stream=progress) == 0
    text = capsys.readouterr().out
    assert "| unroll=1 (defaults) |" in text and "| unroll=2 |" in text and "| unroll=4 |" not in text  # pruned: 4 > T
    assert "winner: " in text and "x the defaults" in text and "2/3" in progress.getvalue()
    data = json.loads((tmp_path / "out" / "tune.json").read_text())
    assert data["key"]["T"] == 4 and len(data["candidates"]) in (2, 3) and (tmp_path / "out" / "tune.png").exists()
    assert "; measured now" in text
    assert _tune_tool.run(_cli.parser().parse_args(argv[:-2])) == 0  # the same key again: from the cache
    assert "; cached: measured earlier for this key (--force measures again)" in capsys.readouterr().out
    assert _tune_tool.run(_cli.parser().parse_args(argv[:-2] + ["--force"])) == 0
    assert "; measured now" in capsys.readouterr().out
    assert _tune_tool.run(_cli.parser().parse_args(["tune", "--show"])) == 0
    assert "1 entries" in capsys.readouterr().out
    assert _tune_tool.run(_cli.parser().parse_args(["tune", "--clear"])) == 0
    assert "removed 1 entries" in capsys.readouterr().out and fc.tune_cache.load() == {}


def test_tune_env_runs_each_setting_in_a_child_process(monkeypatch, capsys):
    from fastcarry.tools import env_tune

    jobs = []

    def fake_child(job, env):  # the parent's bookkeeping; the real child runs below
        jobs.append((job["label"], env.get("XLA_FLAGS"), env.get("TF_CPU_ALLOCATOR_USE_BFC")))
        return {"median_s": 0.002 if job["label"] == "baseline" else 0.001, "compile_s": 1.0}

    monkeypatch.setenv("XLA_FLAGS", "--mine")
    from fastcarry.tools.workload import Workload

    rows = env_tune.run(Workload("rnn", 2, 3, 3, 4), "infer", env_tune.CPU_SETTINGS[::2], rounds=2,
                        runner=fake_child)
    assert jobs[:3] == [("baseline", "--mine", None), ("TF_CPU_ALLOCATOR_USE_BFC=1", "--mine", "1"),
                        ("--xla_cpu_multi_thread_eigen=false", "--mine --xla_cpu_multi_thread_eigen=false", None)]
    assert len(jobs) == 6 and [r["vs_baseline"] for r in rows] == [1.0, 2.0, 2.0]
    monkeypatch.delenv("XLA_FLAGS")
    monkeypatch.setattr(env_tune, "CPU_SETTINGS", ())  # the baseline alone: one real child process
    argv = ["tune", "--env", "--rounds", "1", "--cell", "rnn", "--batch", "2", "--time", "3", "--input", "3",
            "--units", "4", "--mode", "infer"]
    assert _tune_tool.run(_cli.parser().parse_args(argv), stream=io.StringIO()) == 0
    text = capsys.readouterr().out
    assert "| baseline |" in text and "1.00x |" in text and "None of these is set for you" in text
