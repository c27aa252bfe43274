"""What ``fc.tune`` tries and when a candidate wins: the schedules of each stage, and the test a candidate must
pass to replace the defaults (``fastcarry._tune`` measures them)."""

import dataclasses
import math

from fastcarry._config import Config
from fastcarry._protocol import identity_project

UNROLLS = (1, 2, 4)
# On a GPU also these: its steps are bound by kernel launches, which longer loop bodies (or command buffers)
# amortise (issue 25; unmeasured here, no GPU).
GPU_UNROLLS = (8, 16)
# A candidate replaces the defaults only when its median is this much faster: picking the best of several
# medians that differ by noise alone finds a "winner" that a second measurement shows slower.
MIN_GAIN = 1.03
# ... and when it beat the defaults in enough of the rounds both were timed in that chance is an unlikely
# explanation (a one-sided sign test at this level): two measurements of one config differ by several
# percent on a shared VM (benchmarks/README.md).
SIGNIFICANCE = 0.05

def candidates(time_steps, device_type="CPU"):
    """The first stage: each ``unroll`` in ``UNROLLS`` (and ``GPU_UNROLLS`` on a GPU) up to T (more steps per
    iteration than T only add remainder steps), the rest of the schedule the defaults."""
    unrolls = UNROLLS + (GPU_UNROLLS if device_type == "GPU" else ())
    return [Config(unroll=u) for u in unrolls if u <= max(time_steps, 1)]


def variants(best, core, mode, device):
    """The second stage: ``best`` (the first stage's winner) with one more knob changed each.

    ``projection="hoisted"`` where the core has a projection of its own (a
    generic cell projects inside its step); ``swap_memory`` for training on a
    device that is not the host (on the host it parks nothing anywhere else),
    when ``best`` is chunked: that is, only under a ``memory_limit`` the unchunked
    steps did not fit (``swap_memory`` without a chunk brings all T back at once).
    """
    out = []
    if core.project is not identity_project:
        out.append(dataclasses.replace(best, projection="hoisted"))
    if mode == "train" and device["type"] != "CPU" and best.chunk is not None:
        out.append(dataclasses.replace(best, swap_memory=True))
    return out


def sign_test(wins, n):
    """P(at least ``wins`` of ``n`` fair coin flips come up heads): the one-sided sign test's p-value."""
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n


def paired_ratios(row, default):
    """``default``'s time over ``row``'s in each round both were timed in (a run-long drift cancels)."""
    return [default["rounds"][r] / t for r, t in sorted(row["rounds"].items()) if r in default["rounds"]]


def beats(row, default):
    """Whether ``row`` is reliably faster than ``default``: by ``MIN_GAIN`` in median, and in enough of the
    rounds both were timed in (``SIGNIFICANCE``)."""
    if not row["median_s"] * MIN_GAIN <= default["median_s"]:
        return False
    ratios = paired_ratios(row, default)
    return sign_test(sum(1 for q in ratios if q > 1), len(ratios)) <= SIGNIFICANCE
