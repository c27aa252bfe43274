"""fastcarry.unroll (XLA and graph) against the float64 reference, over the option grid.

Every case compares outputs, final state and the gradients w.r.t. inputs, initial
state and every weight under a random cotangent. The float32 fused path is held
against a float64 copy of the cell run by the reference, so the reported error
is the fused path's own.
"""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

import fastcarry as fc
import harness
from conftest import CELL_KINDS, MASK, assert_all_close, make_cell, random_inputs, random_state
from fastcarry import Core

B, T, D, H = 3, 7, 4, 5

# One option at a time from a base case, then combinations that interact
# (reverse x lengths, unroll remainder x masking x layout).
OPTIONS = {
    "plain": dict(),
    "initial_state": dict(initial=True),
    "lengths": dict(sequence_length=[7, 3, 0]),
    "reverse": dict(reverse=True),
    "reverse+lengths": dict(reverse=True, sequence_length=[2, 7, 5], initial=True),
    "time_major": dict(time_major=True, initial=True),
    "unroll1": dict(unroll=1, sequence_length=[7, 3, 0]),
    "unroll3": dict(unroll=3),
    "unroll7": dict(unroll=7, initial=True),
    "all": dict(unroll=3, sequence_length=[6, 1, 7], reverse=True, time_major=True, initial=True),
    "batch1": dict(batch=1, sequence_length=[4], initial=True),
    "time1": dict(time=1, initial=True, unroll=2),
    # Keras masks: holes, left padding, an all-masked row; with reverse and an unroll remainder.
    "mask": dict(mask=MASK, initial=True),
    "mask+reverse": dict(mask=MASK.T, reverse=True, time_major=True, unroll=3, initial=True),
    # The projection before the loop: batch-major read in place (jit) with a remainder step; then
    # time-major, reversed, masked.
    "hoisted": dict(projection="hoisted", unroll=3, sequence_length=[6, 1, 7], initial=True),
    "hoisted+all": dict(projection="hoisted", unroll=2, mask=MASK.T, reverse=True, time_major=True, initial=True),
}


def _case(kind, options, dtype=tf.float32, seed=0):
    options = dict(options)
    batch, time = options.pop("batch", B), options.pop("time", T)
    initial = options.pop("initial", False)
    cell = make_cell(kind, H, dtype=dtype, seed=seed, input_dim=D)
    x = random_inputs(batch, time, D, options.get("time_major", False), seed=seed + 2)
    s0 = random_state(cell, batch, seed=seed + 3) if initial else None
    cot = harness.random_cotangents(cell, batch, time, options.get("time_major", False), seed=seed + 4)
    return cell, x, s0, cot, options


MODES = {
    "jit": dict(jit_compile=True),
    "graph": dict(jit_compile=False),
    "graph-autodiff": dict(jit_compile=False, backward="autodiff"),
}


# graph-autodiff is TF's own gradient of the graph loop, whose structure the
# options below vary; the options that only change the data (an initial state,
# lengths alone, a layout) are covered by "all" there and by every option in the
# fused modes, and skipping them keeps CI inside its time budget. The graph mode
# runs the jit mode's loop code under TF's executor: the options that change
# only the data are covered there by "all", "reverse+lengths" and "mask+reverse".
AUTODIFF_MODE_OPTIONS = ("plain", "reverse+lengths", "unroll3", "all", "batch1", "time1", "hoisted+all")
# ("hoisted" reads batch-major inputs in place, which only XLA does: the graph mode has "hoisted+all".)
DATA_ONLY_OPTIONS = ("initial_state", "lengths", "time_major", "unroll7", "mask", "hoisted")
# The two graph modes differ from the jit mode in the loop, not in the cell math, which every kind runs in
# the jit mode under every option: there, two kinds stand for the four (the LSTM's two-part state; the
# reset-before GRU's second recurrent matmul, in the loop and in the backward), which keeps CI in its time.
GRAPH_MODE_KINDS = ("lstm", "gru-reset-before")
FUSED_CASES = [(kind, name, mode) for kind in CELL_KINDS for name in OPTIONS for mode in MODES
               if (mode != "graph-autodiff" or name in AUTODIFF_MODE_OPTIONS)
               and (mode != "graph" or name not in DATA_ONLY_OPTIONS)
               and (mode == "jit" or kind in GRAPH_MODE_KINDS)]


