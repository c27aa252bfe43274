"""Packaging: a regular (non-editable) install, and the ``fastcarry`` command line.

The install is ``pip install --no-deps --no-build-isolation --no-index --target``
from a clean copy of the repository (so the test neither writes ``build/`` into
the repo nor picks up a stale one), then imported in a subprocess that sees only
the target directory (``PYTHONPATH``) from an unrelated working directory.
"""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import SUITE_XLA_FLAGS, user_env

REPO = Path(__file__).resolve().parents[1]

# Never part of a source tree to build from: VCS data, caches, earlier build output.
_IGNORE = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                 ".hypothesis", ".benchmarks", "*.pyc")


def _env(**extra):
    """The user's environment (``conftest.user_env``: XLA's default codegen) without ``PYTHONPATH``."""
    env = {k: v for k, v in user_env().items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env.update(extra)
    return env


def _run(args, cwd, env=None, timeout=300):
    return subprocess.run(args, cwd=cwd, env=env or _env(), capture_output=True, text=True, timeout=timeout)


def test_regular_install_has_only_the_fastcarry_package(tmp_path):
    source, target, elsewhere = tmp_path / "src", tmp_path / "target", tmp_path / "elsewhere"
    shutil.copytree(REPO, source, ignore=_IGNORE)
    elsewhere.mkdir()
    pip = _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                "--no-cache-dir", "--disable-pip-version-check", "--target", str(target), str(source)],
               cwd=elsewhere)
    assert pip.returncode == 0, f"pip install failed:\n{pip.stdout}\n{pip.stderr}"

    installed = sorted(p.name for p in target.iterdir())
    for generic in ("kernels", "profiling"):
        assert not (target / generic).exists(), f"top-level {generic!r} installed: {installed}"
    packages = sorted(p.name for p in target.iterdir()
                      if (p.is_dir() and (p / "__init__.py").exists()) or p.suffix in (".py", ".pth"))
    assert packages == ["fastcarry"], f"unexpected top-level modules/packages: {installed}"
    dist_info = [p for p in target.iterdir() if p.name.endswith(".dist-info")]
    assert len(dist_info) == 1, installed
    assert "fastcarry = fastcarry.tools.cli:main" in (dist_info[0] / "entry_points.txt").read_text()

    probe = textwrap.dedent("""
        import json
        import fastcarry.kernels, fastcarry.profiling
        import fastcarry as fc
        print(json.dumps({
            "fastcarry": fc.__file__,
            "kernels": fastcarry.kernels.__file__,
            "profiling": fastcarry.profiling.__file__,
            "has_lstm_kernels": hasattr(fastcarry.kernels, "lstm"),
        }))
    """)
    run = _run([sys.executable, "-c", probe], cwd=elsewhere, env=_env(PYTHONPATH=str(target)))
    assert run.returncode == 0, f"import failed:\n{run.stdout}\n{run.stderr}"
    found = json.loads(run.stdout.strip().splitlines()[-1])
    root = target.resolve()
    for name in ("fastcarry", "kernels", "profiling"):
        assert Path(found[name]).resolve().is_relative_to(root), f"{name} imported from {found[name]}, not {root}"
    assert found["has_lstm_kernels"], found


def test_check_command_passes_and_keeps_stderr_clean(tmp_path):
    """As a user runs it: XLA's default codegen, no TF_CPP_MIN_LOG_LEVEL set, and nothing but our output (TF's
    start-up lines neither)."""
    env = {k: v for k, v in _env().items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    assert not set(env.get("XLA_FLAGS", "").split()) & set(SUITE_XLA_FLAGS), env["XLA_FLAGS"]
    run = _run([sys.executable, "-m", "fastcarry", "check", "--cell", "gru", "--batch", "2", "--time", "3",
                "--input", "2", "--units", "3"], cwd=tmp_path, env=env)
    assert run.returncode == 0, f"exit {run.returncode}:\n{run.stdout}\n{run.stderr}"
    assert run.stderr == "", run.stderr
    lines = run.stdout.strip().splitlines()
    assert lines and lines[-1] == "PASS", run.stdout
    assert "FAIL" not in run.stdout
    assert "keras 3" in run.stdout and "reference(float64)" in run.stdout  # every comparison ran


def test_check_command_rejects_out_of_range_seq_lengths(tmp_path):
    run = _run([sys.executable, "-m", "fastcarry", "check", "--seq-lengths", "9", "--batch", "1", "--time", "3"],
               cwd=tmp_path)
    assert run.returncode != 0
    assert "Traceback" not in run.stderr, run.stderr
    message = run.stderr + run.stdout
    assert "--seq-lengths" in message and "9" in message and "T=3" in message, message
    assert "PASS" not in run.stdout


def test_help_and_import_do_not_start_tensorflow(tmp_path):
    """``fastcarry --help`` answers before TensorFlow loads (it took ~3 s when TF came first)."""
    probe = textwrap.dedent("""
        import contextlib, io, sys
        import fastcarry
        after_import = "tensorflow" in sys.modules
        from fastcarry.tools import cli as _cli
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            for argv in (["--help"], ["check", "--help"], ["bench", "--help"], ["profile", "--help"]):
                try:
                    _cli.main(argv)
                except SystemExit as stop:
                    assert stop.code == 0, (argv, stop.code)
        print(after_import, "tensorflow" in sys.modules, "usage: fastcarry" in out.getvalue())
    """)
    run = _run([sys.executable, "-c", probe], cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False", "False", "True"], run.stdout
