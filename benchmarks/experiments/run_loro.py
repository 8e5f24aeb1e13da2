"""Leave-one-rule-out through ``rulebert run`` itself, as a competitor would meet an unseen rule.

For each rule R of train.csv a competition folder is written: ``train.csv`` = the other rules' rows,
``test.csv`` = R's rows without labels (their example cells are R's only labelled text), and
``sample_submission.csv``. ``rulebert run`` (defaults, plus any extra flags) trains and writes
``submission.csv``; R's comments are then scored against their labels, on the same 879-comment cohort as
``rulebert evaluate --protocol loro`` (:func:`rulebert.evaluation.evaluate.loro_cohort`: a comment whose
text is one of R's example texts is left out; a repeated (comment, label) counts once). Prints per-rule and
column-averaged AUC.

    python -m benchmarks.experiments.run_loro [--data DIR] [--work runs/run-loro]
        [-- extra rulebert run flags]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from sklearn.metrics import roc_auc_score

from rulebert.domain import data as D
from rulebert.evaluation.evaluate import loro_cohort


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=D.default_data_dir())
    parser.add_argument("--work", type=Path, default=Path("runs/run-loro"))
    parser.add_argument("extra", nargs="*", help="flags passed to rulebert run (after --)")
    args = parser.parse_args()
    frame = pd.read_csv(args.data / "train.csv", dtype=str, keep_default_na=False)
    aucs, started = {}, time.perf_counter()
    for number, rule in enumerate(dict.fromkeys(frame[D.RULE])):
        folder = args.work / f"rule{number}"
        data, out = folder / "data", folder / "out"
        data.mkdir(parents=True, exist_ok=True)
        own = frame[frame[D.RULE] == rule]
        frame[frame[D.RULE] != rule].to_csv(data / "train.csv", index=False)
        own.drop(columns=[D.LABEL]).to_csv(data / "test.csv", index=False)
        own[[D.ROW_ID]].assign(rule_violation=0.5).to_csv(data / "sample_submission.csv", index=False)
        command = ["rulebert", "run", "--data-dir", str(data), "--output-dir", str(out), "--overwrite"]
        subprocess.run([*command, "--no-progress", *args.extra], check=True)
        submission = pd.read_csv(out / "submission.csv", dtype={D.ROW_ID: str})
        scored = loro_cohort(own).merge(submission, on=D.ROW_ID, suffixes=("", "_score"))
        aucs[rule] = roc_auc_score(scored[D.LABEL].astype(int), scored["rule_violation_score"])
        print(f"{rule[:40]}: {len(scored)} comments, AUC {aucs[rule]:.4f}", flush=True)
    mean = sum(aucs.values()) / len(aucs)
    print(json.dumps({"per_rule": aucs, "col_auc": mean, "seconds": round(time.perf_counter() - started)}))


if __name__ == "__main__":
    sys.exit(main())
