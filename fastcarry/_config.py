"""The records of ``fastcarry.unroll``'s options: ``Options`` as given, ``fc.Config`` (what ``fc.tune`` chooses),
and the resolved ``Layout`` and ``Schedule`` one compiled function is specialised for.

An option left ``None`` is *not given* (Flax's ``RNN.__call__``): ``resolve``
fills it from a ``Config``, else from ``DEFAULTS``, so an explicit argument
always wins over a config. All records are frozen and hashable: they key the
compiled-function cache and the tune cache. The checks here are the only
ones of these values: ``Config(unroll=True)`` and ``unroll(unroll=True)`` fail
alike.
"""

import dataclasses
from typing import NamedTuple, Optional

import numpy as np

PROJECTIONS = ("per_iteration", "hoisted")  # unroll's projection= values
BACKWARDS = ("fused", "autodiff")  # unroll's backward= values
DEFAULT_UNROLL = 2  # steps per loop iteration when neither the call, a config nor the table below chooses

# Inference on a CPU, by core name: unroll=1 where B * H is at most ROWS (and H at most UNITS), else OTHERWISE.
# One step per iteration keeps the loop body a short chain of kernels, which XLA:CPU's thunk executor runs on
# the calling thread; with two or more steps the body has independent kernels (the next step's projection
# beside the recurrent matmul), which it hands to its thread pool, once per iteration: at small B * H the
# hand-offs cost more than the work; where the work is larger the concurrency pays. The thresholds were
# measured (benchmarks/README.md, "The default schedule", with the machine); there training showed no unroll
# reliably faster than 2, and GPUs are unmeasured: both keep DEFAULT_UNROLL.
CPU_INFERENCE = {  # core name: (ROWS, UNITS, OTHERWISE)
    "lstm": (4096, 128, 4),
    "gru": (1024, None, 2),
    "simple_rnn": (4096, 256, 2),
}
# Any other core (a Keras or TF1 cell, a FunctionCell, a user's protocol cell): its step's kernels are the
# user's, so only the smallest sizes, where the hand-offs dominate whatever the step is (benchmarks/README.md,
# "Users' own cells").
OTHER_CPU_INFERENCE = (1024, None, 2)


def default_unroll(core_name, batch, units, mode, device_type):
    """The steps per loop iteration ``fc.unroll`` runs when neither the call nor a config chooses.

    Args:
      core_name: the cell's ``Core.name`` (``"lstm"``, ``"gru"``, ``"simple_rnn"``, a generic cell's).
      batch: B, or None when it is not known where ``fc.unroll`` is traced.
      units: H, the output size.
      mode: ``"infer"`` (nothing can ask for a gradient) or ``"train"``.
      device_type: ``"CPU"`` or ``"GPU"`` (``fastcarry._measure.device_info``).

    Returns the choice of ``CPU_INFERENCE`` (``OTHER_CPU_INFERENCE`` for a core not in it) for inference on a
    CPU with B known, else ``DEFAULT_UNROLL``.
    """
    if mode != "infer" or device_type != "CPU" or batch is None:
        return DEFAULT_UNROLL
    rows, max_units, otherwise = CPU_INFERENCE.get(core_name, OTHER_CPU_INFERENCE)
    small = batch * units <= rows and (max_units is None or units <= max_units)
    return 1 if small else otherwise


