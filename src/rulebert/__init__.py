"""rulebert: fine-tune a BERT model to predict whether a comment breaks a community rule.

Layers, each importing only those below it (``tests/test_layers.py`` keeps it so):

- foundations: ``errors``, ``files`` (atomic writes), ``config`` (validated :class:`TrainConfig`);
- domain, no torch: ``data`` (CSVs, labelled rows), ``text`` (row -> model input), ``metrics``,
  ``calibrate``;
- model files and runtime: ``model`` (the model-dir format), ``checkpoints``, ``backends`` (device, batching,
  torch and ONNX inference);
- use cases: ``report``, ``train``, ``predict`` (:class:`Scorer`), ``export``, ``evaluate``;
- front ends: ``pipeline`` (the Kaggle flow), ``score`` (files), ``serve`` (HTTP), ``cli``.

Heavy libraries are imported where they are used: ``import rulebert`` loads neither torch nor transformers.
"""

from typing import Any

from rulebert._version import __version__
from rulebert.config import TrainConfig
from rulebert.errors import RulebertError

__all__ = ["RulebertError", "Scorer", "TrainConfig", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Scorer":  # lazily: the scorer's module imports numpy, pandas and the backends
        from rulebert.predict import Scorer

        return Scorer
    raise AttributeError(f"module 'rulebert' has no attribute {name!r}")
