"""``fastcarry bench`` in-process on a tiny workload: every contender timed, every file written."""

import io
import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf

import fastcarry as fc
from fastcarry.tools import bench as _bench
from fastcarry.tools import cli as _cli
from fastcarry.tools import grid_bench as _grid

pytest.importorskip("matplotlib")
TINY = ["--cell", "gru", "--batch", "2", "--time", "5", "--input", "3", "--units", "4", "--repeats", "2"]


def _bench_args(argv):
    return _cli.parser().parse_args(["bench", *argv])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert _bench.run(_bench_args([*TINY, "--out", str(out)])) == 0
    return out


def test_json_has_every_contender_with_positive_timings(tiny_run):
    report = json.loads((tiny_run / "results.json").read_text())
    assert {"platform", "cpu_count", "tensorflow"} <= set(report["machine"])
    assert [e["mode"] for e in report["results"]] == ["infer", "train"]
    for entry in report["results"]:
        assert entry["workload"] == dict(cell="gru", batch=2, time=5, input=3, units=4)
        timings = entry["timings"]
        assert set(timings) == set(_grid.CONTENDERS)
        assert ("skipped" in timings["torch"]) == (_grid.torch_skipped(_grid.Workload("gru", 2, 5, 3, 4)) is not None)
        for name, t in timings.items():
            if "skipped" in t:
                continue
            for key in ("compile_s", "median_s", "min_s", "max_s"):
                assert t[key] > 0, (name, key)
            assert len(t["samples_s"]) == 2 and t["min_s"] <= t["median_s"] <= t["max_s"]
        assert timings["keras"]["variant"] in ("graph", "jit")


def test_markdown_table_names_the_contenders(tiny_run):
    table = (tiny_run / "results.md").read_text()
    for word in ("fastcarry", "keras", "tf1", "reference", "roofline", "torch", "vs torch", "vs keras", "grid median"):
        assert word in table
    assert "| gru 2x5x3x4 | infer |" in table and "| gru 2x5x3x4 | train |" in table


