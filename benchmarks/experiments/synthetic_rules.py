"""Synthetic rules from the competition's own comments: does reading many rules teach the model to read a
rulebook (issue 25's last lever)?

train.csv shows the model two rules. Here each of train.csv's comments (body and example cells: 1,867
distinct texts) is labelled by simple labelling functions (a link, a question, profanity, an insult, money
talk, a topic's words, length, ...), each with a rule text that says what it checks in a moderator's words,
some of them inverted ("Every comment must include a source", where the violation is the comment *without*
one, so the same comments flip label with the rule text: the model must read it). Rulebooks are numbered
``short name: description`` lines of 3-6 such rules, as the communities benchmark pastes them, and a comment
breaks a rulebook when it breaks any of its rules. The rows are written in the competition's layout (each
row's example cells drawn from the same rule's other rows), together with train.csv itself, so that
``rulebert train`` reads them unchanged:

    python -m benchmarks.experiments.synthetic_rules --out runs/synthetic/train.csv [--per-label 32] \\
        [--rulebooks 16]
    rulebert train --train runs/synthetic/train.csv --output-dir runs/synthetic/model --epochs 2
    python benchmarks/communities.py --model-dir runs/synthetic/model --systems zero-shot,examples ...

No community's comment or label is read: only the competition files.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

DATA = Path(
    os.environ.get(
        "RULEBERT_DATA", Path(__file__).resolve().parents[2] / "../shared/data/jigsaw-agile-community-rules"
    )
)
EXAMPLE_COLUMNS = ("positive_example_1", "positive_example_2", "negative_example_1", "negative_example_2")


def words(*names: str) -> Callable[[str], bool]:
    pattern = re.compile(r"\b(" + "|".join(names) + r")\b", re.IGNORECASE)
    return lambda text: bool(pattern.search(text))


def regex(expression: str) -> Callable[[str], bool]:
    pattern = re.compile(expression, re.IGNORECASE)
    return lambda text: bool(pattern.search(text))


def n_words(text: str) -> int:
    return len(text.split())


@dataclass(frozen=True)
class Check:
    """A labelling function and the rules that state it: (short name, description) as a rulebook lists it."""

    name: str
    breaks: Callable[[str], bool]
    rules: tuple[tuple[str, str], ...]
    inverted: tuple[tuple[str, str], ...] = ()  # rules broken when ``breaks`` is False


CHECKS = (
    Check(
        "link",
        regex(r"https?://|www\.|\.com\b|\]\("),
        (
            ("No links", "Do not post links to other websites."),
            ("No external links", "Comments containing URLs will be removed."),
        ),
        (("Cite your sources", "Every comment must include a link to a source."),),
    ),
    Check(
        "question",
        regex(r"\?"),
        (
            ("No questions", "Questions belong in the weekly Q&A thread, not in the comments."),
            ("Statements only", "Do not ask questions here."),
        ),
        (("Questions only", "This thread is for questions: every comment must ask one."),),
    ),
    Check(
        "profanity",
        words(r"fuck\w*", r"shit\w*", "damn", r"bitch\w*", "ass", "asshole", "crap", "bastard", r"piss\w*"),
        (
            ("No profanity", "Keep it clean: no swearing or curse words."),
            ("Family friendly", "This is a family-friendly community; do not use vulgar language."),
        ),
    ),
    Check(
        "insult",
        words(
            r"idiot\w*",
            "stupid",
            r"moron\w*",
            r"dumb\w*",
            r"loser\w*",
            "pathetic",
            "shut up",
            "stfu",
            "clown",
            "troll",
            "fuck you",
            "screw you",
        ),
        (
            ("Be civil", "No insults, name-calling or personal attacks."),
            ("Respect others", "Attack ideas, not people: insulting other users gets your comment removed."),
        ),
    ),
    Check(
        "money",
        regex(r"\$\s?\d|\bdollars?\b|\bprices?\b|\bcash\b|\bpaid\b|\bpay\b|\bbuy\w*\b|\bsell\w*\b"),
        (
            ("No buying or selling", "This is not a marketplace: no buying, selling or talk of prices."),
            ("No money talk", "Do not discuss payments, prices or money."),
        ),
    ),
    Check(
        "exclamation",
        regex(r"!.*!"),
        (("No shouting", "Do not use excessive exclamation marks."),),
    ),
    Check(
        "personal",
        words("i", "my", "me", "i'm", "i've", "mine", "myself"),
        (("No personal stories", "Do not talk about yourself or share personal anecdotes."),),
        (("Share your experience", "Comments must describe your own personal experience."),),
    ),
    Check(
        "politics",
        words(
            "trump",
            "biden",
            "obama",
            "election",
            r"democrat\w*",
            r"republican\w*",
            r"vote\w*",
            "government",
            "president",
            "congress",
            r"liberal\w*",
            r"conservative\w*",
            r"politic\w*",
        ),
        (
            ("No politics", "Political discussion is not allowed."),
            ("Leave politics at the door", "Comments about politicians, parties or elections are removed."),
        ),
    ),
    Check(
        "drugs",
        words(
            r"weed",
            r"drug\w*",
            "drunk",
            "beer",
            "alcohol",
            "cocaine",
            "marijuana",
            r"smok\w*",
            "high",
            "vodka",
            r"pills?",
        ),
        (("No drugs or alcohol", "Do not discuss or promote drugs, alcohol or smoking."),),
    ),
    Check(
        "sexual",
        words(r"sex\w*", r"porn\w*", r"nude\w*", "naked", r"boobs?", "tits", "horny", "onlyfans"),
        (
            ("No NSFW content", "Sexual content and nudity are not allowed."),
            ("Keep it SFW", "No sexual or adult content."),
        ),
    ),
    Check(
        "violence",
        words(r"kill\w*", r"shoot\w*", r"guns?", r"murder\w*", r"punch\w*", r"stab\w*", "beat up", "die"),
        (("No violence", "No violent language, threats or glorification of violence."),),
    ),
    Check(
        "legal",
        words(
            r"lawyer\w*", "sue", r"court\w*", r"legal\w*", r"attorney\w*", "law", "laws", "police", r"cops?"
        ),
        (("No legal topics", "Do not discuss laws, lawsuits, courts or the police."),),
    ),
    Check(
        "promotion",
        words(
            "subscribe",
            "my channel",
            "my youtube",
            "check out my",
            "follow me",
            "my stream",
            "discount",
            "promo code",
            "free",
        ),
        (
            ("No self-promotion", "Do not promote your own channel, stream, products or offers."),
            ("No advertising", "Ads, discounts, giveaways and promotions are not allowed."),
        ),
    ),
    Check(
        "short",
        lambda text: n_words(text) < 8,
        (
            ("No low-effort comments", "One-liners and comments under eight words are removed."),
            ("Be substantive", "Comments must be at least a couple of full sentences."),
        ),
        (("Keep it short", "Comments must be under eight words."),),
    ),
    Check(
        "long",
        lambda text: n_words(text) > 60,
        (("No walls of text", "Keep comments under 60 words."),),
    ),
    Check(
        "second-person",
        words("you", "your", "you're", "yours", "u"),
        (("Do not address other users", "Speak about the topic; do not address other users directly."),),
    ),
)
BOOK_CHECKS = tuple(c for c in CHECKS if c.name not in ("personal", "second-person"))
"""Checks that a rulebook may hold (those that fire on half the comments would leave no comment unbroken)."""


def competition_texts(data: Path) -> tuple[pd.DataFrame, list[str], list[str]]:
    """(train.csv, every distinct comment of the competition files, and a subreddit for each)."""
    train = pd.read_csv(data / "train.csv")
    test = pd.read_csv(data / "test.csv")
    frames = [train[["body", "subreddit"]]]
    for frame in (train, test):
        for column in EXAMPLE_COLUMNS:
            frames.append(frame[[column, "subreddit"]].rename(columns={column: "body"}))
    pool = pd.concat(frames).dropna()
    pool["body"] = pool["body"].astype(str).str.strip()
    pool = pool[pool["body"] != ""].drop_duplicates("body")
    return train, pool["body"].tolist(), pool["subreddit"].tolist()


def rule_rows(
    rule: str,
    labels: np.ndarray,
    texts: list[str],
    subreddits: list[str],
    per_label: int,
    rng: np.random.Generator,
) -> list[dict[str, object]]:
    """Up to ``per_label`` broken and as many unbroken comments of one rule, each with two other broken and
    two other unbroken ones of the same rule as its example cells (the competition's layout)."""
    positives, negatives = np.flatnonzero(labels), np.flatnonzero(~labels)
    n = min(per_label, len(positives), len(negatives))
    if n < 4:  # too few to make example cells of others
        return []
    chosen = {1: rng.choice(positives, n, replace=False), 0: rng.choice(negatives, n, replace=False)}
    rows = []
    for label, indices in chosen.items():
        for i in indices:
            others = {k: [j for j in v if j != i] for k, v in chosen.items()}
            pos, neg = rng.choice(others[1], 2, replace=False), rng.choice(others[0], 2, replace=False)
            rows.append(
                {
                    "body": texts[i],
                    "rule": rule,
                    "subreddit": subreddits[i],
                    "positive_example_1": texts[pos[0]],
                    "positive_example_2": texts[pos[1]],
                    "negative_example_1": texts[neg[0]],
                    "negative_example_2": texts[neg[1]],
                    "rule_violation": label,
                }
            )
    return rows


def synthetic_frame(data: Path, per_label: int, rulebooks: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    train, texts, subreddits = competition_texts(data)
    fired = {c.name: np.array([c.breaks(t) for t in texts]) for c in CHECKS}
    rows: list[dict[str, object]] = []
    for check in CHECKS:
        for name, description in check.rules:
            rows += rule_rows(f"{name}: {description}", fired[check.name], texts, subreddits, per_label, rng)
        for name, description in check.inverted:
            rows += rule_rows(f"{name}: {description}", ~fired[check.name], texts, subreddits, per_label, rng)
    for _ in range(rulebooks):
        size = int(rng.integers(3, 7))
        picked = [BOOK_CHECKS[i] for i in rng.choice(len(BOOK_CHECKS), size, replace=False)]
        lines = []
        for number, check in enumerate(picked, 1):
            name, description = check.rules[int(rng.integers(len(check.rules)))]
            lines.append(f"{number}. {name}: {description}")
        broken = np.logical_or.reduce([fired[c.name] for c in picked])
        rows += rule_rows("\n".join(lines), broken, texts, subreddits, per_label * 2, rng)
    synthetic = pd.DataFrame(rows)
    synthetic.insert(0, "row_id", np.arange(len(synthetic)) + 10_000_000)
    return pd.concat([train, synthetic], ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--per-label", type=int, default=32, help="broken (and unbroken) comments per rule")
    parser.add_argument("--rulebooks", type=int, default=16, help="rulebooks of 3-6 rules")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    frame = synthetic_frame(args.data, args.per_label, args.rulebooks, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out, index=False)
    synthetic = frame[frame["row_id"] >= 10_000_000]
    print(
        f"wrote {args.out}: {len(frame) - len(synthetic)} competition rows + {len(synthetic)} synthetic rows "
        f"of "
        f"{synthetic['rule'].nunique()} rules ({synthetic['rule_violation'].mean():.2f} broken)"
    )


if __name__ == "__main__":
    main()
