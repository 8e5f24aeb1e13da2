"""The evaluation harness (``rulebert evaluate``): any recipe under leave-one-rule-out or grouped k-fold
cross-validation beside a TF-IDF baseline on the identical split; see the comment below on the protocols.
The scores themselves come from :mod:`rulebert.domain.metrics`; the page and ROC plot from
:mod:`rulebert.model.report`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rulebert.core.config import TrainConfig
from rulebert.core.errors import RulebertError
from rulebert.core.files import write_csv_atomic, write_json_atomic
from rulebert.domain import data as D
from rulebert.domain.metrics import auc_or_none, mean_or_none
from rulebert.model.report import plot_roc, write_html_report

logger = logging.getLogger(__name__)

# --- Evaluation harness: `rulebert evaluate` ----------------------------------------------------------
#
# Two protocols, both scoring only comment bodies (what the competition scores) with a text never seen in
# training:
#
# - ``loro`` (leave one rule out) imitates the hidden test, whose rules train.csv never shows: for each rule R
#   the model trains on every other rule's rows (bodies and example cells) plus R's example cells (what a test
#   file would offer for R), never R's body labels, and scores R's bodies. A body whose text is one of R's
#   example texts is not scored: its label would be answered from memory.
# - ``kfold``: in-distribution cross-validation; every labelled row (bodies and example cells) is grouped by
#   its normalised text, so a text lies on one side of a fold only.
#
# Beside the model, every fold scores a reference baseline on the identical split: per rule, TF-IDF word and
# char n-grams + logistic regression fitted on that rule's training rows in the fold (in loro: R's examples).

EVALUATION_FILE = "evaluation.json"
ROC_FILE = "roc_per_rule.png"
PREDICTIONS_FILE = "evaluation_predictions.csv"
PROTOCOLS = ("loro", "kfold")
BASELINE_DESCRIPTION = "per rule: TF-IDF word 1-2 + char_wb 2-5, LogisticRegression(C=1) on its training rows"

Recipe = Callable[[Any, pd.DataFrame, pd.DataFrame, Path], np.ndarray]
"""``recipe(config, train_rows, score_rows, work_dir) -> scores``: fit on labelled rows, score others.

Rows are frames with ``data.TEXT``, ``RULE``, ``SUBREDDIT``, ``LABEL`` (hidden from nobody: a recipe must
not read ``score_rows``' labels) and ``SOURCE``. ``work_dir`` is an empty scratch folder, deleted after the
fold. Returns one score per score row, higher = more likely to break the rule.
"""


@dataclass
class Fold:
    """One train/score split: labelled training rows and the comment bodies to score."""

    name: str
    train_rows: pd.DataFrame
    score_rows: pd.DataFrame


def _scored_bodies(frame: pd.DataFrame) -> pd.DataFrame:
    """Comment bodies as labelled rows; a comment repeated with the same label is scored once."""
    rows = D.body_rows(frame)
    return rows.drop_duplicates([D.TEXT, D.RULE, D.LABEL]).reset_index(drop=True)


def _training_rows(parts: list[pd.DataFrame], dedupe: bool) -> pd.DataFrame:
    rows = pd.concat(parts, ignore_index=True)
    rows[D.LABEL] = rows[D.LABEL].astype(int)
    return D.dedupe_rows(rows)[0] if dedupe else rows.assign(votes=1)


def loro_cohort(own: pd.DataFrame) -> pd.DataFrame:
    """The comments leave-one-rule-out scores for a held-out rule: the rows of ``own`` (one rule's rows of a
    train-style frame) whose body is not one of the rule's example texts (its label would be answered from
    memory), a repeated (body, label) once. On train.csv: 879 comments (232 advertising, 647 legal)."""
    known = set(D.example_rows(own)[D.TEXT].map(D.normalize_text))
    scored = own[~own[D.BODY].map(D.normalize_text).isin(known)]
    return scored.drop_duplicates([D.BODY, D.LABEL])


def loro_folds(frame: pd.DataFrame, *, dedupe: bool = True) -> list[Fold]:
    """Leave-one-rule-out folds of a train-style frame (see the module comment)."""
    if not any(c in frame.columns for c in D.EXAMPLE_COLUMNS):
        raise RulebertError(
            "--protocol loro needs the example columns (a held-out rule's only labelled text)"
        )
    folds = []
    for rule in dict.fromkeys(frame[D.RULE].tolist()):
        held_out = frame[D.RULE] == rule
        other, own = frame[~held_out], frame[held_out]
        train = _training_rows([D.body_rows(other), D.example_rows(other), D.example_rows(own)], dedupe)
        folds.append(Fold(rule, train, _scored_bodies(loro_cohort(own))))
    return folds


def kfold_folds(frame: pd.DataFrame, k: int, *, seed: int = 42, dedupe: bool = True) -> list[Fold]:
    """``k`` folds grouped by normalised text over bodies and example cells alike."""
    from sklearn.model_selection import GroupKFold

    rows = pd.concat([D.body_rows(frame), D.example_rows(frame)], ignore_index=True)
    rows[D.LABEL] = rows[D.LABEL].astype(int)
    groups = rows[D.TEXT].map(D.normalize_text).to_numpy()
    if k < 2 or k > len(set(groups)):
        raise RulebertError(
            f"--folds must be between 2 and the number of distinct texts ({len(set(groups))})"
        )
    folds = []
    splitter = GroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for number, (train_index, test_index) in enumerate(splitter.split(rows, groups=groups), start=1):
        held_out = rows.iloc[test_index]
        bodies = held_out[held_out[D.SOURCE] == "body"]
        bodies = bodies.drop_duplicates([D.TEXT, D.RULE, D.LABEL]).reset_index(drop=True)
        folds.append(Fold(f"fold {number}", _training_rows([rows.iloc[train_index]], dedupe), bodies))
    return folds


def baseline_recipe(
    config: Any, train_rows: pd.DataFrame, score_rows: pd.DataFrame, work_dir: Path
) -> np.ndarray:
    """Reference baseline: per rule, TF-IDF (word 1-2 + char_wb 2-5) + logistic regression fitted on that
    rule's training rows only. A rule without both labels among them scores 0.5 (chance)."""
    from scipy.special import expit

    from rulebert.domain.examples import tfidf_scorer

    scores = np.full(len(score_rows), 0.5)
    for rule in dict.fromkeys(score_rows[D.RULE].tolist()):
        mask = (score_rows[D.RULE] == rule).to_numpy()
        own = train_rows[train_rows[D.RULE] == rule]
        if own[D.LABEL].nunique() == 2:  # lbfgs is deterministic: no seed to give
            model = tfidf_scorer(own[D.TEXT].tolist(), own[D.LABEL].to_numpy(), max_iter=3000)
            scores[mask] = expit(model(score_rows.loc[mask, D.TEXT].tolist()))
    return scores


