"""Measuring on this machine: device facts, timed calls, resident memory, the steps that are timed.

One library-internal module shared by the tuner (``fastcarry._tune``), the
profiler (``fastcarry.profiling``) and the tools (``fastcarry.tools``): what a
measurement is, written once. It imports nothing of fastcarry's but the tracing
helper, so anything may use it.
"""

import functools
import os
import platform
import random
import threading
import time

from fastcarry._tracing import named_function


def cpu_model():
    """The CPU's model name and its widest vector ISA (Linux ``/proc/cpuinfo``), or what ``platform`` knows.

    The VMs the benchmarks run on change hardware between runs (an AVX2 AMD EPYC,
    an AVX-512/AMX Intel Xeon): figures are only comparable within one model.
    """
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return platform.processor() or platform.machine()
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    name = fields.get("model name\t", fields.get("model name", "")).strip() or platform.machine()
    flags = set(fields.get("flags\t\t", fields.get("flags", "")).split())
    isa = next((label for flag, label in (("amx_tile", "AVX-512, AMX"), ("avx512f", "AVX-512"), ("avx2", "AVX2"))
                if flag in flags), None)
    return f"{name} ({isa})" if isa else name


@functools.lru_cache(maxsize=None)
def _device_facts():
    """Read once per process: ``config="auto"`` asks on every traced (or eager) call."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return {"type": "GPU", "name": details.get("device_name", gpus[0].name), "cores": len(gpus)}
    return {"type": "CPU", "name": cpu_model(), "cores": os.cpu_count()}


def device_info():
    """``{"type", "name", "cores"}`` of the device fastcarry runs on: the first GPU, else the CPU."""
    return dict(_device_facts())


def block(result):
    """Waits until every tensor in ``result`` (any nest) is computed (copies it to the host)."""
    import tensorflow as tf

    for value in tf.nest.flatten(result):
        if isinstance(value, tf.Variable):
            value.read_value().numpy()
        elif tf.is_tensor(value) and hasattr(value, "numpy"):
            value.numpy()


def round_order(items, round_index):
    """``items`` in the order round ``round_index`` of an interleaved measurement visits them: a permutation
    seeded by the round, new every round.

    A fixed cycle, even one started one further along each round, has every
    item always follow the same neighbour, and what one leaves behind (its
    thread pool still spinning, caches filled) always falls on the same other;
    new orders spread it over all of them.
    """
    return random.Random(round_index).sample(list(items), len(items))


def timed_call(fn, *args):
    """Seconds for one call of ``fn``, a ``tf.function``, forced to completion.

    ``.numpy()`` on one result suffices: a ``tf.function`` call returns all its
    outputs together, so one being ready means the whole step ran (copying
    every output to the host would time the copies too).
    """
    import tensorflow as tf

    start = time.perf_counter()
    result = tf.nest.flatten(fn(*args))
    if result:
        block(result[-1])
    return time.perf_counter() - start


def step_function(run, variables, mode, cotangent=None, *, wrt_inputs=False, jit_compile=True, name="step"):
    """A ``tf.function`` of one step of ``run(x) -> outputs``, as the benchmarks and the tuner time it.

    ``mode="infer"``: ``run(x)``. ``mode="train"``: the gradient of
    ``reduce_sum(outputs * cotangent)`` w.r.t. ``variables`` (and ``x`` first
    with ``wrt_inputs``); ``cotangent`` ``[B, T, H]`` fixed and random, so the
    loss weighs every output differently (a plain sum could let an
    implementation skip work); None: the outputs themselves (a square loss).
    Each step is a function of its own under ``name`` (``fastcarry._tracing``).
    """
    import tensorflow as tf

    if mode not in ("infer", "train"):
        raise ValueError(f"mode must be 'infer' or 'train', got {mode!r}")
    if mode == "infer":
        fn = run
    else:
        def fn(x):
            with tf.GradientTape() as tape:
                if wrt_inputs:
                    tape.watch(x)
                outputs = run(x)
                loss = tf.reduce_sum(outputs * (outputs if cotangent is None else cotangent))
            return tape.gradient(loss, ([x] if wrt_inputs else []) + list(variables))
    return named_function(fn, f"{name}_{mode}", jit_compile=jit_compile)


def time_blocks(steps, rounds, min_sample_s=0.02):
    """``{name: median seconds per call}`` of ``steps`` (``{name: zero-argument step}``).

    Each step is called three times first (trace, compile, warm up); then
    ``rounds`` interleaved rounds (``round_order``), each timing one block of
    consecutive calls per step, as a user's hot loop calls one function: enough
    calls for ``min_sample_s`` (one timed call decides how many), so the
    timer's resolution and the one sync at the block's end stay out of the figure.
    """
    import statistics

    names = list(steps)
    for name in names:
        for _ in range(3):
            timed_call(steps[name])
    calls = {name: max(1, int(min_sample_s / max(timed_call(steps[name]), 1e-6))) for name in names}
    samples = {name: [] for name in names}
    for r in range(rounds):
        for name in round_order(names, r):
            start = time.perf_counter()
            for _ in range(calls[name]):
                result = steps[name]()
            block(result)
            samples[name].append((time.perf_counter() - start) / calls[name])
    return {name: statistics.median(s) for name, s in samples.items()}


def rss_bytes():
    """This process's resident memory in bytes (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssSampler:
    """``with RssSampler() as s:``: ``s.peak``, the highest RSS a background thread saw meanwhile.

    Sampled every half millisecond (TensorFlow releases the GIL while it
    computes). Coarse: memory the C library freed but keeps mapped is not seen
    again.
    """

    def __enter__(self):
        self.peak, self._stop = rss_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.0005)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def peak_memory(run, device):
    """Peak memory of ``run()`` above what was in use before, and how it was read.

    The device allocator's peak (``get_memory_info``: GPUs; a CPU only with
    ``TF_CPU_ALLOCATOR_USE_BFC=1``), else the process's sampled resident memory
    (``RssSampler``), else ``(None, "unavailable")``.
    """
    import tensorflow as tf

    name = "GPU:0" if device["type"] == "GPU" else "CPU:0"
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
    before = rss_bytes()
    with RssSampler() as sampler:
        run()
    return sampler.peak - before, "rss"
