"""The README's and the guide's Python examples run as written, and the README's training loop trains the RNN.

Every fenced ``python`` block of README.md, then of docs/guide.md, is executed,
in order, in one namespace (as a reader pasting them one after another would).
Signatures that are not meant to run are fenced as ``text``.
"""

import linecache
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
GUIDE = README.parent / "docs" / "guide.md"


def _exec(source, name, ns):
    """``exec`` with the source registered under ``name``, so that tracebacks and
    AutoGraph (which reads a function's source to convert it) see the block."""
    filename = f"<README.md: {name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), ns)


def _python_blocks(path=README):
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def _quickstart():
    """The training-loop block, split where the training starts: (model and step, the loop)."""
    block = next(b for b in _python_blocks() if "def train_step" in b)
    at = block.index("\nfirst = ")
    return block[:at], block[at:]


def _train(setup, loop):
    """Runs the quickstart; returns (namespace, weights before training, caught warnings)."""
    ns = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _exec(setup, "quickstart model", ns)
        before = [v.numpy().copy() for v in ns["params"]]
        kernel = ns["cell"].kernel.numpy().copy() if ns["cell"].built else None
        _exec(loop, "quickstart loop", ns)
    return ns, before, kernel, caught


def test_every_python_block_runs_in_order():
    blocks = [(README.name, b) for b in _python_blocks()] + [(f"docs/{GUIDE.name}", b) for b in _python_blocks(GUIDE)]
    assert len(blocks) >= 6, "the README and the guide should show runnable code"
    ns = {}
    for i, (name, block) in enumerate(blocks):
        try:
            _exec(block, f"python block {i}", ns)
        except Exception as err:  # say which block
            pytest.fail(f"{name} python block {i} failed: {type(err).__name__}: {err}\n{block}")


def test_the_quickstart_loop_trains_the_rnn():
    """Parameters collected before the first call (the README's way) all train, and the loss falls."""
    ns, before, kernel, caught = _train(*_quickstart())
    assert not [w for w in caught if "input_size" in str(w.message)], [str(w.message) for w in caught]
    assert ns["loss"] < 0.2 * ns["first"], (ns["first"], ns["loss"])
    changed = [not np.allclose(b, v.numpy()) for b, v in zip(before, ns["params"])]
    assert len(changed) == 5 and all(changed), changed  # kernel, recurrent_kernel, bias, Dense kernel and bias


def test_without_input_size_the_same_loop_warns_and_would_not_train_the_rnn():
    """The trap the README's ``input_size`` avoids, shown to be real and loud (so the test above can fail)."""
    setup, loop = _quickstart()
    assert "fc.LSTM(H, input_size=D)" in setup
    ns, before, kernel, caught = _train(setup.replace("fc.LSTM(H, input_size=D)", "fc.LSTM(H)"), loop)
    assert len(ns["params"]) == 2  # only the Dense layer's
    assert any("input_size=D" in str(w.message) and "never trains it" in str(w.message) for w in caught)
    assert kernel is None and ns["cell"].built  # built by the first call, after the list was made
    held = {id(p) for p in ns["params"]}
    assert not any(id(v) in held for v in ns["cell"].trainable_variables)  # the optimizer never sees them
