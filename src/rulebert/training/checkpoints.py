"""Crash-safe training checkpoints: which ones are whole, which one to resume from, and in what order.

The Hugging Face ``Trainer`` writes a checkpoint (weights, optimizer, scheduler, RNG states, trainer state)
straight into ``checkpoint-STEP/``; a crash half-way leaves a folder that looks like any other. So after the
Trainer is done with a folder, :class:`CheckpointingTrainer` fsyncs its files and writes a marker,
``rulebert-complete``, holding the rulebert settings, the data fingerprint and each file's size.
``--resume`` takes the newest checkpoint whose marker is there and whose files still have those sizes, and
deletes the unfinished ones; it refuses a checkpoint made with other settings or data.

rulebert deletes only checkpoint folders it wrote: a fresh run writes ``rulebert-checkpoints`` into the
checkpoints folder before training, and a folder holding neither that nor a marked checkpoint is a user's
own, refused untouched (:func:`written_by_rulebert`, :func:`clear_checkpoints`).

Resuming gives the same model as an uninterrupted run: the Trainer restores the weights, the optimizer, the
schedule and the RNG states (dropout), and :class:`SeededLengthGroupedSampler` draws each epoch's
length-grouped order from ``seed + epoch`` instead of the global RNG, so a run resumed mid-epoch skips
exactly the batches that were already seen.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from rulebert.core.errors import RulebertError
from rulebert.core.files import write_json_atomic

COMPLETE_MARKER = "rulebert-complete"
OWNER_MARKER = "rulebert-checkpoints"  # in the checkpoints folder: rulebert made it (may clear it)
_STEP = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
_IGNORED_SETTINGS = ("save_steps",)  # how often checkpoints are written does not change the model
logger = logging.getLogger(__name__)


class SeededLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped batches in an order drawn from ``seed + epoch`` (the stock sampler uses the global
    RNG, whose state at the start of an epoch a run resumed mid-epoch cannot know)."""

    def __init__(self, *args: Any, seed: int, **kwargs: Any) -> None:
        super().__init__(*args, generator=torch.Generator(), **kwargs)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:  # called by the Trainer / accelerate before each epoch
        self.epoch = epoch

    def __iter__(self) -> Any:
        self.generator.manual_seed(self.seed + self.epoch)
        return super().__iter__()


class SaveEveryStepsCallback(TrainerCallback):
    """Also save a checkpoint every ``steps`` optimisation steps (evaluation stays once per epoch)."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.global_step % self.steps == 0 and state.global_step < state.max_steps:
            control.should_save = True
        return control


class CheckpointingTrainer(Trainer):
    """A Trainer that marks each checkpoint complete once it is fully on disk.

    ``checkpoint_record`` (rulebert settings and data fingerprint) goes into every marker, so that a resume
    can refuse a checkpoint made for other settings or data.
    """

    def __init__(self, *args: Any, checkpoint_record: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.checkpoint_record = checkpoint_record

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:  # the same step can be saved twice (step end, then epoch end)
            (folder / COMPLETE_MARKER).unlink(missing_ok=True)
        super()._save_checkpoint(model, trial)
        # Under torchrun each process writes its own rng_state_RANK.pth: mark the folder once all have.
        self.accelerator.wait_for_everyone()
        if self.args.should_save and folder.is_dir():
            mark_complete(folder, self.checkpoint_record)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_sizes(folder: Path) -> dict[str, int]:
    return {
        str(p.relative_to(folder)): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != COMPLETE_MARKER
    }


def mark_complete(folder: Path, record: dict[str, Any]) -> None:
    """Flush every file of a finished checkpoint to disk, then write its marker (atomically)."""
    sizes = _file_sizes(folder)
    for name in sizes:
        _fsync(folder / name)
    write_json_atomic(folder / COMPLETE_MARKER, {**record, "files": sizes})
    _fsync(folder)


def checkpoint_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be resumed from (no marker, a file missing or truncated), or ``None``."""
    marker = folder / COMPLETE_MARKER
    try:
        sizes = json.loads(marker.read_text(encoding="utf-8"))["files"]
    except FileNotFoundError:
        return "unfinished (no completion marker)"
    except (OSError, ValueError, KeyError, TypeError):
        return "completion marker unreadable"
    for name, size in sizes.items():
        path = folder / name
        if not path.is_file():
            return f"file {name} missing"
        if path.stat().st_size != size:
            return f"file {name} truncated or changed ({path.stat().st_size} bytes, expected {size})"
    return None


