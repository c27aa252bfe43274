"""Any cell under ``fc.unroll``: Keras 3 cells (fused on their own variables, or generic), user Keras cells,
TF1 legacy cells, ``fc.FunctionCell``; and the compositions ``fc.Stack`` and ``fc.bidirectional``.

Every comparison is against an independent computation — Keras 3's own
``keras.layers.RNN`` loop, TF1's ``dynamic_rnn`` / ``bidirectional_dynamic_rnn``
with the legacy cells, or ``fastcarry.reference.unroll`` (a Python loop calling
the cell's own ``call``) — on outputs, final state and the gradients w.r.t.
inputs, initial state and every variable, under a random cotangent.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from tf_keras.src.layers.rnn import legacy_cells

import fastcarry as fc
from conftest import assert_all_close
from fastcarry.tools import models_bench as _models_bench
from fastcarry.tools import protocol_cells
from fastcarry.tools.user_cell_bench import cell_classes

B, T, D, H = 3, 6, 4, 5
LENGTHS = [T, 0, 3]  # a full row, an empty one and a partial one


def _evaluate(run, x, s0, variables, seed=0):
    """``run(x, s0) -> (outputs, state)`` and its gradients under a random cotangent, as numpy by name.

    Names: ``outputs``, ``state[i]`` and ``d_state0[i]`` per flattened state
    component, ``d_inputs``, ``d_var[j]`` per variable in ``variables``' order.
    """
    x = tf.constant(x, tf.float32)
    flat_s0 = [tf.constant(s, tf.float32) for s in tf.nest.flatten(s0)] if s0 is not None else []
    with tf.GradientTape() as tape:
        tape.watch([x] + flat_s0)
        outputs, state = run(x, None if s0 is None else tf.nest.pack_sequence_as(s0, flat_s0))
        flat = tf.nest.flatten(state)
        rng = np.random.default_rng(seed)
        loss = tf.reduce_sum(outputs * rng.standard_normal(outputs.shape).astype(np.float32))
        for s in flat:
            loss += tf.reduce_sum(s * rng.standard_normal(s.shape).astype(np.float32))
    grads = tape.gradient(loss, [x] + flat_s0 + list(variables), unconnected_gradients=tf.UnconnectedGradients.ZERO)
    result = {"outputs": outputs, "d_inputs": grads[0]}
    result.update({f"state[{i}]": s for i, s in enumerate(flat)})
    result.update({f"d_state0[{i}]": g for i, g in enumerate(grads[1:1 + len(flat_s0)])})
    result.update({f"d_var[{j}]": g for j, g in enumerate(grads[1 + len(flat_s0):])})
    return {k: np.asarray(v) for k, v in result.items()}


def _signal(result):
    """Every compared tensor carries signal (a comparison of zeros proves nothing)."""
    for name, value in result.items():
        assert value.size == 0 or np.abs(value).max() > 1e-4, name


def _x(seed=2, time_major=False):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((T, B, D) if time_major else (B, T, D)).astype(np.float32)


def _states(sizes, seed=1):
    rng = np.random.default_rng(seed)
    return tf.nest.map_structure(lambda n: (rng.standard_normal((B, n)) * 0.5).astype(np.float32), sizes)


def _randomise(variables, seed=0):
    rng = np.random.default_rng(seed)
    for v in variables:
        v.assign(rng.uniform(-0.6, 0.6, v.shape).astype(np.float32))


def _mask(lengths):
    return tf.sequence_mask(lengths, T)


# -- Keras 3 cells, fused on their own variables and generic ---------------------------------------------------

KERAS_CELLS = {
    "lstm": lambda: keras.layers.LSTMCell(H),
    "gru": lambda: keras.layers.GRUCell(H),
    "gru_reset_before": lambda: keras.layers.GRUCell(H, reset_after=False),
    "simple_rnn": lambda: keras.layers.SimpleRNNCell(H),
}


def _keras_cell(kind, seed=0):
    cell = KERAS_CELLS[kind]()
    cell.build((None, D))
    _randomise(cell.trainable_variables, seed)
    return cell


def _keras_rnn(cell, lengths=None):
    """Keras 3's own loop, outputs zeroed past each row's length (Keras repeats the last one there)."""
    layer = keras.layers.RNN(cell, return_sequences=True, return_state=True)

    def run(x, s0):
        mask = None if lengths is None else _mask(lengths)
        out = layer(x, initial_state=list(s0), mask=mask)
        outputs = out[0] if mask is None else out[0] * tf.cast(mask, tf.float32)[..., None]
        return outputs, list(out[1:])
    return run


def _unroll(cell, **options):
    return lambda x, s0: fc.unroll(cell, x, s0, **options)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "generic"])
@pytest.mark.parametrize("kind", list(KERAS_CELLS))
def test_keras_cell_equals_keras_rnn(kind, fused):
    cell = _keras_cell(kind)
    wrapped = fc.as_cell(cell, fused=fused)
    assert isinstance(wrapped, fc.CellProtocol)
    assert (wrapped.core().split is not None) == fused  # the fast path, or the cell's own call
    s0 = _states([H, H] if kind == "lstm" else [H])
    want = _evaluate(_keras_rnn(cell, LENGTHS), _x(), s0, cell.trainable_variables)
    _signal(want)
    got = _evaluate(_unroll(wrapped, sequence_length=LENGTHS), _x(), s0, cell.trainable_variables)
    assert_all_close(got, want, context=f"{kind} fused={fused}")
    _, state = fc.unroll(cell, _x())  # a Keras cell's state is Keras's: a list
    assert isinstance(state, list) and len(state) == len(s0)


def test_keras_cell_defaults_to_fused_and_generic_on_request():
    cell = _keras_cell("lstm")
    assert type(fc.as_cell(cell)).__name__ == "KerasFusedCell"
    assert fc.as_cell(cell) is fc.as_cell(cell)  # kept per layer, not rebuilt per call
    assert type(fc.as_cell(cell, fused=False)).__name__ == "LayerCell"
    relu = keras.layers.LSTMCell(H, activation="relu")
    assert type(fc.as_cell(relu)).__name__ == "LayerCell"  # the kernels do tanh: generic, not an error
    with pytest.raises(ValueError, match=r"fused=True.*activation must be 'tanh', got 'relu'"):
        fc.as_cell(relu, fused=True)


# The user cell of Keras's RNN guide, as the models benchmark runs it.
MinimalRNNCell = _models_bench.minimal_rnn_cell_class()


@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
def test_user_keras_cell_equals_keras_rnn(lengths):
    cell = MinimalRNNCell(H)
    cell.build((None, D))
    _randomise(cell.trainable_variables)
    s0 = _states([H])
    want = _evaluate(_keras_rnn(cell, lengths), _x(), s0, cell.trainable_variables)
    got = _evaluate(_unroll(cell, sequence_length=lengths), _x(), s0, cell.trainable_variables)
    assert_all_close(got, want, context="MinimalRNNCell")


# -- the generic path under every option, against the reference loop ----------------------------------------

OPTIONS = {
    "graph": dict(jit_compile=False),
    "unroll3": dict(unroll=3, sequence_length=LENGTHS),
    "chunk": dict(chunk=4, sequence_length=LENGTHS),
    "swap_memory": dict(swap_memory=True, chunk=2),
    "autodiff": dict(backward="autodiff"),
    "autodiff_graph": dict(backward="autodiff", jit_compile=False),
    "time_major_reverse": dict(time_major=True, reverse=True, sequence_length=LENGTHS),
    "as_written": dict(hoist=False, sequence_length=LENGTHS),  # the call once per step, not split
}


@pytest.fixture(scope="module")
def gru_cell():
    return _keras_cell("gru", seed=3)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_generic_path_options_equal_reference(gru_cell, name):
    options = dict(OPTIONS[name])
    hoist = options.pop("hoist", None)
    cell = fc.as_cell(gru_cell, fused=False, hoist=hoist)
    x = _x(time_major=options.get("time_major", False))
    want = _evaluate(lambda x, s0: fc.reference.unroll(cell, x, s0, **options), x, _states([H]),
                     gru_cell.trainable_variables)
    got = _evaluate(_unroll(cell, **options), x, _states([H]), gru_cell.trainable_variables)
    assert_all_close(got, want, context=name)
    # The GRU's input projection ran before the loop (fastcarry._hoist) except where asked not to.
    assert cell.core().key == (None if hoist is False else ("hoisted", (H, H, H)))


def test_generic_path_inside_a_compiled_training_step(gru_cell):
    """The user's ``tf.function(jit_compile=True)`` step: loss, gradients and an update, all compiled."""
    cell = fc.as_cell(gru_cell, fused=False)
    x = tf.constant(_x())

    def loss_and_grads(run):
        with tf.GradientTape() as tape:
            outputs, state = run(cell, x)
            loss = tf.reduce_mean(outputs ** 2) + tf.reduce_mean(state[0] ** 2)
        return [loss] + tape.gradient(loss, gru_cell.trainable_variables)

    got = tf.function(lambda: loss_and_grads(fc.unroll), jit_compile=True)()
    want = loss_and_grads(fc.reference.unroll)
    assert_all_close({str(i): g.numpy() for i, g in enumerate(got)}, {str(i): w.numpy() for i, w in enumerate(want)})


