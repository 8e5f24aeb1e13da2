"""The speed paths give the same answers as the plain ones (no timing here)."""

import numpy as np
import pandas as pd
import torch

from rulebert.backend.torch_backend import predict_features
from rulebert.inference.predict import Scorer
from rulebert.pipeline import predict_file


def test_chunked_predict_file_matches_one_chunk(model_dir, data_dir, tmp_path):
    whole = predict_file(
        model_dir,
        data_dir / "test.csv",
        tmp_path / "a.csv",
        progress=False,
        backend="torch",
        chunk_rows=99999,
    )
    chunked = predict_file(
        model_dir, data_dir / "test.csv", tmp_path / "b.csv", progress=False, backend="torch", chunk_rows=3
    )
    assert whole["row_id"].tolist() == chunked["row_id"].tolist()
    np.testing.assert_allclose(chunked["rule_violation"], whole["rule_violation"], atol=1e-5)
    assert (tmp_path / "a.csv").read_text() != "" and pd.read_csv(tmp_path / "b.csv").shape == (10, 2)


def test_bf16_autocast_on_cpu_runs_and_stays_close(model_dir):
    scorer = Scorer(model_dir, backend="torch", device="cpu")
    bodies = [" ".join(["word"] * n) for n in (2, 30, 9)]
    features = scorer.encode(bodies, ["rule"] * 3)
    fp32 = predict_features(scorer.model, scorer.tokenizer, features, progress=False, device="cpu")
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        padded = scorer.tokenizer.pad(features, return_tensors="pt")
        logits = scorer.model(**padded).logits
    assert logits.dtype == torch.bfloat16  # autocast really ran the matmuls in bf16
    bf16 = torch.softmax(logits.float(), dim=-1)[:, 1].numpy()
    np.testing.assert_allclose(bf16, fp32, atol=0.02)
