"""``fastcarry.tune_cache``: what ``fc.tune`` stored and ``fc.unroll(..., config="auto")`` reads.

One JSON file per user (``cache_path()``), keyed by device, versions, cell,
sizes, dtype, mode and the batch and time buckets; ``load()`` lists it,
``clear()`` empties it (``fastcarry tune --show`` and ``--clear``). This module
only keeps results; measuring is ``fc.tune``'s (which sits above ``unroll``,
while this sits below it)::

    import fastcarry.tune_cache as cache
    cache.cache_path()        # ~/.cache/fastcarry/tune.json (FASTCARRY_CACHE_DIR, XDG_CACHE_HOME)
    for key, entry in cache.load().items(): ...   # key: JSON facts; entry: {"config", "record"}
"""

import contextlib
import json
import logging
import os
import tempfile
import time
import warnings

from fastcarry._config import Config
from fastcarry._measure import device_info
from fastcarry._version import __version__

__all__ = ["SCHEMA", "bucket", "cache_dir", "cache_path", "cell_name", "clear", "for_call", "load", "lookup",
           "make_key", "store"]

SCHEMA = 1
# The key prefix of a fused kernel run on Keras's list states (``fastcarry._keras_fused``): the same math as
# fastcarry's cell, so the same tuned schedule.
LIST_STATE_KEY = "keras_list_state"
_LOG = logging.getLogger("fastcarry")


def cache_dir():
    """``$FASTCARRY_CACHE_DIR``, else ``$XDG_CACHE_HOME/fastcarry``, else ``~/.cache/fastcarry``."""
    if os.environ.get("FASTCARRY_CACHE_DIR"):
        return os.environ["FASTCARRY_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastcarry")


def cache_path():
    return os.path.join(cache_dir(), "tune.json")


def bucket(n):
    """``n`` rounded up to a power of two: B = 17..32 share one cache entry, T = 65..128 another."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


@contextlib.contextmanager
def _locked(path):
    """An exclusive lock on ``path + ".lock"`` (POSIX ``flock``; elsewhere none) while the cache is rewritten."""
    try:
        import fcntl
    except ImportError:  # not POSIX: writes stay atomic (rename), concurrent updates may lose one entry
        yield
        return
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read(path):
    """The cache's entries, or {} for no file. A corrupt or foreign file is moved aside with a warning."""
    try:
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("entries"), dict):
            raise ValueError(f"not a fastcarry tune cache of schema {SCHEMA}")
        return data["entries"]
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        aside = f"{path}.bad-{int(time.time())}"
        with contextlib.suppress(OSError):
            os.replace(path, aside)
        warnings.warn(f"fastcarry: the tune cache {path} could not be read ({err}); moved it to {aside} and "
                      f"starting a new one", UserWarning, stacklevel=3)
        return {}


def load(path=None):
    """Every cached entry: ``{key: {"config": {...}, "record": {...}}}``."""
    return _read(path or cache_path())


def store(key, config, record, path=None):
    """Adds ``key -> config`` (with ``record``: what was measured) to the cache: locked, atomic (temp + rename).

    Returns False, with a warning, when the cache cannot be written (the result is still the caller's).
    """
    path = path or cache_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with _locked(path):
            entries = _read(path)
            entries[key] = {"config": config.as_kwargs(), "record": record}
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tune-", suffix=".json")
            with os.fdopen(fd, "w") as f:
                json.dump({"schema": SCHEMA, "entries": entries}, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
        _MEMO[key] = config
        return True
    except OSError as err:
        warnings.warn(f"fastcarry: could not write the tune cache {path} ({err}); the tuned config is returned "
                      f"but not kept (set FASTCARRY_CACHE_DIR to a writable directory)", UserWarning, stacklevel=3)
        return False


def clear(path=None):
    """Empties the cache (removes its file); returns how many entries it had."""
    path = path or cache_path()
    n = len(_read(path))
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
    _MEMO.clear()
    return n


def cell_name(core):
    """The cache's name for a cell's math: ``lstm('keras', 0.0)``; a generic cell by its name.

    A Keras layer's fused cell (``fastcarry.keras``) has the same name as the fastcarry cell of the same math,
    so ``fastcarry tune --cell lstm`` serves ``fastcarry.keras.LSTM`` too.
    """
    if core.key is None:
        return core.name
    key = tuple(core.key)
    return f"{core.name}{key[1:] if key[:1] == (LIST_STATE_KEY,) else key}"


def make_key(cell, dim, units, dtype, mode, batch, time_steps, device=None):
    """The cache key (a JSON string) for these facts (``cell`` a ``cell_name``); B and T bucketed (``bucket``)."""
    import tensorflow as tf

    device = device or device_info()
    facts = {"device": f"{device['type']}:{device['name']}:{device['cores']}", "tensorflow": tf.__version__,
             "fastcarry": __version__, "cell": cell, "D": int(dim), "H": int(units),
             "dtype": tf.as_dtype(dtype).name, "mode": mode, "B": bucket(batch), "T": bucket(time_steps)}
    return json.dumps(facts, sort_keys=True)


# Lookups of this process, by key: config="auto" asks on every traced (or eager) call.
_MEMO = {}


def lookup(core, dim, dtype, mode, batch, time_steps):
    """The cached ``Config`` for this call, or None (one info log line per key that misses).

    ``batch`` None (B unknown when traced, as in Keras's ``fit``, whose batches may be partial): the entry
    for the largest tuned B with everything else equal (the full batch is the one a training run repeats).
    """
    if not all(isinstance(v, int) for v in (dim, time_steps)) or not (batch is None or isinstance(batch, int)):
        return None  # T known only at run time: no bucket to look up
    key = make_key(cell_name(core), dim, core.output_size, dtype, mode, batch or 1, time_steps)
    if batch is None:
        key = json.dumps(dict(json.loads(key), B=None), sort_keys=True)
    if key not in _MEMO:
        entries = load()
        if batch is None:
            want = json.loads(key)
            same = [(facts["B"], e) for facts, e in ((json.loads(k), e) for k, e in entries.items())
                    if dict(facts, B=None) == want]
            entry = max(same, key=lambda b_entry: b_entry[0])[1] if same else None
        else:
            entry = entries.get(key)
        _MEMO[key] = None if entry is None else Config(**entry["config"])
        if entry is None:
            _LOG.info("fastcarry: no tuned config for %s; using the defaults (run `fastcarry tune` for this "
                      "shape)", key)
    return _MEMO[key]


def for_call(config, cell, inputs, time_major):
    """``fc.unroll``'s ``config`` as a ``Config`` or None: for ``"auto"`` the cached entry for this call, if any
    (``"train"`` when a tape could record, else ``"infer"``; ``cell`` built for the inputs' D)."""
    if not isinstance(config, str):
        return config
    shape = getattr(inputs, "shape", None)
    if shape is None or len(shape) != 3 or shape[-1] is None:
        return None  # unroll's checks will say what is wrong
    # Private but stable since TF 2.4: whether any GradientTape could record now.
    from tensorflow.python.eager import record

    cell.build(int(shape[-1]))
    batch, steps = (shape[1], shape[0]) if time_major else (shape[0], shape[1])
    mode = "train" if record.could_possibly_record() else "infer"
    return lookup(cell.core(), int(shape[-1]), cell.dtype, mode, batch, steps)
