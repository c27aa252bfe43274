"""``fc.tune``: measure ``fc.unroll``'s schedules on this device and shape, keep the fastest that fits.

Every knob tuned here changes speed or memory, never results (``fc.Config``).
The result goes into the tune cache (``fastcarry.tune_cache``), where
``fc.unroll(..., config="auto")`` finds it without measuring again. This module
sits above ``unroll`` (it calls it); the cache sits below.
"""

import math
import re
import statistics
import time
from typing import Any, Callable, NamedTuple

from fastcarry import tune_cache
from fastcarry._candidates import MIN_GAIN, SIGNIFICANCE, beats, candidates, paired_ratios, variants
from fastcarry._config import Config
from fastcarry._measure import device_info, peak_memory, round_order, step_function, timed_call

MODES = ("train", "infer")
# The share of the timing budget (after compiling) spent on the unroll candidates; the rest times the
# variants of their winner (projection, swap_memory) against it and the defaults.
FIRST_STAGE = 0.6
MAX_ROUNDS = 50  # per stage


class TuneReport(NamedTuple):
    """What ``fc.tune(..., report=True)`` returns: the chosen ``config``, every measured row, the cache ``key``.

    A row is a dict: ``config``, ``defaults`` (whether it is what runs when nothing is chosen), ``compile_s``,
    ``peak_bytes`` and how it was read (``memory``: ``"allocator"``, ``"rss"`` or ``"unavailable"``),
    ``rounds`` (``{round: seconds}``), ``samples`` (those seconds in round order) and ``median_s`` (nan if
    not timed: it did not fit the memory limit).
    """

    config: Config
    rows: list
    key: str

    @property
    def defaults(self):
        """What ``fc.unroll`` runs for this workload when nothing is chosen (the row marked ``"defaults"``)."""
        return next((r["config"] for r in self.rows if r.get("defaults")), Config.defaults())

    @property
    def cached(self):
        """Whether the result came from the cache (its rows are then the measuring run's, each marked)."""
        return bool(self.rows) and all(row.get("cached") for row in self.rows)

    def row(self, config):
        """The row measured for ``config``, or None."""
        return next((r for r in self.rows if r["config"] == config), None)

    def gain(self, config):
        """The median over shared rounds of the defaults' time over ``config``'s (1.0 for the defaults)."""
        default, row = self.row(self.defaults), self.row(config)
        if config == self.defaults or default is None or row is None:
            return 1.0
        return statistics.median(paired_ratios(row, default))

    def reasons(self):
        """One line per candidate faster in median than the winner but not chosen, saying why."""
        best, default = self.row(self.config), self.row(self.defaults)
        lines = []
        for row in self.rows:
            if row is best or row.get("twin") or not row["median_s"] < best["median_s"]:
                continue  # (a twin is a reference for swap_memory, never a choice)
            label = row["config"].describe()
            ratios = paired_ratios(row, default) if default is not None else []
            wins = sum(1 for q in ratios if q > 1)
            if default is None or row is default:
                why = "it does not fit the memory limit" if default is None else "the defaults are never replaced"
            elif not row["median_s"] * MIN_GAIN <= default["median_s"]:
                why = (f"{default['median_s'] / row['median_s']:.2f}x the defaults in median, under the "
                       f"{MIN_GAIN - 1:.0%} a change needs")
            else:
                why = (f"{default['median_s'] / row['median_s']:.2f}x the defaults in median, but faster in only "
                       f"{wins} of {len(ratios)} shared rounds (a sign test needs p <= {SIGNIFICANCE})")
            lines.append(f"{label}: {why}: kept {self.config.describe()}")
        return lines


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


def _check_shape(shape):
    import tensorflow as tf

    if tf.is_tensor(shape) or hasattr(shape, "shape") and not isinstance(shape, (tuple, list)):
        shape = tuple(shape.shape)
    if (not isinstance(shape, (tuple, list)) or len(shape) != 3
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape)):
        raise ValueError(f"shape must be (B, T, D) (three ints >= 1) or an example tensor of rank 3, got {shape!r}")
    return tuple(shape)


