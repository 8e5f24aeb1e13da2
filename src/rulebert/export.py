"""ONNX export of a trained model dir, and the ONNX Runtime backend that scores with it.

``rulebert export --model-dir DIR [--int8]`` writes ``model.onnx`` (fp32) or ``model.int8.onnx`` (weights
quantised to int8 by ONNX Runtime's dynamic quantisation: the matmuls run as int8 x int8 -> int32, which
AVX-512 VNNI does ~2-4x faster than fp32) into the model dir. On a CPU this is the fastest way to score.

Integrity: ``rulebert.json`` lists the SHA-256 of the torch weights and is not touched. The exported files
get their own sidecar, ``onnx.json``: for each ONNX file its SHA-256 plus the weight hashes of the torch
model it was exported from. A re-trained model therefore makes an old ONNX file *stale* (its source hashes
no longer match), and the scorer ignores it with a warning instead of scoring with the old weights.

The backend needs only numpy, onnxruntime and the ``tokenizers`` library (:class:`LightTokenizer`): neither
torch nor transformers is imported, which saves seconds of start-up per ``rulebert predict``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from rulebert.errors import RulebertError
from rulebert.files import sha256_file, write_json_atomic

ONNX_FILE = "model.onnx"
ONNX_INT8_FILE = "model.int8.onnx"
ONNX_RECORD = "onnx.json"
OPSET = 17
# The order of BertForSequenceClassification.forward's arguments: ONNX inputs are named in this order.
_INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")


def onnx_path(model_dir: str | os.PathLike, int8: bool) -> Path:
    return Path(model_dir) / (ONNX_INT8_FILE if int8 else ONNX_FILE)


def _read_onnx_record(model_dir: Path) -> dict[str, Any]:
    path = model_dir / ONNX_RECORD
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RulebertError(f"{path}: unreadable ({err})") from None


def export_onnx(model_dir: str | os.PathLike, *, int8: bool = False) -> Path:
    """Export the model dir's classifier to ONNX (optionally int8-quantised); record its hash; return it.

    Written to a temp file inside the model dir and renamed into place, then ``onnx.json`` is updated
    atomically: a crash leaves either no new ONNX file or one whose hash is recorded.
    """
    import torch

    from rulebert.model import load_model_dir

    model_dir = Path(model_dir)
    model, tokenizer, _config, record = load_model_dir(model_dir)
    model.eval()
    sample = tokenizer(["a rule", "another rule"], ["a comment", "a longer comment here"], padding=True)
    names = [n for n in _INPUT_ORDER if n in sample]
    example = {n: torch.tensor(sample[n], dtype=torch.long) for n in names}
    target = onnx_path(model_dir, int8)
    with tempfile.TemporaryDirectory(dir=model_dir, prefix=".exporting-") as staging:
        fp32 = Path(staging) / ONNX_FILE
        # The TorchScript exporter (dynamo=False) needs no onnxscript and handles HF BERT with SDPA. Its
        # tracer warnings concern branches that the attention mask (always passed) fixes anyway.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (),
                str(fp32),
                kwargs=example,
                dynamo=False,
                input_names=names,
                output_names=["logits"],
                dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names}, "logits": {0: "batch"}},
                opset_version=OPSET,
            )
        produced = fp32
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            produced = Path(staging) / ONNX_INT8_FILE
            root = logging.getLogger()  # quantize_dynamic logs "consider pre-processing" advice there
            level = root.level
            root.setLevel(logging.ERROR)
            try:
                # Per-channel scales halve the score error of per-tensor ones at the same speed (measured
                # on MiniLM: mean |delta p| 0.0028 vs 0.0050, AUC within 0.001 of fp32 on 400 rows).
                quantize_dynamic(str(fp32), str(produced), weight_type=QuantType.QInt8, per_channel=True)
            finally:
                root.setLevel(level)
        os.replace(produced, target)
    onnx_record = _read_onnx_record(model_dir)
    onnx_record[target.name] = {
        "sha256": sha256_file(target),
        "source_weights_sha256": record.get("weights_sha256", {}),
        "int8": int8,
        "quantization": "dynamic, int8 weights per channel" if int8 else None,
        "opset": OPSET,
        "inputs": names,
    }
    write_json_atomic(model_dir / ONNX_RECORD, onnx_record)
    return target


def find_onnx(model_dir: str | os.PathLike, record: dict[str, Any]) -> Path | None:
    """The ONNX file to score with (int8 before fp32), checked against ``onnx.json``; None if there is none.

    ``record`` is the model dir's verified ``rulebert.json``. A file exported from other weights is skipped
    with a warning; a file whose own hash does not match is an error (it is corrupted).
    """
    model_dir = Path(model_dir)
    onnx_record = _read_onnx_record(model_dir)
    for name in (ONNX_INT8_FILE, ONNX_FILE):
        path = model_dir / name
        if not path.is_file():
            continue
        entry = onnx_record.get(name)
        if entry is None:
            print(f"rulebert: warning: {path} is not listed in {ONNX_RECORD}; ignored", file=sys.stderr)
            continue
        if entry.get("source_weights_sha256") != record.get("weights_sha256", {}):
            print(
                f"rulebert: warning: {path} was exported from other weights (stale; re-run "
                "`rulebert export`); ignored",
                file=sys.stderr,
            )
            continue
        if sha256_file(path) != entry.get("sha256"):
            raise RulebertError(f"{path}: ONNX file is corrupted or truncated (SHA-256 mismatch)")
        return path
    return None


class OnnxBackend:
    """Scores tokenised rows with ONNX Runtime on the CPU, in length-sorted token-budget batches."""

    def __init__(self, path: str | os.PathLike, tokenizer: Any, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.tokenizer = tokenizer
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or physical_cores()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.name = "onnx-int8" if self.path.name == ONNX_INT8_FILE else "onnx"

    def predict(
        self,
        features: list[dict[str, list[int]]],
        *,
        max_tokens: int = 1024,
        max_rows: int = 256,
        progress: bool = False,
    ) -> np.ndarray:
        """P(violation) for each tokenised row, in input order.

        ``max_tokens`` is much smaller than torch's: ONNX Runtime's int8 kernels run fastest when a batch's
        activations stay in cache (on 2 EPYC cores, 1,024 tokens scored ~6% more rows/s than 4,096 and
        ~10% more than 16,384), and its peak memory follows the largest batch.
        """
        from tqdm.auto import tqdm

        from rulebert.predict import token_budget_batches, violation_probability

        probabilities = np.zeros(len(features), dtype=np.float32)
        batches = token_budget_batches([len(f["input_ids"]) for f in features], max_tokens, max_rows)
        with tqdm(total=len(features), desc="predict", unit="row", disable=not progress) as bar:
            for batch in batches:
                padded = self.tokenizer.pad([features[i] for i in batch], return_tensors="np")
                feed = {n: np.asarray(padded[n], dtype=np.int64) for n in self.input_names}
                probabilities[batch] = violation_probability(self.session.run(None, feed)[0])
                bar.update(len(batch))
        return probabilities


def physical_cores() -> int:
    """Physical cores available to this process (threads beyond them only add contention)."""
    try:
        import psutil

        count = psutil.cpu_count(logical=False)
    except ImportError:
        count = None
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(count or available or 1, available or 1))


BACKENDS = ("auto", "torch", "onnx")


def _gpu_present() -> bool:
    """Whether an NVIDIA GPU is visible, checked without importing torch (that alone costs seconds)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia/gpus").is_dir()


