"""The HTTP API's request and answer bodies (pydantic models) and their size limits.

Every field has a limit: an oversize field is a 422 naming the field, before any tokenising. A misspelt
field is an error, never silently ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from rulebert.domain.rules import RULE_ID
from rulebert.domain.text import is_blank
from rulebert.server.validation import MAX_ERRORS

# Limits. A comment's size is counted in UTF-8 bytes (10 kB, what a Reddit comment holds, 10,000 chars,
# is at most 40 kB of UTF-8; moderators paste real comments, not novels).
MAX_COMMENT_BYTES = 10_000
MAX_RULE_BYTES = 2_000
MAX_EXAMPLE_BYTES = 10_000
MAX_EXAMPLES = 16  # per rule, for each of positive / negative
MAX_RULES = 64  # rules per /v1/score request
MAX_BATCH = 256  # items per /v1/score/batch request
MAX_BODY_BYTES = 1_048_576  # whole request body
# Fitting a rule's examples model takes seconds (TF-IDF + logistic regression, out of fold) while the scorer
# is held: 64 rules of 32 examples each held it for 215 s. So the distinct labelled examples one request
# makes the server fit, all its rules together (stored ones included), are bounded: 413 beyond.
MAX_REQUEST_EXAMPLES = 512
MAX_REQUEST_EXAMPLE_BYTES = 524_288
MAX_ID_CHARS = 200
MAX_SUBREDDIT_CHARS = 100
LIMITS = {  # reported by /v1/model
    "comment_bytes": MAX_COMMENT_BYTES,
    "rule_bytes": MAX_RULE_BYTES,
    "example_bytes": MAX_EXAMPLE_BYTES,
    "examples_per_rule": MAX_EXAMPLES,
    "rules_per_request": MAX_RULES,
    "items_per_batch": MAX_BATCH,
    "body_bytes": MAX_BODY_BYTES,
    "examples_per_request": MAX_REQUEST_EXAMPLES,
    "example_bytes_per_request": MAX_REQUEST_EXAMPLE_BYTES,
}


def _utf8_at_most(limit: int) -> AfterValidator:
    def check(value: str) -> str:
        size = len(value.encode("utf-8"))
        if size > limit:
            raise ValueError(f"is {size} bytes of UTF-8; the limit is {limit}")
        if "\x00" in value:  # not text (JSON's \u0000); refused before the blank check, which skips it
            raise ValueError("holds a NUL character (not text)")
        if is_blank(value):  # "\u200b" or "\ufeff" alone shows nothing, as spaces do
            raise ValueError("is empty")
        return value

    return AfterValidator(check)


Comment = Annotated[str, _utf8_at_most(MAX_COMMENT_BYTES)]
RuleText = Annotated[str, _utf8_at_most(MAX_RULE_BYTES)]
ExampleText = Annotated[str, _utf8_at_most(MAX_EXAMPLE_BYTES)]
Subreddit = Annotated[str, Field(max_length=MAX_SUBREDDIT_CHARS)]


class Strict(BaseModel):
    # a misspelt field is an error, not silently ignored; and no coercion: "0.5" or true is not a threshold
    model_config = ConfigDict(extra="forbid", strict=True)


class Rule(Strict):
    id: str | None = Field(
        None,
        max_length=MAX_ID_CHARS,
        description="echoed back (defaults to the position); alone, without text: a stored rule's id "
        "(PUT /v1/rules/{id}), whose text and examples are used",
    )
    text: RuleText | None = Field(None, description="the rule; may be left out when id names a stored rule")
    positive_examples: list[ExampleText] = Field(
        default_factory=list, max_length=MAX_EXAMPLES, description="comments that break the rule"
    )
    negative_examples: list[ExampleText] = Field(
        default_factory=list, max_length=MAX_EXAMPLES, description="comments that keep the rule"
    )

    @model_validator(mode="after")
    def _text_or_id(self) -> Rule:
        if self.text is None and self.id is None:
            raise ValueError("a rule needs its text, or the id of a stored rule")
        return self


def too_many_examples(rules: Sequence[Rule]) -> str | None:
    """Why fitting ``rules``' examples is too much work for one request (a 413's one-line reason), or None.

    Counted before any fitting: each distinct (rule, examples) is one fit, and its distinct labelled
    examples are what it fits on (the same rule in 256 batch items is fitted, and counted, once)."""
    fits = {(r.text, frozenset(r.positive_examples), frozenset(r.negative_examples)) for r in rules}
    examples = [text for _, positive, negative in fits for text in (*positive, *negative)]
    if len(examples) > MAX_REQUEST_EXAMPLES:
        return (
            f"the request's rules have {len(examples)} distinct labelled examples to fit; the limit is "
            f"{MAX_REQUEST_EXAMPLES} per request (examples_per_request): send fewer rules or examples at once"
        )
    size = sum(len(text.encode("utf-8")) for text in examples)
    if size > MAX_REQUEST_EXAMPLE_BYTES:
        return (
            f"the request's rules have {size} bytes of labelled examples to fit; the limit is "
            f"{MAX_REQUEST_EXAMPLE_BYTES} per request (example_bytes_per_request): send fewer at once"
        )
    return None


class RuleBody(Strict):
    """A stored rule (PUT /v1/rules/{id}): a RULES.jsonl line without its id (the path has it). Its fields
    are ``domain.rules.RULE_FIELDS``; this adds the HTTP limits, then ``rule_from_json`` validates the rule
    as it validates RULES.jsonl."""

    text: RuleText
    positive_examples: list[ExampleText] = Field(
        default_factory=list, max_length=MAX_EXAMPLES, description="comments that break the rule"
    )
    negative_examples: list[ExampleText] = Field(
        default_factory=list, max_length=MAX_EXAMPLES, description="comments that keep the rule"
    )


class StoredRuleOut(BaseModel):
    id: str
    text: str
    positive_examples: list[str]
    negative_examples: list[str]
    updated: float = Field(description="seconds since the epoch of the last change")
    mode: str = Field(description="how the served model scores it: trained, examples or zero-shot")


class RuleList(BaseModel):
    rules: list[StoredRuleOut]


class AdaptRequest(Strict):
    rules: list[Annotated[str, Field(pattern=RULE_ID.pattern)]] | None = Field(
        None, max_length=MAX_RULES, description="ids of stored rules to adapt on (default: every stored rule)"
    )


class Job(BaseModel):
    job: str
    status: str = Field(description="queued, running, succeeded or failed")
    progress: float = Field(ge=0, le=1)
    message: str = Field(description="what the job is doing; on failure, the one-line reason")
    rules: list[str]
    model: str | None = Field(None, description="the adapted model's name, once it succeeded")
    created: float
    finished: float | None = None


Threshold = Annotated[
    float | None, Field(None, ge=0, le=1, description="flag at this probability (default: the model's)")
]


class ScoreRequest(Strict):
    comment: Comment
    subreddit: Subreddit | None = None
    rules: list[Rule] = Field(min_length=1, max_length=MAX_RULES)
    threshold: Threshold = None


class BatchItem(Strict):
    id: str | None = Field(None, max_length=MAX_ID_CHARS, description="echoed back as item_id")
    comment: Comment
    subreddit: Subreddit | None = None
    rule: Rule


class BatchRequest(Strict):
    items: list[BatchItem] = Field(min_length=1, max_length=MAX_BATCH)
    threshold: Threshold = None


class Evidence(BaseModel):
    text: str = Field(description="the labelled example most similar to the comment")
    label: int = Field(description="1: it breaks the rule, 0: it keeps it")
    similarity: float


class RuleScore(BaseModel):
    id: str
    rule: str
    probability: float = Field(ge=0, le=1, description="P(the comment breaks the rule)")
    flagged: bool = Field(
        description="probability >= the threshold: the request's, else 0.5 in mode examples (calibrated on "
        "the rule's own examples), else the model's",
    )
    threshold: float = Field(description="where flagged starts for this score")
    mode: str = Field(
        description="trained: the model was trained on this rule; examples: the rule's examples were used "
        "at scoring time; zero-shot: neither (a rule the model never saw: treat the score with caution)"
    )
    evidence: Evidence | None = Field(None, description="in mode examples: the nearest labelled example")
    item_id: str | None = Field(None, description="the batch item's id, when it had one")


class ScoreResponse(BaseModel):
    scores: list[RuleScore]
    model: str


class BatchResponse(BaseModel):
    scores: list[RuleScore] = Field(description="one per item, in the order of items")
    model: str


class InvalidRequestResponse(BaseModel):
    detail: list[dict[str, Any]] = Field(
        description=f"the first {MAX_ERRORS} errors: type, loc (starting with 'body'), msg, input (cut short)"
    )
    errors_not_shown: int | None = Field(None, description="how many more errors there were")
