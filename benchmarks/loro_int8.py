"""Leave-one-rule-out AUC of the ONNX int8 prediction path against the torch fp32 one, on the same models.

For each loro fold the default recipe trains one model (``train.fit_rows``), which scores the held-out
rule's comments twice: in torch fp32 (what ``rulebert evaluate`` reports) and, saved as a model dir and
exported with ``rulebert export --int8``, through ``Scorer(backend="onnx")``. The speed issue allows the int8
path to lose at most 0.005 of loro AUC.

    python benchmarks/loro_int8.py [--data-dir DIR] [--output-dir runs/eval-loro-int8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def main(argv: list[str] | None = None) -> int:
    from sklearn.metrics import roc_auc_score

    from rulebert.backend.export import export_onnx
    from rulebert.backend.torch_backend import predict_features
    from rulebert.core.config import TrainConfig
    from rulebert.domain import data as D
    from rulebert.domain.text import encode_frame
    from rulebert.evaluation.evaluate import evaluate, finetune_fit
    from rulebert.inference.predict import Scorer
    from rulebert.model.model_dir import save_model_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="folder with train.csv")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/eval-loro-int8"))
    parser.add_argument("--json", type=Path, help="also write the per-rule numbers here")
    args = parser.parse_args(argv)
    per_rule: dict[str, dict[str, float]] = {}

    def fp32_and_int8(config: Any, train_rows: pd.DataFrame, score_rows: pd.DataFrame, work: Path) -> Any:
        fit = finetune_fit(config, train_rows, score_rows, work)  # what `rulebert evaluate` trains
        fp32 = predict_features(fit.model, fit.tokenizer, encode_frame(fit.tokenizer, score_rows, config))
        model_dir = Path(work) / "model"
        save_model_dir(
            model_dir, fit.model, fit.tokenizer, config=config, base_model=config.model, data={}, metrics={}
        )
        export_onnx(model_dir, int8=True)
        scorer = Scorer(model_dir, backend="onnx")
        scorer.calibrator = None  # raw scores, as fp32 above
        int8 = scorer.score(*(score_rows[c].tolist() for c in (D.TEXT, D.RULE, D.SUBREDDIT)))
        labels = score_rows[D.LABEL].to_numpy()  # read only here, to measure
        per_rule[str(score_rows[D.RULE].iloc[0])] = {
            "fp32_auc": float(roc_auc_score(labels, fp32)),
            "int8_auc": float(roc_auc_score(labels, int8)),
            "mean_abs_difference": float(np.abs(fp32 - int8).mean()),
        }
        return fp32

    data_dir = args.data_dir or D.default_data_dir()
    evaluate(
        data_dir / "train.csv", "loro", args.output_dir, TrainConfig(), recipe=fp32_and_int8, overwrite=True
    )
    print("| rule | fp32 AUC | int8 AUC | delta | mean abs difference |\n|---|---:|---:|---:|---:|")
    for rule, numbers in per_rule.items():
        fp32, int8, mean_abs = numbers["fp32_auc"], numbers["int8_auc"], numbers["mean_abs_difference"]
        print(f"| {rule[:40]} | {fp32:.4f} | {int8:.4f} | {int8 - fp32:+.4f} | {mean_abs:.4f} |")
    fp32_mean = float(np.mean([n["fp32_auc"] for n in per_rule.values()]))
    int8_mean = float(np.mean([n["int8_auc"] for n in per_rule.values()]))
    print(f"| **column-averaged** | {fp32_mean:.4f} | {int8_mean:.4f} | {int8_mean - fp32_mean:+.4f} | |")
    if args.json:
        args.json.write_text(
            json.dumps({"per_rule": per_rule, "fp32": fp32_mean, "int8": int8_mean}, indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