def _step(cell, mode, config, time_major, sequence_length, jit_compile=True):
    """The step ``fc.tune`` times for ``config``: ``fc.unroll`` (inference), or its gradient w.r.t. the inputs
    and the cell's variables under a square loss (training), in a ``tf.function(jit_compile=jit_compile)``.

    A ``swap_memory`` config always runs in a plain ``tf.function``: its host
    placement is lost inside a caller's XLA compilation (``fc.unroll``'s
    docstring), and fastcarry's own compiled calls keep it, as a user who swaps
    would run them. ``search`` times it against its unswapped twin run the same way.
    """
    from fastcarry._unroll import unroll

    kwargs = dict(config.as_kwargs(), time_major=time_major, sequence_length=sequence_length)
    return step_function(lambda x: unroll(cell, x, **kwargs)[0], cell.trainable_variables, mode, wrt_inputs=True,
                         jit_compile=jit_compile and not config.swap_memory, name="fastcarry_tune")


def _fits(row, limit):
    return limit is None or (row["peak_bytes"] is not None and row["peak_bytes"] <= limit)


class _Tuning:
    """One tuning run: the cell, its example inputs, the deadline, and the rows measured so far."""

    def __init__(self, cell, x, mode, defaults, time_major, lengths, deadline, progress):
        self.cell, self.x, self.mode, self.time_major, self.lengths = cell, x, mode, time_major, lengths
        self.defaults, self.deadline, self.progress, self.device = defaults, deadline, progress, device_info()
        self.rows = []

    def measure(self, config, jit_compile=True):
        """Compiles ``config``'s step (``_step``) and reads its peak memory once; adds and returns its row."""
        fn = _step(self.cell, self.mode, config, self.time_major, self.lengths, jit_compile)
        start = time.perf_counter()
        compile_s = timed_call(fn, self.x)
        peak, how = peak_memory(lambda: timed_call(fn, self.x), self.device)
        if self.progress:
            self.progress(config)
        # rounds: {round number: seconds}, so two candidates compare on the rounds both ran in.
        row = {"config": config, "defaults": config == self.defaults and jit_compile, "fn": fn,
               "jit_compile": jit_compile and not config.swap_memory, "compile_s": compile_s, "peak_bytes": peak,
               "memory": how, "rounds": {}, "measure_s": time.perf_counter() - start}
        self.rows.append(row)
        return row

    def time_rounds(self, timed, first_round, until):
        """Interleaved rounds of ``timed`` (each in its own order, ``round_order``): one, then more while another
        round of the same length ends by ``until`` (at most ``MAX_ROUNDS``); returns the next round's number."""
        n, last = 0, 0.0
        while n < 1 or (n < MAX_ROUNDS and time.perf_counter() + last <= until):
            r, round_start = first_round + n, time.perf_counter()
            for row in round_order(timed, r):
                row["rounds"][r] = timed_call(row["fn"], self.x)
            n, last = n + 1, time.perf_counter() - round_start
        self.medians()
        return first_round + n

    def medians(self):
        for row in self.rows:
            row["median_s"] = statistics.median(row["rounds"].values()) if row["rounds"] else math.nan

    def fitting_first_stage(self, steps, limit, memory_limit):
        """The first stage's rows that fit ``limit``: the unrolls, and chunks while none fits (train only)."""
        first = candidates(steps, self.device["type"])
        for config in first + ([] if self.defaults in first else [self.defaults]):
            self.measure(config)
        chunk = 0  # no chunk left to try
        if limit is not None and self.mode == "train":
            # chunk only where memory needs it: the largest chunk that fits (fewer boundaries, less recompute
            # overhead), from half of T's bucket down by quarters.
            chunk = tune_cache.bucket(steps) // 2
            while chunk >= 1 and not any(_fits(r, limit) for r in self.rows) and time.perf_counter() < self.deadline:
                self.measure(Config(unroll=min(2, steps), chunk=chunk))
                chunk //= 4
        fitting = [r for r in self.rows if _fits(r, limit)]
        if fitting:
            return fitting
        measured = [r for r in self.rows if r["peak_bytes"] is not None]
        if not measured:
            raise ValueError(f"memory_limit={memory_limit!r}: this device reports no memory use to compare it with")
        smallest = min(measured, key=lambda r: r["peak_bytes"])
        late = " (the budget ran out before smaller chunks were tried: raise budget_s)" if chunk >= 1 else ""
        raise ValueError(f"memory_limit={memory_limit!r} ({limit} bytes): no candidate fits; the smallest peak "
                         f"measured was {smallest['peak_bytes']} bytes, with {smallest['config'].describe()}{late}")

    def search(self, core, steps, limit, memory_limit):
        """Both stages (see ``tune``); returns the winning row."""
        fitting = self.fitting_first_stage(steps, limit, memory_limit)
        default = next((r for r in fitting if r["config"] == self.defaults), None)

        def choose(timed):
            """The fastest of ``timed`` that reliably beats the defaults, else the defaults (when they fit)."""
            eligible = [r for r in timed if default is None or r is default or beats(r, default)]
            return min(eligible, key=lambda r: r["median_s"])

        now = time.perf_counter()
        next_round = self.time_rounds(fitting, 0, now + (self.deadline - now) * FIRST_STAGE)
        best = choose(fitting)
        # The second stage only when its compiles and a round fit in the budget left (each estimated by the
        # slowest first-stage compile, and a first-stage round): the budget bounds the whole tuning.
        later = variants(best["config"], core, self.mode, self.device)
        cost = len(later) * max(r["measure_s"] for r in self.rows) + sum(r["median_s"] for r in fitting)
        if time.perf_counter() + cost > self.deadline:
            later = []
        second = [r for r in (self.measure(c) for c in later) if _fits(r, limit)]
        # A swapped row runs outside XLA: it is held against the winner run the same way, not against jitted rows.
        twin = []
        if any(r["config"].swap_memory for r in second):
            twin = [self.measure(best["config"], jit_compile=False)]
            twin[0]["twin"] = True
        if second:
            # The winner's variants, timed against it and the defaults in rounds of their own.
            first = [best] if default is None or best is default else [default, best]
            self.time_rounds(first + second + twin, next_round, self.deadline)
            swapped = [r for r in second if r["config"].swap_memory and beats(r, twin[0])]
            best = min(swapped, key=lambda r: r["median_s"]) if swapped else choose(
                fitting + [r for r in second if not r["config"].swap_memory])
        self.medians()  # also for the rows that did not fit: nan
        return best


