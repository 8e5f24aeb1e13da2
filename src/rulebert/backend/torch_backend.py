"""The torch backend: a transformers sequence classifier on a CPU or GPU (bf16 autocast on a GPU that has
it), scoring tokenised rows through :func:`rulebert.backend.batching.run_batches`."""

from __future__ import annotations

from typing import Any

import numpy as np

from rulebert.backend.batching import Features, batch_limits, run_batches
from rulebert.backend.device import inference_bf16, pick_device


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
        self,
        features: Features,
        *,
        max_tokens: int = 16384,
        max_rows: int = 256,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """P(violation) for each tokenised row, in input order."""
        import torch

        def run(batch: Features) -> np.ndarray:
            logits = self._forward(batch).logits
            return torch.softmax(logits.float(), dim=-1)[:, 1].cpu().numpy()

        max_tokens, max_rows = batch_limits(max_tokens, max_rows, batch_size)  # a batch_size wins
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