# -- TF1 legacy cells and dynamic_rnn --------------------------------------------------------------------------

TF1_CELLS = {
    "basic_lstm": lambda: legacy_cells.BasicLSTMCell(H),
    "gru": lambda: legacy_cells.GRUCell(H),
    "basic_rnn": lambda: legacy_cells.BasicRNNCell(H),
    "multi_rnn": lambda: legacy_cells.MultiRNNCell([legacy_cells.GRUCell(H), legacy_cells.BasicLSTMCell(3)]),
}


def _tf1_cell(kind, seed=0):
    cell = TF1_CELLS[kind]()
    tf.compat.v1.nn.dynamic_rnn(cell, tf.zeros([B, T, D]), dtype=tf.float32)  # builds it
    _randomise(cell.trainable_variables, seed)
    return cell


def _dynamic_rnn(cell, **options):
    def run(x, s0):
        lengths = options.get("sequence_length")
        return tf.compat.v1.nn.dynamic_rnn(cell, x, initial_state=s0, dtype=tf.float32,
                                           sequence_length=None if lengths is None else tf.constant(lengths))
    return run


@pytest.mark.parametrize("kind", list(TF1_CELLS))
def test_tf1_cell_equals_dynamic_rnn(kind):
    cell = _tf1_cell(kind)
    s0 = tf.nest.map_structure(lambda t: t.numpy() + 0.3, cell.zero_state(B, tf.float32))
    s0 = tf.nest.map_structure(lambda a, r: a + r, s0, _states(cell.state_size))
    want = _evaluate(_dynamic_rnn(cell, sequence_length=LENGTHS), _x(), s0, cell.trainable_variables)
    _signal(want)
    got = _evaluate(_unroll(cell, sequence_length=LENGTHS), _x(), s0, cell.trainable_variables)
    assert_all_close(got, want, context=kind)
    _, state = fc.unroll(cell, _x())  # the cell's own state structure
    tf.nest.assert_same_structure(state, cell.zero_state(B, tf.float32))
    if kind == "basic_lstm":
        assert type(state).__name__ == "LSTMStateTuple"


