"""The ONNX Runtime backend: an exported ONNX file (fp32 or int8) on the CPU, with :class:`LightTokenizer`,
so neither torch nor transformers is imported (that saves seconds of start-up); and :class:`OnnxEmbedder`,
the sentence embedder a rule's examples are learnt with."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rulebert.backend.batching import Features, batch_limits, run_batches, violation_probability
from rulebert.backend.device import physical_cores
from rulebert.core.errors import RulebertError

logger = logging.getLogger(__name__)

# The order of BertForSequenceClassification.forward's arguments: ONNX inputs are named in this order.
INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")


class OnnxBackend:
    """Scores tokenised rows with ONNX Runtime on the CPU.

    ``tokenizer`` defaults to a :class:`LightTokenizer` of the model dir the file lies in, encoding exactly
    the inputs the graph takes."""

    device = "cpu"

    def __init__(
        self,
        path: str | os.PathLike,
        tokenizer: Any = None,
        threads: int | None = None,
        output: str = "logits",
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or physical_cores()
        options.inter_op_num_threads = 1
        try:  # a file swapped for another graph (its hash redone) fails here, before anything is written
            source = _session_source(self.path)
            self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnx's DecodeError, onnxruntime's Fail / InvalidGraph: no common base
            raise RulebertError(
                f"{self.path}: not a graph ONNX Runtime can run ({_first_line(err)})"
            ) from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        check_graph(self.path, self.input_names, [o.name for o in self.session.get_outputs()], output)
        self.tokenizer = (
            tokenizer if tokenizer is not None else LightTokenizer(self.path.parent, self.input_names)
        )
        self.name = "onnx-int8" if ".int8." in self.path.name else "onnx"

    def predict(
        self,
        features: Features,
        *,
        max_tokens: int = 1024,
        max_rows: int = 256,
        batch_size: int | None = None,
        progress: bool = False,
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

        max_tokens, max_rows = batch_limits(max_tokens, max_rows, batch_size)  # a batch_size wins
        return run_batches(features, run, max_tokens=max_tokens, max_rows=max_rows, progress=progress)


def check_graph(path: Path, inputs: Sequence[str], outputs: Sequence[str], output: str) -> None:
    """The graph takes rulebert's inputs (``input_ids``, and only ``INPUT_ORDER``'s names) and gives
    ``output``: checked when the session is made, so a foreign graph is a one-line error naming the file
    before the first batch (ONNX Runtime said "Invalid output name" after the CSV header was written)."""
    unknown = [name for name in inputs if name not in INPUT_ORDER]
    if "input_ids" not in inputs or unknown:
        raise RulebertError(
            f"{path}: not a rulebert export: its inputs are {list(inputs)[:8]} (expected {list(INPUT_ORDER)})"
        )
    if output not in outputs:
        raise RulebertError(
            f"{path}: not a rulebert export: it has no output {output!r} (its outputs: {list(outputs)[:8]})"
        )


def _first_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300] or type(err).__name__


def _session_source(path: Path) -> bytes:
    """The graph ONNX Runtime opens for ``path``: the file's, with the work it does several times or for
    nothing removed (:mod:`rulebert.backend.graph_dedupe`: the attention mask once instead of once per layer;
    scores unchanged), and, for an int8 file that ``onnx.json`` records as exported before activations were
    quantised per token (its scores depended on the batch), rewritten to per-token scales
    (:mod:`rulebert.backend.rowquant`). In memory (~0.1 s for MiniLM): the file is left as it is, so its
    hash stays the recorded one; ``rulebert export --int8`` rewrites an old file."""
    import onnx

    from rulebert.backend.graph_dedupe import drop_repeated_work
    from rulebert.backend.rowquant import ACTIVATIONS, per_token_activations
    from rulebert.model.model_dir import read_onnx_record

    model = onnx.load(str(path))
    try:
        entry = read_onnx_record(path.parent).get(path.name) or {}
    except RulebertError:
        entry = {}
    if entry.get("int8") and ACTIVATIONS not in str(entry.get("quantization") or ""):
        try:
            rewritten = per_token_activations(model)
        except ValueError as error:  # a graph of another shape: scored as it is, batch-dependent, said so
            logger.warning("%s: scores may depend on their batch (%s)", path.name, error)
            rewritten = 0
        if rewritten:
            logger.info(
                "note: %s has one activation scale per batch (an older export); quantising per token as "
                "it loads, so a score does not depend on its batch (`rulebert export --int8` rewrites the "
                "file)",
                path.name,
            )
    drop_repeated_work(model)
    return model.SerializeToString()


class LightTokenizer:
    """The part of a transformers fast tokenizer that :func:`rulebert.domain.text.encode_rows` and batch
    padding use, on the ``tokenizers`` library alone (the same Rust tokenizer, read from the model dir's
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
        self.backend = OnnxBackend(path, threads=threads, output="embedding")
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
        from rulebert.domain.text import encode_texts

        return self.embed(encode_texts(self.tokenizer, texts, max_length))