def test_png_is_written(tiny_run):
    data = (tiny_run / "results.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_reference_is_skipped_on_big_shapes():
    assert _grid.reference_skipped(_grid.Workload("lstm", 8, 200, 64, 128)) is None
    assert "skipped" in _grid.reference_skipped(_grid.Workload("lstm", 32, 100, 128, 256))


@pytest.mark.parametrize("argv, message", [
    (["--units", "0"], "argument --units: expected an int >= 1, got 0"),
    (["--cell", "lstm2"], "argument --cell: invalid choice"),
    (["--repeats", "-1"], "argument --repeats: expected an int >= 1"),
    (["--cells", "lstm,gru2"], "argument --cells: expected a comma-separated list of lstm, gru, rnn, "
                               "gru-reset-before, got 'lstm,gru2'"),
])
def test_bad_arguments_fail_clearly(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        _bench_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--quick", "--units", "4"], ["--cells", "rnn", "--cell", "gru"]])
def test_a_grid_with_a_custom_shape_is_refused(argv):
    with pytest.raises(SystemExit, match="--quick and --cells choose a fixed grid"):
        _bench.run(_bench_args(argv))


def test_cells_choose_the_grid_cells():
    got = _bench.workloads_for(_bench_args(["--quick", "--cells", "gru-reset-before,rnn"]))
    assert [w.cell for w in got] == ["gru-reset-before", "rnn"]
    assert {w[1:] for w in got} == {w[1:] for w in _grid.QUICK_GRID}
    full = _bench.workloads_for(_bench_args(["--cells", "lstm"]))
    assert full == [w for w in _grid.FULL_GRID if w.cell == "lstm"]


def test_bad_workload_in_the_api_is_refused(tmp_path):
    with pytest.raises(ValueError, match="units must be >= 1"):
        _grid.run_grid([_grid.Workload("lstm", 2, 5, 3, 0)], repeats=1, out_dir=str(tmp_path))


def test_missing_matplotlib_says_how_to_install_it(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kw):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        _grid.require_matplotlib()


def test_memory_bench_quick_writes_every_row(tmp_path):
    from fastcarry.tools import memory_bench as _memory_bench

    report = _memory_bench.run(_memory_bench.QUICK, str(tmp_path))
    rows = report["results"]
    assert [(r["loss"], r["layout"], r["chunk"]) for r in rows] == [("final", "batch-major", None),
                                                                    ("final", "batch-major", 16)]
    for r in rows:
        assert r["peak_bytes"] > 0 and r["first_call_peak_bytes"] > 0 and r["median_s"] > 0
        assert r["memory_source"].startswith("CPU:0 allocator")  # the children run with the BFC allocator
    table = (tmp_path / "results.md").read_text()
    assert "| final | batch-major | 16 |" in table
    assert (tmp_path / "results.png").stat().st_size > 0
    assert json.loads((tmp_path / "results.json").read_text())["workload"]["time"] == 64


def test_schedule_bench_times_every_unroll_the_default_and_keras_and_writes_every_file(tmp_path):
    from fastcarry._config import default_unroll
    from fastcarry.tools import schedule_bench as _schedule_bench

    rows = _schedule_bench.run(cells=("gru",), shapes=_schedule_bench.QUICK_SHAPES, rounds=2, out_dir=str(tmp_path))
    assert [(r["cell"], r["mode"]) for r in rows] == [("gru", "infer"), ("gru", "train")]
    for r in rows:
        names = {"unroll=1", "unroll=2", "unroll=4", "default"} | ({"keras"} if r["mode"] == "infer" else set())
        assert set(r["ms"]) == names and min(r["ms"].values()) > 0
        assert r["default"] == default_unroll("gru", 2, 4, r["mode"], "CPU") and r["best"] in (1, 2, 4)
    table = (tmp_path / "results.md").read_text()
    assert "| gru | 2×5×3×4 | infer |" in table and "Machine: " in table
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == rows
    assert (tmp_path / "results.png").stat().st_size > 0


def test_user_cell_bench_checks_gradients_times_both_sides_and_writes_every_file(tmp_path, monkeypatch):
    from fastcarry.tools import user_cell_bench as _user_cell_bench

    rows = _user_cell_bench.run(cells=("indrnn",), shapes=_user_cell_bench.QUICK_SHAPES, rounds=2,
                                out_dir=str(tmp_path))
    assert [(r["cell"], r["mode"]) for r in rows] == [("indrnn", "infer"), ("indrnn", "train")]
    for r in rows:
        assert set(r["ms"]) == {"fastcarry", "fastcarry-split", "fastcarry-as-written", "fastcarry-protocol",
                                "keras-graph", "keras-jit"}
        assert min(r["ms"].values()) > 0
        assert r["speedup"] == r["ms"][r["keras"]] / r["ms"]["fastcarry"] and r["max_relative_error"] <= 2e-5
        assert r["protocol_speedup"] == r["ms"][r["keras"]] / r["ms"]["fastcarry-protocol"]
    assert "| **median** | | train |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "results.png").stat().st_size > 0
    # Every cell's two sides agree (the benchmark refuses to time a case where they do not) ...
    for kind in ("peephole_lstm", "minimal_gated_unit", "layer_norm_gated"):  # the three not timed above
        assert _user_cell_bench.check_equal(kind, (2, 5, 3, 4), variants=("fastcarry",)) <= 2e-5, kind
    # ... and a wrong side is caught: outputs off by 0.1% fail the check, and the run refuses to time.
    unroll = fc.unroll
    monkeypatch.setattr(fc, "unroll", lambda cell, x: (unroll(cell, x)[0] * 1.001, None))
    assert _user_cell_bench.check_equal("indrnn", (2, 5, 3, 4)) > 5e-4
    with pytest.raises(AssertionError, match="fastcarry and keras.layers.RNN differ by"):
        _user_cell_bench.run(cells=("indrnn",), shapes=_user_cell_bench.QUICK_SHAPES, rounds=1)


def test_keras_rnn_layers_in_xla_steps_never_ask_for_cudnn(monkeypatch):
    """Keras 3 picks cuDNN from a layer's arguments and whether a GPU exists, not from the compilation, and XLA
    cannot compile cuDNN's kernel: every Keras LSTM/GRU the tools time or profile inside an XLA step is made
    with ``use_cudnn=False``; outside XLA with Keras's default (what a GPU user compares against)."""
    from fastcarry.tools import check, grid_bench, models_bench, profile, schedule_bench, tiny_bench
    from fastcarry.tools.workload import Workload

    for kind in ("LSTM", "GRU"):
        assert check.keras_rnn_layer(kind, 3, jit_compile=True).use_cudnn is False
        assert check.keras_rnn_layer(kind, 3, jit_compile=False).use_cudnn == "auto"
    assert not hasattr(check.keras_rnn_layer("SimpleRNN", 3, jit_compile=True), "use_cudnn")
    assert check.KerasUnroll(fc.GRU(3, input_size=2), jit_compile=True).layer.use_cudnn is False

    made = []  # (jit_compile, layer) of every Keras RNN layer the step builders below make
    real = check.keras_rnn_layer

    def recording(kind, units, *, jit_compile, **kwargs):
        made.append((jit_compile, real(kind, units, jit_compile=jit_compile, **kwargs)))
        return made[-1][1]

    for module in (check, models_bench):
        monkeypatch.setattr(module, "keras_rnn_layer", recording)
    w = Workload("lstm", 2, 3, 2, 4)
    x, cot = tf.zeros([2, 3, 2]), tf.zeros([2, 3, 4])
    grid_bench.keras_step(w, "infer", x, cot, jit_compile=True)
    profile._contenders(w, "infer", against=("keras",))
    schedule_bench._steps("lstm", (2, 3, 2, 4), "infer")
    tiny_bench._steps("lstm", (2, 3, 2, 4))
    for builder in (models_bench.stack_steps, models_bench.bidirectional_steps):
        builder(w, "infer")
    xla = [layer for jit, layer in made if jit]
    # grid, profile, schedule, tiny: one each; models: two stacked, one bidirectional (Keras copies its backward
    # half from it, use_cudnn included: checked below).
    assert len(xla) == 4 + 2 + 1 and all(layer.use_cudnn is False for layer in xla)
    assert all(layer.use_cudnn == "auto" for jit, layer in made if not jit)
    grid_bench.keras_step(w, "infer", x, cot, jit_compile=False)
    assert made[-1][0] is False and made[-1][1].use_cudnn == "auto"
    import keras

    both_ways = keras.layers.Bidirectional(real("LSTM", 3, jit_compile=True, return_sequences=True))
    assert both_ways.backward_layer.use_cudnn is False


def test_tiny_bench_times_both_sides_and_the_floor_and_reads_their_loop_bodies(tmp_path):
    from fastcarry.tools import tiny_bench as _tiny_bench

    rows = _tiny_bench.run(cells=("lstm",), shapes=_tiny_bench.QUICK_SHAPES, rounds=2, out_dir=str(tmp_path))
    (row,) = rows
    assert set(row["ms"]) == {"fastcarry", "keras", "floor"} and min(row["ms"].values()) > 0
    assert row["speedup"] == row["ms"]["keras"] / row["ms"]["fastcarry"]
    # An LSTM step is two matmuls on either side (the input's and the recurrent one), in a loop.
    assert row["body"]["fastcarry"]["dot"] == row["body"]["keras"]["dot"] == 2
    assert row["same_body"] == (row["body"]["fastcarry"] == row["body"]["keras"])
    assert "| lstm | 2×5×3×4 |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "results.png").stat().st_size > 0
    # The loop-body reader counts kernels inside while bodies only, and sees none in a program without a loop.
    assert _tiny_bench.body_kernels("ENTRY %main (p: f32[2]) -> f32[2] {\n  ROOT %d = f32[2] fusion(%p)\n}") == {}


def test_lstm_directions_bench_checks_outputs_times_every_contender_and_writes_every_file(tmp_path):
    from fastcarry.tools import lstm_directions_bench as _directions

    rows = _directions.run(shapes=_directions.QUICK_SHAPES, rounds=1, out_dir=str(tmp_path))
    assert [r["shape"] for r in rows] == [[2, 5, 3, 4]] and rows[0]["max_relative_error"] <= 2e-5
    want = {"default", "unroll1", "unroll2", "unroll4", "halves", "one_dot"}
    assert want <= set(rows[0]["ms"]) <= want | {"torch"} and min(rows[0]["ms"].values()) > 0
    assert "| 2×5×3×4 |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "results.png").stat().st_size > 0
    # A contender off by 0.1% is caught (the run then refuses to time the shape).
    ones = np.ones([2, 5, 4])
    assert _directions.check_equal({"default": lambda: ones, "other": lambda: ones * 1.001}) > 5e-4


def test_profile_overhead_bench_quick_writes_every_contender(tmp_path):
    from fastcarry.tools import profile_bench as _profile_bench

    assert _profile_bench.main(["--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert set(result["median_ms"]) == {"plain", "hooks", "traced"}
    assert all(len(v) == 3 and min(v) > 0 for v in result["samples_ms"].values())
    assert result["summary_steps"] == 5 and result["summary_s"] > 0 and result["matmul_gflops"] > 0
    assert "| traced (fastcarry.profiling.capture) |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "results.png").stat().st_size > 0


# -- fastcarry bench --models: the models issue's suites ----------------------------------------------------------

def test_models_suites_time_both_contenders_and_write_every_file(tmp_path, monkeypatch, capsys):
    from fastcarry.tools import models_bench as _models

    monkeypatch.setattr(_models, "QUICK_SHAPES", ((2, 5, 3, 4),))
    monkeypatch.setattr(_models, "GENERIC_CELLS", ("minimal_rnn_cell",))  # one cell: the suite's rows, not its cells
    argv = ["--models", "stack,generic,bidirectional", "--quick", "--repeats", "1", "--out", str(tmp_path)]
    assert _bench.run(_bench_args(argv)) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    got = [(e["suite"], e["label"], e["mode"]) for e in data["results"]]
    assert got == [("stack", "2-layer LSTM 2x5x3x4", "train"),
                   ("generic", "minimal_rnn_cell 2x5x3x4", "infer"), ("generic", "minimal_rnn_cell 2x5x3x4", "train"),
                   ("bidirectional", "bi-LSTM 2x5x3x4", "train")]
    for e in data["results"]:
        assert e["timings"]["fastcarry"]["median_s"] > 0 and e["timings"]["keras"]["median_s"] > 0
        # the generic suite's target is Keras's own loop under XLA: no graph variant there
        assert e["timings"]["keras"]["variant"] == "jit" or e["suite"] != "generic"
        assert e["timings"]["fastcarry"]["variant"] in ("jit", "graph")
    table = (tmp_path / "results.md").read_text()
    for words in ("| stack | median >= 1.8x |", "| generic | min >= 1.0x |", "| bidirectional | median >= 1.5x |"):
        assert words in table
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| suite | workload | mode |" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--models", "stack,bogus"], "argument --models: expected a comma-separated list of stack, generic, "
                                  "bidirectional, got 'stack,bogus'"),
])
def test_models_option_rejects_bad_suites(argv, message, capsys):
    with pytest.raises(SystemExit):
        _bench_args(argv)
    assert message in capsys.readouterr().err


