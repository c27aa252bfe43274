"""Warnings that point at the user's line: said once per process, attributed to the first frame outside
fastcarry and TensorFlow."""

import os
import sys
import warnings

import tensorflow as tf

_WARNED = set()
_LIBRARY_PATHS = (os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.abspath(tf.__file__)))


def warn_once(message):
    """Warns once per process, attributed to the caller's line (not fastcarry's or TensorFlow's wrappers)."""
    if message in _WARNED:
        return
    _WARNED.add(message)
    level, frame = 2, sys._getframe(1)  # stacklevel 2 is the caller of this function
    while frame is not None and any(p in frame.f_code.co_filename for p in _LIBRARY_PATHS):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, UserWarning, stacklevel=level)
