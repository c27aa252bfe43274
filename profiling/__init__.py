"""Profiling for fastcarry (imported as ``fastcarry.profiling``): TensorBoard traces and a phase summary.

    import fastcarry.profiling as fcp

    prof = fcp.trace(train_step, x, y, logdir="logs/fastcarry", steps=5, warmup=2)
    print(prof.summary().to_markdown())     # ms per step by phase, and advice
    # tensorboard --logdir logs/fastcarry   (the Profile tab shows the same run)

    with fcp.capture("logs/mine") as prof:  # your own loop
        for x, y in batches:
            with prof.step():
                train_step(x, y).numpy()

The trace is TensorFlow's own (``tf.profiler.experimental``). ``summary()``
attributes each step's wall time to fastcarry's phases (``PHASES``: input
projection, forward recurrent matmul and gates, backward loop, weight/input
gradients, layout, chunk recompute, host<->device copies), to ops outside
fastcarry, to tracing/compilation, and to time in which no op ran.

XLA:CPU records per-op events only in programs compiled while ``XLA_FLAGS``
holds ``--xla_cpu_enable_xprof_traceme=true`` (checked on TF 2.21: the flag
is read at each compilation); importing this package adds it (unless
``XLA_FLAGS`` mentions it already). It inserts profiler hooks that cost
nothing measurable while no profiler runs. Import ``fastcarry.profiling``
before your step is first compiled, or set the flag yourself;
``Summary.advice`` says so when a trace has XLA programs but no op events. A
GPU records kernels without it.
"""

import os

_TRACEME = "--xla_cpu_enable_xprof_traceme"
if _TRACEME not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" {_TRACEME}=true").strip()

from fastcarry.profiling._capture import Profile as Profile  # noqa: E402
from fastcarry.profiling._capture import calibrate_matmul as calibrate_matmul  # noqa: E402
from fastcarry.profiling._capture import capture as capture  # noqa: E402
from fastcarry.profiling._capture import trace as trace  # noqa: E402
from fastcarry.profiling._phases import PHASES as PHASES  # noqa: E402
from fastcarry.profiling._summary import Advice as Advice  # noqa: E402
from fastcarry.profiling._summary import Row as Row  # noqa: E402
from fastcarry.profiling._summary import Summary as Summary  # noqa: E402

__all__ = ["Advice", "PHASES", "Profile", "Row", "Summary", "calibrate_matmul", "capture", "trace"]