def test_models_option_refuses_a_custom_shape():
    with pytest.raises(SystemExit, match="--models runs its own grid"):
        _bench.run(_bench_args(["--models", "--units", "8"]))


# -- the PyTorch contender (when PyTorch is installed) -----------------------------------------------------------

@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_torch_contender_holds_the_same_weights(kind):
    """PyTorch's module computes what fastcarry computes: the weight copy and gate reorder are right."""
    torch = pytest.importorskip("torch")
    import numpy as np
    import tensorflow as tf

    import fastcarry as fc
    from fastcarry.tools.workload import make_cell

    cell = make_cell(kind, 6, input_size=4, seed=3, **({"forget_bias": 1.0} if kind == "lstm" else {}))
    rng = np.random.default_rng(0)
    cell.bias.assign(rng.standard_normal(cell.bias.shape).astype(np.float32) * 0.5)  # every bias matters
    x = rng.standard_normal((3, 7, 4)).astype(np.float32)
    want, _ = fc.unroll(cell, tf.constant(x))
    with torch.no_grad():
        got = _grid.torch_module(cell)(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=2e-6)
    assert _grid.torch_skipped(_grid.Workload("gru-reset-before", 2, 5, 3, 4)) is not None


def test_results_name_the_cpu_model():
    from fastcarry.tools import report as _report

    machine = _report.machine_info()
    assert machine["cpu"] and _report.describe(machine).startswith(machine["cpu"])
    older = {k: v for k, v in machine.items() if k != "cpu"}  # results written before "cpu" was recorded
    assert _report.describe(older).startswith(machine["processor"])



