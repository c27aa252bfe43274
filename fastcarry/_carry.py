"""``fastcarry.Carry``: recurrent state that persists across calls (stateful RNNs, BPTT over a stream)."""

from typing import Any

import numpy as np
import tensorflow as tf

# Private but stable since TF 2.4: whether any GradientTape could record now.
from tensorflow.python.eager import record as _record

from fastcarry import _validate
from fastcarry._adapters import as_cell
from fastcarry._replicas import ReplicaState, in_replica, local_replica_ids, replica_id, replicas_in_sync
from fastcarry._unroll import unroll as _unroll


def _context():
    """Where a tensor made now lives: None when eager, else the graph being built."""
    return None if tf.executing_eagerly() else tf.compat.v1.get_default_graph()


def _where():
    """Whose live state: the replica's index inside ``strategy.run`` (replicas trace into one graph), else None."""
    return replica_id() if in_replica() else None


class Carry(tf.Module):
    """A cell plus its state, carried from one call to the next.

    Feeding a long sequence in chunks equals feeding it at once::

        carry = fc.Carry(cell, batch_size=B, truncate=False)
        with tf.GradientTape() as tape:
            y1 = carry(x[:, :3])            # starts from carry.state (zeros), stores the final state
            y2 = carry(x[:, 3:])            # starts where y1 stopped
        # y1, y2, and the gradients of any loss of them == fc.unroll(cell, x) over all 6 steps

    The state lives in non-trainable ``tf.Variable``\\ s (``[batch_size, H]`` per
    component), so it survives between ``tf.function`` calls and is saved by
    ``tf.train.Checkpoint``. Within one eager ``GradientTape`` or one traced
    function the calls also pass the state on as a tensor, which is what
    gradients flow through:

    - ``truncate=True`` (default, *truncated BPTT*): each call starts from the
      carried state under ``tf.stop_gradient``; gradients stop at the chunk
      boundary, as with a Keras ``stateful=True`` RNN, but on purpose.
    - ``truncate=False`` (*exact BPTT across calls*): gradients flow back
      through the carried state into earlier calls, for as long as one tape
      (or one ``tf.function`` trace, e.g. a training step) spans them. A new
      tape or a new step starts from the stored value, which is a constant to
      it.

    Inside a ``tf.function`` (``jit_compile=True`` too) the state variables are
    assigned when the function runs, so the next step starts from this step's
    final state. Make the ``Carry`` outside the function (it creates variables).

    **Under ``tf.distribute``** (``MirroredStrategy``, ``MultiWorkerMirroredStrategy``):
    make the ``Carry`` in ``strategy.scope()`` with the *global* ``batch_size``
    B; each of the R replicas in sync then keeps its own ``B / R`` rows
    (replica r: rows ``r * B / R`` on; ``fastcarry._replicas``), and is called
    inside ``strategy.run`` with its ``B / R`` rows of inputs. Inside
    ``strategy.run``, ``state``, ``state = ...`` and ``reset(mask)`` are this
    replica's rows; outside it, the global batch in replica order (a collective
    across workers: read it on every worker). A checkpoint saves the global
    batch and restores every replica's rows. A ``Carry`` made outside the scope
    and called by more than one replica raises.

    Args:
      cell: any cell ``fc.unroll`` takes (fastcarry cells, ``fc.Stack``, Keras and TF1 cells).
      batch_size: int >= 1, B (the global batch under a strategy); every call's inputs must have this batch
        size (``B / R`` per replica).
      truncate: bool, see above.
      name: optional module name.
    """

    def __init__(self, cell: Any, batch_size: int, *, truncate: bool = True, name: str | None = None):
        super().__init__(name=name)
        cell = as_cell(cell)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if not isinstance(truncate, bool):
            raise TypeError(f"truncate must be a bool, got {truncate!r}")
        self.cell = cell
        self.batch_size = int(batch_size)
        self.truncate = truncate
        self.replicas = replicas_in_sync()
        if self.batch_size % self.replicas:
            raise ValueError(f"batch_size must be a multiple of the {self.replicas} replicas in sync (each keeps "
                             f"batch_size / {self.replicas} rows), got {self.batch_size}")
        rows = self.batch_size // self.replicas
        strategy = tf.distribute.get_strategy()
        with tf.init_scope(), self.name_scope:
            zeros = cell.zero_state(rows, cell.dtype)
            if self.replicas == 1:
                self._variables = tf.nest.map_structure(lambda z: tf.Variable(z, trainable=False, name="state"),
                                                        zeros)
            else:
                ids = local_replica_ids(strategy)
                self._variables = tf.nest.map_structure(lambda z: ReplicaState(z, strategy, ids, "state"), zeros)
        # The last stored state as a tensor per replica, with the context it was made in;
        # reused (rather than re-read from the variables) so gradients can flow
        # from one call into the previous one. In __dict__ directly: tf.Module would track a dict.
        vars(self)["_live"] = {}

    @property
    def rows(self):
        """The rows a call holds: ``batch_size`` inside ``strategy.run`` or without a strategy is ``B / R``."""
        if self.replicas > 1 and not in_replica():
            return self.batch_size
        return self.batch_size // self.replicas

    def _check_replicas(self):
        """Raises when the current replicas are not the ones this Carry was made for."""
        now = replicas_in_sync()
        if self.replicas == 1 and now > 1:
            raise ValueError(f"this fc.Carry was made outside the strategy's scope, but runs on {now} replicas: "
                             f"they would share one state. Make it inside strategy.scope() (each replica then "
                             f"keeps its own rows)")
        if self.replicas > 1 and now not in (self.replicas, 1):
            raise ValueError(f"this fc.Carry was made for {self.replicas} replicas in sync, but runs on {now}")

    def _warn_if_unbuilt(self, what):
        for cell in getattr(self.cell, "cells", (self.cell,)):  # a Stack's layers, or the cell
            if hasattr(cell, "_warn_if_unbuilt"):
                cell._warn_if_unbuilt(what, owner="carry")

    @property
    def variables(self):
        """The state variables and the cell's; warns while the cell is unbuilt (see ``fc.Cell``)."""
        self._warn_if_unbuilt("variables")
        own = tuple(v.variable if isinstance(v, ReplicaState) else v for v in tf.nest.flatten(self._variables))
        return own + self._cell_variables()

    @property
    def trainable_variables(self):
        """The cell's variables (the state is not trainable); warns while the cell is unbuilt."""
        self._warn_if_unbuilt("trainable_variables")
        return tuple(self._cell_variables())

    def _cell_variables(self):
        # A Keras or TF1 cell is held by a wrapper that tf.Module cannot see into.
        return tuple(getattr(self.cell, "trainable_variables", ()))

    @property
    def state(self):
        """The carried state: the cell's structure of ``[rows, H]`` tensors (``fc.LSTMState(h, c)`` for LSTM)."""
        if self._live_is_current():
            return self._live[_where()][1]
        return self._read()

    def _read(self):
        self._check_replicas()
        return tf.nest.map_structure(lambda v: v.read_value(), self._variables)  # a tf.Variable or ReplicaState

    def _live_is_current(self):
        live = self._live.get(_where())
        if live is None or live[0] is not _context():
            return False
        if live[0] is not None:
            return True  # made earlier in the graph being traced now
        # Eager: only a tape needs the tensor, and only if the variables still
        # hold its value (a checkpoint restore or a direct assign bypasses _store).
        return _record.could_possibly_record() and all(
            np.array_equal(v.numpy(), s.numpy(), equal_nan=True)
            for v, s in zip(tf.nest.flatten(self._read()), tf.nest.flatten(live[1])))

    @state.setter
    def state(self, value):
        """Replaces the state; with ``truncate=False`` gradients flow from later calls into ``value``."""
        self._check_replicas()
        self._store(_validate.check_state(value, self.cell, self.rows, name="state"))

    def reset(self, mask: Any = None) -> None:
        """Zeroes the state: every row, or with ``mask`` (bool ``[batch_size]``) the rows where it is True.

        A masked reset keeps the other rows, and with ``truncate=False`` their
        gradient path; use it when some sequences of a batch end and new ones
        start in their place.
        """
        self._check_replicas()
        if mask is None:
            self._store(self.cell.zero_state(self.rows, self.cell.dtype))
            return
        mask = tf.convert_to_tensor(mask)
        if mask.dtype != tf.bool:
            raise TypeError(f"mask must be a bool tensor [batch_size], got dtype {mask.dtype.name}")
        if not mask.shape.is_compatible_with([self.rows]):
            held = "batch_size" if self.rows == self.batch_size else "this replica's rows"
            raise ValueError(f"mask must have shape [{held}] = [{self.rows}], got {mask.shape}")
        keep = tf.expand_dims(tf.logical_not(mask), -1)
        self._store(tf.nest.map_structure(lambda s: tf.where(keep, s, tf.zeros_like(s)), self.state))

    def __call__(self, inputs: Any, sequence_length: Any = None, **unroll_options: Any) -> tf.Tensor:
        """Runs ``fc.unroll`` from the carried state and carries its final state on.

        Args:
          inputs: ``[batch_size, T, D]`` (``[T, batch_size, D]`` with ``time_major=True``).
          sequence_length: ``[batch_size]`` ints or None; rows past their length
            keep their state, so a row with length 0 carries it unchanged.
          **unroll_options: ``mask``, ``time_major``, ``reverse``, ``unroll``,
            ``jit_compile``, ``backward``, ``chunk``, ``swap_memory``,
            ``projection``, ``config``, ...: as for ``fc.unroll``. The initial
            state is the carried one; assign ``carry.state`` to choose it.

        Returns:
          outputs ``[batch_size, T, H]`` (``[T, batch_size, H]`` if ``time_major``).
        """
        if "initial_state" in unroll_options:
            raise TypeError("Carry starts from carry.state; assign carry.state instead of passing initial_state")
        self._check_replicas()
        if self.replicas > 1 and not in_replica():
            raise ValueError(f"this fc.Carry keeps one state per replica ({self.replicas}): call it inside "
                             f"strategy.run, with each replica's {self.rows // self.replicas} rows")
        batch_axis = 1 if unroll_options.get("time_major", False) else 0
        shape = getattr(inputs, "shape", None)
        if shape is not None and len(shape) == 3 and shape[batch_axis] not in (None, self.rows):
            held = (f"batch_size={self.batch_size} (the Carry's)" if self.replicas == 1 else
                    f"{self.rows} (the Carry's batch_size={self.batch_size} / {self.replicas} replicas)")
            raise ValueError(f"inputs have batch size {shape[batch_axis]} (shape {list(shape)}), expected {held}")
        # Truncated: the stored value is all it needs (no eager compare with the
        # live tensor, which costs a host sync per call under a tape).
        state = tf.nest.map_structure(tf.stop_gradient, self._read()) if self.truncate else self.state
        outputs, final = _unroll(self.cell, inputs, state, sequence_length=sequence_length, **unroll_options)
        self._store(final)
        return outputs

    def _store(self, state):
        for var, value in zip(tf.nest.flatten(self._variables), tf.nest.flatten(state)):
            var.assign(value)
        self._live[_where()] = (_context(), state)
