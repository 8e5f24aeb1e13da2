"""Request-time leave-one-rule-out: how much a rule's examples, given at scoring time, help a model that was
never trained on that rule (issue: "A new rule learns from its examples everywhere").

For each rule R of train.csv: a model trained on the *other* rule's rows only (``rulebert train --train
other.csv``, or ``--model-dir R_SHORT=DIR`` to reuse one); R's distinct example cells (majority vote per
stripped text, ties dropped) are the examples; R's comments whose text is never one of R's examples are
scored (879 in all: 232 advertising, 647 legal), with and without the examples, and with only each row's own
four examples. Prints a Markdown table of per-rule and column-averaged AUC.

    python -m benchmarks.experiments.examples_loro [--data DIR] [--work runs/examples-loro]
        [--model-dir legal=DIR ...] [-- extra rulebert train flags, e.g. --model mpnet]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from rulebert.domain.data import NEGATIVE_COLUMNS, POSITIVE_COLUMNS, default_data_dir
from rulebert.inference.predict import Scorer
from rulebert.model.backbones import resolve_checkpoint
from rulebert.model.model_dir import find_embedder


def short(rule: str) -> str:
    return rule.split()[1].lower().strip(":,.") if len(rule.split()) > 1 else rule[:12]


def distinct_examples(rows: pd.DataFrame) -> tuple[list[str], list[str]]:
    votes: dict[str, list[int]] = {}
    for columns, label in ((POSITIVE_COLUMNS, 1), (NEGATIVE_COLUMNS, 0)):
        for column in columns:
            for text in rows[column]:
                if text.strip():
                    votes.setdefault(text.strip(), []).append(label)
    decided = {t: np.mean(v) for t, v in votes.items() if np.mean(v) != 0.5}
    return [t for t, m in decided.items() if m > 0.5], [t for t, m in decided.items() if m < 0.5]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data_dir())
    parser.add_argument("--work", type=Path, default=Path("runs/examples-loro"))
    parser.add_argument(
        "--model-dir", action="append", default=[], help="SHORT=DIR: a model without rule SHORT"
    )
    parser.add_argument("extra", nargs="*", help="flags passed to rulebert train (after --)")
    args = parser.parse_args()
    given = dict(item.split("=", 1) for item in args.model_dir)
    frame = pd.read_csv(args.data / "train.csv", dtype=str, keep_default_na=False)
    frame["rule_violation"] = frame["rule_violation"].astype(int)
    table = []
    for rule in dict.fromkeys(frame["rule"]):
        name = short(rule)
        model_dir = Path(given.get(name, args.work / f"without-{name}"))
        if not (model_dir / "rulebert.json").is_file():
            other = args.work / f"other-{name}.csv"
            other.parent.mkdir(parents=True, exist_ok=True)
            frame[frame["rule"] != rule].to_csv(other, index=False)
            cmd = [
                "rulebert",
                "train",
                "--train",
                str(other),
                "--output-dir",
                str(model_dir),
                "--no-progress",
                *args.extra,
            ]
            if (model_dir / "checkpoints").is_dir():  # an interrupted run of this script: go on with it
                cmd.append("--resume")
            subprocess.run(cmd, check=True, stdout=sys.stderr)  # stdout is the table
        if find_embedder(model_dir) is None:  # a model dir from before embedders were exported
            from rulebert.backend.export import export_embedder

            export_embedder(model_dir, resolve_checkpoint("default"))
        own = frame[frame["rule"] == rule]
        positive, negative = distinct_examples(own)
        known = set(positive) | set(negative)
        scored = own[~own["body"].str.strip().isin(known)].drop_duplicates(["body", "rule_violation"])
        scorer = Scorer(model_dir)
        bodies, labels, n = scored["body"].tolist(), scored["rule_violation"].to_numpy(), len(scored)
        started = time.perf_counter()
        without = scorer.score(bodies, [rule] * n)
        with_all = scorer.score(
            bodies, [rule] * n, positive_examples=[positive] * n, negative_examples=[negative] * n
        )
        seconds = time.perf_counter() - started
        with_own = scorer.score(
            bodies,
            [rule] * n,
            positive_examples=scored[list(POSITIVE_COLUMNS)].to_numpy().tolist(),
            negative_examples=scored[list(NEGATIVE_COLUMNS)].to_numpy().tolist(),
        )
        row = {
            "rule": name,
            "n": n,
            "examples": f"{len(positive)}+/{len(negative)}-",
            "without": roc_auc_score(labels, without),
            "with all examples": roc_auc_score(labels, with_all),
            "with own four": roc_auc_score(labels, with_own),
            "seconds (both passes, all examples)": round(seconds, 1),
        }
        table.append(row)
        print(row, file=sys.stderr)
    result = pd.DataFrame(table)
    mean = {c: result[c].mean() for c in ("without", "with all examples", "with own four")}
    result = pd.concat([result, pd.DataFrame([{"rule": "column-averaged", "n": result["n"].sum(), **mean}])])
    cells = [[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row] for row in result.to_numpy()]
    print("| " + " | ".join(result.columns) + " |\n|" + "---|" * len(result.columns))
    print("\n".join("| " + " | ".join(c if c != "nan" else "" for c in row) + " |" for row in cells))


if __name__ == "__main__":
    main()
