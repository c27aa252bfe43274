"""``fc.Config``: the knobs of ``fastcarry.unroll`` that change speed or memory, never results.

What ``fc.tune`` returns and ``fc.unroll(..., config=...)`` applies; frozen and
hashable, so it can key caches and ``tf.function`` traces.
"""

import dataclasses
from typing import Optional

import numpy as np

PROJECTIONS = ("per_iteration", "hoisted")  # fc.unroll's projection= values


@dataclasses.dataclass(frozen=True)
class Config:
    """A schedule for ``fc.unroll``: ``Config(unroll=2, chunk=256)``.

    Fields (each as the ``fc.unroll`` argument of the same name):
      unroll: None (the cell's default) or int >= 1, time steps per loop iteration.
      chunk: None or int >= 1, steps per recomputed chunk of the backward pass.
      swap_memory: park the saved activations in host memory between the passes.
      projection: ``"per_iteration"`` or ``"hoisted"``, where the forward's input projection runs.

    ``as_kwargs()`` gives them as keyword arguments. Given to ``fc.unroll`` as
    ``config=``, a field applies where the call leaves that argument at its
    default (``unroll=None``, ``chunk=None``, ``swap_memory=False``,
    ``projection="per_iteration"``); an argument given with any other value
    wins.
    """

    unroll: Optional[int] = None
    chunk: Optional[int] = None
    swap_memory: bool = False
    projection: str = "per_iteration"

    def __post_init__(self):
        for name in ("unroll", "chunk"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                                      or value < 1):
                raise ValueError(f"Config.{name} must be None or an int >= 1, got {value!r}")
        if not isinstance(self.swap_memory, bool):
            raise ValueError(f"Config.swap_memory must be a bool, got {self.swap_memory!r}")
        if self.projection not in PROJECTIONS:
            raise ValueError(f"Config.projection must be one of {PROJECTIONS}, got {self.projection!r}")

    def as_kwargs(self):
        """``{"unroll": .., "chunk": .., "swap_memory": .., "projection": ..}`` for ``fc.unroll``."""
        return dataclasses.asdict(self)

    def describe(self):
        """Short text: ``unroll=2 chunk=256``, the defaults left out (``defaults`` when all are)."""
        parts = [f"{k}={v}" for k, v in self.as_kwargs().items() if v != getattr(Config, k)]
        return " ".join(parts) or "defaults"


# The value each knob has when the caller does not give it: where a config applies.
DEFAULTS = Config().as_kwargs()


def merge(config, given):
    """``given`` (the call's knob values) with ``config``'s where the call left a knob at its default."""
    return {k: (getattr(config, k) if given[k] == DEFAULTS[k] else given[k]) for k in DEFAULTS}