def finetune_fit(
    config: Any, train_rows: pd.DataFrame, score_rows: pd.DataFrame, work_dir: Path, *, progress: bool = False
) -> Any:
    """The training half of :func:`finetune_recipe`: ``train.fit_selected`` (the path ``rulebert train``
    takes: with ``train_rules="target"`` only the scored rules' rows, a validation split when
    ``config.val_fraction`` > 0, then fine-tuning). Returns the ``FitResult``, for recipes that need the
    model itself."""
    from rulebert.training.train import fit_selected

    return fit_selected(config, train_rows, work_dir, target_rules=score_rows[D.RULE], progress=progress)


def finetune_recipe(
    config: Any, train_rows: pd.DataFrame, score_rows: pd.DataFrame, work_dir: Path, *, progress: bool = False
) -> np.ndarray:
    """The default recipe: fine-tune ``config.model`` on the rows (:func:`finetune_fit`), then score."""
    from rulebert.backend.torch_backend import predict_features
    from rulebert.domain.text import encode_frame

    fit = finetune_fit(config, train_rows, score_rows, work_dir, progress=progress)
    features = encode_frame(fit.tokenizer, score_rows, config)
    scores = predict_features(fit.model, fit.tokenizer, features, progress=progress)
    if getattr(config, "blend_examples", False):
        scores = blend_with_examples(config, fit, train_rows, score_rows, scores, Path(work_dir))
    return scores