# -- fc.Stack ----------------------------------------------------------------------------------------------------

def test_stack_equals_multi_rnn_cell_of_the_second_document():
    """``MultiRNNCell([GRUCell(64), GRUCell(32)])`` + ``dynamic_rnn`` == ``fc.Stack`` of the two imported GRUs."""
    tcell = legacy_cells.MultiRNNCell([legacy_cells.GRUCell(64), legacy_cells.GRUCell(32)])
    tf.compat.v1.nn.dynamic_rnn(tcell, tf.zeros([B, T, D]), dtype=tf.float32)
    _randomise(tcell.trainable_variables)
    layers = []
    for g in tcell._cells:
        layers.append(fc.GRU.from_tf1(g._gate_kernel, g._gate_bias, g._candidate_kernel, g._candidate_bias))
    stack = fc.Stack(layers)
    s0 = _states((64, 32))
    want = _evaluate(_dynamic_rnn(tcell, sequence_length=LENGTHS), _x(), s0, [])
    _signal(want)
    got = _evaluate(_unroll(stack, sequence_length=LENGTHS), _x(), s0, [])
    assert_all_close(got, want, context="Stack vs MultiRNNCell")
    # Weight gradients: the same model run generically on the TF1 variables themselves.
    got = _evaluate(_unroll(fc.Stack([tcell._cells[0], tcell._cells[1]]), sequence_length=LENGTHS), _x(), s0,
                    tcell.trainable_variables)
    want = _evaluate(_dynamic_rnn(tcell, sequence_length=LENGTHS), _x(), s0, tcell.trainable_variables)
    assert_all_close(got, want, context="Stack of legacy GRUCells vs MultiRNNCell")


