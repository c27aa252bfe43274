"""``fc.unroll(..., chunk=C)``: exact BPTT in chunks, against ``chunk=None`` and the float64 reference."""

import numpy as np
import pytest
import tensorflow as tf

import fastcarry as fc
import harness
from conftest import CELL_KINDS, MASK, assert_all_close, make_cell, random_inputs, random_state
from fastcarry import _backward, _boundary, _chunked, _functions, _strategies
from fastcarry._config import Layout, Schedule
from fastcarry._records import Cotangents, Inputs
from fastcarry._validity import Validity

B, T, D, H = 3, 7, 4, 5
# The bound for chunked against unchunked gradients, float32, relative to max |unchunked|.
CHUNK_TOLERANCE = 1e-5

OPTIONS = {
    "chunk3": dict(chunk=3),  # T = 7: two chunks and a tail of 1
    "chunk3+all": dict(chunk=3, sequence_length=[7, 2, 5], reverse=True, time_major=True, initial=True),
    "chunk1+lengths": dict(chunk=1, unroll=1, sequence_length=[0, 7, 4], initial=True),
    "chunk2+unroll3": dict(chunk=2, unroll=3, initial=True),
    "chunk7": dict(chunk=7, sequence_length=[3, 7, 6]),  # one chunk, no tail
    "chunk10": dict(chunk=10, initial=True),  # tail only
    "chunk3+autodiff": dict(chunk=3, backward="autodiff", sequence_length=[7, 2, 5], initial=True),
    "chunk3+graph+mask": dict(chunk=3, jit_compile=False, mask=MASK, initial=True),
    "chunk3+mask+reverse": dict(chunk=3, mask=MASK, reverse=True, initial=True),
    "chunk3+hoisted": dict(chunk=3, unroll=2, projection="hoisted", sequence_length=[7, 2, 5], initial=True),
}


def _case(kind, options, seed=0):
    options = dict(options)
    initial = options.pop("initial", False)
    cell = make_cell(kind, H, seed=seed, input_dim=D)
    x = random_inputs(B, T, D, options.get("time_major", False), seed=seed + 2)
    s0 = random_state(cell, B, seed=seed + 3) if initial else None
    cot = harness.random_cotangents(cell, B, T, options.get("time_major", False), seed=seed + 4)
    return cell, x, s0, cot, options


def _assert_within(got, want, bound, context):
    bad = [r for r in harness.compare(got, want) if not r.relative <= bound]
    assert not bad, f"{context}: beyond {bound:g}: " + ", ".join(f"{r.name} {r.relative:.2e}" for r in bad)


# Every cell with the combination; every option for LSTM, and the
# backward variants for the cell with an inner matmul. (Each case compiles two
# nested XLA loops, some seconds each: the full product would cost minutes.)
CASES = ([(kind, "chunk3+all") for kind in CELL_KINDS]
         + [("lstm", name) for name in OPTIONS if name not in ("chunk3", "chunk3+all")]
         + [("gru-reset-before", "chunk3+autodiff")])


@pytest.mark.parametrize("kind, name", CASES)
def test_chunked_equals_unchunked_and_reference(kind, name):
    cell, x, s0, cot, options = _case(kind, OPTIONS[name])
    unchunked = {k: v for k, v in options.items() if k != "chunk"}
    want = harness.evaluate(fc.unroll, cell, x, s0, cot, **unchunked)
    got = harness.evaluate(fc.unroll, cell, x, s0, cot, **options)
    _assert_within(got, want, CHUNK_TOLERANCE, f"{kind} {name} vs chunk=None")
    reference = harness.evaluate(fc.reference.unroll, cell.copy(dtype=tf.float64), x, s0, cot, **options)
    assert_all_close(got, reference, tf.float32, f"{kind} {name} vs reference")


def test_a_chunk_grad_that_drops_the_carried_gradient_is_caught(monkeypatch):
    # The must-fail twin: truncating dL/dstate at chunk boundaries (what a
    # stateful Keras RNN does by accident) must not pass the comparison above.
    fused_chunk_grad = _chunked.fused_chunk_grad

    def truncating(*args):
        grad = fused_chunk_grad(*args)
        return lambda inputs, cot: grad(inputs, cot._replace(state=tf.nest.map_structure(tf.zeros_like, cot.state)))

    cell, x, s0, cot, options = _case("lstm", OPTIONS["chunk3"])
    want = harness.evaluate(fc.unroll, cell, x, s0, cot)
    monkeypatch.setattr(_functions, "_FUNCTIONS", {})
    monkeypatch.setattr(_chunked, "fused_chunk_grad", truncating)
    got = harness.evaluate(fc.unroll, cell, x, s0, cot, **options)
    with pytest.raises(AssertionError, match="d_inputs"):
        _assert_within(got, want, CHUNK_TOLERANCE, "truncating chunk grad")


