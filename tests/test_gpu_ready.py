"""What a first GPU run would break (issue 25), checked on a CPU: properties of the compiled programs.

Every while loop fastcarry compiles has a trip count XLA knows (``known_trip_count`` in its backend config,
written by XLA's ``WhileLoopTripCountAnnotator``): on a GPU a loop without one copies its condition to the host
and waits for it every iteration (``xla/backends/gpu/runtime/while_thunk.cc``).
"""

import numpy as np
import pytest
import tensorflow as tf

import fastcarry as fc
from fastcarry._measure import step_function
from fastcarry.tools.hlo import while_loops

B, T, D, H = 2, 10, 3, 8


def _loops(mode, **options):
    cell = fc.LSTM(H, input_size=D, seed=0)
    x = tf.constant(np.ones((B, T, D)), tf.float32)

    def run(x):
        return fc.unroll(cell, x, **options)[0]

    fn = step_function(run, cell.trainable_variables, mode, tf.ones([B, T, H]), name="loops")
    return while_loops(fn.experimental_get_compiler_ir(x)(stage="optimized_hlo"))


@pytest.mark.parametrize("options", [dict(), dict(chunk=4, unroll=1)], ids=["plain", "chunk"])
def test_every_loop_forward_and_backward_has_a_known_trip_count(options):
    loops = _loops("train", **options)
    # plain: the forward and the reverse loop; chunk: also the chunks' loops and the recomputed chunk's.
    assert len(loops) >= (2 if not options else 4), loops
    assert all(trip is not None for _, trip in loops), loops
    if not options:  # unroll=2 (training's default): 5 iterations of 2 steps each way
        assert sorted(trip for _, trip in loops) == [5, 5]


def test_a_loop_bounded_twice_has_no_known_trip_count(monkeypatch):
    """The must-fail twin: the loops as they were, ``i < n`` (or ``i >= 0``) besides TF's own counter."""
    def bounded_twice(body, loop_vars, n, parallel_iterations=None):
        return tf.while_loop(lambda i, *_: tf.logical_and(i >= 0, i < n), body, loop_vars, maximum_iterations=n)

    from fastcarry import _functions, _loop

    monkeypatch.setattr(_loop, "counted_loop", bounded_twice)
    monkeypatch.setattr(_functions, "_FUNCTIONS", {})  # not the compiled functions of the test above
    loops = _loops("infer")
    assert loops and all(trip is None for _, trip in loops), loops