def _mixed_stack():
    lstm = fc.LSTM(H, input_size=D, seed=1)
    gru_cell = keras.layers.GRUCell(4)  # Keras, reading the LSTM's H outputs
    gru_cell.build((None, H))
    _randomise(gru_cell.trainable_variables, 5)
    w = tf.Variable(np.random.default_rng(6).uniform(-0.6, 0.6, (4 + 3, 3)).astype(np.float32))
    step = fc.FunctionCell(lambda h, x: (tf.tanh(tf.concat([x, h], 1) @ w),) * 2, 3, 3, [w], name="tiny")
    stack = fc.Stack([lstm, fc.as_cell(gru_cell, fused=False), step])
    return stack, list(lstm.trainable_variables) + list(gru_cell.trainable_variables) + [w]


@pytest.mark.parametrize("options", [dict(sequence_length=LENGTHS), dict(reverse=True, sequence_length=LENGTHS, chunk=2)],
                         ids=["lengths", "reverse_chunk"])
def test_stack_of_mixed_cells_equals_reference(options):
    """Layer by layer (fc.unroll) == all layers inside each step (the reference, as MultiRNNCell runs)."""
    stack, variables = _mixed_stack()
    s0 = (fc.LSTMState(*_states([H, H])), _states([4]), _states(3))
    want = _evaluate(lambda x, s: fc.reference.unroll(stack, x, s, **options), _x(), s0, variables)
    _signal(want)
    got = _evaluate(_unroll(stack, **options), _x(), s0, variables)
    assert_all_close(got, want, context=str(options))


def test_a_stack_is_a_cell_whose_core_runs_every_layer_in_one_step():
    """``Stack.core()``: MultiRNNCell's step (every layer inside it), what fc.tune keys a stack by; run as a
    plain loop it equals fc.unroll's layer-by-layer run."""
    stack, _ = _mixed_stack()
    x = tf.constant(_x())
    s0 = tf.nest.map_structure(tf.constant, (fc.LSTMState(*_states([H, H])), _states([4]), _states(3)))
    want, final = fc.unroll(stack, x, s0, sequence_length=LENGTHS)
    assert fc.as_cell(stack) is stack and isinstance(stack, fc.CellProtocol)  # a cell as it is (by its members)
    core, params = stack.core(), stack.params()
    assert core.name == "stack" and core.owner is stack  # its generic layers' functions close over their variables
    assert [v.ref() for v in core.variables] == [v.ref() for c in stack.cells for v in c.core().variables]
    state, ys = s0, []
    for t in range(x.shape[1]):
        new_state, y = core.run_step(params, state, core.project(params, x[:, t]))
        valid = (t < tf.constant(LENGTHS))[:, None]
        state = tf.nest.map_structure(lambda n, o: tf.where(valid, n, o), new_state, state)
        ys.append(tf.where(valid, y, tf.zeros_like(y)))
    def named(outputs, state):
        return {"outputs": outputs.numpy(), **{f"state{i}": v.numpy() for i, v in enumerate(tf.nest.flatten(state))}}

    assert_all_close(named(tf.stack(ys, 1), state), named(want, final), context="Stack.core() stepped")


def test_stack_in_a_carry_two_passes_equal_one():
    stack, variables = _mixed_stack()
    x = tf.constant(_x())

    def two_passes(x, s0):
        carry = fc.Carry(stack, B, truncate=False)
        carry.state = s0
        y = tf.concat([carry(x[:, :2]), carry(x[:, 2:])], 1)
        return y, carry.state

    s0 = (fc.LSTMState(*_states([H, H])), _states([4]), _states(3))
    assert_all_close(_evaluate(two_passes, x, s0, variables), _evaluate(_unroll(stack), x, s0, variables))


