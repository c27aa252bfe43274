"""Export (issue 23, item 4): TFLite conversion independent of earlier traces, SavedModels that run without fastcarry.

- A fixed-batch ``fastcarry.keras`` model converts with TFLite builtin ops only,
  also after a batch-None trace of the same math in the same process
  (``model.export`` makes one; on main the converter then met the batch-None
  trace's ``TensorListReserve`` and failed). The interpreter matches TF.
- With B unknown it converts with builtins too, which Keras's own LSTM cannot.
- A SavedModel of a function calling ``fc.unroll``, and ``model.export`` of a
  ``fastcarry.keras`` model, load and run in a child process where
  ``import fastcarry`` fails: outputs bit-exact, gradients too.
"""

import json
import subprocess
import sys

import keras
import numpy as np
import tensorflow as tf

import fastcarry as fc
from fastcarry import keras as fck

B, T, D, H = 2, 5, 3, 4
X = np.random.default_rng(4).standard_normal((B, T, D)).astype("float32")


def _model(batch, layer=fck.LSTM):
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((T, D), batch_size=batch), layer(H, return_sequences=True)])


def _builtin_tflite(model):
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


def _interpret(flat, x):
    interpreter = tf.lite.Interpreter(model_content=flat)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def test_a_fixed_batch_model_converts_with_builtins_after_a_batch_none_export(tmp_path):
    _model(None).export(tmp_path / "dynamic", verbose=False)  # a batch-None trace of the same math
    model = _model(B)
    got = _interpret(_builtin_tflite(model), X)
    np.testing.assert_allclose(got, model(X), rtol=0, atol=1e-6)


def test_a_batch_none_model_converts_with_builtins_which_keras_own_lstm_cannot():
    # With B unknown, the forward that saves for a gradient writes TensorLists whose element shape holds B,
    # which TFLite's builtins refuse (Keras's LSTM too). fastcarry.keras runs the forward that saves nothing
    # when training is False (export, predict), so its graph converts (on main: the same error as Keras's).
    model = _model(None)
    flat = _builtin_tflite(model)
    interpreter = tf.lite.Interpreter(model_content=flat)
    x = np.concatenate([X, X[:1]])  # a batch of 3, chosen after conversion
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(got, model(x), rtol=0, atol=1e-6)
    try:
        _builtin_tflite(_model(None, keras.layers.LSTM))
        raise AssertionError("Keras's LSTM converted with builtins and B unknown: update the guide")
    except Exception as err:  # the converter's ConverterError
        assert "TensorListReserve" in str(err) or "element_shape" in str(err), str(err)[-500:]


_CHILD = r"""
import json, sys
sys.modules["fastcarry"] = None  # import fastcarry now fails: nothing may need it
import numpy as np, tensorflow as tf
x = tf.constant(np.load(sys.argv[1] + "/x.npy"))
unroll = tf.saved_model.load(sys.argv[1] + "/unroll")
served = tf.saved_model.load(sys.argv[1] + "/keras")
with tf.GradientTape() as tape:
    tape.watch(x)
    y = unroll.f(x)
    loss = tf.reduce_sum(y * tf.constant(np.load(sys.argv[1] + "/cot.npy")))
dx = tape.gradient(loss, x)
np.save(sys.argv[1] + "/child_y.npy", y.numpy())
np.save(sys.argv[1] + "/child_dx.npy", dx.numpy())
np.save(sys.argv[1] + "/child_keras.npy", served.serve(x).numpy())
print(json.dumps({"fastcarry_importable": "fastcarry" in sys.modules and sys.modules["fastcarry"] is not None}))
"""


def test_saved_models_run_in_a_process_without_fastcarry(tmp_path):
    cell = fc.GRU(H, input_size=D, seed=5)
    module = tf.Module()
    module.cell = cell
    module.f = tf.function(lambda x: fc.unroll(cell, x)[0], input_signature=[tf.TensorSpec([None, T, D])])
    tf.saved_model.save(module, str(tmp_path / "unroll"))
    model = _model(None)
    model.export(tmp_path / "keras", verbose=False)
    cotangent = np.random.default_rng(6).standard_normal((B, T, H)).astype("float32")
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "cot.npy", cotangent)
    x = tf.constant(X)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = module.f(x)
        loss = tf.reduce_sum(y * cotangent)
    want_dx = tape.gradient(loss, x)
    done = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"fastcarry_importable": False}
    np.testing.assert_array_equal(np.load(tmp_path / "child_y.npy"), y.numpy())
    np.testing.assert_array_equal(np.load(tmp_path / "child_dx.npy"), want_dx.numpy())
    np.testing.assert_array_equal(np.load(tmp_path / "child_keras.npy"), model(X).numpy())