def _rows_to_json(rows):
    """``rows`` as the cache stores them (configs as keyword dicts; JSON keys rounds by text)."""
    def plain(value):
        return None if isinstance(value, float) and math.isnan(value) else value
    return [{**{k: plain(v) for k, v in row.items() if k not in ("config", "rounds")},
             "config": row["config"].as_kwargs(), "rounds": {str(r): t for r, t in row["rounds"].items()}}
            for row in rows]


def _rows_from_json(rows):
    """The cache's rows back as ``TuneReport`` rows."""
    return [{**row, "config": Config(**row["config"]), "rounds": {int(r): t for r, t in row["rounds"].items()},
             "median_s": math.nan if row.get("median_s") is None else row["median_s"], "cached": True}
            for row in rows]


def _check(mode, budget_s):
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if isinstance(budget_s, bool) or not isinstance(budget_s, (int, float)) or not budget_s > 0:
        raise ValueError(f"budget_s must be a number of seconds > 0, got {budget_s!r}")


def default_config(cell: Any, shape: tuple[int, int, int] | Any, *, mode: str = "train") -> Config:
    """What ``fc.unroll`` runs for ``cell`` at ``shape`` in ``mode`` on this device when neither the call nor a
    config chooses: ``Config(unroll=k)``, ``k`` from ``fastcarry._config.default_unroll`` (1 for inference of
    small cells on a CPU, else 2 or 4; the table is in ``benchmarks/README.md``).

    Args:
      cell: anything ``fc.unroll`` takes (built for ``D`` here if it is not).
      shape: ``(B, T, D)``, or an example tensor ``[B, T, D]``.
      mode: ``"train"`` or ``"infer"`` (``fc.unroll`` infers when no tape could record, or ``training=False``).
    """
    from fastcarry._adapters import as_cell
    from fastcarry._protocol import check_core
    from fastcarry._unroll import default_unroll_for

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    batch, _, dim = _check_shape(shape)
    cell = as_cell(cell)
    cell.build(dim)
    return Config.defaults(default_unroll_for(check_core(cell.core(), type(cell).__name__), batch, mode))


