"""Time per sequence: the TFLite interpreter (builtin ops) against TensorFlow, for one fastcarry.keras model.

``python benchmarks/tflite.py`` converts a fixed-batch ``fastcarry.keras.LSTM``
model (B1 and B8, T50 D32 H64; the converter's builtin ops only) and times, in
one process and interleaved over ``--rounds`` rounds, the interpreter's
``invoke`` against the Keras model's call under ``tf.function(jit_compile=True)``
and Keras's own ``LSTM`` converted the same way. Writes
benchmarks/results/tflite/ (results.json, .md, .png): median ms per sequence
batch, and the largest difference from TensorFlow's outputs.
"""

import argparse
import os
import statistics
import time

HERE = os.path.dirname(os.path.abspath(__file__))
T, D, H = 50, 32, 64


def _timed(fn, repeats):
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def contenders(batch):
    """``{name: (call, outputs)}`` for one batch size: TF (XLA) and the interpreters of both layers."""
    import keras
    import numpy as np
    import tensorflow as tf

    from fastcarry import keras as fck

    x = np.random.default_rng(0).standard_normal((batch, T, D)).astype("float32")
    out = {}
    for name, layer in (("fastcarry.keras", fck.LSTM), ("keras", keras.layers.LSTM)):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((T, D), batch_size=batch), layer(H)])
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        interpreter = tf.lite.Interpreter(model_content=converter.convert())
        interpreter.allocate_tensors()
        index_in = interpreter.get_input_details()[0]["index"]
        index_out = interpreter.get_output_details()[0]["index"]

        def invoke(interpreter=interpreter, index_in=index_in, index_out=index_out):
            interpreter.set_tensor(index_in, x)
            interpreter.invoke()
            return interpreter.get_tensor(index_out)

        tf_call = tf.function(model, jit_compile=True)
        want = tf_call(x).numpy()
        out[f"TFLite {name}"] = (invoke, float(np.max(np.abs(invoke() - want))))
        if name == "fastcarry.keras":
            out["TF (XLA) fastcarry.keras"] = (lambda f=tf_call: f(x).numpy(), 0.0)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "tflite"))
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from fastcarry.tools import report

    rows = []
    for batch in (1, 8):
        timed = contenders(batch)
        samples = {name: [] for name in timed}
        for r in range(args.rounds):
            names = list(timed) if r % 2 == 0 else list(reversed(timed))
            for name in names:
                samples[name].append(_timed(timed[name][0], 20))
        for name, (_, error) in timed.items():
            rows.append({"batch": batch, "contender": name, "median_ms": statistics.median(samples[name]) * 1e3,
                         "max_abs_diff_vs_tf": error})
    machine = report.machine_info()
    lines = [f"TFLite interpreter vs TensorFlow, LSTM T{T} D{D} H{H}, builtin ops; {machine['cpu']}, "
             f"{machine['cpu_count']} cores, {args.rounds} interleaved rounds", "",
             "| B | contender | median ms / call | max abs diff vs TF |", "|---:|---|---:|---:|"]
    lines += [f"| {r['batch']} | {r['contender']} | {r['median_ms']:.3f} | {r['max_abs_diff_vs_tf']:.1e} |"
              for r in rows]
    markdown = "\n".join(lines)

    def plot(path):
        plt = report.require_matplotlib()
        fig, ax = plt.subplots(figsize=(7, 3))
        labels = [f"B{r['batch']} {r['contender']}" for r in rows]
        ax.barh(labels, [r["median_ms"] for r in rows])
        ax.set(xlabel="median ms per call", title="TFLite interpreter vs TF, LSTM")
        report.save_figure(fig, path)

    report.write(args.out, {"machine": machine, "rows": rows, "rounds": args.rounds}, markdown, plot)
    print(markdown)


if __name__ == "__main__":
    main()