def open_onnx_backend(model_dir: Path, backend: str, device: str | None) -> OnnxBackend | None:
    """The ONNX backend for ``Scorer`` when it should score (see ``Scorer``); None means use torch.

    ``auto`` takes a valid exported file on a CPU (no device asked for, no GPU visible, or ``device="cpu"``);
    on a GPU the torch model with bf16 is faster. The returned backend carries the model dir's tokenizer,
    :class:`TrainConfig` and verified record, so the torch model is never loaded.
    """
    if backend not in BACKENDS:
        raise RulebertError(f"unknown backend {backend!r} (use one of {', '.join(BACKENDS)})")
    wanted = device or ("cuda" if _gpu_present() else "cpu")
    if backend == "torch" or (backend == "auto" and wanted != "cpu"):
        return None
    from rulebert.config import TrainConfig
    from rulebert.model import verify_model_dir

    record = verify_model_dir(model_dir)
    path = find_onnx(model_dir, record)
    if path is None:
        if backend == "onnx":
            raise RulebertError(f"{model_dir}: no usable ONNX file (run `rulebert export --model-dir DIR`)")
        return None
    onnx = OnnxBackend(path, LightTokenizer(model_dir))
    onnx.tokenizer.input_names = tuple(onnx.input_names)  # encode what the graph takes, nothing more
    onnx.config, onnx.record = TrainConfig.from_dict(record["config"]), record
    return onnx