@pytest.mark.parametrize("kind, name, mode", FUSED_CASES)
def test_fused_equals_reference(kind, name, mode):
    cell, x, s0, cot, options = _case(kind, OPTIONS[name])
    want = harness.evaluate(fc.reference.unroll, cell.copy(dtype=tf.float64), x, s0, cot, **options)
    got = harness.evaluate(fc.unroll, cell, x, s0, cot, **MODES[mode], **options)
    assert_all_close(got, want, tf.float32, f"{kind} {name} {mode}")


# The hand-written backward against TF's autodiff of the same XLA forward, in
# float64 so that any difference beyond rounding is a wrong gradient. "plain"
# takes the batch-major route (a remainder step after the loop), "all" the
# time-major one with everything at once (unroll 3 with a remainder, lengths,
# reverse, an initial state); reverse+lengths and unroll3 alone added nothing
# to those two but 35 s of CI.
AUTODIFF_OPTIONS = ["plain", "all", "time1"]


@pytest.mark.parametrize("name", AUTODIFF_OPTIONS)
@pytest.mark.parametrize("kind", CELL_KINDS)
def test_fused_backward_equals_autodiff(kind, name):
    cell, x, s0, cot, options = _case(kind, OPTIONS[name], dtype=tf.float64)
    want = harness.evaluate(fc.unroll, cell, x, s0, cot, backward="autodiff", **options)
    got = harness.evaluate(fc.unroll, cell, x, s0, cot, backward="fused", **options)
    assert_all_close(got, want, tf.float64, f"{kind} {name}")


def test_autodiff_comparison_can_fail():
    """A wrong recurrent weight on one side must fail the fused-vs-autodiff comparison."""
    cell, x, s0, cot, options = _case("gru", OPTIONS["reverse+lengths"], dtype=tf.float64)
    want = harness.evaluate(fc.unroll, cell, x, s0, cot, backward="autodiff", **options)
    cell.recurrent_kernel.assign_add(tf.fill(cell.recurrent_kernel.shape, tf.constant(1e-6, tf.float64)))
    got = harness.evaluate(fc.unroll, cell, x, s0, cot, backward="fused", **options)
    with pytest.raises(AssertionError):
        assert_all_close(got, want, tf.float64)


@pytest.mark.parametrize("dtype", [tf.float64, tf.float16, tf.bfloat16], ids=lambda d: d.name)
@pytest.mark.parametrize("kind", ["lstm", "gru-reset-before"])
def test_other_dtypes(kind, dtype):
    cell, x, s0, cot, options = _case(kind, OPTIONS["reverse+lengths"], dtype=dtype)
    want = harness.evaluate(fc.reference.unroll, cell.copy(dtype=tf.float64), x, s0, cot, **options)
    got = harness.evaluate(fc.unroll, cell, x, s0, cot, **options)
    assert_all_close(got, want, dtype, f"{kind} {dtype.name}")


def test_comparison_can_fail():
    """The harness sees a wrong answer: a perturbed recurrent weight must fail."""
    cell, x, s0, cot, options = _case("lstm", OPTIONS["lengths"])
    want = harness.evaluate(fc.reference.unroll, cell.copy(dtype=tf.float64), x, s0, cot, **options)
    cell.recurrent_kernel.assign_add(tf.fill(cell.recurrent_kernel.shape, 1e-3))
    got = harness.evaluate(fc.unroll, cell, x, s0, cot, **options)
    with pytest.raises(AssertionError, match="d_recurrent_kernel"):
        assert_all_close(got, want)


# -- the loop machinery alone, on a step whose answer is known exactly ---------

class Toy(fc.Cell):
    """``step = lambda x, s: (x + s, s + 1)``: output ``x_t + s0 + k`` at the k-th step a row runs."""

    def build(self, input_dim):
        self.input_dim = input_dim

    def core(self):
        return Core("toy", (), lambda params, x: x, self.units, step=lambda params, s, x: (s + 1, x + s))

    def params(self):
        return ()


def _toy_expected(x, s0, lengths, reverse):
    """Closed form of the toy run, and its gradient for ``loss = sum(y * ry) + sum(s * rs)``."""
    batch, time, _ = x.shape
    lengths = np.full(batch, time) if lengths is None else np.asarray(lengths)
    t = np.arange(time)[None, :]
    valid = t < lengths[:, None]                                        # [B, T]
    k = (lengths[:, None] - 1 - t) if reverse else np.broadcast_to(t, (batch, time))
    ys = np.where(valid[..., None], x + s0[:, None, :] + k[..., None], 0.0)
    final = s0 + lengths[:, None]
    return ys, final, valid


