"""``fastcarry check``: fastcarry.unroll against the float64 reference and Keras 3 on random data.

``evaluate`` runs one implementation and differentiates a loss built from random
cotangents (never ``.sum()``, which hides sign and layout errors), returning
every output, final-state component and gradient as numpy arrays by name.
``compare`` reports per-tensor errors relative to the largest magnitude.
``KerasUnroll`` runs the Keras 3 layer behind ``unroll``'s signature (also the
benchmarks' and the profiler's Keras contender). The test suite has its own
harness (``tests/harness.py``) and holds this tool's verdicts against it.
"""

import sys
from typing import NamedTuple

import numpy as np

from fastcarry.tools.workload import add_workload_arguments, make_cell, non_negative, positive

# Relative to the largest magnitude of the reference tensor, by dtype name (float32's is the
# acceptance bound; the others scale with each dtype's epsilon).
TOLERANCE = {"float16": 5e-3, "bfloat16": 4e-2, "float32": 2e-5, "float64": 1e-12}


class Cotangents(NamedTuple):
    """Random weights of the loss: ``outputs [B, T, H]`` and one ``[B, H]`` per state component."""

    outputs: np.ndarray
    state: list


def random_cotangents(cell, batch, time, time_major=False, seed=0):
    """``Cotangents`` for a cell's outputs and final state, standard normal."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    shape = (time, batch, cell.output_size) if time_major else (batch, time, cell.output_size)
    state = [rng.standard_normal((batch, n)) for n in tf.nest.flatten(cell.state_size)]
    return Cotangents(rng.standard_normal(shape), state)


def state_names(cell):
    fields = getattr(type(cell.state_size), "_fields", None)
    return [f"state.{f}" for f in fields] if fields else ["state"]


def evaluate(impl, cell, inputs, initial_state, cotangents, weights=None, **options):
    """Runs ``impl(cell, inputs, initial_state, **options)`` and its gradients.

    ``weights``: the ``[kernel, recurrent_kernel, bias]`` variables ``impl``
    really uses (another library's copy, say); the cell's by default.

    Returns a dict of numpy arrays: ``outputs``, ``state[.h/.c]``, ``d_inputs``,
    ``d_initial_state[.h/.c]`` (when an initial state is given) and ``d_<weight>``
    for ``kernel``, ``recurrent_kernel``, ``bias``, all in the cell's dtype.
    """
    import tensorflow as tf

    dtype = cell.dtype
    inputs = tf.convert_to_tensor(inputs, dtype)
    flat_s0 = (None if initial_state is None
               else [tf.convert_to_tensor(s, dtype) for s in tf.nest.flatten(initial_state)])
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        if flat_s0 is not None:
            tape.watch(flat_s0)
            initial_state = tf.nest.pack_sequence_as(initial_state, flat_s0)
        outputs, state = impl(cell, inputs, initial_state, **options)
        flat_state = tf.nest.flatten(state)
        loss = tf.reduce_sum(outputs * tf.cast(cotangents.outputs, dtype))
        for s, w in zip(flat_state, cotangents.state):
            loss += tf.reduce_sum(s * tf.cast(w, dtype))
    weights = list(weights) if weights is not None else [cell.kernel, cell.recurrent_kernel, cell.bias]
    sources = [inputs] + (flat_s0 or []) + weights
    grads = tape.gradient(loss, sources, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    names = state_names(cell)
    result = {"outputs": outputs}
    result.update(zip(names, flat_state))
    result["d_inputs"] = grads[0]
    if flat_s0 is not None:
        result.update(zip([f"d_initial_{n}" for n in names], grads[1:1 + len(flat_s0)]))
    result.update(zip(["d_kernel", "d_recurrent_kernel", "d_bias"], grads[-3:]))
    return {k: np.asarray(tf.cast(v, dtype).numpy()) for k, v in result.items()}


class Row(NamedTuple):
    name: str
    max_abs: float
    relative: float


def compare(got, want):
    """One ``Row`` per tensor: max abs error and that error over ``max |want|``."""
    if set(got) != set(want):
        raise ValueError(f"compare: tensors differ: {sorted(set(got) ^ set(want))}")
    rows = []
    for name in want:
        a, b = np.asarray(got[name], np.float64), np.asarray(want[name], np.float64)
        if a.shape != b.shape:
            rows.append(Row(name, float("inf"), float("inf")))
            continue
        err = float(np.max(np.abs(a - b))) if a.size else 0.0
        scale = float(np.max(np.abs(b))) if b.size else 0.0
        rows.append(Row(name, err, err / scale if scale else (0.0 if err == 0 else float("inf"))))
    return rows


def worst(rows):
    """The largest relative error among ``rows`` (0.0 for none)."""
    return max((r.relative for r in rows), default=0.0)


def keras_rnn_layer(kind, units, *, jit_compile, **kwargs):
    """A Keras 3 ``LSTM``, ``GRU`` or ``SimpleRNN`` layer (``kind``) of ``units``, for a step compiled with XLA
    (``jit_compile``) or not: the tools build every Keras RNN layer they time or profile here.

    Inside an XLA step ``LSTM`` and ``GRU`` get ``use_cudnn=False``: Keras 3 decides
    on cuDNN from the layer's arguments and whether a GPU exists, not from the
    compilation (``keras/src/backend/tensorflow/rnn.py``, ``cudnn_ok``), and a
    cuDNN kernel cannot be compiled by XLA (keras#18456). Outside XLA they keep
    Keras's default (``"auto"``: cuDNN where it can run), what a GPU user compares
    against. ``SimpleRNN`` has no cuDNN kernel.
    """
    import keras

    if kind not in ("LSTM", "GRU", "SimpleRNN"):
        raise ValueError(f"kind must be 'LSTM', 'GRU' or 'SimpleRNN', got {kind!r}")
    if kind != "SimpleRNN":
        kwargs["use_cudnn"] = False if jit_compile else "auto"
    return getattr(keras.layers, kind)(units, **kwargs)


class KerasUnroll:
    """``unroll``'s signature run by the Keras 3 layer of the same kind, with a copy of the cell's weights.

    The layer's variables are ``weights`` (Keras layout, so gradients compare
    one-to-one). ``sequence_length`` becomes a Keras mask. ``reverse`` flips
    inputs and mask along time, which is what Keras' ``go_backwards`` does, and
    flips the outputs back. Keras repeats the last output at masked steps, so
    outputs are zeroed past each row's length to match ``dynamic_rnn``.
    ``unroll`` and ``jit_compile`` do not apply to Keras and are not used by a
    call; the constructor's ``jit_compile`` says whether the layer will run
    inside an XLA-compiled step (``keras_rnn_layer``).
    """

    def __init__(self, cell, *, jit_compile=False):
        from fastcarry import GRU, LSTM, SimpleRNN
        from fastcarry.weights import fold_forget_bias

        kw = dict(return_sequences=True, return_state=True, dtype=cell.dtype.name, jit_compile=jit_compile)
        if isinstance(cell, LSTM):
            layer = keras_rnn_layer("LSTM", cell.units, **kw)
        elif isinstance(cell, GRU):
            layer = keras_rnn_layer("GRU", cell.units, reset_after=cell.reset_after, **kw)
        elif isinstance(cell, SimpleRNN):
            layer = keras_rnn_layer("SimpleRNN", cell.units, activation=cell.activation, **kw)
        else:
            raise TypeError(f"KerasUnroll: no Keras layer for {type(cell).__name__}")
        kernel, recurrent, bias = cell.get_weights()
        if isinstance(cell, LSTM):
            bias = fold_forget_bias(bias, cell.units, cell.forget_bias)  # Keras has no run-time forget bias
        layer.build((None, None, cell.input_dim))
        layer.set_weights([kernel, recurrent, bias])
        self.layer = layer
        self.weights = [layer.cell.kernel, layer.cell.recurrent_kernel, layer.cell.bias]

    def __call__(self, cell, inputs, initial_state=None, *, sequence_length=None, time_major=False,
                 reverse=False, unroll=1, jit_compile=True):
        import tensorflow as tf

        x = tf.transpose(inputs, [1, 0, 2]) if time_major else inputs
        mask = None if sequence_length is None else tf.sequence_mask(sequence_length, x.shape[1])
        if reverse:
            x = tf.reverse(x, [1])
        state = None if initial_state is None else list(tf.nest.flatten(initial_state))
        out = self.layer(x, mask=None if mask is None else (tf.reverse(mask, [1]) if reverse else mask),
                         initial_state=state)
        outputs, states = out[0], out[1:]
        if reverse:
            outputs = tf.reverse(outputs, [1])
        if mask is not None:
            outputs = outputs * tf.cast(mask, outputs.dtype)[:, :, None]
        if time_major:
            outputs = tf.transpose(outputs, [1, 0, 2])
        fields = hasattr(type(cell.state_size), "_fields")
        return outputs, (type(cell.state_size)(*states) if fields else states[0])


# -- the command ----------------------------------------------------------------------------------------------

def add_parser(subparsers):
    check = subparsers.add_parser(
        "check", help="compare fastcarry.unroll with the float64 reference and Keras 3 on random data",
        description="Builds random weights and inputs, runs fastcarry.unroll (XLA and graph; autodiff, hoisted "
                    "projection, chunk, swap_memory), the float64 reference and the Keras 3 layer with the same "
                    "weights, and compares outputs, final state and every gradient under a random cotangent. "
                    "Exits 1 on any FAIL.")
    add_workload_arguments(check, batch=4, time=16, input=8, units=16, time_type=non_negative)
    check.add_argument("--seq-lengths", type=non_negative, nargs="+", metavar="L",
                       help="one length per batch row, each in [0, T]")
    check.add_argument("--reverse", action="store_true")
    check.add_argument("--time-major", action="store_true")
    check.add_argument("--unroll", type=positive, default=None, metavar="K",
                       help="steps per loop iteration (default: the cell's default)")
    check.add_argument("--chunk", type=positive, default=None, metavar="C",
                       help="chunk for the chunk= and swap_memory rows (default: about T/3)")
    check.add_argument("--seed", type=int, default=0)
    return check


class Comparison(NamedTuple):
    """One comparison ``fastcarry check`` makes: its ``title``, one ``Row`` per tensor, and the tolerance its
    verdict is against (``None``: errors reported for information, no verdict); ``note`` says why ``rows`` is
    empty (a comparison that cannot run)."""

    title: str
    rows: list
    tol: object
    note: str = ""

    @property
    def failed(self):
        return self.tol is not None and worst(self.rows) > self.tol


def run(args, out=sys.stdout):
    """Prints every ``comparisons(args)`` with its verdict; returns the process exit code (0 all PASS, 1 any
    FAIL)."""
    import tensorflow as tf

    tf32 = tf.config.experimental.tensor_float_32_execution_enabled()
    cell_dtype = "float32"  # make_cell's cells
    tol = TOLERANCE[cell_dtype]
    print(f"fastcarry check: cell={args.cell} B={args.batch} T={args.time} D={args.input} H={args.units} "
          f"seq_lengths={args.seq_lengths} reverse={args.reverse} time_major={args.time_major} "
          f"unroll={args.unroll}; {cell_dtype}, tolerance {tol:g} relative to max |reference|; "
          f"TF32 off for the comparisons (this process had it {'on' if tf32 else 'off'})", file=out)
    failed = False
    for comparison in comparisons(args):
        if comparison.note:
            print(f"\n{comparison.title}: {comparison.note}", file=out)
            continue
        failed |= _report(comparison.title, comparison.rows, comparison.tol, out)
    print("FAIL" if failed else "PASS", file=out)
    return 1 if failed else 0


def comparisons(args):
    """Every ``Comparison`` of ``fastcarry check``'s arguments ``args``: fastcarry.unroll (XLA and graph;
    autodiff, hoisted projection, chunk, swap_memory) against the float64 reference, its XLA path against Keras
    3, all with TF32 off; last, the XLA path with TF32 on, for information. The process's TF32 setting is put
    back afterwards."""
    import tensorflow as tf

    tf32 = tf.config.experimental.tensor_float_32_execution_enabled()
    # TF enables TF32 matmuls on Ampere and later GPUs by default: float32 results then differ from the float64
    # reference by ~1e-3, beyond float32's tolerance, whatever fastcarry does.
    tf.config.experimental.enable_tensor_float_32_execution(False)
    try:
        return _comparisons(args)
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(tf32)


def _comparisons(args):
    import tensorflow as tf

    import fastcarry as fc

    if args.seq_lengths is not None:
        if len(args.seq_lengths) != args.batch:
            raise SystemExit(f"fastcarry check: --seq-lengths needs {args.batch} values (--batch), "
                             f"got {len(args.seq_lengths)}")
        if max(args.seq_lengths) > args.time:
            raise SystemExit(f"fastcarry check: --seq-lengths values must be in [0, T={args.time}], "
                             f"got {args.seq_lengths}")
    rng = np.random.default_rng(args.seed)
    cell = make_cell(args.cell, args.units, input_size=args.input, seed=args.seed)
    shape = (args.time, args.batch, args.input) if args.time_major else (args.batch, args.time, args.input)
    inputs = rng.standard_normal(shape)
    initial = [rng.standard_normal((args.batch, n)) * 0.5 for n in tf.nest.flatten(cell.state_size)]
    initial = tf.nest.pack_sequence_as(cell.state_size, initial)
    cot = random_cotangents(cell, args.batch, args.time, args.time_major, seed=args.seed + 1)
    options = dict(sequence_length=args.seq_lengths, time_major=args.time_major, reverse=args.reverse,
                   unroll=args.unroll)
    want = evaluate(fc.reference.unroll, cell.copy(dtype=tf.float64), inputs, initial, cot, **options)
    contenders = [
        ("fused jit  vs reference(float64)", dict(jit_compile=True)),
        ("fused graph vs reference(float64)", dict(jit_compile=False)),
        ("autodiff jit vs reference(float64)", dict(jit_compile=True, backward="autodiff")),
        ("hoisted jit vs reference(float64)", dict(jit_compile=True, projection="hoisted")),
    ]
    chunk = args.chunk or max(1, (args.time + 2) // 3)
    if args.time > 0:
        contenders += [(f"chunk={chunk} jit vs reference(float64)", dict(chunk=chunk)),
                       (f"chunk={chunk} swap_memory jit vs reference(float64)", dict(chunk=chunk, swap_memory=True))]
    tol = TOLERANCE[cell.dtype.name]
    out, fused_jit = [], None
    for title, extra in contenders:
        got = evaluate(fc.unroll, cell, inputs, initial, cot, **options, **extra)
        fused_jit = fused_jit or got  # the first: what Keras is compared with
        out.append(Comparison(title, compare(got, want), tol))
    if args.time > 0:
        keras = KerasUnroll(cell)
        keras_got = evaluate(keras, cell, inputs, initial, cot, weights=keras.weights, **options)
        out.append(Comparison("fused jit  vs keras 3", compare(fused_jit, keras_got), tol))
    else:  # Keras 3's layers fail on an empty sequence (a StridedSlice out of bounds inside their loop)
        out.append(Comparison("fused jit  vs keras 3", [], tol, "skipped, Keras 3's layers cannot run T = 0"))
    return out + [_tf32_comparison(cell, inputs, initial, cot, options, want)]


def _tf32_comparison(cell, inputs, initial, cot, options, want):
    """The fused XLA path with TF32 on, against the float64 reference: errors only, no verdict (TF32 rounds
    matmul inputs to 10 mantissa bits on the GPUs that have it, by design; a CPU has no TF32). fastcarry keys
    its compiled functions by the setting, so these are traced and compiled under it."""
    import tensorflow as tf

    import fastcarry as fc

    tf.config.experimental.enable_tensor_float_32_execution(True)
    try:
        got = evaluate(fc.unroll, cell, inputs, initial, cot, **options, jit_compile=True)
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(False)
    device = "a GPU with TF32" if tf.config.list_physical_devices("GPU") else "no GPU: TF32 has no effect here"
    return Comparison(f"fused jit with TF32 on vs reference(float64), for information ({device})",
                      compare(got, want), None)


def _report(title, rows, tol, out):
    """Prints ``rows`` under ``title``, each with PASS or FAIL against ``tol`` (None: errors only, no verdict);
    returns whether any failed."""
    print(f"\n{title}\n  {'tensor':<24}{'max abs err':>14}{'relative':>12}", file=out)
    failed = False
    for row in rows:
        ok = tol is None or row.relative <= tol
        failed |= not ok
        verdict = "" if tol is None else f"  {'PASS' if ok else 'FAIL'}"
        print(f"  {row.name:<24}{row.max_abs:>14.3e}{row.relative:>12.3e}{verdict}", file=out)
    return failed
