"""fastcarry under tf.distribute: a custom training loop, Keras's fit, and a carried state per replica.

Run it as it is (after the README's install; numbers in ``docs/guide.md``):

    python docs/recipes/distributed.py one                  # one device: the numbers to match
    python docs/recipes/distributed.py mirrored             # MirroredStrategy over 2 logical CPUs
    python docs/recipes/distributed.py worker 0 PORT0 PORT1 & python docs/recipes/distributed.py worker 1 PORT0 PORT1
                                                            # MultiWorkerMirroredStrategy, 2 processes

Each prints one JSON line: the losses, the trained weights' checksums, the
streamed outputs and the median step time. The global batch is the same in
every mode, so every mode gives the same numbers (to float32 rounding: the
replicas' gradients are summed in another order).

What runs where (``docs/guide.md``, "Distributed training"): the steps are
``tf.function``s without ``jit_compile`` (fastcarry's own loops inside are
XLA-compiled, per replica); an outer ``jit_compile=True`` step under
``MirroredStrategy`` on CPU fails in TensorFlow ("Trying to access resource
.../replica_1 ... from device CPU:0"), for Keras's own layers too; Keras 3's
``fit`` under ``MultiWorkerMirroredStrategy`` fails inside Keras, so workers
use the custom loop.
"""

import json
import os
import statistics
import sys
import time

# The global batch B: each of R replicas gets B / R rows. FASTCARRY_RECIPE_SHAPE="B,T,D,H" and
# FASTCARRY_RECIPE_STEPS try another size (benchmarks/distributed.py does).
B, T, D, H = (int(n) for n in os.environ.get("FASTCARRY_RECIPE_SHAPE", "8,12,4,16").split(","))
STEPS, CHUNKS = int(os.environ.get("FASTCARRY_RECIPE_STEPS", "4")), 3


def strategy_for(mode, argv):
    """The strategy of ``mode``; set up before TensorFlow touches a device."""
    if mode == "worker":
        task, ports = int(argv[0]), argv[1:]
        os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                                              "task": {"type": "worker", "index": task}})
    import tensorflow as tf

    if mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    if mode == "worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()  # one device


def data():
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, CHUNKS * T, D)).astype("float32")
    y = rng.standard_normal((B, 1)).astype("float32")
    return x, y


def rows(context, array):
    """This replica's rows of a global ``array`` (replica r holds rows r * B / R on)."""
    per = B // context.num_replicas_in_sync
    return array[context.replica_id_in_sync_group * per:][:per]


def custom_loop(strategy, x, y):
    """An LSTM and a Dense head trained with fc.unroll in a custom loop; returns losses, weights, step times."""
    import keras
    import tensorflow as tf

    import fastcarry as fc

    with strategy.scope():
        cell = fc.LSTM(H, input_size=D, seed=1)
        head = keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotUniform(2))
        head.build((None, H))
        optimizer = keras.optimizers.SGD(0.1)
    variables = cell.trainable_variables + head.trainable_variables

    @tf.function
    def step(xb, yb):
        def replica_step(xr, yr):
            with tf.GradientTape() as tape:
                outputs, _ = fc.unroll(cell, xr)
                per_example = tf.reduce_sum(tf.square(head(outputs[:, -1]) - yr), axis=1)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=B)
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return loss
        losses = strategy.run(replica_step, args=(xb, yb))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    xb = strategy.experimental_distribute_values_from_function(lambda c: rows(c, x[:, :T]))
    yb = strategy.experimental_distribute_values_from_function(lambda c: rows(c, y))
    losses, times = [], []
    for _ in range(STEPS):
        start = time.perf_counter()
        losses.append(float(step(xb, yb)))
        times.append(time.perf_counter() - start)
    return losses, [float(tf.reduce_sum(v)) for v in variables], statistics.median(times[1:])


def stream(strategy, x):
    """A stream in CHUNKS chunks through fc.Carry, one state per replica; returns this worker's outputs."""
    import tensorflow as tf

    import fastcarry as fc

    with strategy.scope():
        carry = fc.Carry(fc.GRU(H, input_size=D, seed=3), batch_size=B)  # the global batch

    @tf.function
    def step(xb):
        return strategy.run(carry, args=(xb,))

    outputs = []
    for k in range(CHUNKS):
        xb = strategy.experimental_distribute_values_from_function(lambda c: rows(c, x[:, k * T:(k + 1) * T]))
        outputs.append(tf.concat(strategy.experimental_local_results(step(xb)), 0))
    final = tf.nest.flatten(carry.state)[0]  # outside strategy.run: the global batch, in replica order
    return [float(tf.reduce_sum(o)) for o in outputs], float(tf.reduce_sum(final))


def keras_fit(strategy, x, y):
    """The same model written with fastcarry.keras layers, trained by Keras's fit; returns the losses."""
    import keras

    from fastcarry import keras as fck

    keras.utils.set_random_seed(4)  # the same initial weights in every mode
    with strategy.scope():
        model = keras.Sequential([keras.Input((T, D)), fck.LSTM(H),
                                  keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotUniform(2))])
        model.compile(keras.optimizers.SGD(0.1), "mse", jit_compile=False)  # see the module docstring
    history = model.fit(x[:, :T], y, batch_size=B, epochs=STEPS, shuffle=False, verbose=0)
    return history.history["loss"]


def main(argv):
    mode = argv[0]
    strategy = strategy_for(mode, argv[1:])
    x, y = data()
    losses, weights, step_s = custom_loop(strategy, x, y)
    streamed, final = stream(strategy, x)
    result = {"mode": mode, "replicas": strategy.num_replicas_in_sync, "losses": losses, "weights": weights,
              "step_s": step_s, "streamed": streamed, "final_state": final}
    if mode != "worker":  # Keras 3's fit under MultiWorkerMirroredStrategy fails inside Keras (guide)
        result["fit_losses"] = keras_fit(strategy, x, y)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
