"""rulebert: fine-tune a BERT model to predict whether a comment breaks a community rule.

Modules, one per stage (each importable alone; heavy libraries are imported lazily):
``data`` (read + validate CSVs, labelled rows, de-duplication, splits), ``text`` (how a row becomes model
input), ``model`` (checkpoints, trained model dirs), ``train``, ``predict``, ``evaluate``, ``cli``.
"""

from rulebert.config import TrainConfig
from rulebert.errors import RulebertError

__version__ = "0.1.0"
__all__ = ["RulebertError", "TrainConfig", "__version__"]
