"""rulebert's benchmarks. The scripts here are what ``make bench``, ``make bench-communities`` and
docs/benchmarks.md run (``python benchmarks/NAME.py``); ``experiments/`` holds the one-off lever experiments
whose results are written in docs/evaluation.md and docs/benchmarks.md.

A package so that an experiment imports a sibling (or ``benchmarks.communities``) by its name, with no
``sys.path`` edits: run them from the repository root as ``python -m benchmarks.experiments.NAME``.
"""
