"""One support check: why a Keras cell cannot run exactly on a fastcarry path (xformers' ``not_supported_reasons``).

``fc.as_cell``, the importers (``fc.LSTM.from_keras``, ...) and ``fastcarry.keras``
all ask ``not_supported_reasons``; each reason is a short text naming the
setting and the value that rules the path out, and an empty list means the
path runs the cell exactly.
"""

from fastcarry.kernels.simple_rnn import ACTIVATIONS

# Keras's cell classes (Keras 3 or tf_keras) that a fused kernel runs, by kernel.
FUSED_KINDS = {"LSTMCell": "lstm", "GRUCell": "gru", "SimpleRNNCell": "simple_rnn"}
PATHS = ("fused", "generic", "weights")


def activation_name(fn):
    """A Keras activation's name (``"tanh"``), or its repr."""
    return getattr(fn, "__name__", repr(fn))


def fused_kind(cell):
    """``"lstm"``, ``"gru"`` or ``"simple_rnn"`` for a Keras ``LSTMCell``/``GRUCell``/``SimpleRNNCell``, else None.

    (TF1's legacy ``GRUCell`` shares the name, not the layout: it has ``zero_state``.)
    """
    kind = FUSED_KINDS.get(type(cell).__name__)
    if kind is None or not type(cell).__module__.startswith(("keras", "tf_keras")) or hasattr(cell, "zero_state"):
        return None
    return kind


def _activation_reasons(cell, kind):
    act = activation_name(cell.activation)
    if kind == "simple_rnn":
        return [] if act in ACTIVATIONS else [f"activation must be one of {sorted(ACTIVATIONS)}, got {act!r}"]
    reasons = [] if act == "tanh" else [f"activation must be 'tanh', got {act!r}"]
    rec = activation_name(cell.recurrent_activation)
    return reasons + ([] if rec == "sigmoid" else [f"recurrent_activation must be 'sigmoid', got {rec!r}"])


def _dropout_reasons(cell, knobs):
    return [f"{type(cell).__name__} {knob}={getattr(cell, knob)} (fastcarry calls cells as Keras does at "
            f"inference, with no dropout)" for knob in knobs if getattr(cell, knob, 0.0)]


def not_supported_reasons(cell, path="fused", *, kind=None, input_dropout=False):
    """Why ``path`` cannot run the Keras cell ``cell`` exactly; ``[]`` when it can.

    Args:
      cell: a Keras (3 or ``tf_keras``) or TF1 cell.
      path: ``"fused"`` (a fused kernel on the cell's variables), ``"generic"``
        (the cell's own ``call`` per step, as at inference: no dropout), or
        ``"weights"`` (a fastcarry cell holding a copy of its weights: the
        math must match; dropout is the caller's business).
      kind: the fused kernel (``"lstm"``, ``"gru"``, ``"simple_rnn"``); None:
        the cell's class decides (``fused_kind``).
      input_dropout: the caller applies the cell's input ``dropout`` itself,
        one mask for all steps (``fastcarry.keras``'s layers), which Keras's
        LSTM/GRU ``implementation=1`` does not do (a mask per gate).
    """
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if path == "generic":
        return _dropout_reasons(cell, ("dropout", "recurrent_dropout"))
    kind = kind or fused_kind(cell)
    if kind is None:
        return [f"{type(cell).__name__} is not keras.layers.LSTMCell, GRUCell or SimpleRNNCell"]
    if path == "weights":
        return _activation_reasons(cell, kind)
    reasons = []
    if getattr(cell, "recurrent_dropout", 0.0):
        reasons.append(f"recurrent_dropout={cell.recurrent_dropout} (a new mask on h inside every step)")
    if not input_dropout:
        reasons += _dropout_reasons(cell, ("dropout",))
    elif kind != "simple_rnn" and getattr(cell, "dropout", 0.0) and getattr(cell, "implementation", 2) == 1:
        reasons.append("implementation=1 with dropout (one dropout mask per gate)")
    return reasons + _activation_reasons(cell, kind)
