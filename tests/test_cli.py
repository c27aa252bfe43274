"""``fastcarry check`` in-process: it passes on the real thing and fails on a wrong one."""

import io

import pytest

import fastcarry as fc
from fastcarry import _cli


def _run(argv):
    out = io.StringIO()
    code = _cli.check(_cli._parser().parse_args(["check", *argv]), out=out)
    return code, out.getvalue()


@pytest.mark.parametrize("argv", [
    ["--cell", "lstm", "--batch", "2", "--time", "5", "--input", "3", "--units", "4"],
    ["--cell", "gru-reset-before", "--batch", "3", "--time", "5", "--input", "3", "--units", "4",
     "--seq-lengths", "5", "0", "2", "--reverse", "--time-major", "--unroll", "2"],
])
def test_check_passes(argv):
    code, text = _run(argv)
    assert code == 0, text
    assert text.rstrip().endswith("PASS")
    # Every tensor of all six comparisons is reported.
    assert text.count("d_recurrent_kernel") == 6 and "vs keras 3" in text and "autodiff jit" in text
    assert "chunk=2 jit" in text and "chunk=2 swap_memory jit" in text


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


def test_check_default_workload_is_float32_with_the_issue_tolerance():
    code, text = _run([])
    assert code == 0, text
    assert "cell=lstm" in text and "float32, tolerance 2e-05" in text