def tune(cell: Any, shape: tuple[int, int, int] | Any, *, mode: str = "train", time_major: bool = False,
         sequence_length: Any = None, memory_limit: int | str | None = None, budget_s: float = 60, cache: bool = True,
         force: bool = False, report: bool = False,
         progress: Callable[[Config], Any] | None = None) -> Config | TuneReport:
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
      cache: read and store the cache (what ``fc.unroll(..., config="auto")`` and ``fastcarry tune --show``
        read): a result measured for the same key (device, versions, cell, D, H, dtype, mode, B and T
        buckets) with the same ``time_major``, ``sequence_length`` given or not, and ``memory_limit`` is
        returned without measuring.
      force: measure even when the cache holds a result (and replace it).
      report: return a ``TuneReport`` (the config, every measured row, the cache key) instead.
      progress: None, or ``progress(config)`` called as each candidate has been compiled.

    The search, in two stages (every candidate gives the same results; a test
    holds them equal). Each candidate is compiled and its peak memory read
    once, then the candidates of a stage are timed in interleaved rounds (at
    least 1, at most ``MAX_ROUNDS``):

    1. ``unroll`` in 1, 2, 4 (on a GPU also 8, 16; those above T are pruned: they only add
       remainder steps); with a ``memory_limit`` that none of them fits (train
       only), ``chunk`` from half of T's power-of-two bucket down by quarters
       until one fits (the largest that fits: fewer chunk boundaries). Timed
       for ``FIRST_STAGE`` (60%) of the budget left after compiling.
    2. The first stage's winner with ``projection="hoisted"`` (cells with a
       projection of their own), and on a GPU in training, when the winner is
       chunked, with ``swap_memory=True`` (which is held against the winner run
       the same way, outside XLA), timed against that winner and the defaults for the
       rest of the budget (skipped when its compiles and one round would not
       end within the budget). Pruned this way, not as a full product, because
       these knobs act on other costs than ``unroll`` does (the projection's
       GEMM shape and where the saved activations live, not the per-step loop
       overhead): a full product would triple the candidates for little.

    The fastest median that fits wins, but a candidate replaces the defaults
    only when it is reliably faster: at least ``MIN_GAIN`` (3%) in median and
    faster in enough of the rounds both ran in (one-sided sign test at
    ``SIGNIFICANCE``, 5%; so at least 5 shared rounds). Gains within the noise
    are not worth a change: a second measurement would not find them.

    Raises ``ValueError`` for a bad ``mode``, ``budget_s``, ``memory_limit`` or
    ``shape``, and when no candidate fits ``memory_limit`` (naming the smallest
    peak measured and its config).
    """
    import numpy as np
    import tensorflow as tf

    from fastcarry._adapters import as_cell
    from fastcarry._protocol import check_core
    from fastcarry._unroll import default_unroll_for
    from fastcarry._validate import check_lengths

    _check(mode, budget_s)
    limit = parse_bytes(memory_limit)
    batch, steps, dim = _check_shape(shape)
    cell = as_cell(cell)
    cell.build(dim)
    core = check_core(cell.core(), type(cell).__name__)
    key = tune_cache.make_key(tune_cache.cell_name(core), dim, core.output_size, cell.dtype, mode, batch, steps)
    defaults = Config.defaults(default_unroll_for(core, batch, mode))
    # What the key leaves out but the result depends on: a cached result is reused only for the same.
    context = {"time_major": bool(time_major), "lengths": sequence_length is not None, "memory_limit": limit}
    if not isinstance(force, bool):
        raise TypeError(f"force must be a bool, got {force!r}")
    hit = tune_cache.load().get(key) if cache and not force else None
    if hit is not None and hit["record"].get("context") == context and "rows" in hit["record"]:
        found = TuneReport(Config(**hit["config"]), _rows_from_json(hit["record"]["rows"]), key)
        return found if report else found.config
    layout = (steps, batch, dim) if time_major else (batch, steps, dim)
    x = tf.constant(np.random.default_rng(0).standard_normal(layout), cell.dtype)
    tuning = _Tuning(cell, x, mode, defaults, time_major, check_lengths(sequence_length, batch, steps),
                     time.perf_counter() + budget_s, progress)
    best = tuning.search(core, steps, limit, memory_limit)
    for row in tuning.rows:
        del row["fn"]
        row["samples"] = [row["rounds"][r] for r in sorted(row["rounds"])]
    if cache:
        tune_cache.store(key, best["config"], {
            "median_s": best["median_s"], "peak_bytes": best["peak_bytes"], "memory": best["memory"],
            "measured": time.strftime("%Y-%m-%dT%H:%M:%S"), "candidates": len(tuning.rows), "context": context,
            "rows": _rows_to_json(tuning.rows)})
    return TuneReport(best["config"], tuning.rows, key) if report else best["config"]
