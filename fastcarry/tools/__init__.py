"""fastcarry's tooling, apart from the library: the command line and the benchmarks.

- ``cli``: the ``fastcarry`` command; it only registers the subcommands, each a module with ``add_parser``
  and ``run``: ``demo``, ``check`` (fastcarry against the float64 reference and Keras 3), ``bench``,
  ``profile``, ``tune`` (``env_tune``: its ``--env`` children);
- the benchmarks: ``grid_bench`` (the cell grid), ``models_bench``, ``memory_bench``, ``fit_bench`` (also
  ``fastcarry demo``), ``profile_bench``, ``tune_bench``; ``benchmarks/`` runs them;
- what they share: ``workload`` (cells by name, shapes, the command line's workload arguments) and
  ``report`` (machine facts, the progress bar, JSON + Markdown + PNG).

Nothing in ``fastcarry``'s library imports from here, and these modules use the library's public names and
``fastcarry._measure`` only (``tests/test_architecture.py`` holds both).
"""
