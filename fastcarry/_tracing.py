"""``tf.function`` helpers: a compiled function under a name of its own, with its own retracing counter."""

import functools


class Named(functools.partial):
    """A function under the name ``__name__``, with no ``__code__`` of its own.

    TF's "N out of the last N calls ... triggered tf.function retracing"
    detector counts traces per Python code object
    (``Function._get_key_for_call_stats``), and every configuration's function
    is a closure of the same code: five configurations traced once each read as
    five retraces of one function. TF keys a partial by the object itself, so
    each compiled function has its own counter and the warning appears only
    when that function really retraces (a new shape), naming it.
    """

    def __repr__(self):
        return self.__name__


def named_function(fn, name, *, jit_compile):
    """``tf.function(fn)`` traced as ``name`` (what traces and HLO modules show), autograph off."""
    import tensorflow as tf

    named = Named(fn)
    named.__name__ = name
    return tf.function(named, jit_compile=jit_compile, autograph=False)
