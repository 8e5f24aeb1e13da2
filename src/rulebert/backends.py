"""Where and how a model runs: device and bf16 choice, token-budget batching, and the two inference backends.

Both backends score tokenised rows (``input_ids``, ``attention_mask``, maybe ``token_type_ids``) through one
batching loop, :func:`run_batches`: rows are sorted by length and cut into batches by a token budget, so a
batch of short comments is not padded to the length of a long one (the notebook padded every row to 512).

- :class:`TorchBackend`: a transformers model on a CPU or GPU (bf16 autocast on a GPU that has it).
- :class:`OnnxBackend`: an exported ONNX file (fp32 or int8) under ONNX Runtime on the CPU, with
  :class:`LightTokenizer`: neither torch nor transformers is imported, which saves seconds of start-up.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rulebert.errors import RulebertError

BACKENDS = ("auto", "torch", "onnx")
# The order of BertForSequenceClassification.forward's arguments: ONNX inputs are named in this order.
INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")
Features = list[dict[str, list[int]]]


# --- Device and precision ---------------------------------------------------------------------------------


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def gpu_present() -> bool:
    """Whether an NVIDIA GPU is visible, checked without importing torch (that alone costs seconds)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia/gpus").is_dir()


def physical_cores() -> int:
    """Physical cores available to this process (threads beyond them only add contention)."""
    try:
        import psutil

        count = psutil.cpu_count(logical=False)
    except ImportError:
        count = None
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(count or available or 1, available or 1))


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX): there, bf16 autocast trains ~1.8x
    faster than fp32 (measured: MiniLM, 2 EPYC cores). Without it oneDNN emulates bf16 and is slower."""
    try:
        with open(cpuinfo, encoding="utf-8") as lines:
            flags = next((line for line in lines if line.startswith("flags")), "").split()
    except OSError:  # not Linux: no cheap way to know, so fp32
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_device() -> str | None:
    """Where bf16 mixed precision can run fast here: ``"cuda"``, ``"cpu"`` or None."""
    import torch

    if torch.cuda.is_available():
        return "cuda" if torch.cuda.is_bf16_supported() else None
    return "cpu" if cpu_has_native_bf16() else None


def training_bf16(setting: str) -> bool:
    """What ``--bf16 auto|on|off`` means for training on this machine."""
    available = bf16_device() is not None
    if setting == "on" and not available:
        raise RulebertError("--bf16 on needs a CUDA GPU or a CPU with bf16 instructions (AVX512-BF16 or AMX)")
    return setting == "on" or (setting == "auto" and available)


def inference_bf16(device: str) -> bool:
    """Whether scoring on ``device`` runs under bf16 autocast: on a CUDA GPU with bf16, yes (faster, and
    what training used); on a CPU no, fp32 scores (ONNX int8 is the fast CPU path)."""
    import torch

    return device == "cuda" and torch.cuda.is_bf16_supported()


# --- One batching loop ------------------------------------------------------------------------------------


def violation_probability(logits: np.ndarray) -> np.ndarray:
    """P(violation) from a classifier's two logits per row: the softmax's second column, computed as
    ``exp(l1 - logaddexp(l0, l1))`` so that large logits neither overflow nor round to NaN."""
    logits = np.asarray(logits, dtype=np.float64)
    return np.exp(logits[:, 1] - np.logaddexp(logits[:, 0], logits[:, 1]))


def token_budget_batches(lengths: Sequence[int], max_tokens: int, max_rows: int) -> list[np.ndarray]:
    """Indices sorted by length (longest first), cut so that rows x longest length <= ``max_tokens``."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = lengths[order[start]]
        size = max(1, min(max_rows, max_tokens // max(longest, 1)))
        batches.append(order[start : start + size])
        start += size
    return batches


def run_batches(
    features: Features,
    run: Callable[[list[dict[str, list[int]]]], np.ndarray],
    *,
    max_tokens: int,
    max_rows: int,
    progress: bool = False,
    width: int | None = None,
) -> np.ndarray:
    """``run`` over length-sorted token-budget batches of ``features``; results back in input order.

    ``run`` takes a batch of unpadded rows and returns one value (or ``width`` values) per row.
    """
    from tqdm.auto import tqdm

    shape = (len(features),) if width is None else (len(features), width)
    out = np.zeros(shape, dtype=np.float32)
    batches = token_budget_batches([len(f["input_ids"]) for f in features], max_tokens, max_rows)
    with tqdm(total=len(features), desc="predict", unit="row", disable=not progress) as bar:
        for batch in batches:
            out[batch] = run([features[i] for i in batch])
            bar.update(len(batch))
    return out


# --- torch ------------------------------------------------------------------------------------------------


class TorchBackend:
    """A transformers sequence classifier on ``device`` (default: a GPU when there is one)."""

    name = "torch"

    def __init__(self, model: Any, tokenizer: Any, device: str | None = None) -> None:
        self.device = device or pick_device()
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer

    def _forward(self, batch: Features) -> Any:
        import torch

        padded = self.tokenizer.pad(batch, return_tensors="pt")
        padded = {k: v.to(self.device) for k, v in padded.items()}
        use_bf16 = inference_bf16(self.device)
        with torch.inference_mode(), torch.autocast(self.device, dtype=torch.bfloat16, enabled=use_bf16):
            return self.model(**padded)

    def predict(
        self, features: Features, *, max_tokens: int = 16384, max_rows: int = 256, progress: bool = False
    ) -> np.ndarray:
        """P(violation) for each tokenised row, in input order."""
        import torch

        def run(batch: Features) -> np.ndarray:
            logits = self._forward(batch).logits
            return torch.softmax(logits.float(), dim=-1)[:, 1].cpu().numpy()

        return run_batches(features, run, max_tokens=max_tokens, max_rows=max_rows, progress=progress)


def predict_features(
    model: Any,
    tokenizer: Any,
    features: Features,
    *,
    max_tokens: int = 16384,
    max_rows: int = 256,
    progress: bool = True,
    device: str | None = None,
) -> np.ndarray:
    """P(violation) for each tokenised row of an in-memory torch model (training, evaluation)."""
    backend = TorchBackend(model, tokenizer, device)
    return backend.predict(features, max_tokens=max_tokens, max_rows=max_rows, progress=progress)


# --- ONNX Runtime -----------------------------------------------------------------------------------------


class OnnxBackend:
    """Scores tokenised rows with ONNX Runtime on the CPU.

    ``tokenizer`` defaults to a :class:`LightTokenizer` of the model dir the file lies in, encoding exactly
    the inputs the graph takes."""

    device = "cpu"

    def __init__(self, path: str | os.PathLike, tokenizer: Any = None, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or physical_cores()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.tokenizer = (
            tokenizer if tokenizer is not None else LightTokenizer(self.path.parent, self.input_names)
        )
        self.name = "onnx-int8" if ".int8." in self.path.name else "onnx"

    def predict(
        self, features: Features, *, max_tokens: int = 1024, max_rows: int = 256, progress: bool = False
    ) -> np.ndarray:
        """P(violation) for each tokenised row, in input order.

        ``max_tokens`` is much smaller than torch's: ONNX Runtime's int8 kernels run fastest when a batch's
        activations stay in cache (on 2 EPYC cores, 1,024 tokens scored ~6% more rows/s than 4,096 and
        ~10% more than 16,384), and its peak memory follows the largest batch.
        """

        def run(batch: Features) -> np.ndarray:
            padded = self.tokenizer.pad(batch, return_tensors="np")
            feed = {n: np.asarray(padded[n], dtype=np.int64) for n in self.input_names}
            return violation_probability(self.session.run(["logits"], feed)[0])

        return run_batches(features, run, max_tokens=max_tokens, max_rows=max_rows, progress=progress)


class LightTokenizer:
    """The part of a transformers fast tokenizer that :func:`rulebert.text.encode_rows` and batch padding use,
    on the ``tokenizers`` library alone (the same Rust tokenizer, read from the model dir's
    ``tokenizer.json``; importing transformers would pull in torch). Tests check it encodes identically."""

    def __init__(self, model_dir: str | os.PathLike, input_names: Sequence[str] = INPUT_ORDER) -> None:
        from tokenizers import Tokenizer

        model_dir = Path(model_dir)
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tokenizer.no_padding()
        settings_path = model_dir / "tokenizer_config.json"
        settings = json.loads(settings_path.read_text(encoding="utf-8")) if settings_path.is_file() else {}
        pad = settings.get("pad_token", "[PAD]")
        pad = pad.get("content") if isinstance(pad, dict) else pad
        self.pad_token_id = self._tokenizer.token_to_id(pad) or 0
        self.input_names = tuple(input_names)

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

    def pad(self, features: Features, return_tensors: str = "np") -> dict[str, np.ndarray]:
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


class OnnxEmbedder:
    """Sentence embeddings (mean-pooled, unit length) from the model dir's embedder (the base checkpoint's
    encoder, exported at training time), on ONNX Runtime. Used to learn from a rule's examples."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        self.backend = OnnxBackend(path, threads=threads)
        self.tokenizer = self.backend.tokenizer

    def embed(self, features: Features, *, max_tokens: int = 4096, max_rows: int = 256) -> np.ndarray:
        """One unit-length vector per tokenised text, in input order."""
        session, names = self.backend.session, self.backend.input_names
        width = session.get_outputs()[0].shape[-1]

        def run(batch: Features) -> np.ndarray:
            padded = self.tokenizer.pad(batch, return_tensors="np")
            feed = {n: np.asarray(padded[n], dtype=np.int64) for n in names}
            return session.run(["embedding"], feed)[0]

        return run_batches(features, run, max_tokens=max_tokens, max_rows=max_rows, width=width)

    def embed_texts(self, texts: Sequence[str], max_length: int) -> np.ndarray:
        """:meth:`embed` of raw texts, tokenised as the embedder reads them (no rule segment)."""
        from rulebert.text import encode_texts

        return self.embed(encode_texts(self.tokenizer, texts, max_length))
