"""A carried state under ``tf.distribute``: one slice of the batch per replica, saved as the whole batch.

Under a ``MirroredStrategy`` or ``MultiWorkerMirroredStrategy`` each replica
runs its own rows of the global batch ``B``: ``B / R`` rows for ``R`` replicas
in sync, replica ``r`` holding rows ``[r * B / R, (r + 1) * B / R)``. A
variable created in the strategy's scope with the default synchronization is
mirrored: one value for all replicas, written by each, so replicas would
overwrite each other's state. ``ReplicaState`` holds one component
(``[B / R, size]`` per replica) in a ``SyncOnRead`` variable, which each
replica reads and writes locally, and gives the global ``[B, size]`` (replica
order; ``strategy.gather``, a collective across workers) to checkpoints and
to reads outside ``strategy.run``. Its checkpoint key is a plain variable's,
so a checkpoint of the same global batch restores on one device or on many.
"""

import tensorflow as tf

_KEY = "VARIABLE_VALUE"  # a variable's own name in checkpoints: the keys match an undistributed Carry's


def replicas_in_sync():
    """How many replicas run the current code together (1 without a strategy)."""
    if tf.distribute.in_cross_replica_context():
        return tf.distribute.get_strategy().num_replicas_in_sync
    return tf.distribute.get_replica_context().num_replicas_in_sync


def in_replica():
    """Whether this runs inside ``strategy.run`` of a strategy (not in its scope outside it, not without one)."""
    return tf.distribute.has_strategy() and not tf.distribute.in_cross_replica_context()


def replica_id():
    """This replica's index in its sync group (a Python int; 0 outside ``strategy.run`` or without a strategy)."""
    if not in_replica():
        return 0
    value = tf.get_static_value(tf.distribute.get_replica_context().replica_id_in_sync_group)
    if value is None:
        raise ValueError("fc.Carry needs the replica's index as a constant; this strategy gives it only at run time")
    return int(value)


def local_replica_ids(strategy):
    """The global index of each of this worker's replicas, in the order of its local components."""
    ids = strategy.run(lambda: tf.distribute.get_replica_context().replica_id_in_sync_group)
    return [int(i) for i in strategy.experimental_local_results(ids)]


class ReplicaState(tf.__internal__.tracking.Trackable):
    """One state component: ``[rows, size]`` per replica, the global ``[rows * R, size]`` across them.

    Made in the strategy's scope (where ``fc.Carry`` is made). ``value`` and
    ``assign`` act on this replica's rows inside ``strategy.run``, and on the
    global batch outside it (as a ``tf.Variable``'s ``read_value`` and ``assign`` do).
    """

    def __init__(self, zeros: tf.Tensor, strategy: tf.distribute.Strategy, local_ids: list, name: str):
        self.strategy = strategy
        self.variable = tf.Variable(zeros, trainable=False, name=name,
                                    synchronization=tf.VariableSynchronization.ON_READ,
                                    aggregation=tf.VariableAggregation.NONE)
        self.local_ids = local_ids
        self.rows = int(zeros.shape[0])

    def read_value(self) -> tf.Tensor:
        """This replica's ``[rows, size]`` in ``strategy.run``, else the global ``[rows * R, size]``."""
        if not in_replica():
            return self.strategy.gather(self.variable, axis=0)
        return self.variable.read_value()

    def assign(self, value: tf.Tensor) -> None:
        """Writes this replica's rows in ``strategy.run``, else every local replica's slice of the global ``value``."""
        if in_replica():
            self.variable.assign(value)
            return
        for part, index in zip(self.strategy.experimental_local_results(self.variable), self.local_ids):
            part.assign(value[index * self.rows:(index + 1) * self.rows])

    def _serialize_to_tensors(self):
        return {_KEY: self.read_value()}

    def _restore_from_tensors(self, restored_tensors):
        self.assign(restored_tensors[_KEY])
