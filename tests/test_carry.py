"""``fc.Carry``: state (and, with ``truncate=False``, gradients) carried across calls.

The source scenarios (``../shared/seeds/README.md``): one pass of 6 steps
against two stateful passes of 3 (document 000, cases 0 and 1; and 4-5 for two
stacked layers), and the two-segment GRU whose ``dL/d initial_state`` is
chained through ``output_gradients`` (document 001).
"""

import numpy as np
import pytest
import tensorflow as tf

import fastcarry as fc
import harness
from conftest import CELL_KINDS, assert_all_close, make_cell, random_inputs, random_state

B, T, D, H = 3, 6, 4, 5
SPLIT = 3
LENGTHS = [6, 2, 4]  # a full row, one that ends in the first chunk, one in the second


def _chunk_lengths(lengths, start, stop):
    return None if lengths is None else np.clip(np.asarray(lengths) - start, 0, stop - start)


def carried(truncate):
    """``unroll``'s signature, run as two calls of one ``Carry`` over ``[0, SPLIT)`` and ``[SPLIT, T)``."""
    def impl(cell, inputs, initial_state=None, *, sequence_length=None, **options):
        carry = fc.Carry(cell, B, truncate=truncate)
        if initial_state is not None:
            carry.state = initial_state
        ys = [carry(inputs[:, a:b], sequence_length=_chunk_lengths(sequence_length, a, b), **options)
              for a, b in ((0, SPLIT), (SPLIT, T))]
        return tf.concat(ys, 1), carry.state
    return impl


def truncated(cell, inputs, initial_state=None, *, sequence_length=None, **options):
    """Truncated BPTT written out: the second half starts from the first's final state under stop_gradient."""
    state = None if initial_state is None else tf.nest.map_structure(tf.stop_gradient, initial_state)
    ys = []
    for a, b in ((0, SPLIT), (SPLIT, T)):
        y, state = fc.unroll(cell, inputs[:, a:b], state, sequence_length=_chunk_lengths(sequence_length, a, b),
                             **options)
        state = tf.nest.map_structure(tf.stop_gradient, state) if a == 0 else state
        ys.append(y)
    return tf.concat(ys, 1), state


CASES = {
    "plain": dict(),
    "initial_state+lengths": dict(initial=True, sequence_length=LENGTHS),
    "graph": dict(initial=True, jit_compile=False, sequence_length=LENGTHS),
    # Each chunk runs backwards, which is not the whole sequence run backwards:
    # only the truncated form has an independent expectation here.
    "graph+reverse": dict(initial=True, jit_compile=False, reverse=True),
}


def _case(kind, name, seed=0):
    options = dict(CASES[name])
    initial = options.pop("initial", False)
    cell = make_cell(kind, H, seed=seed, input_dim=D)
    x = random_inputs(B, T, D, seed=seed + 2)
    s0 = random_state(cell, B, seed=seed + 3) if initial else None
    cot = harness.random_cotangents(cell, B, T, seed=seed + 4)
    return cell, x, s0, cot, options


@pytest.mark.parametrize("name", ["plain", "initial_state+lengths", "graph"])
@pytest.mark.parametrize("kind", CELL_KINDS)
def test_two_untruncated_calls_equal_one_pass(kind, name):
    # Seed case 1, fixed: outputs, loss and every gradient (inputs, initial
    # state, weights) of two stateful halves equal one pass over the whole.
    cell, x, s0, cot, options = _case(kind, name)
    want = harness.evaluate(fc.unroll, cell, x, s0, cot, **options)
    got = harness.evaluate(carried(truncate=False), cell, x, s0, cot, **options)
    assert_all_close(got, want, tf.float32, f"{kind} {name}")


@pytest.mark.parametrize("options", [dict(chunk=2), dict(chunk=2, swap_memory=True, jit_compile=False)],
                         ids=["chunk", "chunk+swap+graph"])
