"""``fc.Config``, ``fc.unroll(config=...)``, the tune cache and ``fc.tune``."""

import dataclasses
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

import fastcarry as fc
import harness
from conftest import assert_all_close, make_cell, random_inputs, random_state
from fastcarry import _candidates, _measure, _strategies, _tune

B, T, D, H = 2, 5, 3, 4


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache directory for the test (and no memoised lookups)."""
    monkeypatch.setenv("FASTCARRY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(fc.tune_cache, "_MEMO", {})
    return tmp_path / "cache" / "tune.json"


# -- Config ---------------------------------------------------------------------------------------------------

def test_config_is_a_frozen_hashable_record():
    cfg = fc.Config(unroll=3, chunk=16)
    assert cfg.as_kwargs() == {"unroll": 3, "chunk": 16, "swap_memory": None, "projection": None}
    assert hash(cfg) == hash(fc.Config(unroll=3, chunk=16)) and cfg != fc.Config(unroll=3)
    assert cfg.describe() == "unroll=3 chunk=16" and fc.Config().describe() == "defaults"
    assert fc.Config(unroll=1, projection="hoisted").describe() == "unroll=1 projection=hoisted"
    with pytest.raises(AttributeError):
        cfg.unroll = 2


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(unroll=0), ValueError, "Config.unroll must be None or an int >= 1, got 0"),
    (dict(unroll=True), TypeError, "Config.unroll must be None or an int >= 1, got True"),
    (dict(chunk=2.5), TypeError, "Config.chunk must be None or an int >= 1, got 2.5"),
    (dict(swap_memory="yes"), TypeError, "Config.swap_memory must be a bool, got 'yes'"),
    (dict(projection="before"), ValueError,
     r"Config.projection must be one of \('per_iteration', 'hoisted'\), got 'before'"),
])
def test_bad_config_fails_at_construction_as_unroll_does(kwargs, error, message):
    with pytest.raises(error, match=message):
        fc.Config(**kwargs)
    (name, value), = kwargs.items()
    with pytest.raises(error, match=message.replace("Config.", "")):  # the same check, the argument's name
        fc.unroll(make_cell("lstm", H, input_dim=D), tf.zeros([B, T, D]), **{name: value})


def _schedules_used(monkeypatch, run):
    """The ``Schedule`` of every compiled function ``run()`` asks for."""
    seen, compiled = [], _strategies.compiled
    monkeypatch.setattr(_strategies, "compiled", lambda role, core, layout, schedule, build: seen.append(schedule)
                        or compiled(role, core, layout, schedule, build))
    run()
    return seen


def test_unroll_applies_a_config_where_the_call_leaves_the_default(monkeypatch):
    cell = make_cell("gru", H, input_dim=D)
    x = tf.constant(random_inputs(B, T, D), tf.float32)

    def train(**kwargs):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(fc.unroll(cell, x, **kwargs)[0])
        return tape.gradient(loss, x)

    seen = _schedules_used(monkeypatch, lambda: train(config=fc.Config(unroll=3, chunk=2)))
    assert {(s.unroll, s.chunk) for s in seen} == {(3, 2)}
    seen = _schedules_used(monkeypatch, lambda: train(config=fc.Config(unroll=3, chunk=2), unroll=1))
    assert {(s.unroll, s.chunk) for s in seen} == {(1, 2)}  # the given argument wins
    seen = _schedules_used(monkeypatch, lambda: train(config=fc.Config(projection="hoisted")))
    assert {s.projection for s in seen} == {"hoisted"}
    # An explicit value wins over the config's, the default's too (None, not the default, means "not given").
    seen = _schedules_used(monkeypatch, lambda: train(config=fc.Config(projection="hoisted", unroll=3),
                                                      projection="per_iteration", unroll=2))
    assert {(s.unroll, s.projection) for s in seen} == {(2, "per_iteration")}
    with pytest.raises(TypeError, match="config must be None, an fc.Config or 'auto', got 'fast'"):
        fc.unroll(cell, x, config="fast")


def test_the_default_unroll_follows_the_table():
    from fastcarry._config import CPU_INFERENCE, DEFAULT_UNROLL, default_unroll

    assert default_unroll("lstm", 4, 16, "infer", "CPU") == 1  # the 4x20x8x16
    assert default_unroll("lstm", 32, 128, "infer", "CPU") == 1  # B * H = 4096, the table's edge
    assert default_unroll("lstm", 64, 128, "infer", "CPU") == 4  # B * H above it
    assert default_unroll("lstm", 8, 256, "infer", "CPU") == 4  # H above LSTM's 128
    assert default_unroll("gru", 8, 128, "infer", "CPU") == 1 and default_unroll("gru", 16, 128, "infer", "CPU") == 2
    assert default_unroll("simple_rnn", 16, 256, "infer", "CPU") == 1
    assert default_unroll("simple_rnn", 32, 256, "infer", "CPU") == 2
    assert default_unroll("simple_rnn", 8, 512, "infer", "CPU") == 2  # H above SimpleRNN's 256
    # Any other cell: unroll=1 at the smallest sizes only.
    assert default_unroll("my_cell", 8, 128, "infer", "CPU") == 1 and default_unroll("my_cell", 16, 128, "infer",
                                                                                       "CPU") == 2
    # Training, a GPU, a batch unknown where traced: the one default.
    for args in [("lstm", 4, 16, "train", "CPU"), ("lstm", 4, 16, "infer", "GPU"), ("lstm", None, 16, "infer", "CPU"),
                 ("my_cell", 4, 16, "train", "CPU")]:
        assert default_unroll(*args) == DEFAULT_UNROLL, args
    assert set(CPU_INFERENCE) == {"lstm", "gru", "simple_rnn"}  # every fused core's name
    # The public question: what runs for this cell and shape.
    assert fc.default_config(make_cell("lstm", 16), (4, 20, 8), mode="infer") == fc.Config(unroll=1)
    assert fc.default_config(make_cell("lstm", 16), (4, 20, 8)) == fc.Config(unroll=2)  # mode="train"
    assert fc.default_config(make_cell("gru", 512), tf.zeros([64, 3, 8]), mode="infer") == fc.Config(unroll=2)
    with pytest.raises(ValueError, match="mode must be one of \\('train', 'infer'\\), got 'eval'"):
        fc.default_config(make_cell("lstm", 16), (4, 20, 8), mode="eval")


def test_unroll_runs_the_default_for_its_mode_and_shape(monkeypatch):
    """Inference (no tape, or training=False) of a small cell: unroll=1; under a tape, a batch unknown where
    traced, or a size past the table's edge: the one default, 2 (LSTM: 4)."""
    cell = make_cell("lstm", H, input_dim=D)
    x = tf.constant(random_inputs(B, T, D), tf.float32)

    def unrolls(run):
        return {s.unroll for s in _schedules_used(monkeypatch, run)}

    def train():
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(fc.unroll(cell, x)[0])
        return tape.gradient(loss, x)

    assert unrolls(lambda: fc.unroll(cell, x)) == {1}  # eager inference
    assert unrolls(lambda: tf.function(lambda x: fc.unroll(cell, x)[0], jit_compile=True)(x)) == {1}
    assert unrolls(train) == {2}
    assert unrolls(lambda: tf.function(lambda: train())()) == {2}  # a tape inside a traced training step
    with tf.GradientTape():  # training=False: inference even under a tape
        assert unrolls(lambda: tf.function(lambda x: fc.unroll(cell, x, training=False)[0])(x)) == {1}
    unknown = tf.function(lambda x: fc.unroll(cell, x)[0], input_signature=[tf.TensorSpec([None, T, D])])
    assert unrolls(lambda: unknown(x)) == {2}
    wide = make_cell("lstm", 256, input_dim=D)
    assert unrolls(lambda: fc.unroll(wide, x)) == {4}
    assert unrolls(lambda: fc.unroll(cell, x, unroll=2)) == {2}  # given: wins


