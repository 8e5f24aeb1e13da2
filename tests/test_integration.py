"""The bundled MiniLM on a small slice: the real checkpoint, tokenizer and weights, end to end."""

import pandas as pd
import pytest

from rulebert.core.config import TrainConfig
from rulebert.pipeline import predict_file
from rulebert.training.train import train_model

from .conftest import make_frame

pytestmark = pytest.mark.integration


def test_fine_tune_bundled_minilm_on_64_rows_and_predict(tmp_path):
    make_frame(13, seed=3).to_csv(tmp_path / "train.csv", index=False)  # 13 bodies + 52 examples = 65 rows
    test = make_frame(6, seed=4, labelled=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    config = TrainConfig(epochs=1, batch_size=16, max_length=64, val_fraction=0.25)
    result = train_model(config, tmp_path / "train.csv", tmp_path / "model", progress=False)
    assert result.metrics["train_rows"] + result.metrics["validation_rows"] == 65
    assert 0.0 <= result.metrics["validation"]["col_auc"] <= 1.0
    submission = predict_file(tmp_path / "model", tmp_path / "test.csv", tmp_path / "sub.csv", progress=False)
    assert submission["row_id"].tolist() == test["row_id"].astype(str).tolist()
    assert pd.read_csv(tmp_path / "sub.csv")["rule_violation"].between(0, 1).all()