@pytest.mark.parametrize("impl,jit_compile,unroll", [
    (fc.unroll, True, 1), (fc.unroll, True, 3), (fc.unroll, False, 2), (fc.reference.unroll, True, 1)],
    ids=["jit", "jit-unroll3", "graph-unroll2", "reference"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", [None, [5, 0, 2]])
def test_toy_cell_exact(impl, jit_compile, unroll, reverse, lengths):
    rng = np.random.default_rng(0)
    x = rng.integers(-5, 5, (3, 5, 2)).astype(np.float64)
    s0 = rng.integers(-5, 5, (3, 2)).astype(np.float64)
    ry, rs = rng.standard_normal((3, 5, 2)), rng.standard_normal((3, 2))
    cell = Toy(2, dtype=tf.float64)
    xt, st = tf.constant(x), tf.constant(s0)
    with tf.GradientTape() as tape:
        tape.watch([xt, st])
        ys, final = impl(cell, xt, st, sequence_length=lengths, reverse=reverse, unroll=unroll,
                         jit_compile=jit_compile)
        loss = tf.reduce_sum(ys * ry) + tf.reduce_sum(final * rs)
    dx, ds = tape.gradient(loss, [xt, st])
    want_y, want_s, valid = _toy_expected(x, s0, lengths, reverse)
    np.testing.assert_array_equal(ys.numpy(), want_y)
    np.testing.assert_array_equal(final.numpy(), want_s)
    np.testing.assert_allclose(dx.numpy(), np.where(valid[..., None], ry, 0.0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(ds.numpy(), (ry * valid[..., None]).sum(1) + rs, rtol=0, atol=1e-12)


# -- calling contexts -----------------------------------------------------------

@pytest.mark.parametrize("outer_jit, jit_compile, projection", [
    (True, True, "per_iteration"), (True, False, "per_iteration"), (False, True, "per_iteration"),
    (False, False, "per_iteration"), (False, False, "hoisted")])
def test_inside_user_function_with_unknown_shapes(outer_jit, jit_compile, projection):
    """In a user's tf.function traced with B and T unknown, with unroll not dividing T."""
    cell, x, s0, cot, options = _case("gru", dict(sequence_length=[6, 1, 7], initial=True))
    want = harness.evaluate(fc.reference.unroll, cell.copy(dtype=tf.float64), x, s0, cot, unroll=3, **options)

    spec = tf.TensorSpec([None, None, D], tf.float32)

    @tf.function(jit_compile=outer_jit, input_signature=[spec, tf.TensorSpec([None, H]), tf.TensorSpec([None], tf.int32)])
    def step(x, s0, lengths):
        return _check_run(cell, x, s0, lengths, cot, jit_compile, projection)

    got = step(tf.constant(x, tf.float32), tf.constant(s0, tf.float32), tf.constant(options["sequence_length"]))
    assert_all_close({k: v.numpy() for k, v in got.items()}, {k: want[k] for k in got}, tf.float32)


@pytest.mark.parametrize("outer_jit, jit_compile, projection", [
    (True, True, "hoisted"), (False, False, "per_iteration")], ids=["outer-jit-hoisted", "graph"])
def test_zero_time_steps_known_only_at_run_time(outer_jit, jit_compile, projection):
    """T = 0 in a function traced with T unknown: no step runs; the state passes through, with its gradient."""
    cell = make_cell("gru", H, input_dim=D)
    s0 = tf.constant(random_state(cell, B), tf.float32)

    @tf.function(jit_compile=outer_jit, input_signature=[tf.TensorSpec([None, None, D]), tf.TensorSpec([None, H])])
    def empty_step(x, s0):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(s0)
            runs = [fc.unroll(cell, x, s0, unroll=3, jit_compile=jit_compile, projection=projection, chunk=c)
                    for c in (None, 2)]
        return [(ys, final, tape.gradient(final, s0, output_gradients=3 * s0)) for ys, final in runs]

    for ys, final, ds in empty_step(tf.zeros([B, 0, D]), s0):
        assert ys.shape == (B, 0, H)
        np.testing.assert_array_equal(final.numpy(), s0.numpy())
        np.testing.assert_array_equal(ds.numpy(), 3 * s0.numpy())


def _check_run(cell, x, s0, lengths, cot, jit_compile, projection="per_iteration"):
    with tf.GradientTape() as tape:
        tape.watch([x, s0])
        ys, final = fc.unroll(cell, x, s0, sequence_length=lengths, unroll=3, jit_compile=jit_compile,
                              projection=projection)
        loss = tf.reduce_sum(ys * cot.outputs) + tf.reduce_sum(final * cot.state[0])
    dx, ds, dk, drk, db = tape.gradient(loss, [x, s0, cell.kernel, cell.recurrent_kernel, cell.bias])
    return {"outputs": ys, "state": final, "d_inputs": dx, "d_initial_state": ds,
            "d_kernel": dk, "d_recurrent_kernel": drk, "d_bias": db}


def test_stacked_layers_in_one_compiled_training_step():
    """Two layers = four loops in one XLA cluster (tensorflow#122886 is about repeated loops)."""
    lstm, gru = make_cell("lstm", H, input_dim=D), make_cell("gru", H, input_dim=H, seed=5)
    x = tf.constant(random_inputs(B, T, D), tf.float32)
    variables = lstm.trainable_variables + gru.trainable_variables

    def loss(impl):
        y, _ = impl(lstm, x, sequence_length=[7, 4, 2])
        y, s = impl(gru, y, reverse=True)
        return tf.reduce_sum(tf.square(y)) + tf.reduce_sum(s)

    @tf.function(jit_compile=True)
    def compiled():
        with tf.GradientTape() as tape:
            value = loss(fc.unroll)
        return value, tape.gradient(value, variables)

    with tf.GradientTape() as tape:
        want = loss(fc.reference.unroll)
    want_grads = tape.gradient(want, variables)
    got, grads = compiled()
    names = [f"g{i}" for i in range(len(variables))]
    assert_all_close(dict(zip(["loss"] + names, [got.numpy()] + [g.numpy() for g in grads])),
                     dict(zip(["loss"] + names, [want.numpy()] + [g.numpy() for g in want_grads])))


@pytest.mark.parametrize("mode", [dict(), dict(jit_compile=False), dict(backward="autodiff")],
                         ids=["jit-fused", "graph-fused", "jit-autodiff"])
def test_second_order_gradient_raises_clearly(mode):
    cell, x, _, _, _ = _case("lstm", {})
    x = tf.constant(x, tf.float32)
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            ys, _ = fc.unroll(cell, x, **mode)
            loss = tf.reduce_sum(ys ** 2)
        g = inner.gradient(loss, cell.kernel)
        gg = tf.reduce_sum(g ** 2)
    with pytest.raises(NotImplementedError, match="second-order"):
        outer.gradient(gg, cell.recurrent_kernel)


def test_second_order_gradient_graph_path():
    """jit_compile=False, backward="autodiff" lets TF differentiate the graph loop to any order (by differences)."""
    cell = make_cell("rnn", 2, input_dim=1, dtype=tf.float64)
    x = tf.constant(random_inputs(1, 3, 1), tf.float64)

    def dloss_dk():
        with tf.GradientTape() as tape:
            ys, _ = fc.unroll(cell, x, jit_compile=False, backward="autodiff")
            loss = tf.reduce_sum(ys ** 3)
        return tape.gradient(loss, cell.kernel)

    with tf.GradientTape() as outer:
        gg = tf.reduce_sum(dloss_dk())
    hess = outer.gradient(gg, cell.bias).numpy()
    eps, numeric = 1e-6, []
    for i in range(2):
        cell.bias.assign_add(tf.one_hot(i, 2, dtype=tf.float64) * eps)
        up = tf.reduce_sum(dloss_dk()).numpy()
        cell.bias.assign_add(tf.one_hot(i, 2, dtype=tf.float64) * -2 * eps)
        down = tf.reduce_sum(dloss_dk()).numpy()
        cell.bias.assign_add(tf.one_hot(i, 2, dtype=tf.float64) * eps)
        numeric.append((up - down) / (2 * eps))
    np.testing.assert_allclose(hess, numeric, rtol=1e-5, atol=1e-8)


# -- property-based: small random shapes and options ---------------------------

@st.composite
def _workloads(draw):
    batch, time = draw(st.integers(1, 3)), draw(st.integers(0, 6))
    lengths = draw(st.none() | st.lists(st.integers(0, time), min_size=batch, max_size=batch))
    return dict(kind=draw(st.sampled_from(CELL_KINDS)), batch=batch, time=time,
                dim=draw(st.integers(1, 3)), units=draw(st.integers(1, 4)), lengths=lengths,
                reverse=draw(st.booleans()), time_major=draw(st.booleans()), unroll=draw(st.integers(1, 4)),
                initial=draw(st.booleans()), seed=draw(st.integers(0, 2 ** 16)))


def _property_case(w, jit_compile):
    cell = make_cell(w["kind"], w["units"], input_dim=w["dim"], seed=w["seed"])
    x = random_inputs(w["batch"], w["time"], w["dim"], w["time_major"], seed=w["seed"])
    s0 = random_state(cell, w["batch"], seed=w["seed"]) if w["initial"] else None
    cot = harness.random_cotangents(cell, w["batch"], w["time"], w["time_major"], seed=w["seed"])
    options = dict(sequence_length=w["lengths"], reverse=w["reverse"], time_major=w["time_major"],
                   unroll=w["unroll"])
    want = harness.evaluate(fc.reference.unroll, cell.copy(dtype=tf.float64), x, s0, cot, **options)
    got = harness.evaluate(fc.unroll, cell, x, s0, cot, jit_compile=jit_compile, **options)
    assert_all_close(got, want, tf.float32, str(w))


# Bounded: each new shape costs a trace (and under XLA a compile); CI's budget set the counts.
@settings(max_examples=16, deadline=None, derandomize=True)
@given(_workloads())
def test_property_graph(w):
    _property_case(w, jit_compile=False)


@settings(max_examples=7, deadline=None, derandomize=True)
@given(_workloads())
def test_property_jit(w):
    _property_case(w, jit_compile=True)


@pytest.mark.parametrize("jit_compile", [True, False], ids=["jit", "graph"])
def test_cells_of_the_same_kind_and_other_units_do_not_share_a_trace(jit_compile):
    """Regression: compiled functions are shared by kind, but each width gets its own."""
    x = tf.constant(random_inputs(2, 3, 2), tf.float32)
    for units in (1, 2, 3):
        cell = make_cell("lstm", units, input_dim=2)
        ys, state = fc.unroll(cell, x, jit_compile=jit_compile)
        want, _ = fc.reference.unroll(cell, x)
        assert ys.shape == (2, 3, units) and state.c.shape == (2, units)
        np.testing.assert_allclose(ys.numpy(), want.numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["lstm", "gru-reset-before"])
def test_eager_inference_path_equals_the_training_path(kind):
    """Without a tape, eager jit calls a forward that saves nothing; numbers must not change."""
    cell, x, s0, _, options = _case(kind, OPTIONS["reverse+lengths"])
    x = tf.constant(x, tf.float32)
    s0 = tf.nest.map_structure(lambda v: tf.constant(v, tf.float32), s0)
    infer_y, infer_s = fc.unroll(cell, x, s0, **options)
    with tf.GradientTape() as tape:
        tape.watch(x)
        train_y, train_s = fc.unroll(cell, x, s0, **options)
    assert tape.gradient(train_y, x) is not None
    # Two XLA programs (one also writes the saved states) may fuse differently: rounding only.
    np.testing.assert_allclose(infer_y.numpy(), train_y.numpy(), rtol=1e-6, atol=1e-7)
    for a, b in zip(tf.nest.flatten(infer_s), tf.nest.flatten(train_s)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["lstm", "gru-reset-before", "rnn"])
def test_training_false_saves_nothing_in_a_graph_and_a_gradient_recomputes_exactly(kind):
    """``training=False``: the forward that saves nothing (no TensorList in the graph); gradients equal."""
    cell = make_cell(kind, H, input_dim=D)
    x = tf.constant(random_inputs(B, T, D), tf.float32)
    lengths = tf.constant([T, 2, 0, T - 1][:B])
    cotangent = tf.constant(np.random.default_rng(3).standard_normal((B, T, H)), tf.float32)

    def make(training):
        @tf.function
        def step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                ys, state = fc.unroll(cell, x, sequence_length=lengths, reverse=True, training=training)
                loss = tf.reduce_sum(ys * cotangent) + tf.reduce_sum(tf.nest.flatten(state)[0])
            return ys, tape.gradient(loss, [x, *cell.trainable_variables])
        return step

    inference, saving = make(False), make(None)
    (ys, grads), (want_ys, want_grads) = inference(x), saving(x)
    np.testing.assert_array_equal(ys, want_ys)
    for got, want in zip(grads, want_grads):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    # The inference forward's graph writes no TensorList (what TFLite's builtins cannot take with B unknown).
    forward = tf.function(lambda x: fc.unroll(cell, x, training=False)[0]).get_concrete_function(
        tf.TensorSpec([None, T, D], tf.float32))
    graph = forward.graph.as_graph_def()
    ops = {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
    assert "While" in ops or "StatelessWhile" in ops  # the loop is there
    assert not any(op.startswith("TensorList") for op in ops), sorted(o for o in ops if "List" in o)
