"""``dynamic_rnn``'s knobs: ``parallel_iterations`` reaches the graph loops (and says when it cannot);
``swap_memory`` parks the saved activations on the host and brings them back chunk by chunk;
``projection="hoisted"`` is one matmul before the loop (its exactness: test_unroll, test_chunk)."""

import contextlib
import re
import warnings

import numpy as np
import pytest
import tensorflow as tf

import fastcarry as fc
import harness
from conftest import MASK, assert_all_close, make_cell, random_inputs, random_state
from fastcarry import _strategies, _warn
from fastcarry._config import Layout, Schedule
from fastcarry._records import Inputs
from fastcarry._validity import Validity

B, T, D, H = 3, 7, 4, 5


def _while_loop_parallel_iterations(concrete):
    """The ``parallel_iterations`` of every while loop in a traced function and the functions it calls."""
    found = []
    graphs = [concrete.graph] + [f.graph for f in concrete.graph._functions.values() if hasattr(f, "graph")]
    for graph in graphs:
        for op in graph.get_operations():
            if op.type in ("While", "StatelessWhile"):
                found.append(op.get_attr("parallel_iterations"))
    return found


@pytest.mark.parametrize("chunk", [None, 3])
def test_parallel_iterations_reaches_every_graph_loop_forward_and_backward(chunk):
    cell = make_cell("gru", H, input_dim=D)
    x = tf.constant(random_inputs(B, T, D), tf.float32)

    @tf.function(autograph=False)
    def train(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            ys, _ = fc.unroll(cell, x, jit_compile=False, parallel_iterations=3, chunk=chunk)
        return tape.gradient(ys, [x, *cell.trainable_variables])

    loops = _while_loop_parallel_iterations(train.get_concrete_function(x))
    # forward + backward, and with chunks the chunk loops around them
    assert len(loops) >= (2 if chunk is None else 4) and set(loops) == {3}, loops


def test_parallel_iterations_changes_no_number():
    cell = make_cell("lstm", H, input_dim=D)
    x = random_inputs(B, T, D)
    cot = harness.random_cotangents(cell, B, T)
    want = harness.evaluate(fc.unroll, cell, x, None, cot, jit_compile=False)
    got = harness.evaluate(fc.unroll, cell, x, None, cot, jit_compile=False, parallel_iterations=1)
    assert_all_close(got, want, tf.float32, "parallel_iterations=1")


def test_parallel_iterations_with_jit_warns_once_at_the_callers_line(monkeypatch):
    monkeypatch.setattr(_warn, "_WARNED", set())
    cell = make_cell("rnn", H, input_dim=D)
    x = tf.constant(random_inputs(B, T, D), tf.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ys, _ = fc.unroll(cell, x, parallel_iterations=4)
        fc.unroll(cell, x, parallel_iterations=4)
    assert len(caught) == 1, [str(w.message) for w in caught]
    assert "parallel_iterations has no effect with jit_compile=True" in str(caught[0].message)
    assert caught[0].filename == __file__
    np.testing.assert_array_equal(ys.numpy(), fc.unroll(cell, x)[0].numpy())


@pytest.mark.parametrize("value, error, message", [
    (0, ValueError, "parallel_iterations must be None or an int >= 1, got 0"),
    (2.0, TypeError, "parallel_iterations must be None or an int >= 1, got 2.0"),
])
def test_bad_parallel_iterations_fails_clearly(value, error, message):
    with pytest.raises(error, match=message):
        fc.unroll(make_cell("lstm", H, input_dim=D), tf.zeros([B, T, D]), parallel_iterations=value)


# -- swap_memory ------------------------------------------------------------------

SWAP_CASES = ([(kind, dict(chunk=3, sequence_length=[7, 2, 5], reverse=True, time_major=True))
               for kind in ("lstm", "gru", "gru-reset-before", "rnn")]
              + [("lstm", dict()), ("gru", dict(chunk=2, jit_compile=False, unroll=3, mask=MASK))])


@pytest.mark.parametrize("kind, options", SWAP_CASES, ids=[f"{k}-{sorted(o)}" for k, o in SWAP_CASES])
def test_swap_memory_changes_no_number(kind, options):
    cell = make_cell(kind, H, input_dim=D)
    time_major = options.get("time_major", False)
    x = random_inputs(B, T, D, time_major)
    s0 = random_state(cell, B)
    cot = harness.random_cotangents(cell, B, T, time_major)
    plain = {k: v for k, v in options.items() if k != "chunk"}
    want = harness.evaluate(fc.unroll, cell, x, s0, cot, **plain)
    got = harness.evaluate(fc.unroll, cell, x, s0, cot, swap_memory=True, **options)
    assert_all_close(got, want, tf.float32, f"{kind} swap_memory {options}")


def test_swap_memory_parks_on_host_and_brings_back_chunk_by_chunk(monkeypatch):
    parked, fetched = [], []
    to_host, plain_backward = _strategies.to_host, _strategies.plain_backward

    def recording_to_host(residuals):
        out = to_host(residuals)
        parked.extend(t.device for t in tf.nest.flatten(out))
        return out

    def recording_backward(core, layout, schedule):
        fn = plain_backward(core, layout, schedule)

        def call(inputs, params, residuals, cotangents):
            fetched.append((int(inputs.x.shape[0]), {s.device for s in tf.nest.flatten(residuals)}))
            return fn(inputs, params, residuals, cotangents)
        return call

    monkeypatch.setattr(_strategies, "SWAPPED", _strategies.SWAPPED._replace(park=recording_to_host))
    monkeypatch.setattr(_strategies, "plain_backward", recording_backward)
    cell = make_cell("lstm", H, input_dim=D)
    x = tf.constant(random_inputs(B, T, D), tf.float32)
    with tf.GradientTape() as tape:
        ys, _ = fc.unroll(cell, x, swap_memory=True, chunk=3)
    tape.gradient(ys, cell.trainable_variables)
    # states h, c and the gate pre-activations, all on the host
    assert len(parked) == 3 and all(d.endswith("CPU:0") for d in parked), parked
    # the tail (1 step) first, then two chunks of 3, each slice taken from host memory
    assert [n for n, _ in fetched] == [1, 3, 3]
    assert all(devices and all(d.endswith("CPU:0") for d in devices) for _, devices in fetched), fetched


def _after(op):
    """Every op that must run before ``op``: its ancestors through data and control edges."""
    seen, todo = set(), [op]
    while todo:
        current = todo.pop()
        for parent in [t.op for t in current.inputs] + list(current.control_inputs):
            if parent not in seen:
                seen.add(parent)
                todo.append(parent)
    return seen


@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "must-fail-without-the-edges"])
def test_swap_memory_fetches_wait_for_the_backward_before_them_in_a_graph(ordered, monkeypatch):
    """In a graph ``tf.function`` nothing but control edges orders the fetches: each fetch of a chunk's
    residuals waits for the compiled backward of the fetch before it (the later chunk: the backward runs time
    in reverse), so at most one chunk is brought to the device at a time."""
    if not ordered:  # the twin: without the edges the check below fails
        monkeypatch.setattr(tf, "control_dependencies", lambda deps: contextlib.nullcontext())
    cell = make_cell("lstm", H, input_dim=D)
    x = tf.constant(random_inputs(B, T, D), tf.float32)

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            ys, _ = fc.unroll(cell, x, swap_memory=True, chunk=3, jit_compile=False)
        return tape.gradient(ys, cell.trainable_variables)

    graph = step.get_concrete_function(x).graph
    calls = [op for op in graph.get_operations()  # the compiled backward of each fetch, in the order made
             if op.type in ("PartitionedCall", "StatefulPartitionedCall") and "_fused_" in op.get_attr("f").name]
    fetches = {}  # name scope (fetch, fetch_1, ...) -> its slices of the parked residuals
    for op in graph.get_operations():
        if "fastcarry_swap/fetch" in op.name and op.type == "StridedSlice":
            fetches.setdefault(op.name.split("/")[1], []).append(op)
    # T=7, chunk 3: fetches of 1, 3 and 3 steps, each followed by its backward
    assert len(calls) == 3 and len(fetches) == 3
    waits = [{c for c in calls if any(c in _after(op) for op in ops)} for ops in fetches.values()]
    assert waits == ([set(), {calls[0]}, {calls[0], calls[1]}] if ordered else [set(), set(), set()])


