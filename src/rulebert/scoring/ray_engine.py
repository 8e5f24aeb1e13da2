"""``rulebert score --engine ray``: a folder (or glob) of CSV/JSONL/Parquet shards scored by a pool of Ray
actors, on this machine or a cluster; one output shard per input shard (same name, same format).

Why: one process scores a few hundred comments a second on a CPU and a moderation backlog is many files.
The model is the cost, so more processes (cores, machines) is what makes it faster: Ray Data's
``map_batches`` over a pool of actors, each of which loads the model dir once, wherever it runs.

How: the driver reads each shard with the local engine's readers (:mod:`rulebert.scoring.local`): the same
cells,
checks and one-line errors as ``--engine local``. Only (shard, row, body, subreddit) go to the actors and
(shard, row, probabilities) come back; the row index puts each probability back in its place whatever
order batches finish in. The driver writes each output shard atomically with the local engine's writer
(CSV formulas neutralised unless ``raw_csv``); Parquet stays Parquet, its column types kept. So the data
stays with the driver, which holds it while it is scored (split a bigger backlog into several runs); each
node needs rulebert and the model dir at the same path.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import socket
import sys
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rulebert.core.errors import RulebertError
from rulebert.core.files import atomic_write
from rulebert.domain.text import is_blank, text_problem
from rulebert.model.model_dir import verify_model_dir
from rulebert.scoring import local as local  # its writer: the same cells and errors
from rulebert.scoring.local import PROBABILITY, ScoredRule, check_rule_text, rules_to_score
from rulebert.scoring.readers import (  # the same readers as `rulebert score`: the same rows and errors
    TEXT_COLUMNS,
    Examples,
    comment_rows,
    open_input,
    pick_column,
    read_examples,
)

SHARD_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
BATCH_ROWS = 256  # rows per actor call: small enough that a few thousand rows still reach every actor
RAY_MISSING = "--engine ray needs `pip install rulebert[ray]`"
QUIET = dict(TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error", HF_HUB_DISABLE_PROGRESS_BARS="1")


@dataclass
class Shard:
    """One input file, read: its rows (``Row``\\ s, or a ``pyarrow.Table`` for Parquet) and their texts."""

    path: Path
    fmt: str  # csv, jsonl or parquet
    header: list[str] | None  # a CSV's header
    records: Any
    bodies: list[str]
    subreddits: list[str]


def find_shards(spec: str | os.PathLike) -> list[Path]:
    """A folder's files (hidden ones aside) or a glob's, sorted; each must be .csv/.jsonl/.parquet."""
    folder = Path(spec)
    if folder.is_dir():
        found = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    else:
        found = [Path(p) for p in glob.glob(str(spec), recursive=True) if Path(p).is_file()]
    if not found:
        raise RulebertError(f"{spec}: no shards matched (a folder, or a glob of .csv/.jsonl/.parquet files)")
    for path in sorted(found):
        if path.suffix.lower() not in SHARD_FORMATS:
            shown = repr(path.suffix) if path.suffix else "no extension"
            raise RulebertError(f"{path}: unknown shard extension ({shown}); use .csv, .jsonl or .parquet")
    twice = [name for name, n in Counter(p.name for p in found).items() if n > 1]
    if twice:
        raise RulebertError(f"{twice[0]}: two shards with this name would write the same output file")
    return sorted(found)


def read_shard(path: Path) -> Shard:
    """Read one shard; a bad row or a missing text column is a one-line error naming the file."""
    fmt = SHARD_FORMATS[path.suffix.lower()]
    if fmt == "parquet":
        return _read_parquet(path)
    with open_input(str(path)) as (handle, _, name):
        header, rows = comment_rows(handle, fmt, name)
        records = list(rows)
    return Shard(path, fmt, header, records, [r.body for r in records], [r.subreddit or "" for r in records])


def _read_parquet(path: Path) -> Shard:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as err:
        raise RulebertError(f"{path}: not a readable Parquet file ({str(err).splitlines()[0]})") from None
    column = pick_column(table.column_names, TEXT_COLUMNS, str(path), "text")
    bodies = table.column(column).to_pylist()
    for number, body in enumerate(bodies, start=1):
        if not isinstance(body, str):
            why: str | None = f"expected a string, not {type(body).__name__}"
        else:
            why = "empty comment" if is_blank(body) else text_problem(body)
        if why is not None:
            raise RulebertError(f"{path}: row {number}, column '{column}': {why}")
    subs = table.column("subreddit").to_pylist() if "subreddit" in table.column_names else []
    subreddits = [s if isinstance(s, str) else "" for s in subs] or [""] * len(bodies)
    return Shard(path, "parquet", None, table, bodies, subreddits)


def write_shard(
    shard: Shard,
    path: Path,
    probabilities: dict[str, np.ndarray],
    raw_csv: bool,
    modes: dict[str, tuple[str, str]] | None = None,
) -> None:
    """The shard with its probability columns added (replaced when already there), atomically; ``modes``:
    for a probability column, its mode column and the mode, written beside it."""
    modes = modes or {}
    if shard.fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = shard.records
        arrays = []
        for column, values in probabilities.items():
            arrays.append((column, pa.array(np.round(values, 6), pa.float64())))
            if column in modes:
                mode_column, mode = modes[column]
                arrays.append((mode_column, pa.array([mode] * len(values), pa.string())))
        for column, array in arrays:
            if column in table.column_names:
                table = table.set_column(table.column_names.index(column), column, array)
            else:
                table = table.append_column(column, array)
        with atomic_write(path, "wb") as handle:
            pq.write_table(table, handle)
        return
    columns = [c for p in probabilities for c in (p, *modes.get(p, ())[:1])]
    with atomic_write(path, "w", encoding="utf-8", newline="") as handle:
        writer = local.RowWriter(handle, shard.fmt, shard.header, columns, raw_csv)
        for i, row in enumerate(shard.records):
            values: dict[str, float | str] = {}
            for column, p in probabilities.items():
                values[column] = round(float(p[i]), 6)
                if column in modes:
                    values[modes[column][0]] = modes[column][1]
            writer.write(row, shard.header, values)


class ScorerActor:
    """A Ray actor's state: the model dir, loaded once; then called on each batch Ray Data hands it."""

    def __init__(self, model_dir: str, targets: list[ScoredRule], threads: int) -> None:
        os.environ.update({k: v for k, v in QUIET.items() if k not in os.environ})
        from rulebert.inference.predict import Scorer

        self.scorer = Scorer(model_dir, threads=threads)
        if "torch" in sys.modules:  # the torch backend: as many threads as the CPUs Ray gave the actor
            sys.modules["torch"].set_num_threads(threads)
        self.targets = targets

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        bodies, subreddits = [str(b) for b in batch["body"]], [str(s) for s in batch["subreddit"]]
        n = len(bodies)
        out = {"shard": batch["shard"], "row": batch["row"]}
        for target in self.targets:
            probability = self.scorer.score(
                bodies,
                [target.text] * n,
                subreddits,
                positive_examples=[target.examples.positive] * n,
                negative_examples=[target.examples.negative] * n,
            )
            out[target.column] = np.asarray(probability, dtype=np.float64)
        return out


