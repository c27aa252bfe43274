"""Which phase of an RNN training step an op belongs to, from its TF op name and kind.

fastcarry names every op by its phase with ``tf.name_scope`` (the names
survive into XLA's HLO metadata, so the trace carries them):

==========================  ===========================================================
phase                       where the ops are made
==========================  ===========================================================
input projection            ``fastcarry_<cell>/recurrence/.../project`` (per loop iteration)
forward recurrent matmul    ``.../recurrence/.../recurrent_matmul`` (``h @ recurrent_kernel``)
forward gates               the rest of the forward loop (``gates``: the elementwise update,
                            the saved activations' writes, the loop's own bookkeeping)
backward loop               ``fastcarry_<cell>_grad/.../recurrence_grad`` (and the chunk loop)
weight/input gradients      ``weights_grad``: the large matmuls after the loop
layout                      ``layout`` (to and from the processing order) and transposes
chunk recompute             ``recompute``: ``chunk=``'s re-run of a chunk's forward
host<->device copies        ``fastcarry_swap`` (``swap_memory``) and every memcpy the trace shows
other RNN ops               anything else under a ``fastcarry_`` scope
outside the RNN             every other op: the user's model, loss, optimizer
==========================  ===========================================================

``Summary`` adds ``tracing and compilation`` (``tf.function`` tracing and XLA
compiling inside a traced step) and ``no op running``: step time in which no op
ran at all (Python, dispatch, synchronisation, allocation).
"""

import functools
import re

INPUT_PROJECTION = "input projection"
RECURRENT_MATMUL = "forward recurrent matmul"
GATES = "forward gates"
BACKWARD_LOOP = "backward loop"
WEIGHT_GRADIENTS = "weight/input gradients"
LAYOUT = "layout"
RECOMPUTE = "chunk recompute"
COPIES = "host<->device copies"
OTHER = "other RNN ops"
OUTSIDE = "outside the RNN"
COMPILE = "tracing and compilation"
IDLE = "no op running"

# In table order. The first eight are fastcarry's phases proper.
PHASES = (INPUT_PROJECTION, RECURRENT_MATMUL, GATES, BACKWARD_LOOP, WEIGHT_GRADIENTS, LAYOUT, RECOMPUTE, COPIES,
          OTHER, OUTSIDE, COMPILE, IDLE)
# Phases whose time is mostly matmuls: their achieved GFLOP/s is reported.
MATMUL_PHASES = (INPUT_PROJECTION, RECURRENT_MATMUL, WEIGHT_GRADIENTS)

FASTCARRY = "fastcarry_"
_DOTS = ("dot", "MatMul", "_MklMatMul", "BatchMatMulV2", "_MklBatchMatMulV2")
_TRANSPOSE = re.compile(r"(^|/)(transpose|Transpose|ReverseSequence|ReverseV2)(_\d+)?(/|$)")


def classify(name, kind, opcode, scope=FASTCARRY):
    """The phase of one op run.

    ``name`` is its TF op name, ``kind`` "xla"/"tf"/"copy"/"compile", ``opcode``
    the HLO opcode or TF op type. ``scope`` marks the RNN's ops: fastcarry's
    ``"fastcarry_"`` (phases from its own scopes, table above), or another
    RNN's layer name, such as a Keras layer's ``"lstm"`` (matching the scope
    ``lstm/`` and TF's uniquified ``lstm_1/``), whose phases come from the loop
    structure alone (``_generic``).
    """
    if kind == "compile":
        return COMPILE
    if kind == "copy" or "fastcarry_swap" in name:
        return COPIES
    if scope != FASTCARRY:
        return _generic(name, opcode) if _layer_scope(scope).search(name) else OUTSIDE
    if scope not in name:
        return OUTSIDE
    if "/recompute/" in name:
        return RECOMPUTE
    if "/layout/" in name or _TRANSPOSE.search(name) or opcode in ("Transpose", "_MklTranspose", "transpose"):
        return LAYOUT
    if "weights_grad" in name:
        return WEIGHT_GRADIENTS
    if "recurrence_grad" in name or "chunks_grad" in name:
        return BACKWARD_LOOP
    if "/project/" in name:
        return INPUT_PROJECTION
    if "/recurrence/" in name:
        if "/recurrent_matmul/" in name or opcode in _DOTS:
            return RECURRENT_MATMUL
        return GATES
    return OTHER


@functools.lru_cache(maxsize=64)
def _layer_scope(layer):
    return re.compile(rf"(^|/){re.escape(layer)}(_\d+)?/")


def _generic(name, opcode):
    """Phases of an RNN without fastcarry's scopes (a Keras layer), from where its ops sit.

    A Keras RNN runs its per-step math (input and recurrent matmuls both) in a
    ``while`` loop and TF differentiates it: matmuls in the forward loop count
    as ``forward recurrent matmul``, its other ops as ``forward gates``,
    everything in the gradient's loop as ``backward loop``, gradient matmuls
    outside a loop as ``weight/input gradients``.
    """
    in_loop = "/while/" in name or name.endswith("/while")
    in_grad = "gradient" in name or "_grad" in name
    dot = opcode in _DOTS
    if in_loop:
        if in_grad:
            return BACKWARD_LOOP
        return RECURRENT_MATMUL if dot else GATES
    if in_grad:
        return WEIGHT_GRADIENTS if dot else OTHER
    if _TRANSPOSE.search(name):
        return LAYOUT
    return INPUT_PROJECTION if dot else OTHER
