"""A rule's labelled examples, used at scoring time: no training, a per-rule model fitted in milliseconds.

The cross-encoder reads only (rule, comment). For a rule it was never trained on it is close to chance
(request-time leave-one-rule-out on the competition data: column-averaged AUC 0.488). What such a rule does
have is a handful of comments a moderator labelled. :class:`ExampleModel` learns from them, per rule:

- a TF-IDF model (word 1-2 and char_wb 2-5 grams, logistic regression) of the example texts;
- a logistic regression on sentence embeddings of the examples (the model dir's embedder: the base checkpoint
  the model was fine-tuned from, mean-pooled; see :mod:`rulebert.backend.export`), when the model dir has one;
- the cross-encoder's own score, weighted by how well it ranks *the examples* (weight
  ``max(0, 2 * AUC - 1)``): a rule the model already understands keeps its score, one it does not gets none.

Each score is standardised by the scores the same method gives the examples out of fold (each example scored
by a model fitted without it), so the three are on one scale without looking at the scored comments; their
sum is turned into a probability by a Platt fit on those out-of-fold sums. Measured on the request-time
protocol (docs/evaluation.md): 0.7018 column-averaged AUC with the examples, against 0.488 without.

numpy and scikit-learn only: the embeddings and cross-encoder scores come in as arrays.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from rulebert.domain.calibration import auc, logit, platt_fit

MAX_FOLDS = 5  # out-of-fold scores of the examples: at most this many folds (leave-one-out when fewer)
MIN_BLEND_EXAMPLES = 10
"""Examples of each label a rule the model *trained on* needs before they are blended in: with a row's own
four cells (2 + 2) the per-rule model is near chance (0.499-0.557 on request-time loro) and would only add
noise to a trained model; pooled over a rule (hundreds) it adds +0.009. Chosen by that principle, not tuned
on scored comments."""
_EPS = 1e-6
"""The examples model's logit clip (and its 'no spread' bound). It differs from the calibrator's 1e-7
(``calibration.LOGIT_EPS``) on purpose: the clip bounds a saturated cross-encoder score, which here is
standardised with a handful of examples' scores, and the request-time numbers in docs/evaluation.md were
measured with 1e-6; a shared constant would change them."""
EXAMPLES_PLATT_C = 1.0
"""The examples model's Platt fit is regularised (sklearn's default C=1), unlike the model dir's
calibrator (``calibration.PLATT_C``, practically none): it is fitted on a handful of out-of-fold scores."""


def normalize_rule(text: str) -> str:
    """The key under which two rule texts count as the same rule (case and spacing ignored)."""
    return " ".join(text.split()).lower()


@dataclass(frozen=True)
class RuleExamples:
    """Comments known to break (``positive``) or keep (``negative``) one rule."""

    positive: tuple[str, ...] = ()
    negative: tuple[str, ...] = ()

    @classmethod
    def of(cls, positive: Sequence[str] | None, negative: Sequence[str] | None) -> RuleExamples:
        """Distinct texts (stripped); a text given with both labels is dropped (no majority to go by)."""
        pos = dict.fromkeys(t.strip() for t in positive or () if t and t.strip())
        neg = dict.fromkeys(t.strip() for t in negative or () if t and t.strip())
        both = pos.keys() & neg.keys()
        return cls(tuple(t for t in pos if t not in both), tuple(t for t in neg if t not in both))

    @property
    def usable(self) -> bool:
        """At least one example of each label: what a per-rule model needs to learn a boundary."""
        return bool(self.positive) and bool(self.negative)

    @property
    def blendable(self) -> bool:
        """Enough examples of each label to blend with a model trained on the rule
        (:data:`MIN_BLEND_EXAMPLES`)."""
        return min(len(self.positive), len(self.negative)) >= MIN_BLEND_EXAMPLES

    @property
    def texts(self) -> list[str]:
        return [*self.positive, *self.negative]

    @property
    def labels(self) -> np.ndarray:
        return np.array([1] * len(self.positive) + [0] * len(self.negative), dtype=int)

    def key(self, rule: str) -> str:
        """A cache key for (rule, these examples)."""
        digest = hashlib.sha256()
        for part in (normalize_rule(rule), *self.positive, "\x00", *self.negative):
            digest.update(part.encode("utf-8", "surrogatepass") + b"\x1f")
        return digest.hexdigest()


Mode = Literal["trained", "examples", "zero-shot"]
"""How a score was made: the model was trained on the rule's text; the rule's examples were used at scoring
time; or neither (the cross-encoder alone, on a rule it never saw: treat the score with caution)."""
TRAINED: Mode = "trained"
EXAMPLES: Mode = "examples"
ZERO_SHOT: Mode = "zero-shot"
MODES: tuple[Mode, ...] = (TRAINED, EXAMPLES, ZERO_SHOT)


def rule_mode(rule: str, examples: RuleExamples | None, trained_rules: set[str] | frozenset[str]) -> Mode:
    """``trained`` (``normalize_rule(rule)`` is among the model's ``trained_rules``), ``examples`` (usable
    examples of both labels) or ``zero-shot``: how a rule is scored."""
    if normalize_rule(rule) in trained_rules:
        return TRAINED
    return EXAMPLES if examples is not None and examples.usable else ZERO_SHOT


def tfidf_scorer(
    texts: list[str], labels: np.ndarray, *, max_iter: int = 2000
) -> Callable[[list[str]], np.ndarray]:
    """TF-IDF (word 1-2 and char_wb 2-5 grams, sublinear) + logistic regression (C=1) fitted on labelled
    texts; returns its decision function (a logit: ``scipy.special.expit`` of it is P(label 1)). The one
    TF-IDF model: the examples model's member and ``rulebert evaluate``'s baseline."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    words = TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True)
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)
    # Examples may hold no word (a quote mark, an emoji) or not even two characters: each view is used only
    # where it has a vocabulary, and with none the member says nothing (a constant, standardised away).
    for parts in ((words, chars), (chars,), (words,)):
        try:
            model = make_pipeline(make_union(*parts), LogisticRegression(C=1.0, max_iter=max_iter))
            model.fit(texts, labels)
            return lambda values: model.decision_function(values)
        except ValueError as err:
            if "empty vocabulary" not in str(err):
                raise
    return lambda values: np.zeros(len(values))


