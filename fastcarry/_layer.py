"""What makes a fastcarry cell a Keras 3 layer and a ``tf.Module`` at once: ``CellLayer``.

Keras 3 tracks only its own layers and variables: a ``tf.Module`` or a plain
``tf.Variable`` assigned to a ``keras.Model`` is not trained by ``fit`` and
not saved by ``model.save``, and nothing warns. ``tf.Module`` parents, in
turn, find only ``tf.Variable`` attributes of ``tf.Module`` children. So a
cell is both:

- a ``keras.layers.Layer``: a model that holds it tracks it, ``fit`` trains
  its Keras variables (``trainable_weights``), ``.keras``/``model.export``/
  checkpoints save them, and ``keras.layers.RNN(cell)`` or
  ``fastcarry.keras.RNN(cell)`` runs it (``call`` is one step);
- a ``tf.Module`` whose attributes (``kernel``, ...) are the ``tf.Variable``
  objects behind those Keras variables (the same storage): a ``tf.Module``
  parent's ``trainable_variables`` finds them, and ``tf.train.Checkpoint``
  saves each once, under the attribute's name.

``variables`` and ``trainable_variables`` are Keras's lists (Keras variables,
which ``tf.GradientTape`` and the optimizers take as they take ``tf.Variable``):
a parent layer's walk reads them, so they must be the variables it trains.

Shapes: ``call(x_t [B, D], states) -> (y_t [B, output_size], new_states)``.
"""

import contextlib
import warnings
from typing import Any

import keras
import tensorflow as tf
from keras.src.backend.common import global_state

from fastcarry._protocol import check_core


def tf_variable(variable, where):
    """The ``tf.Variable`` behind ``variable`` (a Keras 3 variable holds one as ``.value``)."""
    inner = variable if isinstance(variable, tf.Variable) else getattr(variable, "value", None)
    if not isinstance(inner, tf.Variable):
        raise TypeError(f"{where} holds {type(variable).__name__} {getattr(variable, 'name', '')!r}, "
                        f"which is not a tf.Variable")
    return inner


@contextlib.contextmanager
def concrete_variables():
    """A context in which Keras makes variables at once, also inside its symbolic build.

    A model's first call traces ``call`` symbolically under Keras's "stateless
    scope", where ``add_weight`` defers a variable's creation; a cell must
    create its ``tf.Variable`` objects there (its attributes are them, see the
    module docstring), as TF's own layers did. Keras keeps the scope in its
    global state (``keras/src/backend/common/stateless_scope.py``), so it is
    set aside while the variables are made, and restored.
    """
    scope = global_state.get_global_attribute("stateless_scope")
    global_state.set_global_attribute("stateless_scope", None)
    try:
        yield
    finally:
        global_state.set_global_attribute("stateless_scope", scope)


def in_keras_call():
    """Whether a Keras layer's ``call`` is running (Keras keeps its call context in its global state)."""
    return global_state.get_global_attribute("current_call_ctx") is not None


def input_dim_of(input_shape, name):
    """``D`` from an int or from a shape ending in ``D`` (what Keras's ``build`` passes: ``(B, D)``)."""
    if isinstance(input_shape, (tuple, list, tf.TensorShape)):
        dims = tf.TensorShape(input_shape).as_list()
        if not dims or dims[-1] is None:
            raise ValueError(f"{name} must be an int D or a shape ending in D, got {input_shape!r}")
        return dims[-1]
    return input_shape


