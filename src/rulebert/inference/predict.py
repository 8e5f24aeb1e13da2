"""Score comments with a trained model dir: :class:`Scorer`.

:meth:`Scorer.predict` is the one inference entry point: the scorer verifies the model dir, picks a backend
(:mod:`rulebert.backend.onnx_backend`: the exported ONNX file on a CPU, else torch), tokenises (rule,
comment) rows the way the model was trained, scores them, applies the model dir's calibration and, where a
rule has labelled examples, blends them in (:func:`rulebert.domain.examples.blend_with_examples`). The
competition's submission writer (``predict_file``) lives with the competition flow, :mod:`rulebert.pipeline`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np

from rulebert.backend.device import BACKENDS, gpu_present
from rulebert.backend.onnx_backend import OnnxBackend, OnnxEmbedder
from rulebert.backend.torch_backend import TorchBackend
from rulebert.core.config import TrainConfig
from rulebert.core.errors import RulebertError
from rulebert.domain.examples import (
    EXAMPLES,
    TRAINED,
    ExampleModelCache,
    Mode,
    RuleExamples,
    blend_with_examples,
    member_weights,
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
    read_onnx_record,
    verify_model_dir,
)


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
        # how a rule's examples model weighs the cross-encoder: by skill once it learnt from decision logs
        self.example_weights = member_weights(self.config.example_weights, bool(data.get("decisions")))
        self._embedder_path = find_embedder(self.model_dir)
        self._embedder: OnnxEmbedder | None = None  # loaded on the first rule with examples
        self._threads = threads
        self._example_models = ExampleModelCache()

    @property
    def threshold(self) -> float:
        """The decision threshold the model dir recommends (``metrics.json`` ``threshold``), else 0.5."""
        return float(self.metrics.get("threshold", 0.5))

    def flag_threshold(self, mode: str) -> float:
        """Where ``flagged`` starts for a score made in ``mode``: in mode ``examples`` the probability is
        calibrated on the rule's own labelled examples (a Platt fit on their out-of-fold scores), so 0.5 is
        that community's own even point; the model's ``threshold`` was chosen on the training rules'
        validation rows and belongs to the scale of the model's scores (``trained``, ``zero-shot``)."""
        return 0.5 if mode == EXAMPLES else self.threshold

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

    @property
    def embedder_checkpoint(self) -> str | None:
        """The checkpoint the sentence embedder was exported from (``onnx.json``'s ``source``), or None."""
        if self._embedder_path is None:
            return None
        key = self._embedder_path.relative_to(self.model_dir).as_posix()
        entry = read_onnx_record(self.model_dir).get(key)
        return entry.get("source") if isinstance(entry, dict) else None

    def mode(self, rule: str, examples: RuleExamples | None = None) -> Mode:
        """``trained``, ``examples`` or ``zero-shot`` (:data:`rulebert.domain.examples.Mode`): how a rule
        with these examples is scored."""
        return rule_mode(rule, examples, self.trained_rules)

    @overload
    def predict(
        self,
        pairs: Sequence[tuple[str, str]] | tuple[str, str],
        *,
        examples: RuleExamples | dict[str, Any] | None = None,
        batch_size: int | None = None,
        details: Literal[False] = False,
        show_progress_bar: bool = False,
    ) -> np.ndarray: ...

    @overload
    def predict(
        self,
        pairs: Sequence[tuple[str, str]] | tuple[str, str],
        *,
        examples: RuleExamples | dict[str, Any] | None = None,
        batch_size: int | None = None,
        details: Literal[True],
        show_progress_bar: bool = False,
    ) -> list[dict[str, Any]]: ...

    def predict(
        self,
        pairs: Sequence[tuple[str, str]] | tuple[str, str],
        *,
        examples: RuleExamples | dict[str, Any] | None = None,
        batch_size: int | None = None,
        details: bool = False,
        show_progress_bar: bool = False,
    ) -> np.ndarray | list[dict[str, Any]]:
        """Score (rule, comment) pairs, in the (query, document) order of sentence-transformers'
        ``CrossEncoder.predict``: the one inference entry point (:meth:`score` and :meth:`score_details` are
        its older spellings, on the same code path).

        ``examples``: ``{"positive": [...], "negative": [...]}`` (or a :class:`RuleExamples`) for every
        pair's rule, or a dict from rule text to such. ``batch_size``: rows per forward pass (default: the
        backend's token budget, up to 256 rows). Returns P(violation) per pair as an array; with
        ``details=True`` a dict per pair with ``probability``, ``flagged`` (at :meth:`flag_threshold` of its
        mode), ``mode`` and ``evidence`` (the nearest labelled example, or None).
        """
        if isinstance(pairs, tuple) and len(pairs) == 2 and all(isinstance(p, str) for p in pairs):
            pairs = [pairs]
        pairs = list(pairs)
        if any(isinstance(p, str) or len(p) != 2 for p in pairs):
            raise RulebertError("predict takes (rule, comment) pairs")
        rules, bodies = [p[0] for p in pairs], [p[1] for p in pairs]
        given = [_examples_for(examples, rule) for rule in rules]
        result = self._score(
            bodies,
            rules,
            None,
            [g.positive for g in given],
            [g.negative for g in given],
            batch_size=batch_size,
            progress=show_progress_bar,
        )
        if not details:
            return result["probability"]
        return [
            {
                "probability": float(p),
                "flagged": bool(p >= self.flag_threshold(m)),
                "threshold": self.flag_threshold(m),  # where flagged starts (as /v1/score says)
                "mode": m,
                "evidence": e,
            }
            for p, m, e in zip(result["probability"], result["mode"], result["evidence"], strict=True)
        ]

    def score(
        self,
        bodies: Sequence[str] | str,
        rules: Sequence[str] | str,
        subreddits: Sequence[str] | None = None,
        *,
        positive_examples: Sequence[Sequence[str]] | None = None,
        negative_examples: Sequence[Sequence[str]] | None = None,
        progress: bool = False,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """:meth:`predict` with (comments, rules) columns, each row's own examples and subreddit:
        P(the comment breaks the rule) per row, in input order. A bare string is one comment (a rule given
        as a string applies to every comment)."""
        return self.score_details(
            bodies,
            rules,
            subreddits,
            positive_examples=positive_examples,
            negative_examples=negative_examples,
            progress=progress,
            batch_size=batch_size,
        )["probability"]

    def score_details(
        self,
        bodies: Sequence[str] | str,
        rules: Sequence[str] | str,
        subreddits: Sequence[str] | None = None,
        *,
        positive_examples: Sequence[Sequence[str]] | None = None,
        negative_examples: Sequence[Sequence[str]] | None = None,
        progress: bool = False,
        batch_size: int | None = None,
    ) -> dict[str, Any]:
        """:meth:`score` with, per row, how the score was made: ``{"probability": array, "mode": [...],
        "evidence": [...]}`` (``predict(..., details=True)`` gives the same per row)."""
        return self._score(
            bodies,
            rules,
            subreddits,
            positive_examples,
            negative_examples,
            batch_size=batch_size,
            progress=progress,
        )

    def _score(
        self,
        bodies: Sequence[str] | str,
        rules: Sequence[str] | str,
        subreddits: Sequence[str] | None,
        positive_examples: Sequence[Sequence[str]] | None,
        negative_examples: Sequence[Sequence[str]] | None,
        *,
        batch_size: int | None,
        progress: bool,
    ) -> dict[str, Any]:
        """The one scoring path. ``evidence`` is, where examples were used, the labelled example nearest to
        the comment (text, label, similarity), else None. Examples are used for a rule the model never saw
        (mode ``examples``), and for one it trained on when the model dir's ``blend_examples`` is on and
        there are at least ``MIN_BLEND_EXAMPLES`` of each label (mode stays ``trained``)."""
        bodies = [bodies] if isinstance(bodies, str) else list(bodies)
        rules = [rules] * len(bodies) if isinstance(rules, str) else list(rules)
        if len(rules) != len(bodies):
            raise RulebertError(f"{len(bodies)} comments but {len(rules)} rules")
        raw = self.runtime.predict(
            self.encode(bodies, rules, subreddits), batch_size=batch_size, progress=progress
        )
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
                used = mode == EXAMPLES or (mode == TRAINED and self._blends(examples))
                parsed[ident] = (mode, examples.key(rule) if used else None, examples)
            mode, key, examples = parsed[ident]
            modes.append(mode)
            if key is not None:
                groups.setdefault(key, []).append(i)
                examples_of[key] = (rule, examples)
        evidence: list[dict[str, Any] | None] = [None] * n
        if groups:  # per-rule probabilities are float64; without examples the backend's dtype stays
            probability = probability.astype(np.float64)
        embed = _EmbeddingMemo(self._embed)
        for key, rows in groups.items():
            rule, examples = examples_of[key]
            texts = [bodies[i] for i in rows]
            probability[rows], nearest, model = blend_with_examples(
                examples,
                texts,
                np.asarray(raw)[rows],
                score_examples=lambda values, rule=rule: self.runtime.predict(
                    self.encode(values, [rule] * len(values)), batch_size=batch_size
                ),
                embed=embed,
                trained=normalize_rule(rule) in self.trained_rules,
                fitted=self._example_models.get(key),
                max_length=self.config.max_length,
                weights=self.example_weights,
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

    def _embed(self, texts: list[str]) -> np.ndarray | None:
        if self._embedder_path is None:
            return None
        if self._embedder is None:
            self._embedder = OnnxEmbedder(self._embedder_path, threads=self._threads)
        return self._embedder.embed_texts(texts, self.config.max_length)


class _EmbeddingMemo:
    """An embedder's vectors memoised for one scoring call, by text stripped (the tokenizer drops the
    surrounding spaces, so the vector is the same). A competition test file's comments are often its other
    rows' example cells (996 of train.csv's 1,873 distinct comments are example cells of their rule): each
    text is embedded once per call. The embedder's int8 graph quantises per token (issue 26), so a vector
    does not depend on its batch and the memo changes no score."""

    def __init__(self, embed: Any) -> None:
        self._embed, self._vectors = embed, {}

    def __call__(self, texts: list[str]) -> np.ndarray | None:
        keys = [t.strip() for t in texts]
        todo = list(dict.fromkeys(k for k in keys if k not in self._vectors))
        if todo:
            fresh = self._embed(todo)
            if fresh is None:
                return None
            self._vectors.update(zip(todo, fresh, strict=True))
        if not keys:
            return self._embed([])
        return np.stack([self._vectors[k] for k in keys])


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
