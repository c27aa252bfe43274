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
weight/input gradients      ``weights_grad``, ``project_grad``: the large matmuls after the loop
layout                      ``layout`` (to and from the processing order) and transposes
chunk recompute             ``recompute``: ``chunk=``'s re-run of a chunk's forward
host<->device copies        ``fastcarry_swap`` (``swap_memory``) and every memcpy the trace shows
other fastcarry             anything else under a ``fastcarry_`` scope
outside fastcarry           every other op: the user's model, loss, optimizer
==========================  ===========================================================

``Summary`` adds ``tracing and compilation`` (``tf.function`` tracing and XLA
compiling inside a traced step) and ``no op running``: step time in which no op
ran at all (Python, dispatch, synchronisation, allocation).
"""

import re

INPUT_PROJECTION = "input projection"
RECURRENT_MATMUL = "forward recurrent matmul"
GATES = "forward gates"
BACKWARD_LOOP = "backward loop"
WEIGHT_GRADIENTS = "weight/input gradients"
LAYOUT = "layout"
RECOMPUTE = "chunk recompute"
COPIES = "host<->device copies"
OTHER = "other fastcarry"
OUTSIDE = "outside fastcarry"
COMPILE = "tracing and compilation"
IDLE = "no op running"

# In table order. The first eight are fastcarry's phases proper.
PHASES = (INPUT_PROJECTION, RECURRENT_MATMUL, GATES, BACKWARD_LOOP, WEIGHT_GRADIENTS, LAYOUT, RECOMPUTE, COPIES,
          OTHER, OUTSIDE, COMPILE, IDLE)
# Phases whose time is mostly matmuls: their achieved GFLOP/s is reported.
MATMUL_PHASES = (INPUT_PROJECTION, RECURRENT_MATMUL, WEIGHT_GRADIENTS)

_TRANSPOSE = re.compile(r"(^|/)(transpose|Transpose|ReverseSequence|ReverseV2)(_\d+)?(/|$)")


def classify(name, kind, opcode):
    """The phase of one op run: ``name`` its TF op name, ``kind`` "xla"/"tf"/"copy", ``opcode`` HLO or TF type."""
    if kind == "compile":
        return COMPILE
    if kind == "copy" or "fastcarry_swap" in name:
        return COPIES
    if "fastcarry_" not in name:
        return OUTSIDE
    if "/recompute/" in name:
        return RECOMPUTE
    if "/layout/" in name or _TRANSPOSE.search(name) or opcode in ("Transpose", "_MklTranspose", "transpose"):
        return LAYOUT
    if "weights_grad" in name or "project_grad" in name:
        return WEIGHT_GRADIENTS
    if "recurrence_grad" in name or "chunks_grad" in name:
        return BACKWARD_LOOP
    if "/project/" in name:
        return INPUT_PROJECTION
    if "/recurrence/" in name:
        if "/recurrent_matmul/" in name or opcode in ("dot", "MatMul", "_MklMatMul"):
            return RECURRENT_MATMUL
        return GATES
    return OTHER
