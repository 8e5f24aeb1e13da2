"""Checks of what a model dir holds before anything is scored with it.

A model dir's ``rulebert.json`` lists the SHA-256 of every file that changes a score (weights, config,
tokenizer files, calibration); :func:`check_hashes` compares them, refusing any listed name that would lead
out of the dir. :func:`read_hf_config` and :func:`check_positions` validate the Hugging Face ``config.json``
(a JSON object; no ``auto_map``, i.e. no code of its own; room for the recorded ``max_length``).

Which files are hashed, and under which key, is the format's business (:mod:`rulebert.model.model_dir`); this
module only checks. Every problem is a one-line :class:`RulebertError` naming the file.
"""

from __future__ import annotations

import json
import numbers
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from rulebert.core.errors import RulebertError
from rulebert.core.files import sha256_file

HF_CONFIG = "config.json"
# Models that number positions from pad_token_id + 1 (max_position_embeddings counts those offsets too).
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert")


def hash_files(folder: Path, names: list[str]) -> dict[str, str]:
    """``{name: SHA-256}`` of the files ``names`` in ``folder``."""
    return {name: sha256_file(folder / name) for name in sorted(names)}


def member(model_dir: Path, name: Any, where: Path) -> Path:
    """The path of ``name`` (a key of a hash table in ``where``) inside ``model_dir``.

    An absolute name, a ``..`` step, or a subfolder that resolves elsewhere (a symlink) is refused: a
    model dir vouches only for its own files."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise RulebertError(f"{where}: {name!r} is not a file name")
    pure = PurePosixPath(name)
    if pure.is_absolute() or PureWindowsPath(name).drive or ".." in pure.parts or "\\" in name:
        raise RulebertError(f"{where}: {name!r} leads outside the model dir")
    path = model_dir / pure
    if not path.parent.resolve().is_relative_to(model_dir.resolve()):
        raise RulebertError(f"{where}: {name!r} leads outside the model dir")
    return path


def check_hashes(model_dir: Path, where: Path, hashes: Any, kind: str) -> None:
    """Every file of ``hashes`` (``{name: SHA-256}`` read from ``where``) is there, whole and unchanged."""
    if not isinstance(hashes, dict):
        raise RulebertError(f"{where}: the {kind} hashes are not a JSON object")
    for name, expected in hashes.items():
        path = member(model_dir, name, where)
        if not path.is_file():
            raise RulebertError(f"{path}: {kind} missing")
        if not isinstance(expected, str) or sha256_file(path) != expected:
            raise RulebertError(
                f"{path}: {kind} is corrupted or truncated, or was changed after training (SHA-256 mismatch)"
            )


def read_hf_config(folder: Path) -> dict[str, Any]:
    """``folder``'s ``config.json`` (``{}`` when absent), refused when it is not a JSON object or asks to
    run code of its own (``auto_map``: transformers asks y/N on a terminal; a "y" runs it)."""
    path = folder / HF_CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RulebertError(f"{path}: unreadable ({err})") from None
    if not isinstance(config, dict):
        raise RulebertError(f"{path}: not a JSON object")
    if "auto_map" in config:
        raise RulebertError(
            f"{path}: asks to run its own code (auto_map); rulebert loads only built-in models"
        )
    return config


def check_positions(folder: Path, config: dict[str, Any], max_length: int, where: Path) -> None:
    """A model dir's ``config.json`` names a model type, and ``max_length`` (recorded in ``where``) fits in
    its position embeddings (beyond them a long comment would crash the model or score garbage)."""
    path = folder / HF_CONFIG
    if not config:
        raise RulebertError(f"{path}: missing or empty")
    if not isinstance(config.get("model_type"), str) or not config["model_type"]:
        raise RulebertError(f"{path}: names no model_type")
    positions = config.get("max_position_embeddings")
    if positions is None or config.get("position_biased_input") is False:  # relative positions: no limit
        return
    if isinstance(positions, bool) or not isinstance(positions, numbers.Integral) or positions <= 0:
        raise RulebertError(f"{path}: max_position_embeddings {positions!r} is not a positive integer")
    if config["model_type"] in _OFFSET_POSITIONS:
        pad = config.get("pad_token_id", 1)
        positions -= (pad if isinstance(pad, int) else 1) + 1
    if max_length > positions:
        raise RulebertError(
            f"{where}: max_length {max_length} is beyond the model's {positions} positions "
            f"({HF_CONFIG} max_position_embeddings)"
        )


def check_model_type(path: Path, config: dict[str, Any]) -> None:
    """``config.json``'s model_type is one transformers knows (else it raises a ValueError of many lines)."""
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise RulebertError(f"{path}: model_type {str(model_type)[:80]!r} is not one transformers knows")


def check_vocabulary(path: Path, config: dict[str, Any], tokens: int) -> None:
    """The embedding table (``vocab_size``) holds every token id the tokenizer gives: a smaller one fails to
    load the weights, or, with weights cut to match, fails on the first comment with an unseen id."""
    size = config.get("vocab_size")
    if size is None:  # a model type that keeps it elsewhere: its weights' shapes are the check
        return
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < tokens:
        raise RulebertError(f"{path}: vocab_size {size!r} does not hold the tokenizer's {tokens} tokens")


def refuse_remote_code(folder: Path) -> None:
    """A checkpoint whose config asks for its own Python code (``auto_map``) is refused: loading it would
    run code from the folder (transformers asks y/N on a terminal; a "y" runs it)."""
    read_hf_config(folder)
