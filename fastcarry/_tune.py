"""``fc.tune``: measure ``fc.unroll``'s schedules on this device and shape, keep the fastest that fits; the cache.

Every knob tuned here changes speed or memory, never results (``fc.Config``).
Results are cached in one JSON file per user (``cache_path()``), keyed by
device, versions, cell, sizes, dtype, mode and the batch and time buckets, so
``fc.unroll(..., config="auto")`` finds them without measuring again.
"""

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import re
import statistics
import tempfile
import threading
import time
import warnings

from fastcarry._config import Config

SCHEMA = 1
MODES = ("train", "infer")
UNROLLS = (1, 2, 4)
# A candidate replaces the defaults only when its median is this much faster: picking the best of several
# medians that differ by noise alone finds a "winner" that a second measurement shows slower (on the grid, a
# 1.02x winner rechecked at 0.88x).
MIN_GAIN = 1.03
# ... and when it beat the defaults in enough of the rounds both were timed in that chance is an unlikely
# explanation (a one-sided sign test at this level): training steps on this VM move by +-5% between two
# measurements of one config, so 1.07x medians rechecked at 0.94-0.99x.
SIGNIFICANCE = 0.05
# The share of the timing budget (after compiling) spent on the unroll candidates; the rest times the
# variants of their winner (projection, swap_memory) against it and the defaults.
FIRST_STAGE = 0.6
MAX_ROUNDS = 50  # per stage
_LOG = logging.getLogger("fastcarry")


# -- the cache ------------------------------------------------------------------------------------------------

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
    return n


# -- keys -----------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _device_facts():
    """Read once per process: ``config="auto"`` asks on every traced (or eager) call."""
    import tensorflow as tf

    from fastcarry.tools.report import _cpu_model

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return {"kind": "GPU", "name": details.get("device_name", gpus[0].name), "cores": len(gpus)}
    return {"kind": "CPU", "name": _cpu_model(), "cores": os.cpu_count()}


def device_info():
    """``{"kind", "name", "cores"}`` of the device fastcarry runs on: the first GPU, else the CPU."""
    return dict(_device_facts())


def cell_kind(core):
    """The cache's name for a cell's math: ``lstm('keras', 0.0)``; a generic cell by its name.

    A Keras layer's fused cell (``fastcarry.keras``) has the same name as the fastcarry cell of the same math,
    so ``fastcarry tune --cell lstm`` serves ``fastcarry.keras.LSTM`` too.
    """
    from fastcarry._generic import LIST_STATE_KEY

    if core.key is None:
        return core.name
    key = tuple(core.key)
    return f"{core.name}{key[1:] if key[:1] == (LIST_STATE_KEY,) else key}"


def make_key(kind, dim, units, dtype, mode, batch, time_steps, device=None):
    """The cache key (a JSON string) for these facts; B and T bucketed (``bucket``)."""
    import tensorflow as tf

    import fastcarry

    device = device or device_info()
    facts = {"device": f"{device['kind']}:{device['name']}:{device['cores']}", "tensorflow": tf.__version__,
             "fastcarry": fastcarry.__version__, "cell": kind, "D": int(dim), "H": int(units),
             "dtype": tf.as_dtype(dtype).name, "mode": mode, "B": bucket(batch), "T": bucket(time_steps)}
    return json.dumps(facts, sort_keys=True)


_MEMO = {}


def lookup(core, dim, dtype, mode, batch, time_steps):
    """The cached ``Config`` for this call, or None (one info log line per key that misses).

    ``batch`` None (B unknown when traced, as in Keras's ``fit``, whose batches may be partial): the entry
    for the largest tuned B with everything else equal (the full batch is the one a training run repeats).
    """
    if not all(isinstance(v, int) for v in (dim, time_steps)) or not (batch is None or isinstance(batch, int)):
        return None  # T known only at run time: no bucket to look up
    key = make_key(cell_kind(core), dim, core.output_size, dtype, mode, batch or 1, time_steps)
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


# -- measuring ------------------------------------------------------------------------------------------------

