"""Ablation of training recipes under leave-one-rule-out (or kfold) evaluation.

Each variant is a set of TrainConfig overrides; each is fine-tuned with several seeds on every fold, and
reported as: the mean over seeds of the column-averaged AUC, the AUC of the seed-averaged scores, and the
per-rule rank average of those scores with the TF-IDF baseline. Runs on CPU (slow: minutes per variant)
or on a GPU (seconds per variant). Stops launching variants after --max-minutes.

    python -m benchmarks.experiments.loro_ablation \\
        --train ../shared/data/jigsaw-agile-community-rules/train.csv \\
        --variants default,all-rules --seeds 0,1,2 --json loro.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from rulebert.core.config import TrainConfig
from rulebert.domain import data as D
from rulebert.domain.metrics import column_averaged_auc
from rulebert.evaluation.evaluate import baseline_recipe, finetune_recipe, kfold_folds, loro_folds

VARIANTS: dict[str, dict] = {
    "default": {},
    "all-rules": {"train_rules": "all"},
    "ep3": {"epochs": 3.0},
    "ep5": {"epochs": 5.0},
    "ep8": {"epochs": 8.0},
    "ep5-lr3e-5": {"epochs": 5.0, "lr": 3e-5},
    "ep5-lr1e-4": {"epochs": 5.0, "lr": 1e-4},
    "ep8-lr3e-5": {"epochs": 8.0, "lr": 3e-5},
    "ep3-lr1e-4": {"epochs": 3.0, "lr": 1e-4},
    "subreddit": {"include_subreddit": True},
    "template": {"input_format": "template"},
    "no-dedupe": {"dedupe": False},
    "bs8": {"batch_size": 8},
    "bs32": {"batch_size": 32},
    "len128": {"max_length": 128},
}


def rank_within_rule(scores: np.ndarray, rules: np.ndarray) -> np.ndarray:
    """Scores turned into per-rule ranks in [0, 1]: comparable across models, AUC unchanged."""
    out = np.zeros(len(scores))
    for rule in np.unique(rules):
        mask = rules == rule
        out[mask] = pd.Series(scores[mask]).rank(pct=True).to_numpy()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", default=str(D.default_data_dir() / "train.csv"))
    parser.add_argument("--protocol", choices=["loro", "kfold"], default="loro")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--variants", default="default,all-rules")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--model", default="default")
    parser.add_argument("--base", default="{}", help="JSON TrainConfig overrides applied to every variant")
    parser.add_argument("--max-minutes", type=float, default=60.0)
    parser.add_argument("--json", help="write results here (updated after each variant)")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging

    logging.set_verbosity_error()

    frame = D.read_csv(args.train, labelled=True)
    folds = loro_folds(frame) if args.protocol == "loro" else kfold_folds(frame, args.folds)
    base = replace(TrainConfig(model=args.model, val_fraction=0.0), **json.loads(args.base))
    seeds = [int(s) for s in args.seeds.split(",")]
    labels = np.concatenate([f.score_rows[D.LABEL].to_numpy() for f in folds])
    rules = np.concatenate([f.score_rows[D.RULE].to_numpy() for f in folds])
    baseline = np.concatenate([baseline_recipe(base, f.train_rows, f.score_rows, Path(".")) for f in folds])
    base_auc, base_rules = column_averaged_auc(labels, baseline, rules)
    print(
        f"{args.protocol}: {len(labels)} scored comments; TF-IDF baseline col AUC {base_auc:.4f}", flush=True
    )
    results, started = [], time.perf_counter()
    for name in args.variants.split(","):
        if (time.perf_counter() - started) / 60 > args.max_minutes:
            print(f"stopping before {name}: --max-minutes reached", flush=True)
            break
        config = replace(base, **VARIANTS[name])
        per_seed, seed_aucs, variant_started = [], [], time.perf_counter()
        for seed in seeds:
            scores = []
            for fold in folds:
                with tempfile.TemporaryDirectory() as work:
                    scores.append(
                        finetune_recipe(replace(config, seed=seed), fold.train_rows, fold.score_rows, work)
                    )
            per_seed.append(np.concatenate(scores))
            seed_aucs.append(column_averaged_auc(labels, per_seed[-1], rules)[0])
        averaged = np.mean([rank_within_rule(s, rules) for s in per_seed], axis=0)
        ens_auc, ens_rules = column_averaged_auc(labels, averaged, rules)
        with_tfidf = 0.5 * averaged + 0.5 * rank_within_rule(baseline, rules)
        tfidf_auc, _ = column_averaged_auc(labels, with_tfidf, rules)
        row = {
            "variant": name,
            "overrides": VARIANTS[name],
            "seed_col_auc": seed_aucs,
            "mean_col_auc": float(np.mean(seed_aucs)),
            "std_col_auc": float(np.std(seed_aucs)),
            "seed_ensemble_col_auc": ens_auc,
            "seed_ensemble_per_rule": ens_rules,
            "plus_tfidf_col_auc": tfidf_auc,
            "seconds": round(time.perf_counter() - variant_started, 1),
        }
        results.append(row)
        print(
            f"{name:14s} seeds {' '.join(f'{a:.4f}' for a in seed_aucs)} | mean {row['mean_col_auc']:.4f}"
            f" ± {row['std_col_auc']:.4f} | seed-ens {ens_auc:.4f} | +tfidf {tfidf_auc:.4f}"
            f" | {row['seconds']}s",
            flush=True,
        )
        if args.json:
            payload = {
                "protocol": args.protocol,
                "baseline_col_auc": base_auc,
                "baseline_per_rule": base_rules,
                "base_config": base.to_dict(),
                "seeds": seeds,
                "results": results,
            }
            Path(args.json).write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