def _embedding_scorer(vectors: np.ndarray, labels: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=1.0, max_iter=2000).fit(vectors, labels)
    return lambda values: model.decision_function(values)


def _out_of_fold(fit: Callable[[Any, np.ndarray], Callable], inputs: Any, labels: np.ndarray) -> np.ndarray:
    """Each example's score from a model fitted on the other folds (stratified; leave-one-out when small).

    NaN where a fold's training part lacks a label."""
    from sklearn.model_selection import StratifiedKFold

    folds = min(MAX_FOLDS, int(np.bincount(labels, minlength=2).min()))
    out = np.full(len(labels), np.nan)
    if folds < 2:
        return out
    take = (lambda idx: [inputs[i] for i in idx]) if isinstance(inputs, list) else (lambda idx: inputs[idx])
    splitter = StratifiedKFold(folds, shuffle=True, random_state=0)
    for train, held in splitter.split(np.zeros(len(labels)), labels):
        out[held] = fit(take(train), labels[train])(take(held))
    return out


@dataclass
class _Scale:
    """Standardisation of one method's scores, from the examples' out-of-fold scores."""

    mean: float = 0.0
    std: float = 1.0

    @classmethod
    def of(cls, values: np.ndarray) -> _Scale:
        values = values[np.isfinite(values)]
        if len(values) < 2 or values.std() < _EPS:
            return cls(float(values.mean()) if len(values) else 0.0, 1.0)
        return cls(float(values.mean()), float(values.std()))

    def __call__(self, values: np.ndarray) -> np.ndarray:
        return (np.asarray(values, dtype=np.float64) - self.mean) / self.std


