"""The compiled-function cache: one ``tf.function`` per cell math, role, layout and schedule.

Compiled functions are shared by every cell whose math (``core.name``,
``core.key``) and output width match: a second cell of the same kind reuses
the traces and XLA executables. A core with variables has its own, kept on
its owner: its functions close over those variables.
"""

import functools

import tensorflow as tf

from fastcarry._protocol import attached
from fastcarry._tracing import named_function

_FUNCTIONS = {}
_FINGERPRINTS = {}


def _code(fn):
    """What identifies ``fn``'s code across calls of ``core()``: code objects and partial arguments."""
    if isinstance(fn, functools.partial):
        return (_code(fn.func), fn.args, tuple(sorted(fn.keywords.items())))
    return getattr(fn, "__code__", fn)


def _fingerprint(core):
    split = core.split
    parts = [core.project, core.step]
    if split is not None:
        parts += list(split[:4]) + [split.recurrent_kernel, split.unit_params]
        if split.second is not None:
            parts += list(split.second)
    return tuple(_code(f) for f in parts)


def _cache_for(core):
    """The dict of compiled functions ``core`` may use; raises if its key is taken by different code."""
    if core.owner is not None:
        return attached(core.owner, "_fastcarry_functions")
    fingerprint = _fingerprint(core)
    known = _FINGERPRINTS.setdefault((core.name, core.key), fingerprint)
    if known != fingerprint:
        raise ValueError(f"two different cores use name={core.name!r}, key={core.key!r}: compiled functions are "
                         f"shared by (name, key), so give each cell math a key of its own")
    return _FUNCTIONS


def compiled(role, core, layout, schedule, build):
    """The compiled ``build(core, layout, schedule)``, made on first use and named ``fastcarry_<cell>_<role>``.

    Everything the traced function closes over must be in the key: the math
    (``core.key``), the output width baked into its TensorArrays, the layout
    and the schedule (``schedule.xla`` is its ``jit_compile``). So is whether
    TF32 is on: TF's lowering to XLA writes each matmul's precision into the
    program from that setting, and a function compiled under one would keep it.
    """
    cache = _cache_for(core)
    tf32 = tf.config.experimental.tensor_float_32_execution_enabled()
    key = (role, core.name, core.key, core.output_size, layout, schedule, tf32)
    if key not in cache:
        cache[key] = named_function(build(core, layout, schedule), f"fastcarry_{core.name}_{role}",
                                    jit_compile=schedule.xla)
    return cache[key]
