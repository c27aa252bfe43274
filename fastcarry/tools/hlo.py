"""Reading XLA's optimized HLO text: what the compiled program's while loops know about their trip counts."""

import re

_WHILE = re.compile(r"\swhile\(%")
_BODY = re.compile(r"body=%?([\w.\-]+)")
# XLA's WhileLoopTripCountAnnotator writes it into the while's backend config.
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')


def while_loops(hlo):
    """``[(body name, known trip count or None)]`` of every while instruction in optimized HLO text ``hlo``.

    A loop without a known trip count costs, on a GPU, a copy of its condition
    to the host and a wait for it on every iteration
    (``xla/backends/gpu/runtime/while_thunk.cc``).
    """
    loops = []
    for line in hlo.splitlines():
        if _WHILE.search(line):
            body = _BODY.search(line)
            trip = _TRIP.search(line)
            loops.append((body.group(1) if body else "?", int(trip.group(1)) if trip else None))
    return loops