def test_swap_memory_inside_a_jit_training_step_runs_and_is_exact():
    cell = make_cell("gru", H, input_dim=D)
    x = tf.constant(random_inputs(B, T, D), tf.float32)

    def grads(**options):
        @tf.function(jit_compile=True)
        def step(x):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(fc.unroll(cell, x, **options)[0] ** 2)
            return tape.gradient(loss, cell.trainable_variables)
        return {str(i): g.numpy() for i, g in enumerate(step(x))}

    assert_all_close(grads(swap_memory=True, chunk=3), grads(), tf.float32, "jit step")


@pytest.mark.parametrize("options, error, message", [
    (dict(swap_memory=1), TypeError, "swap_memory must be a bool, got 1"),
    (dict(swap_memory=True, backward="autodiff"), ValueError,
     "swap_memory=True needs backward='fused' (backward='autodiff' saves no activations"),
])
def test_bad_swap_memory_fails_clearly(options, error, message):
    with pytest.raises(error) as exc:
        fc.unroll(make_cell("lstm", H, input_dim=D), tf.zeros([B, T, D]), **options)
    assert message in str(exc.value)


# -- projection -------------------------------------------------------------------

def _dot_shapes(projection, unroll):
    """The result shapes of every dot in the compiled LSTM inference at B=3, T=7, D=4, H=5 (G = 4H = 20)."""
    cell = make_cell("lstm", H, input_dim=D)
    schedule = Schedule(unroll, projection=projection, xla=True)
    fn = _strategies.infer(cell.core(), Layout(time_major=False, reverse=False), schedule)
    x = tf.constant(random_inputs(B, T, D), tf.float32)
    inputs = Inputs(x, cell.zero_state(B), Validity())
    hlo = fn.experimental_get_compiler_ir(inputs, cell.params())(stage="optimized_hlo")
    return set(re.findall(r"(f32\[[0-9,]+\])\{[0-9,]*\} dot\(", hlo))


def test_projection_hoisted_is_one_matmul_over_all_steps():
    # per iteration: [unroll * B, D] @ [D, 4H] in the loop (and [B, ..] for the remainder step);
    # hoisted: one [T * B, D] @ [D, 4H] before it. [B, 4H] is the recurrent matmul.
    assert _dot_shapes("per_iteration", 2) == {"f32[6,20]", "f32[3,20]"}
    assert _dot_shapes("hoisted", 2) == {"f32[21,20]", "f32[3,20]"}


@pytest.mark.parametrize("value, message", [
    ("before", "projection must be one of ('per_iteration', 'hoisted'), got 'before'"),
    (True, "projection must be one of ('per_iteration', 'hoisted'), got True"),
])
def test_bad_projection_fails_clearly(value, message):
    with pytest.raises(ValueError) as exc:
        fc.unroll(make_cell("lstm", H, input_dim=D), tf.zeros([B, T, D]), projection=value)
    assert message in str(exc.value)
    with pytest.raises(ValueError) as exc:
        fc.reference.unroll(make_cell("lstm", H, input_dim=D), tf.zeros([B, T, D]), projection=value)
    assert message in str(exc.value)