def member_weights(setting: str, learnt_from_decisions: bool) -> str:
    """How the examples model weighs its members (``TrainConfig.example_weights``): ``fixed`` (TF-IDF and
    embedding 1 each, the cross-encoder ``max(0, 2 * AUC - 1)`` on the examples: made for a cross-encoder
    that is near chance on a new rule) or ``skill`` (every member ``max(0, 2 * AUC - 1)`` of its own
    out-of-fold scores of the examples: a cross-encoder that knows what moderators remove weighs as much as it
    ranks). ``auto``: ``skill`` for a model that learnt from moderators' decision logs, else ``fixed``
    (measured leave-communities-out, docs/evaluation.md)."""
    if setting == "auto":
        return "skill" if learnt_from_decisions else "fixed"
    return setting


def _skill(labels: np.ndarray, scores: np.ndarray) -> float:
    """``max(0, 2 * AUC - 1)`` of finite scores: 0 for a member ranking the examples no better than chance."""
    finite = np.isfinite(scores)
    if len(np.unique(labels[finite])) < 2:
        return 0.0
    return max(0.0, 2 * auc(labels[finite], scores[finite]) - 1)


@dataclass
class ExampleModel:
    """A per-rule scorer fitted on one rule's examples (see the module docstring)."""

    examples: RuleExamples
    cross_encoder_weight: float
    """``max(0, 2 * AUC - 1)`` of the cross-encoder on the examples: 0 when it ranks them no better than
    chance."""
    methods: list[str] = field(default_factory=list)
    weights: dict[str, float] = field(default_factory=dict)
    """Each member's weight in the sum (see :func:`member_weights`)."""
    _tfidf: Callable | None = None
    _embedding: Callable | None = None
    _scales: dict[str, _Scale] = field(default_factory=dict)
    _platt: tuple[float, float] = (1.0, 0.0)
    _example_vectors: np.ndarray | None = None
    _trained_reference: np.ndarray | None = None
    """For a rule the model trained on: its sorted logits of the examples, through which its score of a
    comment becomes a quantile (see :meth:`fit`)."""

    @classmethod
    def fit(
        cls,
        examples: RuleExamples,
        cross_encoder_scores: np.ndarray,
        vectors: np.ndarray | None = None,
        *,
        trained: bool = False,
        weights: str = "fixed",
    ) -> ExampleModel:
        """Fit on ``examples`` (usable: both labels present). ``cross_encoder_scores`` are the model's
        probabilities for (rule, example) in the order of ``examples.texts``; ``vectors`` their unit-norm
        sentence embeddings, or None when the model dir has no embedder (TF-IDF alone then).

        ``trained``: the model was fine-tuned on this rule (on these examples, usually), so its scores of
        them are in-sample and say nothing of how well it ranks new comments. It then keeps half the
        weight: its logit becomes a quantile among its logits of the examples (bounded, so an overconfident
        logit cannot drown the examples' view), mapped to [-2, 2] and added to the mean of the example
        members' standardised scores. Leave-one-rule-out, mean of 3 seeds: +0.006 column-averaged AUC over
        the model alone, neither rule lower; a plain sum of standardised logits gained +0.002 and lowered
        one rule (docs/evaluation.md)."""
        texts, labels = examples.texts, examples.labels
        ce = logit(cross_encoder_scores, _EPS)
        weight = 1.0 if trained else max(0.0, 2 * auc(labels, ce) - 1)
        model = cls(examples, weight)
        if trained:
            model._trained_reference = np.sort(ce)
        oof: dict[str, np.ndarray] = {}
        model._tfidf = tfidf_scorer(texts, labels)
        oof["tfidf"] = _out_of_fold(tfidf_scorer, texts, labels)
        if vectors is not None:
            model._embedding = _embedding_scorer(vectors, labels)
            model._example_vectors = np.asarray(vectors, dtype=np.float32)
            oof["embedding"] = _out_of_fold(_embedding_scorer, np.asarray(vectors), labels)
        if weight > 0:
            oof["cross-encoder"] = ce
        model.methods = list(oof)
        model._scales = {name: _Scale.of(values) for name, values in oof.items()}
        model.weights = {name: 1.0 for name in model.methods} | {"cross-encoder": weight}
        if weights == "skill" and not trained:  # (a trained rule's in-sample scores say nothing of skill)
            skills = {name: _skill(labels, values) for name, values in oof.items()}
            if any(skills.values()):  # no member ranks the examples: all count alike, as in "fixed"
                model.weights = skills
        if trained:  # the in-sample quantiles would make a near-step Platt: fit it on the honest part only
            honest = [model._scales[n](oof[n]) for n in model.methods if n != "cross-encoder"]
            model._platt = _examples_platt(labels, np.mean(honest, axis=0))
        else:
            model._platt = _examples_platt(labels, model._combine(oof))
        return model

    def _combine(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        if self._trained_reference is not None:
            reference = self._trained_reference
            values = np.asarray(scores["cross-encoder"], dtype=np.float64)
            below = np.searchsorted(reference, values, "left") + np.searchsorted(reference, values, "right")
            others = [n for n in self.methods if n != "cross-encoder"]
            members = [np.nan_to_num(self._scales[n](scores[n])) for n in others]
            return 4.0 * below / (2 * len(reference)) - 2.0 + np.mean(members, axis=0)
        total = 0.0
        for name in self.methods:
            total = total + self.weights[name] * np.nan_to_num(self._scales[name](scores[name]))
        return np.asarray(total, dtype=np.float64)

    def score(
        self, texts: Sequence[str], cross_encoder_scores: np.ndarray, vectors: np.ndarray | None = None
    ) -> np.ndarray:
        """P(violation) of each comment under this rule, from the examples (and the cross-encoder)."""
        scores: dict[str, np.ndarray] = {"tfidf": self._tfidf(list(texts))}
        if self._embedding is not None:
            if vectors is None:
                raise ValueError("this rule's model was fitted with embeddings: pass the comments' vectors")
            scores["embedding"] = self._embedding(vectors)
        if "cross-encoder" in self.methods:
            scores["cross-encoder"] = logit(cross_encoder_scores, _EPS)
        slope, intercept = self._platt
        return shrink_to_evidence(
            1.0 / (1.0 + np.exp(-(slope * self._combine(scores) + intercept))), len(self.examples.texts)
        )

    def nearest(self, vectors: np.ndarray) -> list[dict[str, Any]]:
        """For each comment, the labelled example most similar to it (cosine of sentence embeddings): the
        evidence a moderator can read beside the score. Empty dicts without an embedder."""
        if self._example_vectors is None:
            return [{} for _ in range(len(vectors))]
        similarity = np.asarray(vectors) @ self._example_vectors.T
        best = similarity.argmax(axis=1)
        texts, labels = self.examples.texts, self.examples.labels
        return [
            {"text": texts[j], "label": int(labels[j]), "similarity": round(float(similarity[i, j]), 4)}
            for i, j in enumerate(best)
        ]


def shrink_to_evidence(probabilities: np.ndarray, examples: int) -> np.ndarray:
    """``(n * p + 1) / (n + 2)`` for ``n`` labelled examples (Laplace's rule of succession): a probability
    learnt from n examples claims no more certainty than (n + 1) / (n + 2). With 2 + 2 examples the answers
    stay within [1/6, 5/6] instead of 3e-9 .. 0.9999999989. Monotone, and 0.5 stays 0.5: every AUC and
    every ``flagged`` (at 0.5 in mode examples) is unchanged."""
    return (examples * np.asarray(probabilities, dtype=np.float64) + 1.0) / (examples + 2.0)


def _examples_platt(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) of Platt's fit (:func:`calibration.platt_fit`) of the labels on the examples'
    out-of-fold combined scores; (1, 0) where it cannot be fitted or would not be increasing."""
    finite = np.isfinite(scores)
    labels, scores = labels[finite], scores[finite]
    if len(np.unique(labels)) < 2:
        return 1.0, 0.0
    slope, intercept = platt_fit(labels, scores, C=EXAMPLES_PLATT_C)
    if not (slope > 0 and math.isfinite(intercept)):
        return 1.0, 0.0
    return slope, intercept


def blend_with_examples(
    examples: RuleExamples,
    texts: Sequence[str],
    scores: np.ndarray,
    *,
    score_examples: Callable[[list[str]], np.ndarray],
    embed: Callable[[list[str]], np.ndarray | None],
    trained: bool,
    fitted: ExampleModel | None = None,
    max_length: int = 512,
    weights: str = "fixed",
) -> tuple[np.ndarray, list[dict[str, Any]] | None, ExampleModel]:
    """The one examples blend (``Scorer`` and ``rulebert evaluate`` both score through it): P(violation) of
    each of ``texts`` from the rule's ``examples`` and the cross-encoder's ``scores`` of the texts.

    ``score_examples(texts)``: the cross-encoder's probabilities of (rule, text); ``embed(texts)``: their
    sentence vectors, or None without an embedder; ``trained``: the model was trained on the rule (see
    :meth:`ExampleModel.fit`; ``weights``: :func:`member_weights`); ``fitted``: a model fitted before on the
    same rule and examples (a cache hit);
    ``max_length``: the cross-encoder's (512, the most a BERT reads, for a caller without one). The texts and
    examples are cut here as the tokenizer's input is (``text.cut_for_tokenizer``), so the TF-IDF member and
    the embedder see what the cross-encoder sees: one 10 MB comment was tens of millions of character
    n-grams (3 GB of memory). Returns (probabilities, the nearest example of each text or None without an
    embedder, the model)."""
    from rulebert.domain.text import cut_for_tokenizer

    texts = cut_for_tokenizer(texts, max_length)
    cut = cut_for_tokenizer(examples.texts, max_length)
    if cut != examples.texts:  # as they are, not re-deduplicated: both labels stay (the mode counted them)
        examples = RuleExamples(tuple(cut[: len(examples.positive)]), tuple(cut[len(examples.positive) :]))
    model = fitted
    if model is None:
        on_examples = np.asarray(score_examples(examples.texts))
        model = ExampleModel.fit(
            examples, on_examples, embed(examples.texts), trained=trained, weights=weights
        )
    vectors = embed(list(texts))
    probabilities = model.score(texts, np.asarray(scores), vectors)
    return probabilities, None if vectors is None else model.nearest(vectors), model


class ExampleModelCache:
    """Fitted rules by (rule, examples), the most recently used first kept: a rule asked about again is not
    refitted. Bounded by memory (``budget`` bytes, an estimate per model: its TF-IDF vocabularies, its
    coefficient arrays and example vectors) as well as by count: one rule with 32 long examples fits a
    model of megabytes, and 256 of them, kept by count alone, held gigabytes (issue 34)."""

    def __init__(self, size: int = 256, budget: int = 256 * 2**20) -> None:
        self.size, self.budget = size, budget
        self.bytes = 0  # the estimated bytes of the models kept
        self._models: OrderedDict[str, tuple[ExampleModel, int]] = OrderedDict()

    def get(self, key: str) -> ExampleModel | None:
        entry = self._models.get(key)
        if entry is None:
            return None
        self._models.move_to_end(key)
        return entry[0]

    def put(self, key: str, model: ExampleModel) -> None:
        old = self._models.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        cost = old[1] if old is not None and old[0] is model else self.estimate(model)
        if cost > self.budget:  # larger than the whole cache: used once, never kept
            return
        self._models[key] = (model, cost)
        self.bytes += cost
        while len(self._models) > self.size or self.bytes > self.budget:
            self.bytes -= self._models.popitem(last=False)[1][1]

    @staticmethod
    def estimate(model: object) -> int:
        """Bytes an object holds, roughly: numpy arrays by ``nbytes``, containers, object attributes and
        closures (a fitted scorer is a closure over a scikit-learn pipeline) walked; classes, modules and
        functions' globals not (shared, not the model's)."""
        import sys
        import types

        seen: set[int] = set()
        stack, total = [model], 0
        while stack:
            item = stack.pop()
            if id(item) in seen or isinstance(item, type | types.ModuleType):
                continue
            seen.add(id(item))
            if isinstance(item, np.ndarray):
                total += item.nbytes + 112
                continue
            total += sys.getsizeof(item)
            if isinstance(item, dict):
                stack.extend(item.keys())
                stack.extend(item.values())
            elif isinstance(item, list | tuple | set | frozenset):
                stack.extend(item)
            elif isinstance(item, types.FunctionType):
                stack.extend(cell.cell_contents for cell in item.__closure__ or ())
            elif hasattr(item, "__dict__"):
                stack.extend(vars(item).values())
        return total
