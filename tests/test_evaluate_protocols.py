"""The evaluation harness: split logic of both protocols, the baseline, the files, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rulebert.cli import main
from rulebert.core.errors import RulebertError
from rulebert.domain import data as D
from rulebert.evaluation.evaluate import (
    EVALUATION_FILE,
    PREDICTIONS_FILE,
    ROC_FILE,
    evaluate,
    kfold_folds,
    loro_folds,
)

from .conftest import make_frame

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _frame_with_leaks(n_rows: int = 40, seed: int = 3) -> tuple[pd.DataFrame, str]:
    """A synthetic frame where one body of the first rule is also (with extra spaces) one of its examples,
    and one body of the second rule is an example cell of the first rule."""
    frame = make_frame(n_rows, seed=seed)
    first_rule, second_rule = frame[D.RULE].unique()[:2]
    first = frame.index[frame[D.RULE] == first_rule]
    leaked = frame.at[first[0], D.BODY]
    frame.at[first[5], "negative_example_2"] = f"  {leaked} "  # same text once normalised
    second = frame.index[frame[D.RULE] == second_rule]
    frame.at[second[0], D.BODY] = frame.at[first[1], "positive_example_1"]
    return frame, leaked


def _keys(rows: pd.DataFrame) -> set[str]:
    return set(rows[D.TEXT].map(D.normalize_text))


@pytest.mark.parametrize("dedupe", [True, False])
def test_loro_trains_on_other_rules_and_own_examples_only(dedupe: bool) -> None:
    frame, leaked = _frame_with_leaks()
    folds = loro_folds(frame, dedupe=dedupe)
    assert [f.name for f in folds] == list(frame[D.RULE].unique())
    for fold in folds:
        own, other = frame[frame[D.RULE] == fold.name], frame[frame[D.RULE] != fold.name]
        train_own = fold.train_rows[fold.train_rows[D.RULE] == fold.name]
        # The held-out rule contributes its example cells, never its bodies' labels.
        assert (train_own[D.SOURCE] == "example").all()
        assert _keys(train_own) == _keys(D.example_rows(own))
        # Every other rule's bodies and examples are training rows.
        other_train = fold.train_rows[fold.train_rows[D.RULE] != fold.name]
        assert _keys(D.body_rows(other)) <= _keys(other_train)
        assert _keys(D.example_rows(other)) <= _keys(other_train)
        # Scored: exactly the held-out rule's bodies that are not among its example texts, with their labels.
        expected = own[~own[D.BODY].map(D.normalize_text).isin(_keys(D.example_rows(own)))]
        assert sorted(fold.score_rows[D.TEXT]) == sorted(expected[D.BODY])
        assert (fold.score_rows[D.RULE] == fold.name).all()
        labels = dict(zip(expected[D.BODY], expected[D.LABEL], strict=True))
        assert [labels[t] for t in fold.score_rows[D.TEXT]] == fold.score_rows[D.LABEL].tolist()
    first, second = folds[0], folds[1]
    assert D.normalize_text(leaked) not in _keys(first.score_rows)  # answered from memory: not scored
    assert len(first.score_rows) == (frame[D.RULE] == first.name).sum() - 1
    # A body that is an example of *another* rule is still scored under its own rule.
    assert len(second.score_rows) == (frame[D.RULE] == second.name).sum()


def test_loro_scores_a_repeated_comment_once() -> None:
    frame = make_frame(20, seed=4)
    duplicate = frame.iloc[[0]].assign(row_id=9999)
    folds = loro_folds(pd.concat([frame, duplicate], ignore_index=True))
    rule = frame.at[0, D.RULE]
    fold = next(f for f in folds if f.name == rule)
    assert (fold.score_rows[D.TEXT] == frame.at[0, D.BODY]).sum() == 1


def test_loro_needs_example_columns() -> None:
    frame = make_frame(10, seed=5)[[D.ROW_ID, D.BODY, D.RULE, D.SUBREDDIT, D.LABEL]]
    with pytest.raises(RulebertError, match="example columns"):
        loro_folds(frame)


def test_kfold_keeps_each_text_on_one_side() -> None:
    frame, leaked = _frame_with_leaks(60, seed=6)
    folds = kfold_folds(frame, 3, seed=0)
    assert len(folds) == 3
    scored = []
    for fold in folds:
        assert not _keys(fold.train_rows) & _keys(fold.score_rows)
        assert (fold.score_rows[D.SOURCE] == "body").all()
        scored.extend(fold.score_rows[D.TEXT])
    # Every (distinct) body is scored in exactly one fold.
    assert sorted(scored) == sorted(D.body_rows(frame)[D.TEXT])
    # The leaked body and its example twin sit in the same fold, on the scored side.
    home = [f for f in folds if D.normalize_text(leaked) in _keys(f.score_rows)]
    assert len(home) == 1 and D.normalize_text(leaked) not in _keys(home[0].train_rows)


def test_kfold_rejects_bad_fold_count() -> None:
    with pytest.raises(RulebertError, match="--folds"):
        kfold_folds(make_frame(10, seed=7), 1)


def test_baseline_beats_chance_and_files_are_written(tmp_path: Path) -> None:
    train = tmp_path / "train.csv"
    make_frame(80, seed=8).to_csv(train, index=False)
    out = tmp_path / "eval"
    result = evaluate(train, "loro", out, recipe="baseline", progress=False)
    assert result["mean"]["model_col_auc"] is None  # baseline only: no model column
    assert result["mean"]["baseline_col_auc"] > 0.8  # the synthetic labels are readable from the words
    saved = json.loads((out / EVALUATION_FILE).read_text())
    assert saved["mean"] == result["mean"] and saved["protocol"] == "loro"
    assert [f["n"] for f in saved["folds"]] == [r["n"] for r in saved["per_rule"].values()]
    assert (out / ROC_FILE).read_bytes().startswith(PNG_MAGIC)
    predictions = pd.read_csv(out / PREDICTIONS_FILE)
    assert len(predictions) == sum(f["n"] for f in saved["folds"])
    assert not list(out.glob(".*"))  # no temp files or scratch dirs left behind
    with pytest.raises(RulebertError, match="--overwrite"):
        evaluate(train, "loro", out, recipe="baseline", progress=False)


def test_custom_recipe_gets_each_fold(tmp_path: Path) -> None:
    train = tmp_path / "train.csv"
    make_frame(40, seed=9).to_csv(train, index=False)
    calls = []

    def oracle_free(config, train_rows, score_rows, work_dir):  # noqa: ANN001 - the Recipe signature
        assert Path(work_dir).is_dir()
        calls.append((len(train_rows), set(score_rows[D.RULE])))
        # Scores from word overlap with the training rows labelled 1: a real (if crude) recipe.
        positive = set(" ".join(train_rows.loc[train_rows[D.LABEL] == 1, D.TEXT]).split())
        negative = set(" ".join(train_rows.loc[train_rows[D.LABEL] == 0, D.TEXT]).split())
        return np.array(
            [len(set(t.split()) & positive) - len(set(t.split()) & negative) for t in score_rows[D.TEXT]]
        )

    result = evaluate(train, "kfold", tmp_path / "out", folds=2, recipe=oracle_free, progress=False)
    assert len(calls) == 2 and result["recipe"] == "oracle_free"
    assert [c[0] for c in calls] == [f["train_rows"] for f in result["folds"]]
    assert result["mean"]["model_col_auc"] > 0.7
    assert set(result["per_rule"]) == set(make_frame(40, seed=9)[D.RULE])

    with pytest.raises(RulebertError, match="returned"):
        evaluate(train, "kfold", tmp_path / "bad", folds=2, recipe=lambda *a: np.zeros(1), progress=False)


def test_cli_evaluate_kfold_with_tiny_model(tmp_path: Path, tiny_checkpoint: Path, capsys) -> None:
    train = tmp_path / "train.csv"
    make_frame(24, seed=10).to_csv(train, index=False)
    out = tmp_path / "eval"
    argv = [
        "evaluate",
        "--train",
        str(train),
        "--protocol",
        "kfold",
        "--folds",
        "2",
        "--output-dir",
        str(out),
    ]
    tiny = ["--model", str(tiny_checkpoint), "--epochs", "1", "--max-length", "32", "--val-fraction", "0"]
    assert main([*argv, *tiny, "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert "| rule | n | violations | model AUC | baseline AUC |" in table and "fold 2" in table
    saved = json.loads((out / EVALUATION_FILE).read_text())
    assert saved["recipe"] == "finetune" and len(saved["folds"]) == 2
    assert saved["mean"]["model_col_auc"] is not None and saved["config"]["model"] == str(tiny_checkpoint)
    assert (out / ROC_FILE).read_bytes().startswith(PNG_MAGIC)
    assert not list(out.glob(".evaluate-*"))  # fine-tuning scratch dirs are removed
    # A second run into the same folder needs --overwrite; a bad protocol is a usage error.
    assert main([*argv, *tiny, "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_finetune_recipe_blends_each_rule_with_its_examples_as_the_scorer_does(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    from rulebert.core.config import TrainConfig

    train = tmp_path / "train.csv"
    make_frame(40, seed=12).to_csv(train, index=False)
    tiny = TrainConfig(model=str(tiny_checkpoint), epochs=1, max_length=32, val_fraction=0.0)
    scores = {}
    for blend in (False, True):
        config = TrainConfig(**{**tiny.to_dict(), "blend_examples": blend})
        evaluate(train, "loro", tmp_path / f"blend-{blend}", config, progress=False)
        predictions = pd.read_csv(tmp_path / f"blend-{blend}" / PREDICTIONS_FILE)
        scores[blend] = predictions["model"].to_numpy()
        assert (
            json.loads((tmp_path / f"blend-{blend}" / EVALUATION_FILE).read_text())["config"][
                "blend_examples"
            ]
            is blend
        )
    assert scores[True].shape == scores[False].shape and not np.allclose(scores[True], scores[False])
    assert ((scores[True] >= 0) & (scores[True] <= 1)).all()


def test_the_blend_exports_the_embedder_of_the_resolved_base_checkpoint(tmp_path: Path, monkeypatch) -> None:
    """``--model default`` names the bundled MiniLM: the embedder must be exported from its folder (the
    sentinel itself is no checkpoint, and the blend would silently lose its embedding member)."""
    import rulebert.training.train
    from rulebert.core.config import TrainConfig
    from rulebert.evaluation.evaluate import blend_with_examples
    from rulebert.model.backbones import resolve_checkpoint

    asked = []
    monkeypatch.setattr(
        rulebert.training.train, "export_embedder_or_warn", lambda folder, base: asked.append(base)
    )

    class Tokenizer:
        def save_pretrained(self, folder: Path) -> None:
            Path(folder).mkdir(parents=True, exist_ok=True)

    class Fit:  # only what the blend reads before it scores; scoring then fails, which is not tested here
        tokenizer = Tokenizer()

    rows = make_frame(24, seed=3)
    with pytest.raises(AttributeError):
        blend_with_examples(
            TrainConfig(), Fit(), D.example_rows(rows), D.body_rows(rows), np.zeros(24), tmp_path
        )
    assert asked == [resolve_checkpoint("default")]