def check_count(value, name):
    """``value`` is None or an int >= 1: else ``TypeError`` (not an int) or ``ValueError`` (below 1)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
        raise TypeError(f"{name} must be None or an int >= 1, got {value!r}")
    if value is not None and value < 1:
        raise ValueError(f"{name} must be None or an int >= 1, got {value}")


def check_flag(value, name, optional=False):
    """``value`` is a bool (or None, not given, when ``optional``), else ``TypeError``."""
    if not (isinstance(value, bool) or (optional and value is None)):
        raise TypeError(f"{name} must be a bool, got {value!r}")


def check_choice(value, name, choices, optional=False):
    """``value`` is one of ``choices`` (or None, not given, when ``optional``), else ``ValueError``."""
    if not ((optional and value is None) or (isinstance(value, str) and value in choices)):
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Config:
    """A schedule for ``fc.unroll``: ``Config(unroll=2, chunk=256)``; each field None (not chosen) or a value.

    Fields (each as the ``fc.unroll`` argument of the same name):
      unroll: int >= 1, time steps per loop iteration.
      chunk: int >= 1, steps per recomputed chunk of the backward pass.
      swap_memory: bool, park the saved activations in host memory between the passes.
      projection: ``"per_iteration"`` or ``"hoisted"``, where the forward's input projection runs.

    Given to ``fc.unroll`` as ``config=``, a field applies where the call
    leaves that argument None (not given); an argument the call gives wins.
    Fields left None take ``DEFAULTS``. ``as_kwargs()`` gives the fields as
    keyword arguments.
    """

    unroll: Optional[int] = None
    chunk: Optional[int] = None
    swap_memory: Optional[bool] = None
    projection: Optional[str] = None

    def __post_init__(self):
        check_count(self.unroll, "Config.unroll")
        check_count(self.chunk, "Config.chunk")
        check_flag(self.swap_memory, "Config.swap_memory", optional=True)
        check_choice(self.projection, "Config.projection", PROJECTIONS, optional=True)

    @classmethod
    def defaults(cls, unroll=DEFAULT_UNROLL):
        """The schedule ``fc.unroll`` runs when neither the call nor a config chooses one: ``Config(unroll=..)``
        (``default_unroll``'s for the workload; 2 where no workload is said), the other fields not chosen."""
        return cls(unroll=unroll)

    def as_kwargs(self):
        """``{"unroll": .., "chunk": .., "swap_memory": .., "projection": ..}`` for ``fc.unroll``."""
        return dataclasses.asdict(self)

    def describe(self):
        """Short text: ``unroll=4 chunk=256``, the fields not chosen left out (``defaults`` if none is)."""
        return " ".join(f"{k}={v}" for k, v in self.as_kwargs().items() if v is not None) or "defaults"


# What a knob is when neither the call nor a config gives it.
DEFAULTS = {"unroll": DEFAULT_UNROLL, "chunk": None, "swap_memory": False, "projection": "per_iteration"}


class Layout(NamedTuple):
    """What the data looks like: the caller's axes and direction. Changes the results' meaning.

    ``batch_known``: whether B is static where ``fc.unroll`` is traced. Part of
    the compiled functions' key, so a trace with B unknown (``model.export``,
    Keras's ``fit``) is never reused for a call with B known: TF would reuse
    the more general trace, whose TensorLists have no static element
    shape, which TFLite's builtin ops cannot convert.
    """

    time_major: bool
    reverse: bool
    batch_known: bool = True


class Schedule(NamedTuple):
    """How the loop is computed. Changes speed and memory, never results: what an autotuner chooses."""

    unroll: int                      # steps per loop iteration
    chunk: Optional[int] = None      # exact BPTT in chunks of this many steps (the saving forward and backward)
    parallel_iterations: Optional[int] = None  # the graph while loops'; None: TF's default
    projection: str = "per_iteration"  # or "hoisted": the forward's input projection before the loop
    swap_memory: bool = False        # the saved activations parked in host memory between the passes
    xla: bool = False                # compiled with XLA (from jit_compile)

    @property
    def hoisted(self):
        return self.projection == "hoisted"


@dataclasses.dataclass(frozen=True)
class Options:
    """``fastcarry.unroll``'s keyword options as the call gave them (None: not given), checked when made."""

    time_major: bool = False
    reverse: bool = False
    unroll: Optional[int] = None
    jit_compile: bool = True
    backward: str = "fused"
    chunk: Optional[int] = None
    parallel_iterations: Optional[int] = None
    swap_memory: Optional[bool] = None
    projection: Optional[str] = None
    training: Optional[bool] = None  # False: inference (``_strategies.recomputing``)

    def __post_init__(self):
        check_flag(self.training, "training", optional=True)
        for name in ("time_major", "reverse", "jit_compile"):
            check_flag(getattr(self, name), name)
        check_flag(self.swap_memory, "swap_memory", optional=True)
        for name in ("unroll", "chunk", "parallel_iterations"):
            check_count(getattr(self, name), name)
        check_choice(self.backward, "backward", BACKWARDS)
        check_choice(self.projection, "projection", PROJECTIONS, optional=True)

    @property
    def layout(self):
        return Layout(self.time_major, self.reverse)

    def resolve(self, config=None, unroll=DEFAULT_UNROLL):
        """These options with every knob not given taken from ``config`` (a ``Config`` or None), else ``DEFAULTS``
        (``unroll``: the workload's default, ``default_unroll``).

        Raises ``ValueError`` for a combination that cannot run (``swap_memory`` without a saving backward).
        """
        knobs = {}
        for name, default in dict(DEFAULTS, unroll=unroll).items():
            given, chosen = getattr(self, name), None if config is None else getattr(config, name)
            knobs[name] = given if given is not None else chosen if chosen is not None else default
        resolved = dataclasses.replace(self, **knobs)
        if resolved.swap_memory and resolved.backward != "fused":
            raise ValueError(f"swap_memory=True needs backward='fused' (backward={resolved.backward!r} saves no "
                             f"activations to swap: it recomputes the forward)")
        return resolved

    def schedule(self):
        """The ``Schedule`` of resolved options (``resolve()`` first)."""
        return Schedule(int(self.unroll), None if self.chunk is None else int(self.chunk),
                        None if self.parallel_iterations is None else int(self.parallel_iterations),
                        self.projection, self.swap_memory, bool(self.jit_compile))