# -- fc.bidirectional ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fused", [True, False], ids=["fused", "generic"])
def test_bidirectional_equals_bidirectional_dynamic_rnn(fused):
    fw, bw = _tf1_cell("basic_lstm", 0), _tf1_cell("gru", 1)
    if fused:
        cell_fw = fc.LSTM.from_tf1(fw._kernel, fw._bias)
        cell_bw = fc.GRU.from_tf1(bw._gate_kernel, bw._gate_bias, bw._candidate_kernel, bw._candidate_bias)
        variables = []
    else:
        cell_fw, cell_bw, variables = fw, bw, fw.trainable_variables + bw.trainable_variables
    s_fw, s_bw = _states([H, H]), _states(H, seed=3)

    def tf1(x, s):
        (y_fw, y_bw), (f_fw, f_bw) = tf.compat.v1.nn.bidirectional_dynamic_rnn(
            fw, bw, x, sequence_length=tf.constant(LENGTHS),
            initial_state_fw=legacy_cells.LSTMStateTuple(*s[0]), initial_state_bw=s[1])
        return tf.concat([y_fw, y_bw], -1), (tuple(f_fw), f_bw)

    def ours(x, s):
        init_fw = legacy_cells.LSTMStateTuple(*s[0]) if not fused else fc.LSTMState(s[0][1], s[0][0])
        (y_fw, y_bw), (f_fw, f_bw) = fc.bidirectional(cell_fw, cell_bw, x, init_fw, s[1], sequence_length=LENGTHS)
        f_fw = tuple(f_fw) if not fused else (f_fw.c, f_fw.h)
        return tf.concat([y_fw, y_bw], -1), (f_fw, f_bw)

    want = _evaluate(tf1, _x(), (tuple(s_fw), s_bw), variables)
    _signal(want)
    assert_all_close(_evaluate(ours, _x(), (tuple(s_fw), s_bw), variables), want)


# -- the first document's model_rnn scenarios (cases 3-5) ----------------------------------------------------------

def _step_model(units_per_layer):
    """A Keras step model ``[x_t, *h] -> [y_t, *h']`` of stacked SimpleRNNCells, as ``model_rnn`` takes."""
    x_in = keras.Input((D,))
    h_in = [keras.Input((u,)) for u in units_per_layer]
    cells, y, hs = [], x_in, []
    for u, h in zip(units_per_layer, h_in):
        cell = keras.layers.SimpleRNNCell(u)
        y, new = cell(y, [h])
        cells.append(cell)
        hs.append(new[0])
    return keras.Model([x_in, *h_in], [y, *hs]), cells


@pytest.mark.parametrize("units", [(H,), (H, 3)], ids=["case3_one_layer", "case4_5_two_layers"])
def test_model_rnn_step_model_equals_keras_simple_rnn(units):
    model, cells = _step_model(units)
    _randomise(model.trainable_variables)
    n = len(units)

    def step(state, x):
        y, *hs = model([x, *state])
        return tuple(hs), y

    cell = fc.FunctionCell(step, tuple(units), units[-1], model.trainable_variables, name="model_rnn")
    keras_layers = [keras.layers.SimpleRNN(u, return_sequences=True, return_state=True) for u in units]

    def keras_pass(x, s0):
        finals = []
        for layer, c, h in zip(keras_layers, cells, s0):
            if not layer.built:
                layer.build((None, None, x.shape[-1]))
                layer.cell.set_weights(c.get_weights())
            x, h = layer(x, initial_state=[h])
            finals.append(h)
        return x, tuple(finals)

    s0 = _states(tuple(units))
    x = _x()
    keras_pass(tf.constant(x), s0)  # builds the layers (weights copied from the step model's cells)
    keras_vars = [v for layer in keras_layers for v in layer.trainable_variables]
    want = _evaluate(keras_pass, x, s0, keras_vars)
    _signal(want)
    assert_all_close(_evaluate(_unroll(cell), x, s0, model.trainable_variables), want, context=f"{n} layers")

    def two_passes(x, s):  # case 1's carried state, but exact: gradients flow across the passes
        carry = fc.Carry(cell, B, truncate=False)
        carry.state = s
        return tf.concat([carry(x[:, :3]), carry(x[:, 3:])], 1), carry.state

    assert_all_close(_evaluate(two_passes, x, s0, model.trainable_variables), want, context="Carry over 2 passes")


# -- FunctionCell on the exact toy, and the public fused protocol ---------------------------------------------------