def parse_bytes(value):
    """``memory_limit``: None, bytes (int), or text like ``"2GiB"``, ``"300MiB"``, ``"1.5GB"``."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        return value
    units = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30}
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", value) if isinstance(value, str) else None
    if match is None or match.group(2).lower() not in units or float(match.group(1)) <= 0:
        raise ValueError(f"memory_limit must be a positive number of bytes or a string like '2GiB' or '300MB', "
                         f"got {value!r}")
    return int(float(match.group(1)) * units[match.group(2).lower()])


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_memory(run, device):
    """Peak memory of ``run()`` above what was in use before, and how it was read.

    The device allocator's peak (``get_memory_info``: GPUs; a CPU only with
    ``TF_CPU_ALLOCATOR_USE_BFC=1``), else the process's resident memory,
    sampled every millisecond (coarse: freed memory the C library keeps mapped
    is not seen again).
    """
    import tensorflow as tf

    name = "GPU:0" if device["kind"] == "GPU" else "CPU:0"
    try:
        tf.config.experimental.reset_memory_stats(name)
        before = tf.config.experimental.get_memory_info(name)["current"]
        run()
        peak = tf.config.experimental.get_memory_info(name)["peak"]
        if peak > 0:
            return peak - before, "allocator"
    except (ValueError, RuntimeError, tf.errors.OpError):
        pass
    if not os.path.exists("/proc/self/statm"):
        run()
        return None, "unavailable"
    samples, done = [], threading.Event()

    def sample():
        while not done.is_set():
            samples.append(_rss_bytes())
            time.sleep(0.001)

    before = _rss_bytes()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        run()
    finally:
        done.set()
        thread.join()
    return max(samples + [_rss_bytes()]) - before, "rss"


def candidates(time_steps, mode, device):
    """The first stage: each ``unroll`` in ``UNROLLS`` up to T (more steps per iteration than T only add
    remainder steps), unchunked, the projection per iteration."""
    del mode, device  # the same unrolls everywhere; variants() depends on them
    return [Config(unroll=u) for u in UNROLLS if u <= max(time_steps, 1)]


def variants(best, core, mode, device):
    """The second stage: ``best`` (the first stage's winner) with one more knob changed each.

    ``projection="hoisted"`` where the core has a projection of its own (a
    generic cell projects inside its step); ``swap_memory`` for training on a
    device that is not the host (on the host it parks nothing anywhere else).
    """
    from fastcarry import _generic

    out = []
    if core.project is not _generic.identity_project:
        out.append(dataclasses.replace(best, projection="hoisted"))
    if mode == "train" and device["kind"] != "CPU":
        out.append(dataclasses.replace(best, swap_memory=True))
    return out


def sign_test(wins, n):
    """P(at least ``wins`` of ``n`` fair coin flips come up heads): the one-sided sign test's p-value."""
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n


def paired_ratios(row, default):
    """``default``'s time over ``row``'s in each round both were timed in (a run-long drift cancels)."""
    return [default["rounds"][r] / t for r, t in sorted(row["rounds"].items()) if r in default["rounds"]]


def _beats(row, default):
    """Whether ``row`` is reliably faster than ``default``: by ``MIN_GAIN`` in median, and in enough of the
    rounds both were timed in (``SIGNIFICANCE``)."""
    if not row["median_s"] * MIN_GAIN <= default["median_s"]:
        return False
    ratios = paired_ratios(row, default)
    return sign_test(sum(1 for q in ratios if q > 1), len(ratios)) <= SIGNIFICANCE


def _check_shape(shape):
    import tensorflow as tf

    if tf.is_tensor(shape) or hasattr(shape, "shape") and not isinstance(shape, (tuple, list)):
        shape = tuple(shape.shape)
    if (not isinstance(shape, (tuple, list)) or len(shape) != 3
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape)):
        raise ValueError(f"shape must be (B, T, D) (three ints >= 1) or an example tensor of rank 3, got {shape!r}")
    return tuple(shape)


def timed_call(fn, x):
    """Seconds for ``fn(x)`` with its results copied to the host (so the work is done, not just queued)."""
    import tensorflow as tf

    start = time.perf_counter()
    tf.nest.map_structure(lambda t: t.numpy(), fn(x))
    return time.perf_counter() - start


