"""Levers on unseen rules (issue 14): the fine-tuned cross-encoder beside cheap members fitted on the held-out
rule's examples, blended per rule, on leave-one-rule-out with several seeds and bootstrap intervals.

For each training variant and seed, every loro fold is fine-tuned as ``rulebert evaluate`` does (default
``TrainConfig`` plus the variant's overrides) and its scores on the fold's comments are saved to
``--out/scores.csv``; a run resumes from what is saved. Members that need no training are computed once:

- ``tfidf``: TF-IDF word 1-2 + char_wb 2-5, logistic regression on the held-out rule's example rows
  (the evaluate baseline);
- ``emb``: logistic regression on the base checkpoint's mean-pooled sentence embeddings of those rows (the
  embedder a model dir carries for ``rulebert.domain.examples``).

Blends are per-rule rank averages (ranks of the scored comments, no labels read). Each line reports the
mean over seeds of the column-averaged AUC, a bootstrap 95% interval of that mean (comments resampled within
each rule), and the paired bootstrap interval of its difference from the variant's plain cross-encoder.

    python -m benchmarks.experiments.loro_levers --variants default --seeds 0,1,2 --out runs/levers
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

from benchmarks.experiments.loro_ablation import rank_within_rule
from rulebert.core.config import TrainConfig
from rulebert.domain import data as D
from rulebert.domain.metrics import column_averaged_auc
from rulebert.evaluation.evaluate import baseline_recipe, finetune_fit, loro_folds

VARIANTS: dict[str, dict] = {
    "default": {},
    "default-x": {},  # the default again (its scores of the examples saved beside)
    "val0": {"val_fraction": 0.0},
    "ep8": {"epochs": 8.0},
    "len128": {"max_length": 128},
}


def embed(texts: list[str], model_path: str, batch: int = 64) -> np.ndarray:
    """Unit-norm mean-pooled sentence embeddings of the base checkpoint (256 tokens)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path).eval()
    order = np.argsort([len(t) for t in texts])
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(texts), batch):
            idx = order[start : start + batch]
            enc = tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True, max_length=256, return_tensors="pt"
            )
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out[idx] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return out