# -- the cache ------------------------------------------------------------------------------------------------

def test_cache_location_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("FASTCARRY_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert fc.tune_cache.cache_path() == str(tmp_path / "xdg" / "fastcarry" / "tune.json")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert fc.tune_cache.cache_path() == str(tmp_path / "home" / ".cache" / "fastcarry" / "tune.json")
    monkeypatch.setenv("FASTCARRY_CACHE_DIR", str(tmp_path / "mine"))
    assert fc.tune_cache.cache_path() == str(tmp_path / "mine" / "tune.json")


def test_buckets_are_powers_of_two():
    assert [fc.tune_cache.bucket(n) for n in (1, 2, 3, 17, 32, 33, 100, 8192)] == [1, 2, 4, 32, 32, 64, 128, 8192]


def test_store_and_load_round_trip(cache):
    assert fc.tune_cache.store("k", fc.Config(unroll=4), {"median_s": 0.1})
    assert fc.tune_cache.load() == {"k": {"config": {"unroll": 4, "chunk": None, "swap_memory": None,
                                                     "projection": None},
                                          "record": {"median_s": 0.1}}}
    assert fc.tune_cache.clear() == 1 and fc.tune_cache.load() == {}


@pytest.mark.parametrize("content", ["{not json", json.dumps({"schema": 999, "entries": {}}), "[1, 2]"])
def test_a_corrupt_or_foreign_cache_is_moved_aside_and_rebuilt(cache, content):
    cache.parent.mkdir(parents=True)
    cache.write_text(content)
    with pytest.warns(UserWarning, match="could not be read .* moved it to .*tune.json.bad-"):
        assert fc.tune_cache.load() == {}
    assert not cache.exists() and list(cache.parent.glob("tune.json.bad-*"))
    assert fc.tune_cache.store("k", fc.Config(), {})
    assert list(fc.tune_cache.load()) == ["k"]


def test_an_unwritable_cache_warns_and_returns(cache):
    cache.parent.parent.mkdir(parents=True, exist_ok=True)
    cache.parent.write_text("a file where the directory should be")
    with pytest.warns(UserWarning, match="could not write the tune cache"):
        assert fc.tune_cache.store("k", fc.Config(), {}) is False


def test_concurrent_writers_lose_no_entry(cache):
    """Two processes writing 25 entries each at once: all 50 are there (the lock), the file always whole."""
    script = ("import sys\nimport fastcarry.tune_cache as cache\nfrom fastcarry import Config\n"
              "for i in range(25):\n    cache.store(f'{sys.argv[1]}{i}', Config(unroll=1 + i % 4), {})\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, who]) for who in "ab"]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert sorted(fc.tune_cache.load()) == sorted(f"{w}{i}" for w in "ab" for i in range(25))


def test_device_info_reads_a_gpu_when_there_is_one(monkeypatch):
    _measure._device_facts.cache_clear()  # read once per process: read again under the fakes, and after them
    monkeypatch.setattr(_measure, "_device_facts", _measure._device_facts.__wrapped__)
    gpu = tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [gpu] if kind == "GPU" else [])
    monkeypatch.setattr(tf.config.experimental, "get_device_details", lambda d: {"device_name": "NVIDIA A100"})
    assert _measure.device_info() == {"type": "GPU", "name": "NVIDIA A100", "cores": 1}
    assert "GPU:NVIDIA A100:1" in fc.tune_cache.make_key("lstm", D, H, tf.float32, "train", B, T)
    core = make_cell("lstm", H, input_dim=D).core()
    assert fc.Config(unroll=1, chunk=4, swap_memory=True) in _candidates.variants(fc.Config(unroll=1, chunk=4), core,
                                                                            "train", _measure.device_info())


def test_each_round_visits_every_candidate_once_after_changing_neighbours():
    names = ["a", "b", "c", "d"]
    orders = [_measure.round_order(names, r) for r in range(12)]
    assert all(sorted(o) == names for o in orders) and orders == [_measure.round_order(names, r) for r in range(12)]
    before = {n: {o[o.index(n) - 1] for o in orders if o.index(n) > 0} for n in names}
    assert all(len(p) >= 2 for p in before.values()), before  # a fixed cycle gives each exactly one


def test_peak_memory_reads_the_device_allocator(monkeypatch):
    reads = iter([{"current": 100, "peak": 100}, {"current": 100, "peak": 4196}])
    monkeypatch.setattr(tf.config.experimental, "reset_memory_stats", lambda name: None)
    monkeypatch.setattr(tf.config.experimental, "get_memory_info", lambda name: next(reads))
    assert _measure.peak_memory(lambda: None, {"type": "GPU"}) == (4096, "allocator")


# -- fc.tune --------------------------------------------------------------------------------------------------

def test_tune_stores_what_config_auto_then_uses(cache, monkeypatch):
    cell = make_cell("lstm", H, input_dim=D)
    config, rows, key = fc.tune(cell, (B, T, D), mode="infer", budget_s=1, report=True)
    first = {fc.Config(unroll=u) for u in (1, 2, 4)}
    assert {r["config"] for r in rows} - first == {r["config"] for r in rows if r["config"].projection == "hoisted"}
    assert len(rows) in (3, 4) and first <= {r["config"] for r in rows}  # the second stage if budget was left
    assert all(r["median_s"] > 0 and r["compile_s"] > 0 for r in rows)
    assert json.loads(key)["B"] == 2 and json.loads(key)["T"] == 8 and fc.tune_cache.load()[key]["config"]["unroll"] \
        == config.unroll
    monkeypatch.setattr(fc.tune_cache, "_MEMO", {})
    start = time.perf_counter()
    assert fc.tune_cache.lookup(cell.core(), D, tf.float32, "infer", B, 7) == config  # T = 7: the same bucket
    assert time.perf_counter() - start < 1.0
    x = tf.constant(random_inputs(B, T, D), tf.float32)
    seen = _schedules_used(monkeypatch, lambda: fc.unroll(cell, x, config="auto"))
    assert {s.unroll for s in seen} == {config.unroll}


@pytest.mark.parametrize("kwargs, message", [
    (dict(budget_s=0), "budget_s must be a number of seconds > 0, got 0"),
    (dict(memory_limit="lots"), "memory_limit must be a positive number of bytes or a string like '2GiB'"),
    (dict(mode="eval"), "mode must be one of ('train', 'infer'), got 'eval'"),
])
def test_tune_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fc.tune(make_cell("rnn", H), (B, T, D), cache=False, **kwargs)


def test_tune_bad_shape():
    with pytest.raises(ValueError, match=r"shape must be \(B, T, D\).*got \(2, 5\)"):
        fc.tune(make_cell("rnn", H), (2, 5), cache=False)


def test_a_memory_limit_nothing_fits_names_the_smallest_peak(cache):
    with pytest.raises(ValueError, match=r"memory_limit=1 \(1 bytes\): no candidate fits; the smallest peak "
                                         r"measured was \d+ bytes, with unroll=\d"):
        fc.tune(make_cell("rnn", H, input_dim=D), (B, T, D), mode="infer", memory_limit=1, budget_s=1)


def test_parse_bytes():
    assert [_tune.parse_bytes(v) for v in (None, 512, "2GiB", "300 MiB", "1.5GB")] == \
        [None, 512, 2 ** 31, 300 * 2 ** 20, 1_500_000_000]


def test_every_candidate_gives_the_default_results():
    """Each config fc.tune may choose, on a device that is not the host (swap too), and chunked: same numbers."""
    cell = make_cell("rnn", H, input_dim=D)  # the knobs' exactness for every cell: test_unroll, test_chunk
    x, s0 = random_inputs(B, T, D), random_state(cell, B)
    cot = harness.random_cotangents(cell, B, T, False)
    want = harness.evaluate(fc.unroll, cell, x, s0, cot)
    gpu = {"type": "GPU", "name": "fake", "cores": 1}
    first = _candidates.candidates(T) + [fc.Config(unroll=2, chunk=c) for c in (4, 1)]
    # the second stage's variants of an unchunked and a chunked winner (test_unroll: hoisted with every unroll)
    configs = first + [v for c in (first[1], first[3]) for v in _candidates.variants(c, cell.core(), "train", gpu)]
    for config in configs:
        got = harness.evaluate(fc.unroll, cell, x, s0, cot, config=config)
        assert_all_close(got, want, tf.float32, config.describe())
    assert len(configs) == 8 and {c.projection for c in configs} == {None, "hoisted"}
    assert [c for c in configs if c.swap_memory] == [fc.Config(unroll=2, chunk=4, swap_memory=True)]


def test_candidates_prune_unrolls_beyond_t():
    assert _candidates.candidates(1) == [fc.Config(unroll=1)]
    assert [c.unroll for c in _candidates.candidates(100, "GPU")] == [1, 2, 4, 8, 16]
    assert [c.unroll for c in _candidates.candidates(10, "GPU")] == [1, 2, 4, 8]
    assert _candidates.candidates(3) == [fc.Config(unroll=1), fc.Config(unroll=2)]
    assert np.all([not c.swap_memory for c in _candidates.candidates(100)])


def test_variants_are_the_winner_with_one_knob_changed():
    cpu, gpu = {"type": "CPU", "name": "x", "cores": 2}, {"type": "GPU", "name": "fake", "cores": 1}
    fused = make_cell("lstm", H, input_dim=D).core()
    best = fc.Config(unroll=4)
    assert _candidates.variants(best, fused, "train", cpu) == [fc.Config(unroll=4, projection="hoisted")]
    assert _candidates.variants(best, fused, "infer", gpu) == [fc.Config(unroll=4, projection="hoisted")]
    assert _candidates.variants(best, fused, "train", gpu) == [fc.Config(unroll=4, projection="hoisted")]
    chunked = fc.Config(unroll=4, chunk=8)  # swap_memory only with a chunk: under a memory limit
    assert _candidates.variants(chunked, fused, "train", gpu) == [fc.Config(unroll=4, chunk=8, projection="hoisted"),
                                                            fc.Config(unroll=4, chunk=8, swap_memory=True)]
    generic = fc.FunctionCell(lambda x, s: (s + x, s + x), state_size=D, output_size=D)
    generic.build(D)
    assert _candidates.variants(best, generic.core(), "train", cpu) == []  # it projects inside its step


def test_sign_test():
    assert _candidates.sign_test(5, 5) == 1 / 32 and _candidates.sign_test(0, 4) == 1.0
    assert _candidates.sign_test(4, 5) == 6 / 32 and _candidates.sign_test(9, 10) == 11 / 1024


def _row(times):
    return {"rounds": dict(enumerate(times)), "median_s": float(np.median(times))}


@pytest.mark.parametrize("times, beats", [
    ([0.90] * 6, True),                                  # 10% faster in every shared round
    ([0.90, 1.10] * 3, False),                           # faster in median? no: as often slower
    ([0.98] * 6, False),                                 # always faster, but by less than MIN_GAIN
    ([0.90] * 4, False),                                 # 4 of 4 rounds: p = 1/16, not significant
    ([0.90] * 6 + [1.20], False),                        # 6 of 7: p = 8/128
    ([0.90] * 9 + [1.20], True),                         # 9 of 10: p = 11/1024
])
def test_a_candidate_replaces_the_defaults_only_when_reliably_faster(times, beats):
    assert _candidates.beats(_row(times), _row([1.0] * len(times))) == beats


def _fake_steps(monkeypatch, seconds):
    """fc.tune's candidate steps replaced by sleeps: ``seconds(config, jit_compile)`` per call (no compiling)."""
    def step(cell, mode, config, time_major, lengths, jit_compile=True):
        jit = jit_compile and not config.swap_memory  # as _step runs it

        def fn(x):
            time.sleep(seconds(config, jit))
            return tf.constant(0.0)
        return fn
    monkeypatch.setattr(_tune, "_step", step)


@pytest.mark.parametrize("twin_s, chosen", [(0.006, "swap"), (0.002, "chunked")])
def test_a_swap_candidate_is_held_against_its_twin_run_the_same_way(cache, monkeypatch, twin_s, chosen):
    """On a GPU, under a memory limit the unchunked steps exceed: the unrolls include 8 and 16, swap_memory is
    tried with the chunk that fits, and timed against that chunked winner run as swapping runs (a plain
    tf.function, its "twin"), not against the jitted rows."""
    monkeypatch.setattr(_tune, "device_info", lambda: {"type": "GPU", "name": "fake", "cores": 1})
    ran = []

    def seconds(config, jit):
        ran.append(config)
        if config.swap_memory or config.projection == "hoisted":  # (hoisted: not a tie with the winner)
            return 0.004
        return 0.003 if jit else twin_s  # jitted, the chunked winner is the fastest row of all

    _fake_steps(monkeypatch, seconds)
    # Peak memory: 1000 bytes unchunked, 100 chunked, read as the step runs.
    monkeypatch.setattr(_tune, "peak_memory",
                        lambda run, device: (run(), (1000 if ran[-1].chunk is None else 100, "allocator"))[1])
    cell = make_cell("lstm", H, input_dim=D)
    report = fc.tune(cell, (B, 32, D), mode="train", memory_limit=500, budget_s=3, cache=False, report=True)
    unchunked = [r["config"].unroll for r in report.rows if r["config"].chunk is None]
    assert unchunked == [1, 2, 4, 8, 16]  # a GPU's candidates (training's default, 2, among them)
    swap = [r for r in report.rows if r["config"].swap_memory]
    twin = [r for r in report.rows if r.get("twin")]
    assert len(swap) == len(twin) == 1 and not swap[0]["jit_compile"] and not twin[0]["jit_compile"]
    assert twin[0]["config"] == dataclasses.replace(swap[0]["config"], swap_memory=None)
    assert report.config == (swap[0]["config"] if chosen == "swap" else twin[0]["config"])


def test_tune_picks_a_clearly_faster_candidate_and_keeps_the_defaults_otherwise(cache, monkeypatch):
    cell = make_cell("lstm", H, input_dim=D)
    _fake_steps(monkeypatch, lambda c, jit: 0.002 if c.projection == "hoisted" else 0.006)
    config, rows, _ = report = fc.tune(cell, (B, T, D), mode="infer", budget_s=0.5, cache=False, report=True)
    # Inference of a small LSTM on a CPU: fc.unroll's defaults are unroll=1 (_config.CPU_INFERENCE).
    assert report.defaults == fc.Config(unroll=1) and [r["config"] for r in rows if r["defaults"]] == [report.defaults]
    assert config == fc.Config(unroll=1, projection="hoisted")  # the variant of the (default) first winner
    assert len(next(r for r in rows if r["config"] == config)["samples"]) >= 5
    _fake_steps(monkeypatch, lambda c, jit: 0.004)  # all the same: noise decides nothing
    config = fc.tune(cell, (B, T, D), mode="infer", budget_s=0.5, cache=False)
    assert config == fc.Config(unroll=1)
    assert fc.tune(cell, (B, T, D), mode="train", budget_s=0.5, cache=False) == fc.Config(unroll=2)


def test_tune_returns_the_cached_result_at_once_and_force_measures_again(cache, monkeypatch):
    cell = make_cell("lstm", H, input_dim=D)
    calls = []
    _fake_steps(monkeypatch, lambda c, jit: calls.append(c) or 0.001)
    first = fc.tune(cell, (B, T, D), mode="infer", budget_s=0.3, report=True)
    assert not first.cached and calls
    calls.clear()
    start = time.perf_counter()
    again = fc.tune(cell, (B, T, D), mode="infer", budget_s=0.3, report=True)
    assert time.perf_counter() - start < 1.0 and calls == []  # on main: measured again, 4-6 s at real shapes
    assert again.cached and again.config == first.config and again.key == first.key
    assert [r["config"] for r in again.rows] == [r["config"] for r in first.rows]
    assert again.gain(again.config) == pytest.approx(first.gain(first.config))
    assert fc.tune(cell, (B, T, D), mode="infer", budget_s=0.3) == first.config  # a Config when report=False
    forced = fc.tune(cell, (B, T, D), mode="infer", budget_s=0.3, report=True, force=True)
    assert not forced.cached and calls
    # What the key leaves out must match too: another memory limit or layout is measured.
    calls.clear()
    assert not fc.tune(cell, (B, T, D), mode="infer", budget_s=0.3, time_major=True, report=True).cached and calls
    with pytest.raises(TypeError, match="force must be a bool, got 1"):
        fc.tune(cell, (B, T, D), mode="infer", force=1)


def test_the_report_says_why_a_faster_looking_candidate_was_not_chosen():
    defaults, noisy, small = fc.Config(unroll=2), fc.Config(unroll=1), fc.Config(unroll=4)
    # unroll=1: 1.07x in median, faster in 9 of 15 rounds (p = 0.30); unroll=4: 1.01x in every round.
    noisy_times = [1 / 1.07] * 9 + [1.2] * 6
    rows = [{"config": defaults, **_row([1.0] * 15)}, {"config": noisy, **_row(noisy_times)},
            {"config": small, **_row([1 / 1.01] * 15)}]
    report = fc.TuneReport(defaults, rows, "key")
    assert report.reasons() == [
        "unroll=1: 1.07x the defaults in median, but faster in only 9 of 15 shared rounds (a sign test needs "
        "p <= 0.05): kept unroll=2",
        "unroll=4: 1.01x the defaults in median, under the 3% a change needs: kept unroll=2"]
    assert fc.TuneReport(noisy, rows, "key").reasons() == []  # nothing faster than the winner


def test_a_variant_over_the_memory_limit_is_listed_untimed(monkeypatch):
    calls = []

    def step(cell, mode, config, time_major, lengths, jit_compile=True):
        def fn(x):
            calls.append(config)
            time.sleep(0.001)
            return tf.constant(0.0)
        return fn

    def peak(run, device):
        run()
        return (10_000 if calls[-1].projection == "hoisted" else 1_000), "fake"

    monkeypatch.setattr(_tune, "_step", step)
    monkeypatch.setattr(_tune, "peak_memory", peak)
    config, rows, _ = fc.tune(make_cell("gru", H, input_dim=D), (B, T, D), mode="train", memory_limit=5_000,
                              budget_s=0.3, cache=False, report=True)
    hoisted = [r for r in rows if r["config"].projection == "hoisted"]
    assert config.projection != "hoisted" and len(hoisted) == 1
    assert np.isnan(hoisted[0]["median_s"]) and hoisted[0]["samples"] == [] and hoisted[0]["peak_bytes"] == 10_000


def test_lookup_with_the_batch_unknown_takes_the_largest_tuned_batch(cache):
    core = make_cell("lstm", H, input_dim=D).core()
    for batch, unroll in ((8, 1), (64, 4)):
        key = fc.tune_cache.make_key(fc.tune_cache.cell_name(core), D, H, tf.float32, "train", batch, 100)
        fc.tune_cache.store(key, fc.Config(unroll), {})
    assert fc.tune_cache.lookup(core, D, tf.float32, "train", None, 100) == fc.Config(unroll=4)
    assert fc.tune_cache.lookup(core, D, tf.float32, "train", 8, 100) == fc.Config(unroll=1)
    assert fc.tune_cache.lookup(core, D, tf.float32, "infer", None, 100) is None  # another mode
    assert fc.tune_cache.lookup(core, D, tf.float32, "train", None, None) is None  # T unknown: no bucket


def test_keras_layers_use_the_tuned_config_of_the_same_math(cache, monkeypatch):
    """``fastcarry tune --cell lstm`` (an fc.LSTM) serves fastcarry.keras.LSTM, also traced with B unknown."""
    from fastcarry import keras as fck

    name = fc.tune_cache.cell_name(make_cell("lstm", H, input_dim=D).core())
    key = fc.tune_cache.make_key(name, D, H, tf.float32, "train", B, T)
    fc.tune_cache.store(key, fc.Config(unroll=3, projection="hoisted"), {})
    layer = fck.LSTM(H, return_sequences=True)
    layer.build((None, T, D))

    @tf.function(input_signature=[tf.TensorSpec([None, T, D])])
    def train(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x))
        return tape.gradient(loss, x)

    seen = _schedules_used(monkeypatch, lambda: train(tf.zeros([B, T, D])))
    assert {(s.unroll, s.projection) for s in seen} == {(3, "hoisted")}