def _step(cell, x, mode, config, time_major, sequence_length):
    import tensorflow as tf

    from fastcarry._unroll import _Named, unroll

    kwargs = dict(config.as_kwargs(), time_major=time_major, sequence_length=sequence_length)
    variables = cell.trainable_variables

    def infer(x):
        return unroll(cell, x, **kwargs)[0]

    def train(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            outputs, _ = unroll(cell, x, **kwargs)
            loss = tf.reduce_sum(outputs * outputs)
        return tape.gradient(loss, [x, *variables])

    # One function per candidate, each traced once: _Named keeps TF from counting them as retraces of one.
    fn = _Named(infer if mode == "infer" else train)
    fn.__name__ = f"fastcarry_tune_{mode}"
    # swap_memory's host placement is lost inside a caller's XLA compilation (fc.unroll's docstring):
    # a plain tf.function keeps fastcarry's own compiled calls, as a user who swaps would run them.
    return tf.function(fn, jit_compile=not config.swap_memory)


def run(cell, shape, *, mode="train", time_major=False, sequence_length=None, memory_limit=None, budget_s=60,
        cache=True, progress=None):
    """``fc.tune``'s work; returns ``(config, rows, key)`` with one row per measured candidate.

    A row: ``config``, ``compile_s``, ``peak_bytes`` and how it was read (``memory``), ``rounds``
    (``{round: seconds}``), ``samples`` (the same seconds in round order), ``median_s`` (nan if untimed).
    """
    import numpy as np
    import tensorflow as tf

    from fastcarry import _generic, _validate
    from fastcarry._protocol import check_core
    from fastcarry._unroll import default_unroll

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if isinstance(budget_s, bool) or not isinstance(budget_s, (int, float)) or not budget_s > 0:
        raise ValueError(f"budget_s must be a number of seconds > 0, got {budget_s!r}")
    limit = parse_bytes(memory_limit)
    batch, steps, dim = _check_shape(shape)
    cell = _generic.as_cell(cell)
    cell.build(dim)
    core = check_core(cell.core(), type(cell).__name__)
    device = device_info()
    key = make_key(cell_kind(core), dim, core.output_size, cell.dtype, mode, batch, steps, device)
    layout = (steps, batch, dim) if time_major else (batch, steps, dim)
    x = tf.constant(np.random.default_rng(0).standard_normal(layout), cell.dtype)
    lengths = None if sequence_length is None else _validate._lengths(sequence_length, batch, steps)
    deadline = time.perf_counter() + budget_s

    def measure(config):
        fn = _step(cell, x, mode, config, time_major, lengths)
        start = time.perf_counter()
        compile_s = timed_call(fn, x)
        peak, how = _peak_memory(lambda: timed_call(fn, x), device)
        if progress:
            progress(config)
        # rounds: {round number: seconds}, so two candidates compare on the rounds both ran in.
        return {"config": config, "fn": fn, "compile_s": compile_s, "peak_bytes": peak, "memory": how,
                "rounds": {}, "measure_s": time.perf_counter() - start}

    def time_rounds(timed, first_round, until):
        """Interleaved rounds of ``timed`` (each starting one further along): one, then more while another
        round of the same length ends by ``until`` (at most MAX_ROUNDS)."""
        n, last = 0, 0.0
        while n < 1 or (n < MAX_ROUNDS and time.perf_counter() + last <= until):
            r, round_start = first_round + n, time.perf_counter()
            for k in range(len(timed)):
                row = timed[(r + k) % len(timed)]
                row["rounds"][r] = timed_call(row["fn"], x)
            n, last = n + 1, time.perf_counter() - round_start
        return first_round + n

    rows = [measure(c) for c in candidates(steps, mode, device)]
    chunk = 0  # no chunk left to try
    if limit is not None and mode == "train":
        # chunk only where memory needs it: the largest chunk that fits (fewer boundaries, less recompute
        # overhead), from half of T's bucket down by quarters.
        chunk = bucket(steps) // 2
        while chunk >= 1 and not any(_fits(r, limit) for r in rows) and time.perf_counter() < deadline:
            rows.append(measure(Config(unroll=min(2, steps), chunk=chunk)))
            chunk //= 4
    fitting = [r for r in rows if limit is None or _fits(r, limit)]
    if not fitting:
        measured = [r for r in rows if r["peak_bytes"] is not None]
        if not measured:
            raise ValueError(f"memory_limit={memory_limit!r}: this device reports no memory use to compare it with")
        smallest = min(measured, key=lambda r: r["peak_bytes"])
        late = " (the budget ran out before smaller chunks were tried: raise budget_s)" if chunk >= 1 else ""
        raise ValueError(f"memory_limit={memory_limit!r} ({limit} bytes): no candidate fits; the smallest peak "
                         f"measured was {smallest['peak_bytes']} bytes, with {smallest['config'].describe()}"
                         f"{late}")
    default = next((r for r in fitting if r["config"] == Config(unroll=default_unroll(core, batch, steps))), None)

    def medians():
        for row in rows:
            row["median_s"] = statistics.median(row["rounds"].values()) if row["rounds"] else math.nan

    def choose(timed):
        """The fastest of ``timed`` that reliably beats the defaults, else the defaults (when they fit)."""
        eligible = [r for r in timed if default is None or r is default or _beats(r, default)]
        return min(eligible, key=lambda r: r["median_s"])

    next_round = time_rounds(fitting, 0, time.perf_counter() + (deadline - time.perf_counter()) * FIRST_STAGE)
    medians()
    best = choose(fitting)
    # The second stage only when its compiles and a round fit in the budget left (each estimated by the
    # slowest first-stage compile, and a first-stage round): the budget bounds the whole tuning.
    later = variants(best["config"], core, mode, device)
    cost = len(later) * max(r["measure_s"] for r in rows) + sum(r["median_s"] for r in fitting)
    if time.perf_counter() + cost > deadline:
        later = []
    second = [measure(c) for c in later]
    rows += second
    second = [r for r in second if limit is None or _fits(r, limit)]
    if second:
        # The winner's variants, timed against it and the defaults in rounds of their own.
        first = [best] if default is None or best is default else [default, best]
        time_rounds(first + second, next_round, deadline)
        medians()
        best = choose(fitting + second)
    medians()  # also for the rows that did not fit: nan
    record = {"median_s": best["median_s"], "peak_bytes": best["peak_bytes"], "memory": best["memory"],
              "measured": time.strftime("%Y-%m-%dT%H:%M:%S"), "candidates": len(rows)}
    if cache:
        store(key, best["config"], record)
        _MEMO[key] = best["config"]
    for row in rows:
        del row["fn"]
        row["samples"] = [row["rounds"][r] for r in sorted(row["rounds"])]
    return best["config"], rows, key


def _fits(row, limit):
    return row["peak_bytes"] is not None and row["peak_bytes"] <= limit


def tune(cell, shape, *, mode="train", time_major=False, sequence_length=None, memory_limit=None, budget_s=60,
         cache=True):
    """Measures ``fc.unroll``'s schedules for ``cell`` at ``shape`` on this device; returns the fastest ``fc.Config``.

    Args:
      cell: anything ``fc.unroll`` takes (built for ``D`` here if it is not).
      shape: ``(B, T, D)``, or an example tensor ``[B, T, D]`` (``[T, B, D]`` if ``time_major``: give
        ``(B, T, D)`` all the same when passing a tuple).
      mode: ``"train"`` (a forward and backward step) or ``"infer"`` (forward only).
      time_major, sequence_length: as the calls to be tuned will pass them.
      memory_limit: None, bytes, or a string like ``"2GiB"``: the config must peak below it.
      budget_s: seconds for the whole tuning, compilation included: a round or the second stage
        starts only when it is expected to end in time; only the first stage's compiles and first
        round always run (and with a ``memory_limit``, the chunk search until a candidate fits).
      cache: store the result for ``fc.unroll(..., config="auto")`` and ``fastcarry tune --show``.

    The search, in two stages (every candidate gives the same results; a test
    holds them equal). Each candidate is compiled and its peak memory read
    once, then the candidates of a stage are timed in interleaved rounds (at
    least 1, at most ``MAX_ROUNDS``):

    1. ``unroll`` in 1, 2, 4 (those above T are pruned: they only add
       remainder steps); with a ``memory_limit`` that none of them fits (train
       only), ``chunk`` from half of T's power-of-two bucket down by quarters
       until one fits (the largest that fits: fewer chunk boundaries). Timed
       for ``FIRST_STAGE`` (60%) of the budget left after compiling.
    2. The first stage's winner with ``projection="hoisted"`` (cells with a
       projection of their own), and on a GPU in training with
       ``swap_memory=True``, timed against that winner and the defaults for the
       rest of the budget (skipped when its compiles and one round would not
       end within the budget). Pruned this way, not as
       a full product, because these knobs act on other costs than ``unroll``
       does (the projection's GEMM shape and where the saved activations live,
       not the per-step loop overhead): a full product would triple the
       candidates for little.

    The fastest median that fits wins, but a candidate replaces the defaults
    only when it is reliably faster: at least ``MIN_GAIN`` (3%) in median and
    faster in enough of the rounds both ran in (one-sided sign test at
    ``SIGNIFICANCE``, 5%; so at least 5 shared rounds). Gains within the noise
    are not worth a change: a second measurement would not find them.

    Raises ``ValueError`` for a bad ``mode``, ``budget_s``, ``memory_limit`` or
    ``shape``, and when no candidate fits ``memory_limit`` (naming the smallest
    peak measured and its config).
    """
    config, _, _ = run(cell, shape, mode=mode, time_major=time_major, sequence_length=sequence_length,
                       memory_limit=memory_limit, budget_s=budget_s, cache=cache)
    return config

