"""Score comments with a trained model dir (:class:`Scorer`) and write a competition submission.

:class:`Scorer` is the one inference entry point: it verifies the model dir, picks a backend
(:mod:`rulebert.backend.onnx_backend`: the exported ONNX file on a CPU, else torch), tokenises (rule,
comment) rows the
way the model was trained, scores them and applies the model dir's calibration.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rulebert.backend.device import BACKENDS, gpu_present
from rulebert.backend.onnx_backend import OnnxBackend, OnnxEmbedder
from rulebert.backend.torch_backend import TorchBackend
from rulebert.core.config import TrainConfig
from rulebert.core.errors import RulebertError
from rulebert.core.files import write_csv_atomic
from rulebert.domain.data import BODY, EXAMPLE_COLUMNS, ROW_ID, RULE, SUBREDDIT, read_csv
from rulebert.domain.examples import (
    ExampleModelCache,
    RuleExamples,
    blend_with_examples,
    normalize_rule,
    rule_mode,
)
from rulebert.domain.text import encode_rows
from rulebert.model.model_dir import (
    find_embedder,
    find_onnx,
    load_calibrator,
    load_model_dir,
    read_metrics,
    verify_model_dir,
)

MODES = ("trained", "examples", "zero-shot")
"""How a score was made: the model was trained on the rule's text; the rule's examples were used at scoring
time; or neither (the cross-encoder alone, on a rule it never saw: treat the score with caution)."""

SUBMISSION_COLUMNS = ("row_id", "rule_violation")


def open_backend(
    model_dir: Path, backend: str = "auto", device: str | None = None, threads: int | None = None
) -> tuple[TorchBackend | OnnxBackend, dict[str, Any]]:
    """(backend, verified record) for a model dir.

    ``auto`` takes a valid exported ONNX file on a CPU (no device asked for and no GPU visible, or
    ``device="cpu"``); on a GPU the torch model with bf16 is faster. ``onnx`` / ``torch`` force one.
    The ONNX path never imports torch or transformers.
    """
    if backend not in BACKENDS:
        raise RulebertError(f"unknown backend {backend!r} (use one of {', '.join(BACKENDS)})")
    wanted = device or ("cuda" if gpu_present() else "cpu")
    if backend == "onnx" or (backend == "auto" and wanted == "cpu"):
        record = verify_model_dir(model_dir)
        path = find_onnx(model_dir, record)
        if path is not None:
            return OnnxBackend(path, threads=threads), record
        if backend == "onnx":
            raise RulebertError(f"{model_dir}: no usable ONNX file (run `rulebert export --model-dir DIR`)")
    model, tokenizer, _config, record = load_model_dir(model_dir)
    return TorchBackend(model, tokenizer, device), record


class Scorer:
    """A trained model dir, loaded once, that scores (comment, rule) rows.

    >>> scorer = Scorer("runs/model")                       # doctest: +SKIP
    >>> scorer.score(["buy now!"], ["No advertising"])     # doctest: +SKIP
    array([0.93], dtype=float32)
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        device: str | None = None,
        backend: str = "auto",
        *,
        threads: int | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        # ``backend``: "auto" scores with an exported ONNX file (rulebert export) on a CPU, else torch;
        # "onnx" / "torch" force one. ``self.backend`` says which one runs ("torch", "onnx", "onnx-int8").
        self.runtime, self.record = open_backend(self.model_dir, backend, device, threads)
        self.config = TrainConfig.from_dict(self.record["config"])
        self.backend, self.device = self.runtime.name, self.runtime.device
        self.tokenizer = self.runtime.tokenizer
        self.model = getattr(self.runtime, "model", None)  # the torch model, when torch scores
        # calibration.json (fitted on validation at train time) turns raw scores into probabilities; set
        # ``scorer.calibrator = None`` for raw ones. Platt keeps the ranking; isotonic may create ties.
        self.calibrator = load_calibrator(self.model_dir)
        self.metrics = read_metrics(self.model_dir)  # a loaded model dir does not change: read it once
        data = self.record.get("data") if isinstance(self.record.get("data"), dict) else {}
        self.trained_rules = {normalize_rule(r) for r in data.get("rules") or [] if isinstance(r, str)}
        self._embedder_path = find_embedder(self.model_dir)
        self._embedder: OnnxEmbedder | None = None  # loaded on the first rule with examples
        self._threads = threads
        self._example_models = ExampleModelCache()

    @property
    def train_config(self) -> TrainConfig:
        return self.config

    @property
    def threshold(self) -> float:
        """The decision threshold the model dir recommends (``metrics.json`` ``threshold``), else 0.5."""
        return float(self.metrics.get("threshold", 0.5))

    def flag_threshold(self, mode: str) -> float:
        """Where ``flagged`` starts for a score made in ``mode``: in mode ``examples`` the probability is
        calibrated on the rule's own labelled examples (a Platt fit on their out-of-fold scores), so 0.5 is
        that community's own even point; the model's ``threshold`` was chosen on the training rules'
        validation rows and belongs to the scale of the model's scores (``trained``, ``zero-shot``)."""
        return 0.5 if mode == "examples" else self.threshold

    def encode(
        self, bodies: Sequence[str], rules: Sequence[str], subreddits: Sequence[str] | None = None
    ) -> list[dict[str, list[int]]]:
        return encode_rows(
            self.tokenizer,
            rules,
            bodies,
            subreddits,
            input_format=self.config.input_format,
            include_subreddit=self.config.include_subreddit,
            max_length=self.config.max_length,
        )

    @property
    def has_embedder(self) -> bool:
        """Whether the model dir has a sentence embedder (else a rule's examples are learnt by TF-IDF)."""
        return self._embedder_path is not None

    def mode(self, rule: str, examples: RuleExamples | None = None) -> str:
        """``trained``, ``examples`` or ``zero-shot`` (see :data:`MODES`) for a rule and its examples."""
        return rule_mode(rule, examples, self.trained_rules)

    def score(
        self,
        bodies: Sequence[str] | str,
        rules: Sequence[str] | str,
        subreddits: Sequence[str] | None = None,
        *,
        positive_examples: Sequence[Sequence[str]] | None = None,
        negative_examples: Sequence[Sequence[str]] | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """P(the comment breaks the rule) for each row, in input order.

        A bare string is one comment (a rule given as a string applies to every comment).
        ``positive_examples`` / ``negative_examples`` give, per row, comments that break / keep the rule. For
        a rule the model was not trained on they are learnt from at scoring time
        (:mod:`rulebert.domain.examples`);
        see :meth:`score_details` for the mode and the nearest example behind each score.
        """
        details = self.score_details(
            bodies,
            rules,
            subreddits,
            positive_examples=positive_examples,
            negative_examples=negative_examples,
            progress=progress,
        )
        return details["probability"]

    def score_details(
        self,
        bodies: Sequence[str] | str,
        rules: Sequence[str] | str,
        subreddits: Sequence[str] | None = None,
        *,
        positive_examples: Sequence[Sequence[str]] | None = None,
        negative_examples: Sequence[Sequence[str]] | None = None,
        progress: bool = False,
    ) -> dict[str, Any]:
        """``{"probability": array, "mode": [...], "evidence": [...]}`` for each row, in input order.

        ``evidence`` is, where examples were used, the labelled example nearest to the comment (text, label,
        similarity), else None. Examples are used for a rule the model never saw (mode ``examples``), and for
        one it trained on when the model dir's ``blend_examples`` is on and there are at least
        ``MIN_BLEND_EXAMPLES`` of each label (mode stays ``trained``).
        """
        bodies = [bodies] if isinstance(bodies, str) else list(bodies)
        rules = [rules] * len(bodies) if isinstance(rules, str) else list(rules)
        if len(rules) != len(bodies):
            raise RulebertError(f"{len(bodies)} comments but {len(rules)} rules")
        raw = self.runtime.predict(self.encode(bodies, rules, subreddits), progress=progress)
        probability = np.asarray(raw if self.calibrator is None else self.calibrator.transform(raw))
        n = len(bodies)
        positives = positive_examples if positive_examples is not None else [()] * n
        negatives = negative_examples if negative_examples is not None else [()] * n
        groups: dict[str, list[int]] = {}
        examples_of: dict[str, tuple[str, RuleExamples]] = {}
        modes = []
        # predict_file hands every row of a rule the same pooled lists (hundreds of texts): parse and hash
        # them once per (rule, lists), not once per row. The lists outlive the loop, so their ids are stable.
        parsed: dict[tuple[str, int, int], tuple[str, str | None, RuleExamples]] = {}
        for i, (rule, pos, neg) in enumerate(zip(rules, positives, negatives, strict=True)):
            ident = (rule, id(pos), id(neg))
            if ident not in parsed:
                examples = RuleExamples.of(pos, neg)
                mode = self.mode(rule, examples)
                used = mode == "examples" or (mode == "trained" and self._blends(examples))
                parsed[ident] = (mode, examples.key(rule) if used else None, examples)
            mode, key, examples = parsed[ident]
            modes.append(mode)
            if key is not None:
                groups.setdefault(key, []).append(i)
                examples_of[key] = (rule, examples)
        evidence: list[dict[str, Any] | None] = [None] * n
        if groups:  # per-rule probabilities are float64; without examples the backend's dtype stays
            probability = probability.astype(np.float64)
        for key, rows in groups.items():
            rule, examples = examples_of[key]
            texts = [bodies[i] for i in rows]
            probability[rows], nearest, model = blend_with_examples(
                examples,
                texts,
                np.asarray(raw)[rows],
                score_examples=lambda values, rule=rule: self.runtime.predict(
                    self.encode(values, [rule] * len(values))
                ),
                embed=self._embed,
                trained=normalize_rule(rule) in self.trained_rules,
                fitted=self._example_models.get(key),
            )
            self._example_models.put(key, model)
            if nearest is not None:
                for i, near in zip(rows, nearest, strict=True):
                    evidence[i] = near
        return {"probability": probability, "mode": modes, "evidence": evidence}

    def _blends(self, examples: RuleExamples) -> bool:
        """Whether a trained rule's score is blended with its examples: the model dir's ``blend_examples``
        and enough of them (``RuleExamples.blendable``)."""
        return bool(getattr(self.config, "blend_examples", False)) and examples.blendable

    def predict(
        self,
        pairs: Sequence[tuple[str, str]] | tuple[str, str],
        examples: RuleExamples | dict[str, Any] | None = None,
        *,
        details: bool = False,
    ) -> np.ndarray | list[dict[str, Any]]:
        """Score (rule, comment) pairs, in the (query, document) order of sentence-transformers' CrossEncoder.

        ``examples``: ``{"positive": [...], "negative": [...]}`` (or a :class:`RuleExamples`) for every
        pair's rule, or a dict from rule text to such. With ``details=True`` each result is a dict with
        ``probability``, ``flagged`` (at :meth:`flag_threshold` of its mode), ``mode`` and ``evidence``.
        """
        if isinstance(pairs, tuple) and len(pairs) == 2 and all(isinstance(p, str) for p in pairs):
            pairs = [pairs]
        pairs = list(pairs)
        if any(isinstance(p, str) or len(p) != 2 for p in pairs):
            raise RulebertError("predict takes (rule, comment) pairs")
        rules, bodies = [p[0] for p in pairs], [p[1] for p in pairs]
        given = [_examples_for(examples, rule) for rule in rules]
        result = self.score_details(
            bodies,
            rules,
            positive_examples=[g.positive for g in given],
            negative_examples=[g.negative for g in given],
        )
        if not details:
            return result["probability"]
        return [
            {"probability": float(p), "flagged": bool(p >= self.flag_threshold(m)), "mode": m, "evidence": e}
            for p, m, e in zip(result["probability"], result["mode"], result["evidence"], strict=True)
        ]

    def _embed(self, texts: list[str]) -> np.ndarray | None:
        if self._embedder_path is None:
            return None
        if self._embedder is None:
            self._embedder = OnnxEmbedder(self._embedder_path, threads=self._threads)
        return self._embedder.embed_texts(texts, self.config.max_length)


def _examples_for(examples: RuleExamples | dict[str, Any] | None, rule: str) -> RuleExamples:
    if examples is None:
        return RuleExamples()
    if isinstance(examples, RuleExamples):
        return examples
    if not isinstance(examples, dict):
        raise RulebertError(
            "examples must be {'positive': [...], 'negative': [...]} or a dict of rules to such"
        )
    if set(examples) <= {"positive", "negative"}:
        return RuleExamples.of(examples.get("positive"), examples.get("negative"))
    return _examples_for(examples.get(rule), rule)


def pooled_examples(frame: pd.DataFrame) -> dict[str, RuleExamples]:
    """Each rule's example cells pooled over every row of a competition-layout file (majority label for a
    text given with both, ties dropped): a rule's row carries four cells, too few to learn from, while the
    file carries hundreds. Empty when the file has no example columns."""
    if not any(c in frame.columns for c in EXAMPLE_COLUMNS):
        return {}
    from rulebert.domain.rules import rules_from_competition

    return {
        rule.text: RuleExamples.of(rule.positive_examples, rule.negative_examples)
        for rule in rules_from_competition(frame)
    }


def check_submission(submission: pd.DataFrame, sample_path: str | os.PathLike) -> None:
    """Same columns and the same row_ids as the competition's sample submission."""
    sample_path = Path(sample_path)
    try:
        sample = pd.read_csv(sample_path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise RulebertError(f"{sample_path}: unreadable sample submission ({err})") from None
    if list(sample.columns) != list(submission.columns):
        raise RulebertError(
            f"{sample_path}: submission columns {list(submission.columns)} differ from {list(sample.columns)}"
        )
    ours, theirs = submission["row_id"].astype(str), sample["row_id"].astype(str).str.strip()
    if set(ours) != set(theirs) or len(ours) != len(theirs):
        missing = sorted(set(theirs) - set(ours))[:3]
        extra = sorted(set(ours) - set(theirs))[:3]
        raise RulebertError(
            f"{sample_path}: row_ids differ from the submission (missing {missing}, unexpected {extra})"
        )


def predict_file(
    model_dir: str | os.PathLike,
    test_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    sample_path: str | os.PathLike | None = None,
    progress: bool = True,
    backend: str = "auto",
    chunk_rows: int = 4096,
) -> pd.DataFrame:
    """Write ``row_id,rule_violation`` for every row of ``test_path`` (same order), atomically.

    Rows are tokenised and scored ``chunk_rows`` at a time: the token lists of a whole 50k-row file as
    Python ints would take several hundred MB. Says on stderr which backend scored (see :class:`Scorer`).
    """
    from tqdm.auto import tqdm

    test = read_csv(test_path, labelled=False, need_row_id=True)
    scorer = Scorer(model_dir, backend=backend)
    print(f"rulebert: predict backend: {scorer.backend}", file=sys.stderr)
    columns = [test[c].tolist() for c in (BODY, RULE, SUBREDDIT)]
    pooled = pooled_examples(test)
    positives = [pooled[rule].positive for rule in columns[1]] if pooled else None
    negatives = [pooled[rule].negative for rule in columns[1]] if pooled else None
    parts = []
    with tqdm(total=len(test), desc="predict", unit="row", disable=not progress) as bar:
        for start in range(0, len(test), chunk_rows):
            window = slice(start, start + chunk_rows)
            parts.append(
                scorer.score(
                    *(c[window] for c in columns),
                    positive_examples=positives[window] if positives else None,
                    negative_examples=negatives[window] if negatives else None,
                )
            )
            bar.update(len(parts[-1]))
    probabilities = np.concatenate(parts)
    submission = pd.DataFrame({"row_id": test[ROW_ID].to_numpy(), "rule_violation": probabilities})
    if sample_path is not None and Path(sample_path).is_file():
        check_submission(submission, sample_path)
    write_csv_atomic(submission, output_path)
    return submission
