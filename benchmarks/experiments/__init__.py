"""One-off lever experiments (their results are in docs/evaluation.md and docs/benchmarks.md), kept to
reproduce them. Run each from the repository root as ``python -m benchmarks.experiments.NAME --help``; they
import the installed ``rulebert`` and each other as ``benchmarks.experiments.NAME``.
"""