@pytest.mark.parametrize("kind, chunk", [("lstm", None), ("lstm", 3), ("gru-reset-before", None)])
def test_a_final_state_loss_reads_no_sequence_cotangent(kind, chunk, monkeypatch):
    # Sequence classification: the loss reads the final state only. The tape
    # hands the unused outputs a zeros cotangent; the backward must see None
    # (no [B, T, H] buffer) and the gradients must still be exact.
    cell, x, s0, cot, _ = _case(kind, {"initial": True})
    saw_none = []
    real = _backward.backward

    def spy(*args, **kwargs):
        saw_none.append(args[6].outputs is None)  # dys, at trace time
        return real(*args, **kwargs)

    monkeypatch.setattr(_functions, "_FUNCTIONS", {})  # traced afresh, through the spy
    monkeypatch.setattr(_backward, "backward", spy)
    weights = [cell.kernel, cell.recurrent_kernel, cell.bias]

    @tf.function(jit_compile=True)
    def step(x, s0):
        with tf.GradientTape() as tape:
            tape.watch([x, s0])
            _, final = fc.unroll(cell, x, s0, chunk=chunk)
            loss = sum(tf.reduce_sum(f * w) for f, w in zip(tf.nest.flatten(final), cot.state))
        return tape.gradient(loss, [x, s0] + weights)

    s0_32 = tf.nest.map_structure(lambda s: tf.constant(s, tf.float32), s0)
    grads = [np.asarray(g) for g in tf.nest.flatten(step(tf.constant(x, tf.float32), s0_32))]
    assert saw_none and all(saw_none), f"the backward was traced with a [B, T, H] cotangent: {saw_none}"
    final_only = harness.Cotangents(np.zeros_like(cot.outputs), cot.state)
    want = harness.evaluate(fc.reference.unroll, cell.copy(dtype=tf.float64), x, s0, final_only)
    names = ["d_inputs"] + [k for k in want if k.startswith("d_initial")] + ["d_kernel", "d_recurrent_kernel",
                                                                              "d_bias"]
    assert_all_close(dict(zip(names, grads)), {k: want[k] for k in names}, tf.float32, f"{kind} chunk={chunk}")


def test_only_cotangents_known_zero_when_traced_count_as_zero():
    # The must-fail side of the test above: a cotangent that is not zeros
    # must reach the backward, or output losses would lose their gradient.
    seen = {}

    @tf.function
    def trace(x):
        seen.update({
            "fill zeros": _boundary.statically_zero(tf.zeros([300, 300])),  # a Fill at this size
            "small zeros": _boundary.statically_zero(tf.zeros([2, 3])),  # a Const
            "zeros_like": _boundary.statically_zero(tf.zeros_like(x)),
            "fill ones": _boundary.statically_zero(tf.ones([300, 300])),
            "a const": _boundary.statically_zero(tf.constant([[0.0, 1.0]])),
            "a computed tensor": _boundary.statically_zero(x * 0.0),
        })
        return x

    trace(tf.ones([2, 2]))
    assert seen == {"fill zeros": True, "small zeros": True, "zeros_like": True, "fill ones": False,
                    "a const": False, "a computed tensor": False}
    assert _boundary.statically_zero(None) and not _boundary.statically_zero(tf.zeros([2]))  # eager: never


LAYOUT = Layout(time_major=False, reverse=False)


def _inputs(cell, x):
    return Inputs(x, cell.zero_state(B), Validity())


@pytest.mark.parametrize("chunk, n_chunks", [(3, 3), (7, 1), (1, 7), (10, 1)])
def test_forward_keeps_only_chunk_start_states(chunk, n_chunks):
    # What bounds the memory: the saving forward returns one state per chunk,
    # not one per step (and no gate pre-activations).
    cell = make_cell("lstm", H, input_dim=D)
    core, params = cell.core(), cell.params()
    schedule = Schedule(2, chunk, xla=True)
    x = tf.constant(random_inputs(B, T, D), tf.float32)
    _, _, saved = _strategies.chunked_forward(core, LAYOUT, schedule)(_inputs(cell, x), params)
    assert [s.shape.as_list() for s in tf.nest.flatten(saved)] == [[n_chunks, B, H], [n_chunks, B, H]]
    _, _, unchunked = _strategies.plain_forward(core, LAYOUT, schedule)(_inputs(cell, x), params)
    assert all(s.shape[0] == T for s in tf.nest.flatten(unchunked))


