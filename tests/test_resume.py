"""``rulebert train --resume`` after a crash: a real process killed with SIGKILL mid-epoch, then resumed,
gives the model an uninterrupted run gives; half-written checkpoints are skipped."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rulebert.core.config import TrainConfig
from rulebert.core.errors import RulebertError
from rulebert.inference.predict import Scorer
from rulebert.model.model_dir import RECORD_FILE
from rulebert.training.checkpoints import (
    COMPLETE_MARKER,
    checkpoint_problem,
    complete_checkpoints,
    mark_complete,
    resume_checkpoint,
)
from rulebert.training.train import CHECKPOINT_DIR, train_model

from .conftest import make_frame

# `python -m rulebert.cli`, with each training step slowed down (so the test can reliably kill it while it
# trains, however fast the machine) and the number of steps it ran written to $STEPS_FILE at exit.
RUNNER = """
import atexit, os, runpy, sys, time
from transformers import Trainer
delay, steps, step = float(os.environ["STEP_DELAY"]), [0], Trainer.training_step
def slow_step(self, *args, **kwargs):
    time.sleep(delay)
    steps[0] += 1
    return step(self, *args, **kwargs)
Trainer.training_step = slow_step
atexit.register(lambda: open(os.environ["STEPS_FILE"], "w").write(str(steps[0])))
sys.argv = ["rulebert"] + sys.argv[1:]
runpy.run_module("rulebert.cli", run_name="__main__", alter_sys=True)
"""
SAVE_STEPS = 8


def _train_command(folder: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-c", RUNNER, "train",
        "--train", str(folder / "train.csv"), "--test", str(folder / "test.csv"), "--output-dir", str(out),
        "--model", str(model), "--epochs", "2", "--lr", "1e-3", "--batch-size", "8", "--max-length", "48",
        "--val-fraction", "0.2", "--save-steps", str(SAVE_STEPS), "--no-progress", *extra,
    ]  # fmt: skip


def _start(command: list[str], steps_file: Path, delay: float) -> subprocess.Popen:
    env = {**os.environ, "STEP_DELAY": str(delay), "STEPS_FILE": str(steps_file), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen) -> None:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]


def _marked_mid_epoch_checkpoint(checkpoints: Path) -> Path | None:
    """A checkpoint marked complete that was saved inside the second epoch (not at an epoch's end)."""
    for path in complete_checkpoints(checkpoints):
        epoch = json.loads((path / "trainer_state.json").read_text())["epoch"]
        if 1 < epoch < 2 and epoch != int(epoch):
            return path
    return None


def _scores(model_dir: Path, test_csv: Path) -> np.ndarray:
    test = pd.read_csv(test_csv)
    return Scorer(model_dir).score(test["body"].tolist(), test["rule"].tolist(), test["subreddit"].tolist())


def test_killed_mid_epoch_then_resumed_matches_an_uninterrupted_run(tiny_checkpoint, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    make_frame(24, seed=1).to_csv(folder / "train.csv", index=False)
    make_frame(10, seed=2, labelled=False).to_csv(folder / "test.csv", index=False)
    reference, crashed = tmp_path / "reference", tmp_path / "crashed"

    # Both runs at once: the reference at full speed, the other slowed down so it is killed while training.
    ref_process = _start(_train_command(folder, tiny_checkpoint, reference), tmp_path / "ref.steps", 0.0)
    victim = _start(_train_command(folder, tiny_checkpoint, crashed), tmp_path / "crash.steps", 0.3)
    try:
        while (found := _marked_mid_epoch_checkpoint(crashed / CHECKPOINT_DIR)) is None:
            assert victim.poll() is None, f"training ended before it could be killed: {victim.stderr.read()}"
            time.sleep(0.02)
        victim.send_signal(signal.SIGKILL)
    finally:
        victim.kill()
        victim.communicate()
    _finish(ref_process)
    assert victim.returncode == -signal.SIGKILL
    assert not (crashed / RECORD_FILE).exists()  # no finished-looking model dir after the crash

    # The crash may have hit a save; add a newer checkpoint that is surely half-written (no marker,
    # truncated weights): resuming must skip and delete it.
    newest = complete_checkpoints(crashed / CHECKPOINT_DIR)[0]
    torn = crashed / CHECKPOINT_DIR / "checkpoint-9999"
    shutil.copytree(newest, torn)
    (torn / COMPLETE_MARKER).unlink()
    weights = torn / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    resume_command = _train_command(folder, tiny_checkpoint, crashed, "--resume")
    resumed = _start(resume_command, tmp_path / "res.steps", 0.0)
    _finish(resumed)
    assert not torn.exists()

    total = int((tmp_path / "ref.steps").read_text())
    done_after_resume = int((tmp_path / "res.steps").read_text())
    resumed_from = int(found.name.split("-")[1])
    assert resumed_from <= total - done_after_resume < total  # it resumed, from the mid-epoch one or later
    test_csv = folder / "test.csv"
    np.testing.assert_allclose(_scores(crashed, test_csv), _scores(reference, test_csv), rtol=0, atol=1e-5)
    ref_metrics = json.loads((reference / "metrics.json").read_text())
    new_metrics = json.loads((crashed / "metrics.json").read_text())
    assert [e["col_auc"] for e in new_metrics["epochs"]] == pytest.approx(
        [e["col_auc"] for e in ref_metrics["epochs"]], abs=1e-6
    )


# ---- which checkpoint is resumed from (no training needed) ----


def _fake_checkpoint(root: Path, step: int, record: dict, *, complete: bool = True) -> Path:
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(os.urandom(2048))
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if complete:
        mark_complete(path, record)
    return path


RECORD = {"config": TrainConfig(seed=1).to_dict(), "data": {"train_rows": "abc", "val_rows": "def"}}


def test_resume_takes_the_newest_whole_checkpoint_and_deletes_torn_ones(tmp_path):
    good = _fake_checkpoint(tmp_path, 10, RECORD)
    _fake_checkpoint(tmp_path, 5, RECORD)
    no_marker = _fake_checkpoint(tmp_path, 20, RECORD, complete=False)
    truncated = _fake_checkpoint(tmp_path, 30, RECORD)
    (truncated / "model.safetensors").write_bytes(b"\0" * 100)
    missing = _fake_checkpoint(tmp_path, 40, RECORD)
    (missing / "trainer_state.json").unlink()
    assert "no completion marker" in checkpoint_problem(no_marker)
    assert "truncated" in checkpoint_problem(truncated)
    assert "missing" in checkpoint_problem(missing)

    assert resume_checkpoint(tmp_path, RECORD, cleanup=True) == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-5"]


def test_resume_ignores_how_often_checkpoints_are_saved_but_not_other_settings(tmp_path):
    _fake_checkpoint(tmp_path, 10, RECORD)
    other_save_steps = {**RECORD, "config": {**RECORD["config"], "save_steps": 50}}
    assert resume_checkpoint(tmp_path, other_save_steps, cleanup=False).name == "checkpoint-10"
    other_lr = {**RECORD, "config": {**RECORD["config"], "lr": 1.0}}
    with pytest.raises(RulebertError, match="other settings or data") as err:
        resume_checkpoint(tmp_path, other_lr, cleanup=False)
    assert "\n" not in str(err.value)
    other_rows = {**RECORD, "data": {"train_rows": "xyz", "val_rows": "def"}}
    with pytest.raises(RulebertError, match="other settings or data"):
        resume_checkpoint(tmp_path, other_rows, cleanup=False)


def test_resume_with_no_whole_checkpoint_starts_over(tmp_path):
    _fake_checkpoint(tmp_path, 10, RECORD, complete=False)
    assert resume_checkpoint(tmp_path, RECORD, cleanup=True) is None
    assert resume_checkpoint(tmp_path / "absent", RECORD, cleanup=True) is None


def test_a_fresh_run_refuses_to_discard_an_unfinished_runs_checkpoints(tiny_checkpoint, data_dir, tmp_path):
    _fake_checkpoint(tmp_path / "out" / CHECKPOINT_DIR, 10, RECORD)
    config = TrainConfig(model=str(tiny_checkpoint), epochs=1, max_length=32)
    with pytest.raises(RulebertError, match="pass --resume to continue it or --overwrite"):
        train_model(config, data_dir / "train.csv", tmp_path / "out", progress=False)


def test_resume_refuses_a_checkpoint_of_other_settings(tiny_checkpoint, data_dir, tmp_path):
    """End to end: a real checkpoint, resumed with another learning rate."""
    config = TrainConfig(model=str(tiny_checkpoint), epochs=1, max_length=32, batch_size=16, val_fraction=0)
    train_model(config, data_dir / "train.csv", tmp_path / "m", progress=False, keep_checkpoints=True)
    (tmp_path / "m" / RECORD_FILE).unlink()  # as if it had crashed before the model dir was saved
    assert complete_checkpoints(tmp_path / "m" / CHECKPOINT_DIR)
    other = TrainConfig(**{**config.to_dict(), "lr": config.lr * 2})
    with pytest.raises(RulebertError, match="other settings or data"):
        train_model(other, data_dir / "train.csv", tmp_path / "m", resume=True, progress=False)