def blend_with_examples(
    config: Any, fit: Any, train_rows: pd.DataFrame, score_rows: pd.DataFrame, scores: Any, work_dir: Path
) -> np.ndarray:
    """What a model dir with ``blend_examples`` does when it scores (``predict.Scorer``): per scored rule
    with enough labelled rows among the training rows (in loro: its example cells), an ``ExampleModel``
    fitted on them, with the fine-tuned model's scores of them as its cross-encoder member, and the same
    int8 sentence embedder of the base checkpoint. Rules without enough keep the model's scores."""
    from rulebert.backend.onnx_backend import OnnxEmbedder
    from rulebert.backend.torch_backend import predict_features
    from rulebert.domain.examples import RuleExamples
    from rulebert.domain.examples import blend_with_examples as blend
    from rulebert.domain.text import encode_frame
    from rulebert.model.backbones import embedder_checkpoint
    from rulebert.model.model_dir import find_embedder
    from rulebert.training.train import export_embedder_or_warn

    out = np.asarray(scores, dtype=np.float64).copy()
    blended = {}
    for rule in dict.fromkeys(score_rows[D.RULE].tolist()):
        own = train_rows[train_rows[D.RULE] == rule]
        examples = RuleExamples.of(
            own.loc[own[D.LABEL] == 1, D.TEXT].tolist(), own.loc[own[D.LABEL] == 0, D.TEXT].tolist()
        )
        if examples.blendable:
            blended[rule] = examples
    if not blended:
        return out
    folder = work_dir / "embedder"  # the embedder a model dir would carry, exported once per fold
    folder.mkdir(parents=True, exist_ok=True)
    export_embedder_or_warn(folder, embedder_checkpoint(config))
    path = find_embedder(folder)
    embedder = OnnxEmbedder(path) if path is not None else None

    def embed(texts: list[str]) -> np.ndarray | None:
        return None if embedder is None else embedder.embed_texts(texts, config.max_length)

    for rule, examples in blended.items():
        rows = (score_rows[D.RULE] == rule).to_numpy()

        def score_examples(texts: list[str], rule: str = rule) -> np.ndarray:
            frame = pd.DataFrame({D.TEXT: texts, D.RULE: rule, D.SUBREDDIT: ""})
            return predict_features(fit.model, fit.tokenizer, encode_frame(fit.tokenizer, frame, config))

        texts = score_rows.loc[rows, D.TEXT].tolist()
        out[rows], _, _ = blend(
            examples,
            texts,
            np.asarray(scores)[rows],
            score_examples=score_examples,
            embed=embed,
            trained=True,
        )
    return out


RECIPES: dict[str, Recipe] = {"finetune": finetune_recipe, "baseline": baseline_recipe}


def _rule_table(
    rows: pd.DataFrame, model: np.ndarray | None, baseline: np.ndarray
) -> dict[str, dict[str, Any]]:
    """Per rule: rows, violations, model AUC, baseline AUC."""
    table = {}
    labels, rules = rows[D.LABEL].to_numpy().astype(int), rows[D.RULE].to_numpy()
    for rule in dict.fromkeys(rules.tolist()):
        mask = rules == rule
        table[rule] = {
            "n": int(mask.sum()),
            "positives": int(labels[mask].sum()),
            "model_auc": auc_or_none(labels[mask], None if model is None else model[mask]),
            "baseline_auc": auc_or_none(labels[mask], baseline[mask]),
        }
    return table