def _connect(ray: Any, address: str | None) -> bool:
    """Join ``address``'s cluster or start a local one (this machine's CPUs); True when this call connected
    (so it disconnects, and stops a local cluster, after). A session already up in this process is used."""
    if ray.is_initialized():
        return False
    quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
    if not address:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, **quiet)
        return True
    host, _, port = address.rpartition(":")
    try:
        if host and port.isdigit() and "://" not in address:  # ray.init retries a dead address for minutes
            socket.create_connection((host, int(port)), timeout=10).close()
        ray.init(address=address, **quiet)
    except (OSError, RuntimeError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RulebertError(f"--ray-address {address}: cannot join the cluster ({reason})") from None
    return True


def _unwrapped(err: BaseException) -> BaseException:
    """The RulebertError an actor raised, from the traceback text that Ray's wrapper carries (only that)."""
    prefix = f"{RulebertError.__module__}.{RulebertError.__name__}: "
    text = "\n".join(str(x) for x in (err, getattr(err, "traceback_str", ""), getattr(err, "error_msg", "")))
    found = [line.strip()[len(prefix) :] for line in text.splitlines() if line.strip().startswith(prefix)]
    return RulebertError(found[-1]) if found else err


def _score_on_ray(
    ray: Any,
    shards: list[Shard],
    targets: list[ScoredRule],
    model_dir: str,
    actors: int | None,
    batch_rows: int,
) -> list[dict[str, np.ndarray]]:
    """Per shard, {column: probabilities in row order}, scored by ``actors`` ScorerActors."""
    import pandas as pd

    results = [{t.column: np.full(len(s.bodies), np.nan) for t in targets} for s in shards]
    sizes = [len(s.bodies) for s in shards]
    total = sum(sizes)
    if total == 0:
        return results
    nodes = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    actors = min(actors or max(1, int(sum(nodes)) // 4), math.ceil(total / batch_rows))  # none idle
    share = sum(nodes) / actors  # CPUs (and threads) per actor, at most a node's; whole ones above 1
    per_actor = share if share < 1 else float(min(int(share), int(max(nodes))))
    shard_ids, rows = np.repeat(np.arange(len(shards)), sizes), np.concatenate([np.arange(n) for n in sizes])
    bodies, subreddits = [b for s in shards for b in s.bodies], [r for s in shards for r in s.subreddits]
    frame = pd.DataFrame({"shard": shard_ids, "row": rows, "body": bodies, "subreddit": subreddits})
    # One block per batch: the actors share the rows out, however few.
    dataset = ray.data.from_pandas([frame[i : i + batch_rows] for i in range(0, total, batch_rows)])
    # Ray Data restarts a lost actor by default, which matters when a machine of a cluster goes; on one
    # machine it buys little and costs an alarming log line per actor (ray-project/ray#53727).
    restarts = {} if len(nodes) > 1 else {"max_restarts": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Ray 2.60 wants max_restarts elsewhere
        scored = dataset.map_batches(
            ScorerActor,
            fn_constructor_args=(model_dir, targets, max(1, int(per_actor))),
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=per_actor,
            batch_size=batch_rows,
            batch_format="numpy",
            **restarts,
        )
    try:
        for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
            for k in np.unique(batch["shard"]):
                at = batch["shard"] == k
                for target in targets:
                    results[k][target.column][batch["row"][at]] = batch[target.column][at]
    except Exception as err:
        raise _unwrapped(err) from None
    return results


def _targets(rule: str | None, examples_path: Any, rules_path: Any) -> list[ScoredRule]:
    if (rule is None) == (rules_path is None):
        raise RulebertError("give either --rule or --rules")
    if rules_path is not None:
        if examples_path is not None:
            raise RulebertError("--examples goes with --rule; with --rules each rule carries its examples")
        return rules_to_score(rules_path)
    check_rule_text(rule)
    examples = read_examples(examples_path) if examples_path is not None else Examples()
    return [ScoredRule(PROBABILITY, rule, examples)]


def _modes(targets: list[ScoredRule], record: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Each target's (mode column, mode), from the model's record as a ``Scorer`` would decide it."""
    from rulebert.domain.examples import normalize_rule, rule_mode

    data = record.get("data") if isinstance(record.get("data"), dict) else {}
    trained = {normalize_rule(r) for r in data.get("rules") or [] if isinstance(r, str)}
    return {
        t.column: (
            t.mode_column,
            rule_mode(t.text, t.examples.rule_examples(), trained),
        )
        for t in targets
    }


def score_shards(
    model_dir: str | os.PathLike,
    rule: str | None,
    input_spec: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    examples_path: str | os.PathLike | None = None,
    rules_path: str | os.PathLike | None = None,
    address: str | None = None,
    actors: int | None = None,
    batch_rows: int = BATCH_ROWS,
    progress: bool = True,
    raw_csv: bool = False,
) -> tuple[int, int]:
    """Score every shard of ``input_spec`` (a folder or a glob) into ``output_dir`` on Ray against ``rule``
    (with ``examples_path``) or every rule of ``rules_path``; return (rows, shards).

    ``actors``: the size of the actor pool (default: one per 4 CPUs of the cluster); ``address``: an
    existing cluster (``ray start --head``), else a local one is started for this call.
    """
    if actors is not None and actors < 1:
        raise RulebertError(f"--actors {actors}: give 1 or more")
    try:
        import ray
        import ray.data  # noqa: F401  (ray without its `data` extra has no Ray Data)
    except ImportError:
        raise RulebertError(RAY_MISSING) from None
    targets = _targets(rule, examples_path, rules_path)
    paths = find_shards(input_spec)
    out = Path(output_dir)
    if str(output_dir) == "-" or (out.exists() and not out.is_dir()):
        raise RulebertError(f"--output {out}: not a folder (--engine ray writes one file per shard into one)")
    if any(p.parent.resolve() == out.resolve() for p in paths):
        raise RulebertError(f"{out}: the output folder holds input shards; its outputs would replace them")
    record = verify_model_dir(
        model_dir
    )  # this machine's copy; every node of a cluster needs it at the same path
    modes = _modes(targets, record)
    shards = [read_shard(p) for p in paths]  # every bad shard is refused before the cluster starts
    connected = _connect(ray, address)
    log, level = logging.getLogger("ray.data"), logging.getLogger("ray.data").level
    try:
        ray.data.DataContext.get_current().enable_progress_bars = progress
        log.setLevel(logging.CRITICAL)  # its tuning advice and tracebacks: the error raised says it all
        model = str(Path(model_dir).resolve())
        results = _score_on_ray(ray, shards, targets, model, actors, batch_rows)
    finally:
        log.setLevel(level)
        if connected:
            ray.shutdown()
    out.mkdir(parents=True, exist_ok=True)
    for shard, probabilities in zip(shards, results, strict=True):
        write_shard(shard, out / shard.path.name, probabilities, raw_csv, modes)
    return sum(len(s.bodies) for s in shards), len(shards)
