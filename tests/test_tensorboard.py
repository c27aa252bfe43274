"""The captured runs open in the real TensorBoard: a ``tensorboard`` server on 127.0.0.1 lists them.

The server is TensorBoard itself (``python -m tensorboard.main``) with the profile
plugin our dependencies install (xprof, from ``tensorboard-plugin-profile``). It
runs on a free loopback port, is waited for at most ``READY_S`` seconds, and is
always stopped.
"""

import gzip
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
import tensorflow as tf

import fastcarry as fc
import fastcarry.profiling as fcp

READY_S = 90


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port, path, timeout=10):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
        body = response.read()
        if response.headers.get("Content-Encoding") == "gzip":  # the profile plugin gzips its answers
            body = gzip.decompress(body)
        return json.loads(body.decode())


@pytest.fixture
def server(tmp_path):
    """Two captured runs under one logdir, and a TensorBoard serving it: ``(port, logdir)``."""
    cell = fc.SimpleRNN(8, input_size=3, seed=0)
    step = tf.function(lambda x: fc.unroll(cell, x)[0], jit_compile=True)
    x = tf.ones([2, 5, 3])
    for run in ("fastcarry", "again"):
        fcp.trace(step, x, logdir=str(tmp_path / run), steps=2, warmup=1)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(tmp_path),
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + READY_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"tensorboard exited with {proc.returncode}:\n{proc.stdout.read()}")
            try:
                _get(port, "/data/plugins_listing", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(f"tensorboard did not answer on 127.0.0.1:{port} within {READY_S} s")
                time.sleep(0.5)
        yield port, tmp_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_tensorboard_lists_the_runs_and_their_profile_tools(server):
    port, _ = server
    assert "profile" in _get(port, "/data/plugins_listing")
    runs = _get(port, "/data/plugin/profile/runs")
    for name in ("fastcarry", "again"):
        assert any(run.startswith(f"{name}/") for run in runs), runs
    run = next(r for r in runs if r.startswith("fastcarry/"))
    tools = _get(port, "/data/plugin/profile/run_tools?" + urllib.parse.urlencode({"run": run}))
    assert "overview_page" in tools and any(t.startswith("trace_viewer") for t in tools), tools
