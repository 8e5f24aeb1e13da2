"""rulebert: fine-tune a BERT model to predict whether a comment breaks a community rule.

One module per stage, each importable alone (heavy libraries are imported lazily): ``data`` (read and
validate CSVs, labelled rows, de-duplication, splits), ``text`` (how a row becomes model input), ``model``
(checkpoints, trained model dirs), ``train`` (HF Trainer) with ``checkpoints`` (resumable, marked
checkpoints), ``predict`` (Scorer, submission) with ``export`` (ONNX backend), ``calibrate``, ``evaluate``
(metrics, loro/kfold protocols), ``report``, ``score`` (files), ``serve`` (HTTP), ``pipeline`` (the Kaggle
flow) and ``cli`` (thin).
"""

from rulebert.config import TrainConfig
from rulebert.errors import RulebertError

__version__ = "0.1.0"
__all__ = ["RulebertError", "TrainConfig", "__version__"]
