"""ONNX export of a trained model dir: ``model.onnx`` (fp32) or ``model.int8.onnx`` (int8 weights).

``rulebert export --model-dir DIR [--int8]`` writes the file into the model dir and records it in
``onnx.json`` (see :mod:`rulebert.model.model_dir`). int8 is ONNX Runtime's dynamic quantisation with its
per-batch activation scales replaced by per-token ones (:mod:`rulebert.backend.rowquant`: a row scores the
same alone or in any batch): the matmuls run as int8 x int8 -> int32, which AVX-512 VNNI does ~2-4x faster
than fp32. On a CPU this is the fastest way to score; :class:`rulebert.backend.onnx_backend.OnnxBackend`
runs it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rulebert.backend.onnx_backend import INPUT_ORDER
from rulebert.backend.rowquant import ACTIVATIONS
from rulebert.core.files import sha256_file, write_json_atomic
from rulebert.model.model_dir import load_model_dir, onnx_path, record_onnx

OPSET = 17
ACTIVATION_MODES = ("per-token", "per-token-asymmetric", "per-batch")
"""Activation scales of an int8 file: per token, symmetric (what the export writes); per token with a zero
point each (closer to fp32, ~30% slower: :mod:`rulebert.backend.rowquant`); one per batch (quantize_dynamic
as it is, batch-dependent: for benchmarks only)."""


@contextmanager
def _root_logger_silenced() -> Iterator[None]:
    """ONNX Runtime's quantiser warns through the *root* logger ("consider pre-processing"), and a first
    ``logging.warning`` on an unconfigured root logger installs a handler for the whole process. For the
    duration of the call only: root at ERROR, with a NullHandler where it had none; both restored after."""
    root = logging.getLogger()
    level, placeholder = root.level, None
    if not root.handlers:
        placeholder = logging.NullHandler()
        root.addHandler(placeholder)
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
        if placeholder is not None:
            root.removeHandler(placeholder)


# MatMul groups that int8 quantisation may leave in fp32, by where they sit in a transformer layer (node names
# of the TorchScript export: BERT ``.../layer.N/output/dense/MatMul``, MPNet the same; the attention output
# projection is ``.../attention/output/...`` or ``.../attention/attn/o/...``).
FP32_GROUPS = {
    "ffn-out": lambda name: name.endswith("/output/dense/MatMul") and "/attention/" not in name,
    "ffn-in": lambda name: name.endswith("/intermediate/dense/MatMul"),
}


def _fp32_nodes(fp32: Path, groups: tuple[str, ...]) -> list[str]:
    """The MatMul nodes of ``fp32`` that belong to ``groups`` (see :data:`FP32_GROUPS`)."""
    if not groups:
        return []
    import onnx

    graph = onnx.load(str(fp32), load_external_data=False).graph
    return [
        n.name for n in graph.node if n.op_type == "MatMul" and any(FP32_GROUPS[g](n.name) for g in groups)
    ]


def _write_onnx(
    module: Any,
    sample: dict[str, Any],
    target: Path,
    output: str,
    *,
    int8: bool,
    keep_fp32: tuple[str, ...] = (),
    activations: str = "per-token",
) -> list[str]:
    """Trace ``module`` on ``sample`` (tokenizer output) into ``target``, int8-quantised when asked (but the
    MatMul groups named in ``keep_fp32``; activation scales as :data:`ACTIVATION_MODES` ``activations``);
    return the input names. Written in a temp dir beside ``target`` and renamed into place: never half a
    file."""
    import torch

    if activations not in ACTIVATION_MODES:
        raise ValueError(f"activations: {activations!r} is not one of {ACTIVATION_MODES}")
    names = [n for n in INPUT_ORDER if n in sample]
    example = {n: torch.tensor(sample[n], dtype=torch.long) for n in names}
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".exporting-") as staging:
        fp32 = Path(staging) / "fp32.onnx"
        # The TorchScript exporter (dynamo=False) needs no onnxscript and handles HF BERT with SDPA. Its
        # tracer warnings concern branches that the attention mask (always passed) fixes anyway.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (),
                str(fp32),
                kwargs=example,
                dynamo=False,
                input_names=names,
                output_names=[output],
                dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names}, output: {0: "batch"}},
                opset_version=OPSET,
            )
        produced = fp32
        if int8:
            import onnx
            from onnxruntime.quantization import QuantType, quantize_dynamic

            from rulebert.backend.rowquant import per_token_activations

            produced = Path(staging) / "int8.onnx"
            with _root_logger_silenced():
                # Per-channel scales halve the score error of per-tensor ones at the same speed (measured
                # on MiniLM: mean |delta p| 0.0028 vs 0.0050, AUC within 0.001 of fp32 on 400 rows).
                quantize_dynamic(
                    str(fp32),
                    str(produced),
                    weight_type=QuantType.QInt8,
                    per_channel=True,
                    nodes_to_exclude=_fp32_nodes(fp32, keep_fp32),
                )
            # quantize_dynamic's activation scale is one per batch: a row's score would depend on the rows
            # beside it. Per-token scales make it a function of the row alone (and were more faithful).
            if activations != "per-batch":
                graph = onnx.load(str(produced))
                per_token_activations(graph, symmetric=activations == "per-token")
                onnx.save(graph, str(produced))
        os.replace(produced, target)
    return names


def int8_variant_file(
    model: Any,
    tokenizer: Any,
    target: Path,
    *,
    keep_fp32: tuple[str, ...] = (),
    activations: str = "per-token",
) -> Path:
    """An int8 ONNX file of an in-memory classifier, with the MatMul groups ``keep_fp32`` left in fp32 and
    the activation scales of :data:`ACTIVATION_MODES` ``activations`` (``int8_fidelity.py`` and
    ``int8_batch.py`` in ``benchmarks/experiments/`` measure the variants)."""
    sample = tokenizer(["a rule", "another rule"], ["a comment", "a longer comment here"], padding=True)
    _write_onnx(
        model.eval(), sample, target, "logits", int8=True, keep_fp32=keep_fp32, activations=activations
    )
    return target


def export_onnx(model_dir: str | os.PathLike, *, int8: bool = False, keep_fp32: tuple[str, ...] = ()) -> Path:
    """Export the model dir's classifier to ONNX (optionally int8-quantised); record its hash; return it.

    Written to a temp file inside the model dir and renamed into place, then ``onnx.json`` is updated
    atomically: a crash leaves either no new ONNX file or one whose hash is recorded.
    """
    model_dir = Path(model_dir)
    model, tokenizer, _config, record = load_model_dir(model_dir)
    model.eval()
    sample = tokenizer(["a rule", "another rule"], ["a comment", "a longer comment here"], padding=True)
    target = onnx_path(model_dir, int8)
    names = _write_onnx(model, sample, target, "logits", int8=int8, keep_fp32=keep_fp32)
    quantization = f"dynamic, int8 weights per channel, {ACTIVATIONS}" if int8 else None
    if int8 and keep_fp32:
        quantization += f"; fp32: {', '.join(keep_fp32)}"
    record_onnx(
        model_dir,
        target,
        {
            "source_weights_sha256": record.get("weights_sha256", {}),
            "int8": int8,
            "quantization": quantization,
            "opset": OPSET,
            "inputs": names,
        },
    )
    return target


def export_embedder(model_dir: str | os.PathLike, checkpoint: str) -> Path:
    """Write ``checkpoint``'s encoder as a sentence embedder (mean pooling over the attention mask, unit
    length; what sentence-transformers' MiniLM and mpnet do), int8, with its own tokenizer, to
    ``embedder/`` in the model dir; record it in ``onnx.json`` (the tokenizer files' hashes too).

    By default the base checkpoint, not the fine-tuned model: fine-tuning a cross-encoder on other rules bends
    its space away from general similarity (request-time protocol: 0.632 vs 0.679 AUC, docs/evaluation.md).
    Any other checkpoint may embed (``--embedder``): it is never fine-tuned, so its tokenizer need not be the
    classifier's. A former embedder (``embedder/``, or a top-level one from older model dirs) is replaced.
    """
    import inspect

    import torch
    from transformers import AutoModel, AutoTokenizer

    from rulebert.model.backbones import from_pretrained_safely
    from rulebert.model.model_dir import EMBEDDER_DIR, EMBEDDER_FILE, ONNX_RECORD, read_onnx_record

    model_dir = Path(model_dir)
    encoder = from_pretrained_safely(AutoModel, checkpoint, dtype=torch.float32).eval()
    tokenizer = from_pretrained_safely(AutoTokenizer, checkpoint)
    takes_types = "token_type_ids" in inspect.signature(encoder.forward).parameters  # MPNet has none

    class MeanPooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            types = {"token_type_ids": token_type_ids} if takes_types and token_type_ids is not None else {}
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **types)
            hidden = hidden.last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    sample = tokenizer(["a comment", "a longer comment here"], padding=True)
    if not takes_types:
        sample.pop("token_type_ids", None)
    folder = model_dir / EMBEDDER_DIR
    with tempfile.TemporaryDirectory(dir=model_dir, prefix=".embedder-") as staging:
        staged = Path(staging) / EMBEDDER_DIR
        staged.mkdir()
        tokenizer.save_pretrained(staged)
        names = _write_onnx(MeanPooled(), sample, staged / EMBEDDER_FILE, "embedding", int8=True)
        hashes = {f.name: sha256_file(f) for f in sorted(staged.iterdir()) if f.name != EMBEDDER_FILE}
        # onnx.json forgets the old embedder first, then the new folder replaces it whole, then is recorded:
        # a crash in between leaves no embedder (examples fall back to TF-IDF), never a mismatched one
        record = read_onnx_record(model_dir)
        for name in (f"{EMBEDDER_DIR}/{EMBEDDER_FILE}", EMBEDDER_FILE):
            record.pop(name, None)
        write_json_atomic(model_dir / ONNX_RECORD, record)
        for old in (folder, model_dir / EMBEDDER_FILE):
            if old.is_dir():
                shutil.rmtree(old)
            elif old.exists():
                old.unlink()
        os.replace(staged, folder)
    target = folder / EMBEDDER_FILE
    entry = {"role": "embedder", "source": checkpoint, "int8": True, "quantization": ACTIVATIONS}
    record_onnx(model_dir, target, entry | {"opset": OPSET, "inputs": names, "tokenizer_sha256": hashes})
    return target


INT8_AUC_TOLERANCE = 0.005
"""How far the int8 file's column-averaged AUC may fall from the torch model's on the same rows."""
MIN_SPEARMAN = 0.99
"""The int8 file's scores must rank the rows as torch's do (MiniLM fine-tuned on 600 rows: 0.9976)."""
BATCH_TOLERANCE = 0.002
"""The largest |delta p| allowed between a row scored alone and the same row inside batches of other rows
(per-token activation scales give 0 by construction; the per-batch ones gave up to 0.25)."""
BATCH_CHECK_ROWS = 256
"""How many of the check's rows are also scored one at a time (3-4 s for MiniLM on 2 cores)."""


def _batch_gap(backend: Any, features: list[dict[str, list[int]]], batched: Any) -> float:
    """The largest |delta p| between rows scored one per call and the same rows in ``batched`` (the default
    length-sorted batches of 1,024 tokens) or in batches of 64 rows (more padding, other neighbours)."""
    import numpy as np

    rows = features[:BATCH_CHECK_ROWS]
    if not rows:
        return 0.0
    alone = np.array([backend.predict([f])[0] for f in rows])
    wide = backend.predict(rows, max_tokens=1 << 20, max_rows=64)
    return float(max(np.abs(alone - batched[: len(rows)]).max(), np.abs(alone - wide).max()))


INT8_LADDER: tuple[tuple[str, ...], ...] = ((), ("ffn-in", "ffn-out"))
"""What :func:`export_int8_checked` tries, in order, until a file passes: every MatMul int8 (MiniLM passes:
Spearman 0.998), then the feed-forward projections left in fp32 (fine-tuned mpnet, 300 comments: Spearman
0.990 -> 0.9993, mean |delta p| 0.039 -> 0.006, 89 -> 30 rows/s, still 3.4x torch;
benchmarks/experiments/int8_fidelity.py)."""


def _int8_check(
    path: Path, features: list[dict[str, list[int]]], torch_scores: Any, labels: Any, rules: Any
) -> tuple[bool, str, dict[str, Any]]:
    """Whether the int8 file at ``path`` ranks ``features`` as torch did; the reason when not; what was
    measured."""
    import math

    import numpy as np
    from scipy.stats import spearmanr

    from rulebert.backend.onnx_backend import OnnxBackend
    from rulebert.domain.metrics import column_averaged_auc, paired_bootstrap_drop

    backend = OnnxBackend(path, threads=None)
    int8_scores = backend.predict(features) if features else np.zeros(0)
    check: dict[str, Any] = {"file": path.name, "rows": len(features), "tolerance": INT8_AUC_TOLERANCE}
    gap = _batch_gap(backend, features, int8_scores)
    check["alone_vs_batched"] = round(gap, 6)
    if not gap <= BATCH_TOLERANCE:  # a score must not depend on the rows that share its batch
        return False, f"a row alone and in a batch differ by {gap:.4f} (allowed {BATCH_TOLERANCE})", check
    auc_torch = column_averaged_auc(labels, torch_scores, rules)[0] if len(labels) else math.nan
    auc_int8 = column_averaged_auc(labels, int8_scores, rules)[0] if len(labels) else math.nan
    rho = float(spearmanr(torch_scores, int8_scores).statistic) if len(features) >= 3 else math.nan
    check["spearman"] = None if math.isnan(rho) else round(rho, 5)
    if not rho >= MIN_SPEARMAN:  # label-free: the int8 copy must order the rows as torch does
        return (
            False,
            f"rank correlation with torch {rho:.4f} over {len(features)} rows (needs {MIN_SPEARMAN})",
            check,
        )
    if math.isnan(auc_torch) or math.isnan(auc_int8):
        return True, "", check  # one label only: the rank correlation above is the check
    drop = auc_torch - auc_int8
    low = paired_bootstrap_drop(labels, torch_scores, int8_scores, rules)
    check |= {"col_auc_torch": round(auc_torch, 5), "col_auc_int8": round(auc_int8, 5)}
    check["drop_95_lower"] = round(low, 5)
    # Within the tolerance, or not shown to be beyond it: on ~100 validation rows the same int8 file's AUC
    # drop swings by ±0.009 from one set of rows to another (measured on MiniLM), so a small validation set
    # alone cannot tell a 0.006 drop from noise; a real defect stands out of it.
    kept = drop <= INT8_AUC_TOLERANCE or low <= INT8_AUC_TOLERANCE
    why = (
        f"int8 col. AUC {auc_int8:.4f} vs torch {auc_torch:.4f}: a drop of {drop:.4f}, at least "
        f"{low:.4f} (95% bootstrap), beyond the tolerance {INT8_AUC_TOLERANCE}"
    )
    return kept, why, check


def export_int8_checked(
    model_dir: str | os.PathLike,
    features: list[dict[str, list[int]]],
    torch_scores: Any,
    labels: Any,
    rules: Any,
) -> dict[str, Any]:
    """Export ``model.int8.onnx`` and keep it only if it ranks ``features`` as the torch model did
    (``torch_scores``): the same score for a row alone and inside batches (within :data:`BATCH_TOLERANCE`),
    a rank correlation of at least :data:`MIN_SPEARMAN` with torch's scores, and a
    column-averaged AUC within :data:`INT8_AUC_TOLERANCE` of torch's (or a drop whose paired bootstrap 95%
    interval still reaches it). The variants of :data:`INT8_LADDER` are tried in order; when none passes the
    file is removed (scoring falls back to torch). Returns what was measured, for ``metrics.json``."""
    import numpy as np

    from rulebert.core.files import write_json_atomic
    from rulebert.model.model_dir import ONNX_RECORD, read_onnx_record

    torch_scores, labels, rules = np.asarray(torch_scores), np.asarray(labels), np.asarray(rules)
    tried = []
    for keep_fp32 in INT8_LADDER:
        path = export_onnx(model_dir, int8=True, keep_fp32=keep_fp32)
        kept, why, check = _int8_check(path, features, torch_scores, labels, rules)
        check["fp32"] = list(keep_fp32)
        tried.append({"fp32": list(keep_fp32), "spearman": check["spearman"], "written": kept})
        if kept:
            break
    check["written"] = bool(kept)
    if len(tried) > 1:
        check["tried"] = tried
    if not kept:
        check["reason"] = why
        path.unlink(missing_ok=True)
        entries = read_onnx_record(model_dir)
        entries.pop(path.name, None)
        write_json_atomic(Path(model_dir) / ONNX_RECORD, entries)
    return check