def test_untruncated_calls_compose_with_chunk_and_swap_memory(options):
    cell, x, s0, cot, _ = _case("lstm", "initial_state+lengths")
    want = harness.evaluate(fc.unroll, cell, x, s0, cot, sequence_length=LENGTHS)
    got = harness.evaluate(carried(truncate=False), cell, x, s0, cot, sequence_length=LENGTHS, **options)
    assert_all_close(got, want, tf.float32, f"Carry with {options}")


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("kind", CELL_KINDS)
def test_truncated_calls_equal_explicit_truncation(kind, name):
    cell, x, s0, cot, options = _case(kind, name)
    want = harness.evaluate(truncated, cell, x, s0, cot, **options)
    got = harness.evaluate(carried(truncate=True), cell, x, s0, cot, **options)
    assert_all_close(got, want, tf.float32, f"{kind} {name}")


@pytest.mark.parametrize("kind", ["lstm", "gru-reset-before"])
def test_truncation_changes_the_first_chunks_gradients(kind):
    # The twin that must differ: if truncate=True leaked gradients (or
    # truncate=False cut them), one of the two tests above would pass wrongly.
    cell, x, s0, cot, options = _case(kind, "initial_state+lengths")
    full = harness.evaluate(fc.unroll, cell, x, s0, cot, **options)
    cut = harness.evaluate(carried(truncate=True), cell, x, s0, cot, **options)
    np.testing.assert_allclose(cut["outputs"], full["outputs"], rtol=1e-5, atol=1e-6)
    assert np.max(np.abs(cut["d_inputs"][:, :SPLIT] - full["d_inputs"][:, :SPLIT])) > 1e-3
    np.testing.assert_allclose(cut["d_inputs"][:, SPLIT:], full["d_inputs"][:, SPLIT:], rtol=1e-5, atol=1e-6)
    assert all(not np.any(v) for k, v in cut.items() if k.startswith("d_initial"))


@pytest.mark.parametrize("kind", CELL_KINDS)
def test_untruncated_inside_a_jit_training_step(kind):
    cell, x, _, cot, _ = _case(kind, "plain")
    x = tf.constant(x, tf.float32)
    cot = tf.constant(cot.outputs, tf.float32)
    carry = fc.Carry(cell, B, truncate=False)
    weights = list(cell.trainable_variables)

    @tf.function(jit_compile=True)
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.concat([carry(x[:, :SPLIT]), carry(x[:, SPLIT:])], 1)
            loss = tf.reduce_sum(y * cot)
        return y, tape.gradient(loss, [x, *weights])

    with tf.GradientTape() as tape:
        tape.watch(x)
        y_full, s_full = fc.unroll(cell, x)
        loss = tf.reduce_sum(y_full * cot)
    want = dict(y=y_full, state=tf.nest.flatten(s_full),
                grads=tape.gradient(loss, [x, *weights]))
    y, grads = step(x)
    got = dict(y=y, state=tf.nest.flatten(carry.state), grads=grads)
    assert_all_close(_named(got), _named(want), tf.float32, f"{kind} jit step")

    # The next step starts from the state the first one stored in the variables.
    y2, _ = step(x)
    y_twice, _ = fc.unroll(cell, tf.concat([x, x], 1))
    assert_all_close({"y2": y2}, {"y2": y_twice[:, T:]}, tf.float32, f"{kind} second step")


def _named(tree):
    return {str(i): np.asarray(v) for i, v in enumerate(tf.nest.flatten(tree))}


def _two_layers(kinds, units, seed=0):
    first = make_cell(kinds[0], units[0], seed=seed, input_dim=D)
    second = make_cell(kinds[1], units[1], seed=seed + 1, input_dim=units[0])
    return first, second