def test_function_cell_toy_exact():
    """``step = lambda s, x: (s + 1, x + s)``: output ``x_t + s0 + k`` at the k-th step, gradients exact."""
    toy = fc.FunctionCell(lambda s, x: (s + 1.0, x + s), D, D, name="toy")
    x = tf.constant(np.random.default_rng(0).integers(-5, 5, (B, T, D)), tf.float32)
    s0 = tf.constant(np.random.default_rng(1).integers(-5, 5, (B, D)), tf.float32)
    for options in (dict(), dict(chunk=4, unroll=3), dict(reverse=True, sequence_length=LENGTHS)):
        with tf.GradientTape() as tape:
            tape.watch([x, s0])
            y, s = fc.unroll(toy, x, s0, **options)
            loss = tf.reduce_sum(y * 2.0) + tf.reduce_sum(s * 3.0)
        dx, ds0 = tape.gradient(loss, [x, s0])
        lengths = np.array(options.get("sequence_length", [T] * B))
        t = np.arange(T)[None, :]
        k = (lengths[:, None] - 1 - t) if options.get("reverse") else t  # the step number of position t
        valid = t < lengths[:, None]
        np.testing.assert_array_equal(y.numpy(), np.where(valid[..., None], x.numpy() + s0.numpy()[:, None] + k[..., None], 0))
        np.testing.assert_array_equal(s.numpy(), s0.numpy() + lengths[:, None])
        np.testing.assert_array_equal(dx.numpy(), np.broadcast_to(np.where(valid[..., None], 2.0, 0.0), (B, T, D)))
        np.testing.assert_array_equal(ds0.numpy(), np.broadcast_to(2.0 * lengths[:, None] + 3.0, (B, D)))


def _mgu_weights(seed=0):
    rng = np.random.default_rng(seed)
    shapes = {"kernel": (D, 2 * H), "recurrent_kernel": (H, 2 * H), "bias": (2 * H,)}
    return {k: tf.Variable(rng.uniform(-0.6, 0.6, s).astype(np.float32), name=k) for k, s in shapes.items()}


def _mgu_step(w):
    """A minimal gated unit, written plainly: ``f = σ(x W_f + h U_f + b_f)``, ``h̃ = tanh(x W_h + (f h) U_h + b_h)``."""
    def step(h, x):
        w_f, w_h = tf.split(w["kernel"], 2, axis=1)
        u_f, u_h = tf.split(w["recurrent_kernel"], 2, axis=1)
        b_f, b_h = tf.split(w["bias"], 2)
        f = tf.sigmoid(x @ w_f + h @ u_f + b_f)
        candidate = tf.tanh(x @ w_h + (f * h) @ u_h + b_h)
        h = (1 - f) * h + f * candidate
        return h, h
    return step


class FusedMGU:
    """The same unit on the public fused protocol: the reset-before GRU's shape, with one gate.

    ``a = (f_pre [B, H], c_pre [B, H])``; the first matmul gives ``h @ U_f``, the
    second ``(σ(f_pre) h) @ U_h``; ``update`` is elementwise.
    """

    def __init__(self, weights):
        self.w, self.dtype, self.state_size, self.output_size, self.input_dim = weights, tf.float32, H, H, D

    def build(self, input_dim):
        assert input_dim == D

    def zero_state(self, batch_size, dtype=None):
        return tf.zeros([batch_size, H])

    def params(self):
        return {k: tf.convert_to_tensor(v) for k, v in self.w.items()}

    def core(self):
        def project(p, x):  # [T, B, D] -> [T, B, 2H]
            return tf.einsum("tbd,dg->tbg", x, p["kernel"]) + p["bias"]

        def combine(xp, rec):  # (f_pre, c_pre): the f slice gets h @ U_f, the candidate waits for the second matmul
            return (xp[..., :H] + rec, xp[..., H:])

        def update(h, a):
            f = tf.sigmoid(a[0])
            h = (1 - f) * h + f * tf.tanh(a[1])
            return h, h

        second = fc.SecondMatmul(
            input=lambda h, a: tf.sigmoid(a[0]) * h,
            recurrent=lambda p, g: g @ p["recurrent_kernel"][:, H:],
            combine=lambda a, rec: (a[0], a[1] + rec),
            recurrent_kernel=lambda p: p["recurrent_kernel"][:, H:])
        split = fc.RecurrentSplit(lambda h: h, lambda p, h: h @ p["recurrent_kernel"][:, :H], combine, update,
                                  second, recurrent_kernel=lambda p: p["recurrent_kernel"][:, :H])
        return fc.Core("fused_mgu", (), project, H, split=split)


