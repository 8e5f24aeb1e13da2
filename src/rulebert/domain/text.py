"""How a (rule, subreddit, comment) row becomes model input.

Two forms, chosen by ``TrainConfig.input_format``:

- ``pair`` (default): the rule (optionally followed by ``r/subreddit``) is the first segment and the
  comment the second, the way a cross-encoder reads (query, document). Truncation cuts only the comment.
- ``template``: the competition notebook's single string ``r/{subreddit}\\nRule: {rule}\\n{comment}``;
  here too the comment is shortened first, so the rule is never cut away.

Rows are tokenised once, without padding: the collator pads each batch to its own longest row.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from rulebert.core.config import TrainConfig

TEMPLATE = "r/{subreddit}\nRule: {rule}\n"

# A rule longer than this share of max_length is itself shortened: a comment must keep some room.
_MAX_FIRST_SEGMENT_SHARE = 0.75
# Texts are cut to max_length x this many characters *before* tokenising: a WordPiece token covers at most
# 100 characters of a word (a longer word is one [UNK]), so the cut never changes the tokens that truncation
# keeps for real text, while a 20 MB JSONL line no longer becomes millions of tokens (3.4 GB of memory).
_MAX_CHARS_PER_TOKEN = 100


def surrogate_problem(text: str) -> str | None:
    """Why ``text`` cannot be tokenised or written as UTF-8, if it holds a lone surrogate: a JSON escape
    such as ``\\ud800``, or a command-line byte that is not UTF-8 (Python keeps it as ``\\udcXX``)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        code = ord(text[err.start])
        if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's stand-in for the byte code - 0xDC00
            return f"not valid UTF-8 (byte 0x{code - 0xDC00:02x} at character {err.start + 1})"
        return f"a lone surrogate \\u{code:04x} at character {err.start + 1} (not valid Unicode)"
    return None


_INVISIBLE = frozenset(("Cc", "Cf"))  # control characters; format ones (zero-width space, BOM, bidi marks)


def is_blank(text: str) -> bool:
    """Whether ``text`` shows nothing: no character is left once whitespace, control (Unicode category Cc)
    and format characters (Cf: ``\\u200b``, ``\\ufeff``, joiners) are removed. The one blank check of a
    comment, rule or example: ``"\\u200b"`` is as empty as ``"\\u00a0"`` or ``" "``. Stops at the first
    visible character, so a real text costs one look."""
    return all(c.isspace() or unicodedata.category(c) in _INVISIBLE for c in text)


def text_problem(text: str) -> str | None:
    """Why ``text`` is not text, if it is not: a NUL character (``\\u0000`` in JSON; no comment holds one,
    and C code reading the text stops at it) or a lone surrogate (:func:`surrogate_problem`)."""
    if "\x00" in text:
        return f"a NUL character at character {text.index(chr(0)) + 1} (not text)"
    return surrogate_problem(text)


def cut_for_tokenizer(texts: Sequence[str], max_length: int) -> list[str]:
    """Each text cut to the characters that ``max_length`` tokens can use (see ``_MAX_CHARS_PER_TOKEN``)."""
    limit = max_length * _MAX_CHARS_PER_TOKEN
    return [text if len(text) <= limit else text[:limit] for text in texts]


def first_segment(rule: str, subreddit: str, include_subreddit: bool) -> str:
    """The text that describes the rule in the pair form."""
    if include_subreddit and subreddit:
        return f"{rule} r/{subreddit}"
    return rule


def _shorten_to_tokens(tokenizer: Any, texts: Sequence[str], budgets: Sequence[int]) -> list[str]:
    """Cut each text to at most ``budget`` tokens, at a token boundary (needs a fast tokenizer)."""
    encoded = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for text, offsets, budget in zip(texts, encoded["offset_mapping"], budgets, strict=True):
        if len(offsets) <= budget:
            out.append(text)
        else:
            out.append(text[: offsets[max(budget, 0) - 1][1]] if budget > 0 else "")
    return out


def encode_rows(
    tokenizer: Any,
    rules: Sequence[str],
    bodies: Sequence[str],
    subreddits: Sequence[str] | None = None,
    *,
    input_format: str = "pair",
    include_subreddit: bool = False,
    max_length: int = 256,
) -> list[dict[str, list[int]]]:
    """Tokenise rows into unpadded features (``input_ids``, ``attention_mask``, maybe ``token_type_ids``)."""
    if subreddits is None:
        subreddits = [""] * len(bodies)
    if not len(rules) == len(bodies) == len(subreddits):
        raise ValueError("rules, bodies and subreddits must have the same length")
    if not bodies:
        return []
    rules, bodies = cut_for_tokenizer(rules, max_length), cut_for_tokenizer(bodies, max_length)
    subreddits = cut_for_tokenizer(subreddits, max_length)
    rule_budget = int(max_length * _MAX_FIRST_SEGMENT_SHARE)
    if input_format == "pair":
        firsts = [first_segment(r, s, include_subreddit) for r, s in zip(rules, subreddits, strict=True)]
        firsts = _shorten_to_tokens(tokenizer, firsts, [rule_budget] * len(firsts))
        encoded = tokenizer(firsts, list(bodies), truncation="only_second", max_length=max_length)
    elif input_format == "template":
        headers = [TEMPLATE.format(subreddit=s, rule=r) for r, s in zip(rules, subreddits, strict=True)]
        headers = _shorten_to_tokens(tokenizer, headers, [rule_budget] * len(headers))
        header_lengths = [len(ids) for ids in tokenizer(headers, add_special_tokens=False)["input_ids"]]
        special = tokenizer.num_special_tokens_to_add(pair=False)
        budgets = [max_length - special - n for n in header_lengths]
        bodies = _shorten_to_tokens(tokenizer, bodies, budgets)
        # Joining can merge tokens at the seam; truncation=True is only a guard and cuts the comment's end.
        joined = [h + b for h, b in zip(headers, bodies, strict=True)]
        encoded = tokenizer(joined, truncation=True, max_length=max_length)
    else:
        raise ValueError(f"unknown input_format {input_format!r} (use 'pair' or 'template')")
    keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in encoded]
    return [{k: encoded[k][i] for k in keys} for i in range(len(bodies))]


def encode_frame(tokenizer: Any, rows: pd.DataFrame, config: TrainConfig) -> list[dict[str, list[int]]]:
    """:func:`encode_rows` for a frame of labelled rows (``text``, ``rule``, ``subreddit`` columns, as
    ``rulebert.domain.data`` makes them), with the input settings a model was trained with."""
    return encode_rows(
        tokenizer,
        rows["rule"].tolist(),
        rows["text"].tolist(),
        rows["subreddit"].tolist(),
        input_format=config.input_format,
        include_subreddit=config.include_subreddit,
        max_length=config.max_length,
    )


def encode_texts(tokenizer: Any, texts: Sequence[str], max_length: int = 256) -> list[dict[str, list[int]]]:
    """Tokenise single texts (no rule segment) into unpadded features: what a sentence embedder reads."""
    if not texts:
        return []
    encoded = tokenizer(cut_for_tokenizer(texts, max_length), truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in encoded]
    return [{k: encoded[k][i] for k in keys} for i in range(len(texts))]
