"""The gradient boundary: a strategy's compiled forward and backward joined by one custom gradient.

What a caller's ``GradientTape`` sees of ``fastcarry.unroll``: one op from
``(x, state, params, variables)`` to ``(ys, final_state)`` whose gradient is
the strategy's backward. Here too: symbolic-zero cotangents (a loss of the
final state only builds no ``[B, T, H]`` cotangent), the guard that makes a
second-order gradient raise instead of returning zeros, and the rule that no
tape records the compiled calls themselves.
"""

import tensorflow as tf

# Private but stable since TF 2.4: whether any GradientTape could record now.
from tensorflow.python.eager import record as _record

from fastcarry._records import Cotangents, Inputs


def _stop(tree):
    return tf.nest.map_structure(tf.stop_gradient, tree)


def _zeros_if_none(grads, like):
    return [tf.zeros_like(v) if g is None else g for g, v in zip(grads, like)]


def statically_zero(cotangent):
    """Whether ``cotangent`` is None or zeros known when tracing (what a tape makes for an unused output).

    TF's tapes hand a custom gradient zeros (``tf.zeros``: a ``Fill`` or a
    small ``Const``; ``tf.gradients``: ``ZerosLike``) for the outputs the loss
    does not use; JAX calls them symbolic zeros. Seeing them lets a loss of the
    final state skip the ``[B, T, H]`` cotangent altogether. An eager tensor is
    never treated as zero (that would need its values).
    """
    if cotangent is None:
        return True
    if not tf.is_symbolic_tensor(cotangent):
        return False
    op = cotangent.op
    if op.type == "ZerosLike":
        return True
    if op.type not in ("Fill", "Const"):
        return False
    value = tf.get_static_value(op.inputs[1] if op.type == "Fill" else cotangent)  # Fill(dims, value)
    return value is not None and not value.any()


def _no_second_order(outputs, inputs):
    """Identity on ``outputs`` whose gradient raises: the backward pass is not differentiable.

    The compiled backward is called on stop_gradient inputs (a tape must not see
    into a compiled loop), so without this a second-order gradient would come out
    silently zero. ``inputs`` ties the guard to what the outputs depend on.
    """
    @tf.custom_gradient
    def guard(*flat):
        def grad(*_):
            raise NotImplementedError(
                "fastcarry.unroll has no second-order gradient with jit_compile=True, backward='fused' "
                "or chunk= (the backward is a separately compiled loop); use jit_compile=False, "
                "backward='autodiff', chunk=None, whose graph loop TF differentiates to any order")
        return list(flat[:len(outputs)]), grad
    return guard(*outputs, *inputs)


def replica_copies(variable):
    """``variable``, or for a distributed one (``tf.distribute``) each replica's copy: what a function traced in
    a replica (or a read in the cross-replica context) captures, since the distributed variable's own ``handle``
    exists only in a replica's context."""
    if isinstance(variable, tf.distribute.DistributedValues):
        return tuple(variable.values)
    return (variable,)


def _check_variables_known(core, variables):
    """Raises if the compiled functions read a trainable variable the core does not list (it would get no gradient)."""
    known = {c.ref() for v in core.variables for c in (v, *replica_copies(v))}
    unknown = [v for v in variables if v.ref() not in known]
    if unknown:
        raise ValueError(f"{core.name}'s step reads {', '.join(repr(v.name) for v in unknown)}, a trainable "
                         f"tf.Variable not in its variables, so it would get no gradient: list every variable "
                         f"the step reads (fc.FunctionCell(..., variables=[...]))")


def unrecorded(core, fn, *args, inner_tapes=True):
    """``fn(*args)`` with no tape recording the call when ``fn`` reads variables.

    Every tape watches trainable variables, so a call of a compiled function
    that captures them would be recorded, and eagerly TF builds that
    function's gradient at once (and fails on XLA's loop ops). Recording is
    stopped for the call. A function with tapes inside it (``inner_tapes``:
    the backward's VJPs) is traced with recording on, since those tapes must
    record; one without (a forward) is traced with recording off too: a
    persistent tape watching its variables would make TF's ``while_v2`` build
    a higher-order gradient of the loop while tracing, which XLA's ops lack.
    (The concrete function costs no more to call than ``fn`` itself.)
    """
    if not hasattr(fn, "get_concrete_function"):  # swap_memory's backward, a loop over compiled calls
        return fn(*args)
    if inner_tapes:
        concrete = fn.get_concrete_function(*args)
    else:
        with _record.stop_recording():
            concrete = fn.get_concrete_function(*args)
    captured = concrete.trainable_variables
    if not captured:
        return concrete(*args)
    _check_variables_known(core, captured)
    with _record.stop_recording():
        return concrete(*args)


def call(core, pair, forward, backward, inputs, params):
    """``forward``'s ``(ys, final_state)`` at ``inputs`` (an ``Inputs``), differentiable through ``backward``.

    ``forward`` and ``backward`` are ``pair``'s sides for ``core`` (``fastcarry._strategies``);
    ``pair.park`` moves the residuals to where they wait between the passes.
    """
    x, state, validity = inputs
    n_state, n_params = len(tf.nest.flatten(state)), len(tf.nest.flatten(params))
    # A generic cell's functions read its variables themselves; their values
    # read here are what the caller's tape sees, and their gradients are
    # returned for these reads (so they reach the variables).
    var_values = [v.read_value() for v in core.variables]

    @tf.custom_gradient
    def run(x, *flat):
        s0 = tf.nest.pack_sequence_as(state, flat[:n_state])
        p = tf.nest.pack_sequence_as(params, flat[n_state:n_state + n_params])
        cut = Inputs(_stop(x), _stop(s0), validity)
        # No tape may see the compiled call: it would ask for the function's own
        # gradient, whose loop accumulators (TensorLists) cannot leave XLA. The
        # inputs are cut (stop_gradient); captured variables are cut below.
        ys, final, residuals = unrecorded(core, forward, cut, _stop(p), inner_tapes=False)
        residuals = pair.park(residuals)
        flat_final = tf.nest.flatten(final)

        # ``variables``: TF passes the variables it saw read inside (a generic
        # cell's, captured by the compiled call); their gradients go through
        # ``var_values`` instead, so nothing more is returned for them here.
        def grad(dys, *dfinal, variables=None):
            # A loss of the final state only: no [B, T, H] cotangent is made or read.
            dys = None if statically_zero(dys) else _stop(dys)
            dfinal = tf.nest.pack_sequence_as(state, _zeros_if_none(dfinal, flat_final))
            dx, dstate, (dparams, dvars) = unrecorded(core, backward, cut, _stop(p), residuals,
                                                      Cotangents(dys, _stop(dfinal)))
            flat_grads = [dx] + tf.nest.flatten(dstate) + tf.nest.flatten(dparams) + list(dvars)
            ties = [x] + ([] if dys is None else [dys]) + tf.nest.flatten(dfinal) + list(flat)
            guarded = _no_second_order(flat_grads, ties)
            return guarded if not variables else (guarded, [None] * len(variables))

        return [ys] + flat_final, grad

    out = run(x, *tf.nest.flatten(state), *tf.nest.flatten(params), *var_values)
    return out[0], tf.nest.pack_sequence_as(state, out[1:])