def test_minimal_gated_unit_fused_protocol_equals_function_cell():
    w = _mgu_weights()
    variables = list(w.values())
    plain = fc.FunctionCell(_mgu_step(w), H, H, variables, name="mgu_plain")
    fused = FusedMGU(w)
    s0 = _states(H)
    for options in (dict(sequence_length=LENGTHS), dict(reverse=True, chunk=4, sequence_length=LENGTHS)):
        want = _evaluate(lambda x, s: fc.reference.unroll(plain, x, s, **options), _x(), s0, variables)
        _signal(want)
        assert_all_close(_evaluate(_unroll(plain, **options), _x(), s0, variables), want, context="FunctionCell")
        assert_all_close(_evaluate(_unroll(fused, **options), _x(), s0, variables), want, context="fused MGU")


PROTOCOL_OPTIONS = {
    "graph": dict(jit_compile=False, reverse=True, chunk=4, unroll=2, sequence_length=LENGTHS),
    "jit": dict(sequence_length=LENGTHS),
}


@pytest.mark.parametrize("kind, options", [(kind, "graph") for kind in protocol_cells.KINDS]
                         + [("peephole_lstm", "jit")])
def test_users_cells_on_the_fused_protocol_equal_their_keras_call(kind, options):
    """The user-cell benchmark's cells as ``RecurrentSplit``\\ s (unit parameters read by ``update``, a second
    matmul, an elementwise recurrence, a row-wise normalisation) against the reference loop of the Keras
    cell's own call, on the same variables."""
    options = PROTOCOL_OPTIONS[options]
    keras.utils.set_random_seed(0)
    layer = cell_classes()[kind](H)
    layer.build((None, D))
    _randomise(layer.trainable_variables, seed=5)
    variables = layer.trainable_variables
    s0 = _states(protocol_cells.ProtocolCell(kind, layer).state_size)
    want = _evaluate(lambda x, s: fc.reference.unroll(fc.as_cell(layer, fused=False), x, s, **options), _x(), s0,
                     variables)
    _signal(want)  # every gradient carries signal: the unit parameters' too
    got = _evaluate(_unroll(protocol_cells.ProtocolCell(kind, layer), **options), _x(), s0, variables)
    assert_all_close(got, want, context=f"{kind} {options}")


# -- bad input --------------------------------------------------------------------------------------------------

def test_a_step_that_changes_the_state_is_named():
    grow = fc.FunctionCell(lambda s, x: (tf.concat([s, s], 1), x), H, D, name="grow")
    with pytest.raises(TypeError, match=r"grow's step returned a state float32\[3, 10\], but was given float32\[3, 5\]"):
        fc.unroll(grow, _x())
    wrong = fc.FunctionCell(lambda s, x: ((s, s), x), H, D, name="pair")
    with pytest.raises(TypeError, match=r"pair's step returned a state of structure"):
        fc.unroll(wrong, _x())
    single = fc.FunctionCell(lambda s, x: s, H, D, name="single")
    with pytest.raises(TypeError, match=r"single's step must return \(new_state, output\)"):
        fc.unroll(single, _x())


def test_a_variable_the_step_reads_must_be_listed():
    w = tf.Variable(tf.ones([D, H]))
    hidden = fc.FunctionCell(lambda s, x: (s + x @ w,) * 2, H, H, name="hidden")
    with tf.GradientTape(), pytest.raises(ValueError, match=r"hidden's step reads 'Variable:0', a trainable "
                                                         r"tf.Variable not in its variables"):
        fc.unroll(hidden, _x())


@pytest.mark.parametrize("make, error, match", [
    (lambda: fc.Stack([]), ValueError, "cells must hold at least one cell"),
    (lambda: fc.Stack(fc.LSTM(H)), TypeError, "cells must be a sequence of cells, got LSTM"),
    (lambda: fc.Stack([fc.LSTM(H), object()]), TypeError, r"cells\[1\]: .*got object"),
    (lambda: fc.Stack([fc.LSTM(H), fc.GRU(H, dtype=tf.float64)]), TypeError, "share one dtype"),
    (lambda: fc.as_cell(keras.layers.GRUCell(H, dropout=0.5), fused=True), ValueError, "dropout=0.5"),
    (lambda: fc.as_cell(keras.layers.GRUCell(H), fused="yes"), TypeError, "fused must be None, True or False"),
    (lambda: fc.as_cell(fc.LSTM(H), fused=True), ValueError, "already a fastcarry cell"),
    (lambda: fc.FunctionCell(lambda s, x: (s, x), 0, H), ValueError, "state_size must be an int >= 1"),
    (lambda: fc.FunctionCell("step", H, H), TypeError, "step must be callable"),
    (lambda: fc.bidirectional(fc.LSTM(H), fc.LSTM(H), _x(), reverse=True), TypeError, "reverse is not an option"),
    (lambda: fc.unroll(fc.Stack([fc.LSTM(H), fc.GRU(3)]), _x(), [None]), TypeError,
     r"initial_state must be a tuple with one state per layer \(2\)"),
    (lambda: fc.unroll(fc.Stack([fc.LSTM(H), fc.GRU(3)]), _x(), (None, tf.zeros([B, 4]))), ValueError,
     r"initial_state\[1\] has shape \[3, 4\], expected \[3, 3\]"),
], ids=["stack-empty", "stack-not-a-list", "stack-bad-layer", "stack-dtypes", "fused-dropout", "fused-flag",
        "fused-fastcarry", "function-state-size", "function-step", "bidirectional-reverse", "stack-state-count",
        "stack-state-shape"])