def example_members(folds, model_path: str) -> pd.DataFrame:
    """tfidf and emb scores of every fold's comments, fitted on the held-out rule's example rows only."""
    from sklearn.linear_model import LogisticRegression

    parts = []
    for fold in folds:
        own = own_examples(fold)
        tfidf = baseline_recipe(TrainConfig(), fold.train_rows, fold.score_rows, Path("."))
        vectors = embed(own[D.TEXT].tolist() + fold.score_rows[D.TEXT].tolist(), model_path)
        train_vec, score_vec = vectors[: len(own)], vectors[len(own) :]
        lr = LogisticRegression(C=1.0, max_iter=2000).fit(train_vec, own[D.LABEL].to_numpy())
        parts.append(
            pd.DataFrame(
                {
                    "fold": fold.name,
                    "row": np.arange(len(fold.score_rows)),
                    "rule": fold.score_rows[D.RULE].to_numpy(),
                    "label": fold.score_rows[D.LABEL].to_numpy(),
                    "tfidf": tfidf,
                    "emb": lr.decision_function(score_vec),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def own_examples(fold) -> pd.DataFrame:
    """The held-out rule's example rows: what the example members (and ``rulebert.domain.examples``) fit
    on."""
    return fold.train_rows[fold.train_rows[D.RULE].isin(set(fold.score_rows[D.RULE]))]


def ce_scores(config: TrainConfig, folds, on_examples: list | None = None) -> np.ndarray:
    """The fine-tuned model's scores of each fold's comments; its scores of the fold's own examples are
    appended to ``on_examples`` when given (what ``ExampleModel.fit`` reads as the cross-encoder member)."""
    out = []
    for fold in folds:
        with tempfile.TemporaryDirectory() as work:
            fit = finetune_fit(config, fold.train_rows, fold.score_rows, Path(work))
            out.append(_score(fit, config, fold.score_rows))
            if on_examples is not None:
                on_examples.append(_score(fit, config, own_examples(fold)))
    return np.concatenate(out)


def _score(fit, config, rows) -> np.ndarray:
    from rulebert.backend.torch_backend import predict_features
    from rulebert.domain.text import encode_frame

    return np.asarray(predict_features(fit.model, fit.tokenizer, encode_frame(fit.tokenizer, rows, config)))


def two_stage_scores(config: TrainConfig, folds, stage1: dict) -> np.ndarray:
    """Stage 1 on every labelled row (the other rules' bodies and examples too), then stage 2 from those
    weights, head kept, on the scored rules' rows as the default recipe trains."""
    from rulebert.training.train import fit_rows, select_training_rules

    out = []
    for fold in folds:
        with tempfile.TemporaryDirectory() as work:
            first = replace(config, train_rules="all", val_fraction=0.0, **stage1)
            fit = fit_rows(
                first, fold.train_rows, fold.train_rows.iloc[:0], Path(work) / "s1", progress=False
            )
            fit.model.save_pretrained(Path(work) / "stage1")
            fit.tokenizer.save_pretrained(Path(work) / "stage1")
            second = replace(config, model=str(Path(work) / "stage1"))
            rows = select_training_rules(fold.train_rows, fold.score_rows[D.RULE], second)
            train_rows, val_rows = D.grouped_split(rows, second.val_fraction, second.seed)
            fit = fit_rows(second, train_rows, val_rows, Path(work) / "s2", progress=False, fresh_head=False)
            out.append(_score(fit, second, fold.score_rows))
    return np.concatenate(out)


def pseudo_scores(config: TrainConfig, folds, first: np.ndarray, members: pd.DataFrame, share: float):
    """Self-training on the scored comments (their text only): the first round's blend with the example
    members ranks them; the top and bottom ``share`` of each rule join the examples as pseudo-labelled rows,
    and the model is trained again from the base checkpoint."""
    from rulebert.training.train import fit_rows, select_training_rules

    out, start = [], 0
    for fold in folds:
        n = len(fold.score_rows)
        part = members.iloc[start : start + n]
        blend = pd.Series(first[start : start + n]).rank(pct=True).to_numpy() + pd.Series(
            (part["tfidf"].rank(pct=True) + part["emb"].rank(pct=True)).to_numpy()
        ).rank(pct=True)
        start += n
        order = np.argsort(blend)
        k = int(share * n)
        chosen = fold.score_rows.iloc[np.r_[order[:k], order[-k:]]].copy()
        chosen[D.LABEL] = np.r_[np.zeros(k, int), np.ones(k, int)]
        chosen[D.SOURCE] = "pseudo"
        rows = select_training_rules(fold.train_rows, fold.score_rows[D.RULE], config)
        train_rows, val_rows = D.grouped_split(rows, config.val_fraction, config.seed)
        train_rows = pd.concat([train_rows, chosen[train_rows.columns.intersection(chosen.columns)]])
        with tempfile.TemporaryDirectory() as work:
            fit = fit_rows(config, train_rows.reset_index(drop=True), val_rows, Path(work), progress=False)
            out.append(_score(fit, config, fold.score_rows))
    return np.concatenate(out)


def col_auc(labels, scores, rules) -> float:
    return column_averaged_auc(labels, scores, rules)[0]


def bootstrap(labels, rules, per_seed: list[np.ndarray], reference: list[np.ndarray], reps: int = 1000):
    """95% intervals of the seed-mean column AUC and of its paired difference from ``reference``."""
    rng = np.random.default_rng(0)
    groups = [np.flatnonzero(rules == r) for r in np.unique(rules)]
    means, deltas = [], []
    for _ in range(reps):
        idx = np.concatenate([rng.choice(g, len(g)) for g in groups])
        mean = np.mean([col_auc(labels[idx], s[idx], rules[idx]) for s in per_seed])
        ref = np.mean([col_auc(labels[idx], s[idx], rules[idx]) for s in reference])
        means.append(mean)
        deltas.append(mean - ref)
    return np.percentile(means, [2.5, 97.5]), np.percentile(deltas, [2.5, 97.5])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", default=str(D.default_data_dir() / "train.csv"))
    parser.add_argument("--variants", default="default")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="runs/levers")
    parser.add_argument("--reps", type=int, default=1000)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging

    logging.set_verbosity_error()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frame = D.read_csv(args.train, labelled=True)
    folds = loro_folds(frame)
    base = TrainConfig()
    members_file = out / "members.csv"
    if members_file.exists():
        members = pd.read_csv(members_file)
    else:
        from rulebert.model.backbones import resolve_checkpoint

        members = example_members(folds, resolve_checkpoint(base.model))
        members.to_csv(members_file, index=False)
    labels, rules = members["label"].to_numpy(), members["rule"].to_numpy()
    scores_file = out / "scores.csv"
    saved = pd.read_csv(scores_file) if scores_file.exists() else pd.DataFrame()
    seeds = [int(s) for s in args.seeds.split(",")]
    for name in args.variants.split(","):
        for seed in seeds:
            column = f"{name}@{seed}"
            if column in saved.columns:
                continue
            started = time.perf_counter()
            config = replace(base, seed=seed)
            if name.startswith("twostage"):  # twostage: 1 epoch at lr 5e-5 over every row first
                saved[column] = two_stage_scores(config, folds, {"epochs": 1.0, "lr": 5e-5})
            elif name.startswith("pseudo"):  # pseudo: the default's scores of this seed, 25% each end
                saved[column] = pseudo_scores(
                    config, folds, saved[f"default@{seed}"].to_numpy(), members, 0.25
                )
            else:
                on_examples: list = []
                saved[column] = ce_scores(replace(config, **VARIANTS[name]), folds, on_examples)
                np.save(out / f"examples_{column}.npy", np.concatenate(on_examples))
            saved.to_csv(scores_file, index=False)
            print(
                f"{column}: col AUC {col_auc(labels, saved[column].to_numpy(), rules):.4f}"
                f" ({time.perf_counter() - started:.0f}s)",
                flush=True,
            )
    report(saved, members, args.variants.split(","), seeds, args.reps, out)


def report(saved, members, variants, seeds, reps, out: Path) -> None:
    labels, rules = members["label"].to_numpy(), members["rule"].to_numpy()
    r = lambda values: rank_within_rule(np.asarray(values, dtype=float), rules)  # noqa: E731
    tfidf, emb = r(members["tfidf"]), r(members["emb"])
    examples = r(tfidf + emb)
    lines, table = [], []
    for name in variants:
        ce = [r(saved[f"{name}@{s}"]) for s in seeds if f"{name}@{s}" in saved.columns]
        if not ce:
            continue
        ens = r(np.mean(ce, axis=0))
        candidates = {
            f"{name}: cross-encoder": ce,
            f"{name}: examples (tfidf+emb), no training": [examples] * len(ce),
            f"{name}: ce + tfidf (1:1)": [r(c + tfidf) for c in ce],
            f"{name}: ce + emb (1:1)": [r(c + emb) for c in ce],
            f"{name}: ce + examples (1:1)": [r(c + examples) for c in ce],
            f"{name}: ce + tfidf + emb (1:1:1)": [r(c + tfidf + emb) for c in ce],
            f"{name}: ce + examples (2:1)": [r(2 * c + examples) for c in ce],
            f"{name}: seed ensemble": [ens],
            f"{name}: seed ensemble + examples (1:1)": [r(ens + examples)],
            f"{name}: seed ensemble + tfidf + emb (1:1:1)": [r(ens + tfidf + emb)],
        }
        for label, per_seed in candidates.items():
            aucs = [column_averaged_auc(labels, s, rules) for s in per_seed]
            mean = float(np.mean([a for a, _ in aucs]))
            per_rule = {k: float(np.mean([p[k] for _, p in aucs])) for k in aucs[0][1]}
            interval, delta = bootstrap(labels, rules, per_seed, ce, reps)
            table.append(
                {
                    "lever": label,
                    "mean": mean,
                    "per_rule": per_rule,
                    "ci": list(interval),
                    "delta_ci": list(delta),
                    "seeds": len(per_seed),
                }
            )
            rule_text = " ".join(f"{v:.4f}" for v in per_rule.values())
            lines.append(
                f"| {label} | {rule_text} | **{mean:.4f}** [{interval[0]:.4f}, {interval[1]:.4f}] "
                f"| {mean - np.mean([a for a, _ in column_averaged_auc_list(labels, ce, rules)]):+.4f}"
                f" [{delta[0]:+.4f}, {delta[1]:+.4f}] | {len(per_seed)} |"
            )
    header = "| lever | per-rule AUC | col AUC [95% CI] | Δ vs ce [95% CI] | seeds |\n|---|---|---|---|---|"
    text = header + "\n" + "\n".join(lines)
    print(text, flush=True)
    (out / "levers.md").write_text(text + "\n")
    (out / "levers.json").write_text(json.dumps(table, indent=2))


def column_averaged_auc_list(labels, per_seed, rules):
    return [column_averaged_auc(labels, s, rules) for s in per_seed]


if __name__ == "__main__":
    main()
