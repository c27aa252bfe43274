"""``fc.Stack``: cells one above the other (TF1 ``MultiRNNCell``), a cell itself.

Shapes: ``inputs [B, T, D]`` (``[T, B, D]`` time-major) -> outputs ``[B, T, H_last]``;
state: a tuple with each layer's state.
"""

from typing import Any, Sequence

import keras

from fastcarry import _validate
from fastcarry._adapters import as_cell
from fastcarry._layer import CellLayer, input_dim_of
from fastcarry._protocol import Core, identity_project


def _as_layer(cell, index):
    try:
        return as_cell(cell)
    except TypeError as err:
        raise TypeError(f"cells[{index}]: {err}") from None


@keras.saving.register_keras_serializable(package="fastcarry.cells")
class Stack(CellLayer):
    """Cells stacked in depth, a cell itself (``MultiRNNCell``'s semantics).

    Layer ``l + 1`` reads layer ``l``'s output at the same step; the state is
    a tuple of each layer's state; the output is the last layer's;
    ``sequence_length`` masks every layer. ``fc.unroll``, ``fc.Carry``,
    ``fc.bidirectional`` and ``fastcarry.reference.unroll`` all take it, and a
    ``Stack`` may hold another.

    It follows ``fastcarry.CellProtocol``: its ``core()`` is the whole
    stack's step, every layer inside one step (``MultiRNNCell``'s). But
    ``fc.unroll`` runs it **layer by layer** (``run_layers``): each layer's whole sequence
    through its own compiled loop, then the next layer's over that layer's
    outputs (its input projection one matmul over all of them). That equals
    running all layers inside one step (``MultiRNNCell`` under ``dynamic_rnn``,
    which is what ``fastcarry.reference.unroll`` does), because step ``t`` of
    layer ``l + 1`` needs only steps ``<= t`` of layer ``l``; past a row's
    length every layer copies its state and outputs zeros, so the next layer
    sees zeros there and is masked too. The options given to ``unroll``
    (``chunk``, ``swap_memory``, ``reverse``, ...) apply to every layer.

    It is a Keras 3 layer (``fastcarry._layer``): a model holding it tracks,
    trains and saves the Keras layers among its cells (``members``, as given;
    ``cells`` holds them as ``fc.as_cell`` runs them).

    Args:
      cells: a non-empty sequence of cells: fastcarry cells, Keras or TF1
        cells (through ``fc.as_cell``), or Stacks.
      name: the layer's name (Keras makes one if None).
    """

    def __init__(self, cells: Sequence[Any], *, name: str | None = None):
        if isinstance(cells, (str, bytes)) or not hasattr(cells, "__iter__"):
            raise TypeError(f"cells must be a sequence of cells, got {type(cells).__name__}")
        cells = list(cells)
        if not cells:
            raise ValueError("cells must hold at least one cell, got an empty sequence")
        adapted = tuple(_as_layer(c, i) for i, c in enumerate(cells))
        dtypes = {c.dtype for c in adapted}
        if len(dtypes) > 1:
            raise TypeError(f"cells must share one dtype, got {[c.dtype.name for c in adapted]}")
        super().__init__(dtype=adapted[0].dtype, name=name)
        # Tracked (by Keras and by checkpoints): the cells as given. Untracked: the adapters that run them.
        self.members = tuple(cells)
        vars(self)["cells"] = adapted

    @property
    def built(self):
        return all(getattr(c, "input_dim", None) is not None for c in vars(self).get("cells", ()))

    @built.setter
    def built(self, value):
        del value  # Keras sets it; it follows the cells

    @property
    def dtype(self):
        return self.cells[0].dtype

    @property
    def state_size(self):
        """A tuple of each layer's ``state_size``."""
        return tuple(c.state_size for c in self.cells)

    @property
    def output_size(self):
        """The last layer's."""
        return self.cells[-1].output_size

    @property
    def input_dim(self):
        return self.cells[0].input_dim

    def build(self, input_dim: Any) -> None:
        """Builds layer by layer: each for the previous one's ``output_size`` (D: an int or Keras's ``(B, D)``)."""
        input_dim = input_dim_of(input_dim, "input_dim")
        for cell in self.cells:
            cell.build(input_dim)
            input_dim = cell.output_size

    def zero_state(self, batch_size, dtype=None):
        return tuple(c.zero_state(batch_size, dtype) for c in self.cells)

    @property
    def trainable_variables(self):
        """Every layer's trainable variables, in layer order (Keras or TF1 cells' included)."""
        self._warn_if_unbuilt("trainable_variables")
        return [v for cell in self.cells for v in cell.trainable_variables]

    def get_config(self) -> dict:
        """The cells' Keras configs (Keras serialization); a cell without one raises ``NotImplementedError``."""
        return {"cells": [keras.saving.serialize_keras_object(c) for c in self.members], "name": self.name}

    @classmethod
    def from_config(cls, config: dict) -> "Stack":
        cells = [keras.saving.deserialize_keras_object(c) for c in config["cells"]]
        return cls(cells, name=config.get("name"))

    def core(self):
        """Every layer inside one step (``MultiRNNCell``'s step): ``states`` a tuple, the last layer's output."""
        cores = [c.core() for c in self.cells]

        def step(params, states, x_t):
            new_states = []
            for core, layer_params, state in zip(cores, params, states):
                state, x_t = core.run_step(layer_params, state, core.project(layer_params, x_t[None])[0])
                new_states.append(state)
            return tuple(new_states), x_t

        variables = tuple(v for core in cores for v in core.variables)
        # A layer whose functions close over its own variables makes the stack's per-owner too.
        owner = self if any(core.owner is not None for core in cores) else None
        key = tuple((core.name, core.key, core.output_size) for core in cores)
        return Core("stack", key, identity_project, self.output_size, step=step, variables=variables, owner=owner)

    def params(self):
        """A tuple of each layer's ``params()``."""
        return tuple(c.params() for c in self.cells)

    def __repr__(self):
        return f"Stack([{', '.join(map(repr, self.cells))}])"


def run_layers(stack, run, inputs, initial_state, time_major):
    """``fc.unroll`` of a ``Stack``: ``run(cell, inputs, state) -> (outputs, state)`` layer after layer, each
    reading the previous layer's outputs; returns the last outputs and a tuple of every layer's final state."""
    if initial_state is not None:
        if not isinstance(initial_state, (tuple, list)) or len(initial_state) != len(stack.cells):
            got = (f"a {type(initial_state).__name__} of {len(initial_state)}"
                   if isinstance(initial_state, (tuple, list)) else type(initial_state).__name__)
            raise TypeError(f"initial_state must be a tuple with one state per layer ({len(stack.cells)}) for "
                            f"a Stack, or None; got {got}")
        batch = getattr(inputs, "shape", [None, None])[1 if time_major else 0]
        initial_state = [_validate.check_state(s, c, batch, name=f"initial_state[{i}]")
                         for i, (s, c) in enumerate(zip(initial_state, stack.cells))]
    states = []
    outputs = inputs
    for i, cell in enumerate(stack.cells):
        outputs, state = run(cell, outputs, None if initial_state is None else initial_state[i])
        states.append(state)
    return outputs, tuple(states)