@pytest.mark.parametrize("truncate", [False, True])
def test_two_stacked_layers_vertical_flow(truncate):
    # Seed cases 4-5: two stacked stateful layers fed in two halves.
    first, second = _two_layers(("lstm", "gru"), (5, 4))
    x = tf.constant(random_inputs(B, T, D, seed=7), tf.float32)
    cot = tf.constant(np.random.default_rng(8).standard_normal((B, T, 4)), tf.float32)
    weights = first.trainable_variables + second.trainable_variables

    with tf.GradientTape() as tape:
        tape.watch(x)
        if truncate:
            ys, states = [], [None, None]
            for a, b in ((0, SPLIT), (SPLIT, T)):
                h, s1 = fc.unroll(first, x[:, a:b], states[0])
                y, s2 = fc.unroll(second, h, states[1])
                states = [tf.nest.map_structure(tf.stop_gradient, s) for s in (s1, s2)]
                ys.append(y)
            y = tf.concat(ys, 1)
        else:
            y, _ = fc.unroll(second, fc.unroll(first, x)[0])
        loss = tf.reduce_sum(y * cot)
    want = {"y": y, **_named({"g": tape.gradient(loss, [x, *weights])})}

    carries = [fc.Carry(first, B, truncate=truncate), fc.Carry(second, B, truncate=truncate)]
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.concat([carries[1](carries[0](x[:, a:b])) for a, b in ((0, SPLIT), (SPLIT, T))], 1)
        loss = tf.reduce_sum(y * cot)
    got = {"y": y, **_named({"g": tape.gradient(loss, [x, *weights])})}
    assert_all_close(got, want, tf.float32, f"two layers truncate={truncate}")


def test_two_segment_gru_chained_gradients_equal_full_sequence():
    # Seed document 001: two stacked GRUs (reset-before, as TF1's GRUCell) over
    # a sequence cut into two segments. dL/d initial_state from chaining the
    # second segment's dL/d state into the first through output_gradients
    # (TF1's grad_ys) equals the full-sequence gradient.
    first, second = _two_layers(("gru-reset-before", "gru-reset-before"), (6, 4))
    dense = tf.constant(np.random.default_rng(9).standard_normal((4, 2)), tf.float32)
    time = 10
    x = tf.constant(random_inputs(B, time, D, seed=10), tf.float32)
    target = tf.constant(np.random.default_rng(11).standard_normal((B, time, 2)), tf.float32)
    s0 = [tf.constant(random_state(c, B, seed=12 + i), tf.float32) for i, c in enumerate((first, second))]

    def segment(x, target, states):
        h, s1 = fc.unroll(first, x, states[0])
        y, s2 = fc.unroll(second, h, states[1])
        return tf.reduce_sum((tf.einsum("bth,ho->bto", y, dense) - target) ** 2), [s1, s2]

    with tf.GradientTape() as tape:
        tape.watch(s0)
        loss_full, _ = segment(x, target, s0)
    want = tape.gradient(loss_full, s0)

    half = time // 2
    with tf.GradientTape() as tape1:
        tape1.watch(s0)
        loss1, s_mid = segment(x[:, :half], target[:, :half], s0)
    with tf.GradientTape() as tape2:
        tape2.watch(s_mid)
        loss2, _ = segment(x[:, half:], target[:, half:], s_mid)
    d_mid = tape2.gradient(loss2, s_mid)
    got = tape1.gradient([loss1, s_mid], s0, output_gradients=[tf.constant(1.0), d_mid])
    assert_all_close(_named(got), _named(want), tf.float32, "chained dL/d initial_state")


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_masked_reset_zeroes_only_those_rows_and_keeps_the_rest_differentiable(kind):
    cell, x, s0, cot, _ = _case(kind, "plain")
    mask = tf.constant([True, False, True])
    x = tf.constant(x, tf.float32)

    def with_reset(cell, inputs, initial_state=None, **_):
        carry = fc.Carry(cell, B, truncate=False)
        y1 = carry(inputs[:, :SPLIT])
        carry.reset(mask)
        return tf.concat([y1, carry(inputs[:, SPLIT:])], 1), carry.state

    def written_out(cell, inputs, initial_state=None, **_):
        y1, s = fc.unroll(cell, inputs[:, :SPLIT])
        s = tf.nest.map_structure(lambda v: tf.where(mask[:, None], tf.zeros_like(v), v), s)
        y2, s = fc.unroll(cell, inputs[:, SPLIT:], s)
        return tf.concat([y1, y2], 1), s

    want = harness.evaluate(written_out, cell, x, None, cot)
    got = harness.evaluate(with_reset, cell, x, None, cot)
    assert_all_close(got, want, tf.float32, f"{kind} masked reset")
    full = harness.evaluate(fc.unroll, cell, x, None, cot)
    # Kept rows see the whole past; reset rows do not (so the test can tell).
    np.testing.assert_allclose(got["d_inputs"][1], full["d_inputs"][1], rtol=1e-5, atol=1e-6)
    assert np.max(np.abs(got["d_inputs"][0, :SPLIT] - full["d_inputs"][0, :SPLIT])) > 1e-3


