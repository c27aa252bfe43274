"""fastcarry's tooling, apart from the library: the command line, the benchmarks, the comparison harness.

- ``workload``: cells by name and the shapes they run at (used by all of the below and the tests);
- ``report``: machine facts, the progress bar, and the JSON + Markdown + PNG a run writes;
- ``check``: running an ``unroll``-like function and its gradients, compared per tensor (``fastcarry check``,
  the tests);
- ``bench``, ``memory_bench``, ``profile_bench``: the benchmarks (``benchmarks/`` runs them);
- ``profile``: ``fastcarry profile``; ``cli``: the ``fastcarry`` command.

Nothing in ``fastcarry``'s library imports from here.
"""
