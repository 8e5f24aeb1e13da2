"""rulebert: fine-tune a BERT model to predict whether a comment breaks a community rule.

The public API is what this module exports; everything else lives in subpackages, one per layer, each
importing only the layers below it (``tests/test_layers.py`` keeps it so; docs/architecture.md has the map):

- ``core``: errors, atomic file writes, the validated :class:`TrainConfig`;
- ``domain`` (no torch): competition data, model input text, metrics, calibration, rules and their examples;
- ``model``: the model-dir format, base checkpoints, integrity checks, the card and report;
  ``backend``: device and precision, batching, the torch and ONNX Runtime backends, ONNX export;
- use cases: ``training`` (train, adapt), ``evaluation``, ``inference`` (:class:`Scorer`);
- front ends: ``pipeline`` (the Kaggle flow), ``scoring`` (files, Ray), ``server`` (HTTP), ``cli``.

Heavy libraries are imported where they are used: ``import rulebert`` loads neither torch nor transformers,
and the names below are imported on first use.
"""

from importlib import import_module
from typing import Any

from rulebert._version import __version__
from rulebert.core.config import TrainConfig
from rulebert.core.errors import RulebertError

# name -> the module that defines it, loaded when the name is first asked for
_LAZY = {
    "Scorer": "rulebert.inference.predict",
    "predict_file": "rulebert.pipeline",
    "train_model": "rulebert.training.train",
    "adapt_model": "rulebert.training.adapt",
    "evaluate": "rulebert.evaluation.evaluate",
    "markdown_table": "rulebert.evaluation.evaluate",
    "export_onnx": "rulebert.backend.export",
    "score_file": "rulebert.scoring.local",
    "run_competition": "rulebert.pipeline",
    "StoredRule": "rulebert.domain.rules",
    "read_rules_jsonl": "rulebert.domain.rules",
}

__all__ = ["RulebertError", "TrainConfig", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rulebert' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
