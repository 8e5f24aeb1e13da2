"""The examples member alone, by sentence embedder: how well a rule's pooled example cells rank its comments
with no cross-encoder at all (the cheap member: no fine-tuning), for MiniLM's and mpnet's embeddings.

For each rule R of train.csv: R's example cells pooled over its rows (as ``rulebert predict`` pools a test
file's) are the examples; R's comments whose text is not one of them are scored (the 879-comment loro
cohort, :func:`rulebert.evaluation.evaluate.loro_cohort`). Members: TF-IDF LR, embedding LR, and both
(``ExampleModel`` with the cross-encoder given no weight). Prints per-rule and column-averaged AUC and the
seconds each embedder took.

    python -m benchmarks.experiments.example_members [--data DIR] [--backbones default,mpnet]
        [--work runs/members]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from rulebert.backend.export import export_embedder
from rulebert.backend.onnx_backend import OnnxEmbedder
from rulebert.domain import data as D
from rulebert.domain.examples import ExampleModel
from rulebert.evaluation.evaluate import loro_cohort
from rulebert.model.backbones import resolve_checkpoint
from rulebert.model.model_dir import find_embedder
from rulebert.pipeline import pooled_examples


def embedder_for(backbone: str, work: Path) -> OnnxEmbedder:
    """The int8 sentence embedder a model dir trained from ``backbone`` carries, exported into ``work``."""
    folder = work / f"embedder-{backbone}"
    folder.mkdir(parents=True, exist_ok=True)
    path = find_embedder(folder)
    if path is None:
        path = export_embedder(folder, resolve_checkpoint(backbone))
    return OnnxEmbedder(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=D.default_data_dir())
    parser.add_argument("--backbones", default="default,mpnet")
    parser.add_argument("--work", type=Path, default=Path("runs/members"))
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()
    frame = pd.read_csv(args.data / "train.csv", dtype=str, keep_default_na=False)
    results = {}
    for backbone in args.backbones.split(","):
        started = time.perf_counter()
        embedder = embedder_for(backbone, args.work)
        per_member: dict[str, dict[str, float]] = {"tfidf": {}, "embedding": {}, "both": {}}
        for rule in dict.fromkeys(frame[D.RULE]):
            own = frame[frame[D.RULE] == rule]
            examples = next(iter(pooled_examples(own).values()))
            scored = loro_cohort(own)
            labels = scored[D.LABEL].astype(int).to_numpy()
            texts = scored[D.BODY].tolist()
            example_vectors = embedder.embed_texts(examples.texts, args.max_length)
            vectors = embedder.embed_texts(texts, args.max_length)
            flat = np.full(len(examples.texts), 0.5)
            both = ExampleModel.fit(examples, flat, example_vectors)
            scores = {
                "tfidf": both._tfidf(texts),
                "embedding": both._embedding(vectors),
                "both": both.score(texts, np.full(len(texts), 0.5), vectors),
            }
            for member, values in scores.items():
                per_member[member][rule[:24]] = roc_auc_score(labels, values)
        seconds = round(time.perf_counter() - started)
        results[backbone] = {
            m: {**v, "col_auc": float(np.mean(list(v.values())))} for m, v in per_member.items()
        }
        results[backbone]["seconds"] = seconds
        for member, values in results[backbone].items():
            if member != "seconds":
                cells = "  ".join(f"{k}: {v:.4f}" for k, v in values.items())
                print(f"{backbone:8s} {member:10s} {cells}", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
