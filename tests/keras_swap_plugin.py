"""A pytest plugin: Keras's own layer tests with ``fastcarry.keras``'s layers in place of Keras's.

Loaded with ``-p keras_swap_plugin`` by ``test_keras_suite.py`` (in a child
pytest): ``keras.src.layers.LSTM``/``GRU``/``SimpleRNN`` become fastcarry's,
which Keras's test modules read at call time (``layers.LSTM(...)``). At the
end it writes how many fastcarry layers were made to ``$FASTCARRY_SWAP_COUNT``,
so the parent knows the swap took effect.
"""

import os

import keras.src.layers as _layers

from fastcarry import keras as fck

MADE = []
_init = fck._FusedLoop._init_fastcarry


def _counted_init(self):
    MADE.append(type(self).__name__)  # counted, the classes kept: saved configs name fastcarry's own
    _init(self)


fck._FusedLoop._init_fastcarry = _counted_init
for _name in ("LSTM", "GRU", "SimpleRNN"):
    setattr(_layers, _name, getattr(fck, _name))


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("FASTCARRY_SWAP_COUNT")
    if path:
        with open(path, "w") as f:
            f.write(str(len(MADE)))
