"""Keras 3's own RNN layer tests pass with ``fastcarry.keras`` swapped in (issue 23, item 6).

The tests are read from the installed keras package (``keras/src/layers/rnn``):
``lstm_test.py``, ``gru_test.py``, ``simple_rnn_test.py``, ``bidirectional_test.py``.
They run in a child pytest with ``keras_swap_plugin`` loaded. Every test that
fails there must also fail with Keras's own layers (run only then, to say so).
"""

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import keras

SUITE = Path(keras.__file__).parent / "src" / "layers" / "rnn"
FILES = ["lstm_test.py", "gru_test.py", "simple_rnn_test.py", "bidirectional_test.py"]
HERE = Path(__file__).parent


def _run(tmp_path, swap, tag):
    """Runs the four files in a child pytest; returns ``(passed, failed)`` test ids."""
    report = tmp_path / f"{tag}.xml"
    plugin = ["-p", "keras_swap_plugin"] if swap else []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
               FASTCARRY_SWAP_COUNT=str(tmp_path / "count"))
    # -c: an empty config, so this repository's addopts (xdist) do not apply to the child.
    (tmp_path / "empty.ini").write_text("[pytest]\n")
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-c", str(tmp_path / "empty.ini"), "-p", "no:cacheprovider",
                    f"--junitxml={report}", "-o", "junit_family=xunit1", "--rootdir", str(tmp_path), *plugin, *[str(SUITE / f) for f in FILES]],
                   cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    passed, failed = set(), set()
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{Path(case.get('file') or '?').name}::{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            failed.add(name)
        elif case.find("skipped") is None:
            passed.add(name)
    return passed, failed


def test_keras_own_rnn_tests_pass_with_fastcarry_keras_swapped_in(tmp_path):
    passed, failed = _run(tmp_path, swap=True, tag="swapped")
    made = int((tmp_path / "count").read_text())
    assert made > 50, f"the swap made only {made} fastcarry layers"  # it took effect
    assert len(passed) >= 30, sorted(passed)  # 32 with keras 3.15 (on main: 22)
    if failed:
        _, native_failed = _run(tmp_path, swap=False, tag="native")
        assert failed <= native_failed, f"fail only with fastcarry.keras: {sorted(failed - native_failed)}"
