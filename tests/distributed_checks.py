"""``fc.Carry`` and a generic cell under ``MirroredStrategy`` over 2 logical CPUs; run as a script by
``test_distribute.py``.

A child process: logical devices must be set before TensorFlow starts, which
the test process has done long before. Prints one JSON line of measured
differences and messages; the test asserts on them.
"""

import json

import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import fastcarry as fc  # noqa: E402  (after the devices are set)

B, T, D, H = 4, 3, 2, 5
STRATEGY = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
X = np.random.default_rng(0).standard_normal((B, 3 * T, D)).astype("float32")


def per_replica(array):
    return STRATEGY.experimental_distribute_values_from_function(
        lambda c: array[c.replica_id_in_sync_group * (B // 2):][:B // 2])


def run(carry, k):
    """Chunk ``k`` through ``carry`` on both replicas; the outputs of the global batch, in replica order."""
    out = STRATEGY.run(tf.function(carry), args=(per_replica(X[:, k * T:(k + 1) * T]),))
    return tf.concat(STRATEGY.experimental_local_results(out), 0).numpy()


def single(cell, rows):
    """A single-device Carry over ``rows`` of the batch, with ``cell``'s weights."""
    twin = fc.LSTM(H, input_size=D)
    twin.set_weights(cell.get_weights())
    return fc.Carry(twin, len(rows))


def main():
    result = {}
    with STRATEGY.scope():
        cell = fc.LSTM(H, input_size=D, seed=1)
        carry = fc.Carry(cell, batch_size=B)
    halves = [range(0, B // 2), range(B // 2, B)]
    twins = [single(cell, r) for r in halves]
    want = [np.concatenate([t(X[list(r), k * T:(k + 1) * T]).numpy() for t, r in zip(twins, halves)]) for k in
            range(3)]
    result["chunk0"] = float(np.max(np.abs(run(carry, 0) - want[0])))
    # Outside strategy.run: the global batch, replica order (h after chunk 0 is its last output).
    state = want[0][:, -1]
    result["state_outside_run"] = float(np.max(np.abs(carry.state.h.numpy() - state)))
    result["state_shape"] = list(carry.state.h.shape)
    path = tf.train.Checkpoint(carry=carry).save("ckpt/c")
    result["chunk1"] = float(np.max(np.abs(run(carry, 1) - want[1])))
    # Restored: every replica continues from its own rows (on main: replica 1 from replica 0's, 0.7 relative).
    tf.train.Checkpoint(carry=carry).restore(path).assert_consumed()
    result["chunk1_after_restore"] = float(np.max(np.abs(run(carry, 1) - want[1])))
    result["chunk2"] = float(np.max(np.abs(run(carry, 2) - want[2])))
    # The same checkpoint on one device (the keys are an undistributed Carry's).
    plain = fc.Carry(fc.LSTM(H, input_size=D), batch_size=B)
    tf.train.Checkpoint(carry=plain).restore(path).expect_partial()
    result["restored_on_one_device"] = float(np.max(np.abs(plain.state.h.numpy() - state)))
    # Assigned and reset outside strategy.run: the global batch.
    carry.state = fc.LSTMState(tf.ones([B, H]), tf.zeros([B, H]))
    carry.reset(tf.constant([True, False, False, True]))
    result["reset_rows"] = [float(np.abs(r).sum()) for r in carry.state.h.numpy()]
    # Made outside the scope: one state for two replicas would be silently wrong (0.83 relative on main).
    outside = fc.Carry(fc.LSTM(H, input_size=D), batch_size=B // 2)
    try:
        run(outside, 0)
        result["outside_scope"] = "no error"
    except ValueError as err:
        result["outside_scope"] = str(err)
    try:
        carry(X[:, :T])  # not inside strategy.run
        result["cross_replica_call"] = "no error"
    except ValueError as err:
        result["cross_replica_call"] = str(err)
    try:
        with STRATEGY.scope():
            fc.Carry(fc.LSTM(H, input_size=D), batch_size=3)
        result["odd_batch"] = "no error"
    except ValueError as err:
        result["odd_batch"] = str(err)
    result.update(generic_split())
    print(json.dumps(result), flush=True)


def generic_split():
    """A Keras cell on the generic path under ``strategy.run``: trained (split at its input projection), the
    replicas' summed gradients, and in inference (run as written), the outputs, against the reference path over
    the whole batch on one device."""
    import keras

    with STRATEGY.scope():
        cell = fc.as_cell(keras.layers.GRUCell(H, seed=2), fused=False)  # the generic path, not the fused kernels
        fc.unroll(cell, X[:B // 2, :T])  # builds the cell's variables in the scope: mirrored
    variables = cell.trainable_variables

    @tf.function
    def replica_gradients(x):
        with tf.GradientTape() as tape:
            y = fc.unroll(cell, x)[0]
            loss = tf.reduce_sum(y * tf.cos(y))
        return tape.gradient(loss, variables)

    @tf.function
    def replica_inference(x):
        return fc.unroll(cell, x, training=False)[0]  # one step per iteration: the step as written, not split

    outputs = STRATEGY.run(replica_inference, args=(per_replica(X[:, :T]),))
    outputs = tf.concat(STRATEGY.experimental_local_results(outputs), 0).numpy()
    per_replica_grads = STRATEGY.run(replica_gradients, args=(per_replica(X[:, :T]),))
    got = [STRATEGY.reduce("SUM", g, axis=None).numpy() for g in per_replica_grads]
    twin = fc.as_cell(keras.layers.GRUCell(H), fused=False)
    fc.reference.unroll(twin, X[:1, :T])
    twin.layer.set_weights([v.numpy() for v in variables])
    with tf.GradientTape() as tape:
        y = fc.reference.unroll(twin, tf.constant(X[:, :T]))[0]
        loss = tf.reduce_sum(y * tf.cos(y))
    want = tape.gradient(loss, twin.trainable_variables)
    return {"generic_as_written_outputs": float(np.max(np.abs(outputs - y.numpy()))),"generic_split_key": str(cell.core().key[0]), "generic_split_replicas": STRATEGY.num_replicas_in_sync,
            "generic_split_gradients": max(float(np.max(np.abs(g - w.numpy()))) for g, w in zip(got, want))}


if __name__ == "__main__":
    main()