def test_state_assign_read_reset_and_checkpoint(tmp_path):
    cell = make_cell("lstm", H, input_dim=D)
    carry = fc.Carry(cell, B)
    assert isinstance(carry.state, fc.LSTMState)
    assert all(not np.any(s.numpy()) for s in carry.state)
    value = fc.LSTMState(*(tf.constant(s, tf.float32) for s in random_state(cell, B)))
    carry.state = value
    np.testing.assert_array_equal(carry.state.c.numpy(), value.c.numpy())
    path = tf.train.Checkpoint(carry=carry).save(str(tmp_path / "ckpt"))
    carry.reset()
    assert all(not np.any(s.numpy()) for s in carry.state)
    tf.train.Checkpoint(carry=carry).restore(path)
    np.testing.assert_array_equal(carry.state.h.numpy(), value.h.numpy())
    assert carry.variables and not any(v.trainable for v in tf.nest.flatten(carry._variables))
    assert len(carry.trainable_variables) == 3  # the cell's weights


def test_row_with_length_zero_keeps_its_state():
    cell = make_cell("gru", H, input_dim=D)
    carry = fc.Carry(cell, B)
    carry.state = tf.constant(random_state(cell, B), tf.float32)
    before = carry.state.numpy()
    y = carry(tf.constant(random_inputs(B, 3, D), tf.float32), sequence_length=[3, 0, 1])
    np.testing.assert_array_equal(carry.state.numpy()[1], before[1])
    assert not np.any(y.numpy()[1])
    assert np.any(carry.state.numpy()[0] != before[0])


@pytest.mark.parametrize("make, error, message", [
    (lambda c: fc.Carry(object(), B), TypeError, "got object, which lacks state_size, __call__"),
    (lambda c: fc.Carry(c, 0), ValueError, "batch_size must be an int >= 1, got 0"),
    (lambda c: fc.Carry(c, True), ValueError, "batch_size must be an int >= 1, got True"),
    (lambda c: fc.Carry(c, B, truncate="no"), TypeError, "truncate must be a bool, got 'no'"),
    (lambda c: fc.Carry(c, B)(tf.zeros([B, 2, D]), initial_state=tf.zeros([B, H])), TypeError,
     "assign carry.state instead of passing initial_state"),
    (lambda c: fc.Carry(c, B)(tf.zeros([B + 1, 2, D])), ValueError,
     "inputs have batch size 4 (shape [4, 2, 4]), expected batch_size=3"),
    (lambda c: fc.Carry(c, B)(tf.zeros([2, B + 1, D]), time_major=True), ValueError,
     "inputs have batch size 4 (shape [2, 4, 4]), expected batch_size=3"),
    (lambda c: setattr(fc.Carry(c, B), "state", tf.zeros([B, H + 1])), ValueError,
     "state has shape [3, 6], expected [3, 5]"),
    (lambda c: setattr(fc.Carry(c, B), "state", tf.zeros([B, H], tf.float64)), TypeError,
     "state has dtype float64, expected float32"),
    (lambda c: fc.Carry(c, B).reset([1, 0, 1]), TypeError, "mask must be a bool tensor [batch_size], got dtype int32"),
    (lambda c: fc.Carry(c, B).reset([True, False]), ValueError, "mask must have shape [batch_size] = [3], got (2,)"),
])
def test_bad_arguments_fail_clearly(make, error, message):
    cell = make_cell("gru", H, input_dim=D)
    with pytest.raises(error) as exc:
        make(cell)
    assert message in str(exc.value)


def test_lstm_state_of_the_wrong_structure_is_refused():
    carry = fc.Carry(make_cell("lstm", H, input_dim=D), B)
    with pytest.raises(TypeError, match=r"state must be LSTMState\(h, c\) for LSTM, got EagerTensor"):
        carry.state = tf.zeros([B, H])