def test_tune_bench_writes_gain_table_and_plot(tmp_path):
    from fastcarry.tools import tune_bench

    data = tune_bench.run([("rnn", 2, 3, 3, 4)], modes=("infer",), budget_s=0.5, memory_case=None,
                          out_dir=str(tmp_path), stream=io.StringIO())
    (entry,) = data["results"]
    assert entry["gain"] >= 1.0 and entry["recheck"] > 0 and set(entry["candidates"]) >= {"unroll=1", "unroll=2"}
    assert len(entry["candidates"]) in (2, 3)  # and the first winner hoisted, if budget was left
    table = (tmp_path / "results.md").read_text()
    assert "| rnn 2x3x3x4 | infer |" in table and "Median gain" in table
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ab_benchmark_exports_a_revision_under_another_name(tmp_path):
    """``benchmarks/ab.py``'s base package: the revision's files, every import renamed (none reaches the work tree)."""
    import importlib.util
    import subprocess
    import sys

    spec = importlib.util.spec_from_file_location("ab", pathlib.Path(__file__).parents[1] / "benchmarks" / "ab.py")
    ab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ab)
    package = ab.export_base("HEAD", tmp_path)
    assert (package / "kernels" / "lstm.py").exists() and (package / "profiling" / "_capture.py").exists()
    sources = "\n".join(p.read_text() for p in package.rglob("*.py"))
    assert "from fastcarry." not in sources and "import fastcarry\n" not in sources
    assert 'f"fastcarry_{core.name}"' in sources  # the name scopes stay: profiles of both read alike
    code = "import fastcarry_base.tune_cache as c, fastcarry_base.kernels.lstm as k; print(c.__file__, k.__file__)"
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count(str(package)) == 2