def _checkpoints_newest_first(folder: Path) -> list[Path]:
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _STEP.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def complete_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """The whole checkpoints in ``folder``, newest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [p for p in _checkpoints_newest_first(folder) if checkpoint_problem(p) is None]


def remove_unfinished(folder: str | os.PathLike) -> list[Path]:
    """Delete the checkpoints in ``folder`` that are not whole; return them."""
    folder = Path(folder)
    removed = []
    for path in _checkpoints_newest_first(folder) if folder.is_dir() else []:
        problem = checkpoint_problem(path)
        if problem is not None:
            logger.warning("%s: %s; deleting it", path, problem)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def written_by_rulebert(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is absent, empty, or rulebert's checkpoints folder (its owner marker or a marked
    checkpoint is there): the folders rulebert may write checkpoints into and delete them from."""
    folder = Path(folder)
    if not folder.exists():
        return not folder.is_symlink()  # a dangling link is not an absent folder
    if not folder.is_dir() or folder.is_symlink():
        return False
    if (folder / OWNER_MARKER).is_file() or not any(folder.iterdir()):
        return True
    return any((p / COMPLETE_MARKER).is_file() for p in _checkpoints_newest_first(folder))


def _refuse_foreign(folder: Path) -> None:
    if not written_by_rulebert(folder):
        raise RulebertError(
            f"{folder}: not rulebert's checkpoints (it holds none), and rulebert keeps its training "
            "checkpoints there; move it away or choose another --output-dir"
        )


def clear_checkpoints(folder: str | os.PathLike) -> None:
    """Delete rulebert's checkpoints (``checkpoint-STEP`` folders and the owner marker) from ``folder``, and
    the folder once empty; any other file stays. A folder rulebert did not write is refused, untouched."""
    folder = Path(folder)
    _refuse_foreign(folder)
    if not folder.is_dir():
        return
    for path in _checkpoints_newest_first(folder):
        shutil.rmtree(path)
    (folder / OWNER_MARKER).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:  # files of someone else's beside the checkpoints: left alone
        pass


def claim_checkpoints(folder: str | os.PathLike, *, fresh: bool) -> None:
    """Make ``folder`` rulebert's checkpoints folder (``fresh``: without the checkpoints of an earlier run),
    so that a run killed before its first checkpoint leaves a folder that is known to be rulebert's."""
    folder = Path(folder)
    _refuse_foreign(folder)
    if fresh:
        clear_checkpoints(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / OWNER_MARKER, {"written_by": "rulebert"})


def _comparable(record: dict[str, Any]) -> dict[str, Any]:
    record = json.loads(json.dumps(record, default=str))  # as the marker stores it (tuples -> lists, ...)
    config = {k: v for k, v in record.get("config", {}).items() if k not in _IGNORED_SETTINGS}
    # the number of processes sets the global batch, so where a resumed run picks up (markers without: 1)
    return {"config": config, "data": record.get("data"), "world_size": record.get("world_size", 1)}


def resume_checkpoint(folder: str | os.PathLike, record: dict[str, Any], *, cleanup: bool) -> Path | None:
    """The newest whole checkpoint in ``folder`` (``None`` when there is none); unfinished ones are deleted
    when ``cleanup``. Raises :class:`RulebertError` when it was made with other settings or data."""
    if cleanup:
        remove_unfinished(folder)
    found = complete_checkpoints(folder)
    if not found:
        return None
    newest = found[0]
    stored = json.loads((newest / COMPLETE_MARKER).read_text(encoding="utf-8"))
    if _comparable(stored) != _comparable(record):
        raise RulebertError(
            f"{newest}: this checkpoint was made with other settings or data (or another number of "
            "processes); resume with the same options, files and processes, or start over with --overwrite"
        )
    return newest
