"""rulebert's Hugging Face ``Trainer``: the stock loop with the few changes its data and checkpoints need.

Split out of :mod:`rulebert.training.train`, which builds the rows and runs this loop; see
:mod:`rulebert.training.checkpoints` for checkpoint marking and resume.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from rulebert.backend.device import inference_bf16
from rulebert.training.checkpoints import CheckpointingTrainer, SeededLengthGroupedSampler


class RowDataset(torch.utils.data.Dataset):
    """Tokenised rows (unpadded) with their labels, as the Trainer wants them."""

    def __init__(self, features: list[dict[str, list[int]]], labels: np.ndarray) -> None:
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.features[index], "labels": int(self.labels[index])}


class RulebertTrainer(CheckpointingTrainer):
    """The stock Trainer, but evaluation reads rows in order, so predictions line up with their rules
    (per-rule AUC needs that; transformers 5 otherwise length-groups evaluation batches too); training
    batches are length-grouped in an order seeded per epoch (resumable mid-epoch); checkpoints are marked
    complete once written (see :mod:`rulebert.training.checkpoints`).

    Under ``torchrun`` / ``accelerate launch`` accelerate shards the evaluation batches over the processes
    and gathers them back in order, dropping the padding of the last one: every process gets the
    predictions of all validation rows, as one process would."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The classifiers' loss is a per-batch mean. Left on, this makes the Trainer count the batch's labels
        # across processes and multiply the loss by the number of processes (for losses summed over
        # ``num_items_in_batch``, which BERT's ignores): a doubled loss under 2 processes, gradients included.
        self.model_accepts_loss_kwargs = False

    def _get_eval_sampler(self, eval_dataset: torch.utils.data.Dataset) -> torch.utils.data.Sampler:
        return torch.utils.data.SequentialSampler(eval_dataset)

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler | None:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        self._seeded_sampler = SeededLengthGroupedSampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps,
            dataset=dataset,
            model_input_name=self.processing_class.model_input_names[0],
            seed=self.args.data_seed,
        )
        return self._seeded_sampler

    def _run_epoch(self, *args: Any, epoch: int, **kwargs: Any) -> Any:
        # accelerate's set_epoch does not reach the sampler through all its wrappers: not on a run resumed
        # mid-epoch under torchrun (skipped batches of per-process batches), whose epoch would take epoch 0's
        # order. Set it here, on every epoch.
        sampler = getattr(self, "_seeded_sampler", None)
        if sampler is not None:
            sampler.set_epoch(epoch)
        return super()._run_epoch(*args, epoch=epoch, **kwargs)

    def prediction_step(self, model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        """Evaluate at the precision a :class:`~rulebert.inference.predict.Scorer` will score with on this
        device, so
        the metrics saved with a model are those its predictions reproduce. With bf16 on a CPU, training
        runs under autocast (accelerate wraps ``model.forward``) but a CPU scorer computes in fp32."""
        inner = self.accelerator.unwrap_model(model, keep_fp32_wrapper=True)  # under DDP: the model inside
        original = getattr(inner, "_original_forward", None)
        if original is None or inference_bf16(inner.device.type):
            return super().prediction_step(model, inputs, *args, **kwargs)
        wrapped = inner.forward
        inner.forward = original
        try:
            return super().prediction_step(model, inputs, *args, **kwargs)
        finally:
            inner.forward = wrapped