def _summary(table: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    return {
        "model_col_auc": mean_or_none([r["model_auc"] for r in table.values()]),
        "baseline_col_auc": mean_or_none([r["baseline_auc"] for r in table.values()]),
    }


def _fmt_auc(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def markdown_table(result: dict[str, Any]) -> str:
    """Per-rule (pooled over folds) and per-fold AUCs, model beside baseline, as Markdown."""
    lines = ["| rule | n | violations | model AUC | baseline AUC |", "|---|---:|---:|---:|---:|"]
    for rule, row in result["per_rule"].items():
        lines.append(
            f"| {rule} | {row['n']} | {row['positives']} | {_fmt_auc(row['model_auc'])} "
            f"| {_fmt_auc(row['baseline_auc'])} |"
        )
    mean = result["mean"]
    lines.append(
        f"| **column-averaged** | {sum(r['n'] for r in result['per_rule'].values())} | "
        f"{sum(r['positives'] for r in result['per_rule'].values())} | "
        f"**{_fmt_auc(mean['model_col_auc'])}** | **{_fmt_auc(mean['baseline_col_auc'])}** |"
    )
    if result["protocol"] == "kfold":
        lines += ["", "| fold | n | model col AUC | baseline col AUC |", "|---|---:|---:|---:|"]
        for fold in result["folds"]:
            lines.append(
                f"| {fold['name']} | {fold['n']} | {_fmt_auc(fold['model_col_auc'])} "
                f"| {_fmt_auc(fold['baseline_col_auc'])} |"
            )
    return "\n".join(lines)


def _write_html(
    output_dir: Path, result: dict[str, Any], labels: np.ndarray, scores: np.ndarray, rules: np.ndarray
) -> None:
    """report.html of an evaluation (a failure is a warning: evaluation.json and the PNG are the results)."""
    try:
        write_html_report(
            output_dir,
            f"rulebert evaluation: {result['protocol']} ({result['recipe']})",
            labels,
            scores,
            rules,
            wall_seconds=result["wall_seconds"],
            details={
                "protocol": result["protocol"],
                "recipe": result["recipe"],
                "folds": len(result["folds"]),
                "baseline col AUC": result["mean"]["baseline_col_auc"],
            },
        )
    except Exception as err:  # the JSON and PNG are the results; a failed extra page is only reported
        logger.warning("report.html not written (%s)", err)


def evaluate(
    train_path: str | os.PathLike,
    protocol: str,
    output_dir: str | os.PathLike,
    config: Any = None,
    *,
    folds: int = 5,
    recipe: str | Recipe = "finetune",
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a recipe on ``train_path`` under ``protocol`` (``loro`` or ``kfold``) beside the baseline.

    ``recipe`` is ``"finetune"`` (the default: ``train.fit_rows`` + predict), ``"baseline"`` (the baseline
    only) or any callable ``recipe(config, train_rows, score_rows, work_dir) -> scores``. Writes
    ``evaluation.json``, ``roc_per_rule.png``, ``evaluation_predictions.csv`` (and ``report.html`` when the
    report module has it) to ``output_dir``, all atomically. Returns what evaluation.json holds.
    """
    import shutil
    import tempfile

    from tqdm.auto import tqdm

    started = time.perf_counter()
    config = config if config is not None else TrainConfig()
    if protocol not in PROTOCOLS:
        raise RulebertError(f"unknown --protocol {protocol!r} (use {' or '.join(PROTOCOLS)})")
    if isinstance(recipe, str):
        if recipe not in RECIPES:
            raise RulebertError(f"unknown --recipe {recipe!r} (use {' or '.join(RECIPES)})")
        recipe_name, baseline_only = recipe, recipe == "baseline"
        recipe_fn = partial(finetune_recipe, progress=progress) if recipe == "finetune" else RECIPES[recipe]
    else:
        recipe_name, baseline_only, recipe_fn = getattr(recipe, "__name__", repr(recipe)), False, recipe
    output_dir = Path(output_dir)
    if (output_dir / EVALUATION_FILE).exists() and not overwrite:
        raise RulebertError(f"{output_dir / EVALUATION_FILE}: already exists (use --overwrite to replace it)")

    frame = D.read_csv(train_path, labelled=True)
    splits = (
        loro_folds(frame, dedupe=config.dedupe)
        if protocol == "loro"
        else kfold_folds(frame, folds, seed=config.seed, dedupe=config.dedupe)
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    fold_results, scored = [], []
    for fold in tqdm(splits, desc=f"evaluate ({protocol})", unit="fold", disable=not progress):
        fold_started = time.perf_counter()
        baseline = baseline_recipe(config, fold.train_rows, fold.score_rows, output_dir)
        model = None
        if not baseline_only and len(fold.score_rows):
            work_dir = Path(tempfile.mkdtemp(dir=output_dir, prefix=".evaluate-"))
            try:
                model = np.asarray(recipe_fn(config, fold.train_rows, fold.score_rows, work_dir), dtype=float)
            finally:
                shutil.rmtree(work_dir, ignore_errors=True)
            if model.shape != (len(fold.score_rows),):
                raise RulebertError(
                    f"recipe {recipe_name} returned {model.shape} scores for {len(fold.score_rows)} rows"
                )
        table = _rule_table(fold.score_rows, model, baseline)
        fold_results.append(
            {
                "name": fold.name,
                "train_rows": len(fold.train_rows),
                "n": len(fold.score_rows),
                "per_rule": table,
                **_summary(table),
                "seconds": round(time.perf_counter() - fold_started, 1),
            }
        )
        scored.append(
            fold.score_rows[[D.RULE, D.LABEL]].assign(
                fold=fold.name, model=np.nan if model is None else model, baseline=baseline
            )
        )

    predictions = pd.concat(scored, ignore_index=True)[["fold", D.RULE, D.LABEL, "model", "baseline"]]
    model_scores = None if baseline_only else predictions["model"].to_numpy()
    per_rule = _rule_table(predictions, model_scores, predictions["baseline"].to_numpy())
    result = {
        "protocol": protocol,
        "recipe": recipe_name,
        "folds_requested": folds if protocol == "kfold" else None,
        "train": D.file_fingerprint(train_path),
        "config": config.to_dict() if hasattr(config, "to_dict") else repr(config),
        "baseline": BASELINE_DESCRIPTION,
        "mean": _summary(per_rule),
        "fold_mean": {
            "model_col_auc": mean_or_none([f["model_col_auc"] for f in fold_results]),
            "baseline_col_auc": mean_or_none([f["baseline_col_auc"] for f in fold_results]),
        },
        "per_rule": per_rule,
        "folds": fold_results,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    labels, rules = predictions[D.LABEL].to_numpy().astype(int), predictions[D.RULE].to_numpy()
    plot_roc(output_dir / ROC_FILE, labels, model_scores, rules, baseline=predictions["baseline"].to_numpy())
    write_csv_atomic(predictions, output_dir / PREDICTIONS_FILE)
    _write_html(
        output_dir,
        result,
        labels,
        model_scores if model_scores is not None else predictions["baseline"].to_numpy(),
        rules,
    )
    write_json_atomic(output_dir / EVALUATION_FILE, result)  # last: its presence means a finished run
    return result