class CellLayer(keras.layers.Layer, tf.Module):
    """Base of fastcarry's cells: a Keras 3 layer that is also a ``tf.Module`` (see the module docstring).

    Subclasses set ``state_size``, ``output_size``, ``core()``, ``params()``
    and ``zero_state``; ``call`` runs one step of ``core()``.
    """

    def __init__(self, *, dtype: tf.DType, name: str | None):
        keras.layers.Layer.__init__(self, name=name, dtype=dtype.name)
        # The tf.Module part: its name and name scope are the layer's (Keras makes names unique).
        tf.Module.__init__(self, name=self.name)
        self._warned_unbuilt = False

    # Keras's Operation assigns `name`; tf.Module defines it read-only. One value serves both.
    @property
    def name(self):
        return vars(self).get("_layer_name")

    @name.setter
    def name(self, value):
        vars(self)["_layer_name"] = value

    # Keras sets `built`; here it is derived from what the cell holds, so the two cannot disagree.
    @property
    def built(self):
        try:
            return self.input_dim is not None
        except AttributeError:  # read by Keras's __init__, before the subclass's attributes exist
            return False

    @built.setter
    def built(self, value):
        del value

    @property
    def dtype(self) -> tf.DType:
        """The dtype of the variables, inputs, state and outputs (one for all)."""
        return tf.as_dtype(self.dtype_policy.variable_dtype)

    # -- the variable lists: Keras's (a parent layer's walk reads `variables`), loud while there are none ----
    @property
    def variables(self):
        """The Keras variables (Keras's order); warns while the cell has none (unbuilt)."""
        self._warn_if_unbuilt("variables")
        return keras.layers.Layer.variables.fget(self)

    @property
    def trainable_variables(self):
        """The trainable Keras variables (Keras's order); warns while the cell has none (unbuilt)."""
        self._warn_if_unbuilt("trainable_variables")
        return keras.layers.Layer.trainable_variables.fget(self)

    def _warn_if_unbuilt(self, what, owner=None):
        if self.built or self._warned_unbuilt:
            return
        self._warned_unbuilt = True
        kind = type(self).__name__
        warnings.warn(
            f"{owner or 'cell'}.{what} holds none of the {kind} cell {self.name!r}'s weights: it has no variables "
            f"until it is built, so a parameter list collected now never trains it. {self._build_hint()} "
            f"(fc.unroll builds it on first use)", UserWarning, stacklevel=3)  # the caller of the property

    def _build_hint(self):
        return "Call cell.build(D) first"

    # -- Keras's RNN cell contract: one step ------------------------------------
    def call(self, inputs: Any, states: Any, training: Any = None) -> tuple[Any, Any]:
        """One step: ``inputs [B, D]``, ``states`` a list (Keras's RNN) or ``state_size``'s structure.

        Returns ``(y_t [B, output_size], new_states)``, ``new_states`` a list if
        ``states`` was one, else in ``state_size``'s structure.
        """
        del training  # fastcarry's cells have no dropout
        state = tf.nest.pack_sequence_as(self.state_size, tf.nest.flatten(states))
        core = check_core(self.core(), type(self).__name__)
        params = self.params()
        new_state, y = core.run_step(params, state, core.project(params, inputs[None])[0])
        if isinstance(states, list):
            return y, list(tf.nest.flatten(new_state))
        return y, new_state

    def get_initial_state(self, batch_size: Any) -> list:
        """Zeros, one ``[batch_size, size]`` per state component, as the flat list Keras's RNN passes."""
        return list(tf.nest.flatten(self.zero_state(batch_size)))

    def compute_output_spec(self, inputs, states, training=None):
        # Keras's symbolic call (a functional model) would otherwise trace `call`, whose XLA-free step is fine
        # but needs built variables; shapes are known without it.
        batch = inputs.shape[0]
        spec = keras.KerasTensor((batch, self.output_size), dtype=self.dtype.name)
        flat = [keras.KerasTensor((batch, s), dtype=self.dtype.name) for s in tf.nest.flatten(self.state_size)]
        return spec, (flat if isinstance(states, list) else tf.nest.pack_sequence_as(self.state_size, flat))


def untracked_variables(cell, layer):
    """Names of ``cell``'s trainable ``tf.Variable``\\ s that no Keras variable of ``layer`` holds (fit skips them)."""
    held = [tf_variable(v, "layer") for v in layer.weights]
    with warnings.catch_warnings():  # an unbuilt part's warning is about parameter lists; this is a check
        warnings.simplefilter("ignore", UserWarning)
        found = [v for v in getattr(cell, "trainable_variables", ()) if getattr(v, "trainable", False)]
    behind = [v if isinstance(v, tf.Variable) else getattr(v, "value", v) for v in found]
    return [v.name for v in behind if not any(v is h for h in held)]


class ProtocolLayer(CellLayer):
    """A cell of ``fastcarry.CellProtocol`` that is not a Keras layer, as one (``keras.layers.RNN`` holds it).

    Members are the cell's; the Keras variables among its ``trainable_variables``
    (once built) are this layer's weights. ``call`` is one step of its ``core()``.
    """

    def __init__(self, cell: Any, *, name: str | None = None):
        super().__init__(dtype=tf.as_dtype(cell.dtype), name=name or "protocol_cell")
        vars(self)["cell"] = cell  # untracked: its Keras variables are tracked below, once they exist
        self.held = []
        if cell.input_dim is not None:
            self.held = self._keras_variables()

    def _keras_variables(self):
        return [v for v in getattr(self.cell, "trainable_variables", ()) if isinstance(v, keras.Variable)]

    state_size = property(lambda self: self.cell.state_size)
    output_size = property(lambda self: self.cell.output_size)
    input_dim = property(lambda self: self.cell.input_dim)

    def build(self, input_dim: Any) -> None:
        """Builds the cell for ``D`` (an int or Keras's ``(B, D)``) and tracks its Keras variables."""
        self.cell.build(input_dim_of(input_dim, "input_dim"))
        self.held = self._keras_variables()

    def zero_state(self, batch_size, dtype=None):
        return self.cell.zero_state(batch_size, dtype)

    def core(self):
        return self.cell.core()

    def params(self):
        return self.cell.params()

    @property
    def trainable_variables(self):
        return list(getattr(self.cell, "trainable_variables", ()))

    def get_config(self):
        raise NotImplementedError(f"{type(self.cell).__name__} is not a Keras layer and has no config: save the "
                                  f"weights (model.save_weights), or the model with model.export")