def test_bad_input_fails_clearly(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_keras_cell_with_dropout_is_refused_on_the_generic_path_too():
    with pytest.raises(ValueError, match=r"dropout=0.5.*no dropout"):
        fc.unroll(keras.layers.GRUCell(H, dropout=0.5), _x())


# -- persistent tapes on every path (fused, generic, stacked) ------------------------------------------------------

def _persistent_cases():
    """``{name: (cell, s0, variables)}``: a fused cell, a step function, a Keras cell run generically, a stack."""
    lstm = fc.LSTM(H, input_size=D, seed=3)
    w = tf.Variable(np.random.default_rng(7).uniform(-0.6, 0.6, (D + H, H)).astype(np.float32))
    step = fc.FunctionCell(lambda h, x: (tf.tanh(tf.concat([x, h], 1) @ w),) * 2, H, H, [w], name="persistent")
    gru_cell = _keras_cell("gru")
    stack, stack_variables = _mixed_stack()
    return {"fused": (lstm, fc.LSTMState(*_states([H, H])), lstm.trainable_variables),
            "function_cell": (step, _states(H), [w]),
            "keras_generic": (fc.as_cell(gru_cell, fused=False), _states([H]), gru_cell.trainable_variables),
            "stack": (stack, (fc.LSTMState(*_states([H, H])), _states([4]), _states(3)), stack_variables)}


@pytest.mark.parametrize("context", ["eager", "outer-jit"])
@pytest.mark.parametrize("name", ["fused", "function_cell", "keras_generic", "stack"])
def test_a_persistent_tape_gets_every_gradient(name, context):
    """A persistent tape (asked twice) sees what a plain one does, on the fused, generic and stacked paths; the
    generic path used to fail in tracing (no gradient for XLA's dynamic-update-slice)."""
    cell, s0, variables = _persistent_cases()[name]
    x = tf.constant(_x())
    flat_s0 = [tf.constant(s) for s in tf.nest.flatten(s0)]

    def twice(x, flat_s0):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([x] + flat_s0)
            outputs, state = fc.unroll(cell, x, tf.nest.pack_sequence_as(s0, flat_s0), sequence_length=LENGTHS)
            rng = np.random.default_rng(0)  # the cotangents _evaluate draws
            loss = tf.reduce_sum(outputs * rng.standard_normal(outputs.shape).astype(np.float32))
            for s in tf.nest.flatten(state):
                loss += tf.reduce_sum(s * rng.standard_normal(s.shape).astype(np.float32))
        first = tape.gradient(loss, [x] + flat_s0 + list(variables))
        again = tape.gradient(loss, [x] + flat_s0 + list(variables))
        return outputs, tf.nest.flatten(state), first, again

    # First: traced under the persistent tape (a function traced before under a plain tape would be reused).
    run = twice if context == "eager" else tf.function(twice, jit_compile=True)
    outputs, state, first, again = run(x, flat_s0)
    want = _evaluate(_unroll(cell, sequence_length=LENGTHS), _x(), s0, variables)
    _signal(want)
    for grads in (first, again):
        got = {"outputs": outputs, "d_inputs": grads[0]}
        got.update({f"state[{i}]": s for i, s in enumerate(state)})
        got.update({f"d_state0[{i}]": g for i, g in enumerate(grads[1:1 + len(flat_s0)])})
        got.update({f"d_var[{j}]": g for j, g in enumerate(grads[1 + len(flat_s0):])})
        assert_all_close({k: np.asarray(v) for k, v in got.items()}, want, context=f"{name} {context}")