def test_batch_major_loops_make_no_time_major_copy_of_a_sequence():
    # What keeps batch-major memory at the time-major level: the loops read and
    # write [B, T, ..] a chunk (or an unroll) at a time, so no [T, B, H]
    # outputs or [T, B, D] inputs exist in the compiled chunked forward and
    # backward or in inference (T = 7; the unchunked backward's saved states
    # are [T, B, H] by design).
    whole = ("f32[7,3,5]", "f32[7,3,4]")
    x = tf.constant(random_inputs(B, T, D), tf.float32)
    cell = make_cell("lstm", H, input_dim=D)
    core, params, schedule = cell.core(), cell.params(), Schedule(2, 3, xla=True)

    def hlo(side, layout):
        fn = side(core, layout, schedule)
        if side is _strategies.chunked_backward:
            ys, final, saved = _strategies.chunked_forward(core, layout, schedule)(_inputs(cell, x), params)
            args = (_inputs(cell, x), params, saved, Cotangents(tf.ones_like(ys), final))
        else:
            args = (_inputs(cell, x), params)
        return fn.experimental_get_compiler_ir(*args)(stage="optimized_hlo")

    for side in (_strategies.chunked_forward, _strategies.chunked_backward, _strategies.infer):
        assert not [s for s in whole if s in hlo(side, LAYOUT)], side.__name__
    # The probe sees such copies where they are made: reversed, the steps run
    # in another order than they are stored.
    reversed_layout = LAYOUT._replace(reverse=True)
    assert all(s in hlo(_strategies.infer, reversed_layout) for s in whole)
    assert all(s in hlo(_strategies.chunked_backward, reversed_layout) for s in whole)


@pytest.mark.parametrize("outer_jit", [True, False], ids=["outer-jit", "outer-graph"])
def test_chunked_inside_user_function_with_unknown_time(outer_jit):
    cell, x, s0, cot, options = _case("gru", dict(sequence_length=[6, 1, 7], initial=True))
    want = harness.evaluate(fc.unroll, cell, x, s0, cot, **options)

    @tf.function(jit_compile=outer_jit, input_signature=[
        tf.TensorSpec([None, None, D]), tf.TensorSpec([None, H]), tf.TensorSpec([None], tf.int32)])
    def step(x, s0, lengths):
        with tf.GradientTape() as tape:
            tape.watch([x, s0])
            ys, final = fc.unroll(cell, x, s0, sequence_length=lengths, chunk=3)
            loss = tf.reduce_sum(ys * cot.outputs) + tf.reduce_sum(final * cot.state[0])
        dx, ds, *dw = tape.gradient(loss, [x, s0, cell.kernel, cell.recurrent_kernel, cell.bias])
        return {"outputs": ys, "state": final, "d_inputs": dx, "d_initial_state": ds,
                **dict(zip(["d_kernel", "d_recurrent_kernel", "d_bias"], dw))}

    got = step(tf.constant(x, tf.float32), tf.constant(s0, tf.float32), tf.constant(options["sequence_length"]))
    _assert_within({k: v.numpy() for k, v in got.items()}, want, CHUNK_TOLERANCE, "dynamic T")


def test_chunk_changes_nothing_without_a_gradient():
    cell = make_cell("rnn", H, input_dim=D)
    x = tf.constant(random_inputs(B, T, D), tf.float32)
    ys, s = fc.unroll(cell, x, chunk=3)
    ys0, s0 = fc.unroll(cell, x)
    np.testing.assert_array_equal(ys.numpy(), ys0.numpy())
    np.testing.assert_array_equal(s.numpy(), s0.numpy())


@pytest.mark.parametrize("chunk, error, message", [
    (0, ValueError, "chunk must be None or an int >= 1, got 0"),
    (True, TypeError, "chunk must be None or an int >= 1, got True"),
    ("4", TypeError, "chunk must be None or an int >= 1, got '4'"),
])
@pytest.mark.parametrize("impl", [fc.unroll, fc.reference.unroll], ids=["unroll", "reference"])
def test_bad_chunk_fails_clearly(impl, chunk, error, message):
    cell = make_cell("lstm", H, input_dim=D)
    with pytest.raises(error, match=message):
        impl(cell, tf.zeros([B, T, D]), chunk=chunk)


def test_second_order_through_chunked_raises():
    cell = make_cell("lstm", H, input_dim=D)
    x = tf.constant(random_inputs(B, T, D), tf.float32)
    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            ys, _ = fc.unroll(cell, x, chunk=3, jit_compile=False, backward="autodiff")
        g = inner.gradient(ys, x)
    with pytest.raises(NotImplementedError, match="second-order gradient .* or chunk="):
        outer.gradient(g, x)