class LightTokenizer:
    """The part of a transformers fast tokenizer that :func:`rulebert.text.encode_rows` and batch padding use,
    on the ``tokenizers`` library alone (the same Rust tokenizer, read from the model dir's
    ``tokenizer.json``; importing transformers would pull in torch). Tests check it encodes identically."""

    def __init__(self, model_dir: str | os.PathLike, input_names: tuple[str, ...] = _INPUT_ORDER) -> None:
        from tokenizers import Tokenizer

        model_dir = Path(model_dir)
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tokenizer.no_padding()
        settings_path = model_dir / "tokenizer_config.json"
        settings = json.loads(settings_path.read_text(encoding="utf-8")) if settings_path.is_file() else {}
        pad = settings.get("pad_token", "[PAD]")
        pad = pad.get("content") if isinstance(pad, dict) else pad
        self.pad_token_id = self._tokenizer.token_to_id(pad) or 0
        self.input_names = input_names

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return self._tokenizer.num_special_tokens_to_add(pair)

    def __call__(
        self,
        text: list[str],
        text_pair: list[str] | None = None,
        *,
        add_special_tokens: bool = True,
        truncation: bool | str = False,
        max_length: int | None = None,
        return_offsets_mapping: bool = False,
    ) -> dict[str, list[Any]]:
        if truncation and max_length:
            strategy = "only_second" if truncation == "only_second" else "longest_first"
            self._tokenizer.enable_truncation(max_length, strategy=strategy)
        else:
            self._tokenizer.no_truncation()
        inputs = list(text) if text_pair is None else list(zip(text, text_pair, strict=True))
        encodings = self._tokenizer.encode_batch(inputs, add_special_tokens=add_special_tokens)
        out: dict[str, list[Any]] = {"input_ids": [e.ids for e in encodings]}
        if "token_type_ids" in self.input_names:
            out["token_type_ids"] = [e.type_ids for e in encodings]
        out["attention_mask"] = [e.attention_mask for e in encodings]
        if return_offsets_mapping:
            out["offset_mapping"] = [e.offsets for e in encodings]
        return out

    def pad(self, features: list[dict[str, list[int]]], return_tensors: str = "np") -> dict[str, np.ndarray]:
        """Right-pad a batch to its longest row (``return_tensors`` is accepted for HF compatibility)."""
        longest = max(len(f["input_ids"]) for f in features)
        out = {}
        for key in features[0]:
            fill = self.pad_token_id if key == "input_ids" else 0
            array = np.full((len(features), longest), fill, dtype=np.int64)
            for row, feature in enumerate(features):
                array[row, : len(feature[key])] = feature[key]
            out[key] = array
        return out
