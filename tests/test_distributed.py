"""``torchrun --nproc_per_node=2 --no-python rulebert train``: data-parallel training on CPUs (gloo).

Real torchrun processes on the tiny random BERT. Only rank 0 writes the model dir; its metrics record the
world size, and its validation metrics (evaluated by both processes, gathered) are those the saved model
reproduces when one process scores the validation rows. A run crashed mid-epoch resumes under torchrun.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rulebert.backend.device import cpu_has_native_bf16
from rulebert.core.config import TrainConfig
from rulebert.core.errors import RulebertError
from rulebert.domain import data as D
from rulebert.domain.metrics import classification_metrics
from rulebert.inference.predict import Scorer
from rulebert.model.model_dir import METRICS_FILE, RECORD_FILE, read_record, verify_model_dir
from rulebert.training.checkpoints import (
    COMPLETE_MARKER,
    complete_checkpoints,
    mark_complete,
    resume_checkpoint,
)
from rulebert.training.train import CHECKPOINT_DIR, prepare_rows

from .conftest import make_frame

BIN = Path(sys.executable).parent
TORCHRUN, RULEBERT = BIN / "torchrun", BIN / "rulebert"
pytestmark = pytest.mark.skipif(
    not (TORCHRUN.is_file() and RULEBERT.is_file()), reason="needs torchrun and rulebert beside the python"
)
SAVE_STEPS = 4  # 140 training rows, 2 x 8 per step: 9 steps an epoch; checkpoints at 4, 8, 9, 12, 16, 18
CRASH_AT_STEP = 14  # in epoch 2, two steps after checkpoint-12 (a step needs both ranks: 12 is marked)

# A torchrun worker that runs `rulebert` (as the console script does), killing itself with SIGKILL when
# training reaches step $CRASH_AT_STEP: every rank does, as in a power cut.
CRASHING_RUNNER = """
import os, runpy, signal, sys
from transformers import Trainer
crash_at, step = int(os.environ["CRASH_AT_STEP"]), Trainer.training_step
def training_step(self, *args, **kwargs):
    if self.state.global_step >= crash_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return step(self, *args, **kwargs)
Trainer.training_step = training_step
sys.argv = ["rulebert"] + sys.argv[1:]
runpy.run_module("rulebert.cli", run_name="__main__", alter_sys=True)
"""


def _env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "CUDA_VISIBLE_DEVICES": "",  # CPU processes (gloo), on a machine with GPUs too
        **extra,
    }


def _torchrun(entry: list[str], folder: Path, model: Path, out: Path, *extra: str) -> list[str]:
    """torchrun on 2 local processes, a free rendezvous port (--standalone), training on the tiny model in
    fp32 (--bf16 auto would depend on the CPU)."""
    return [
        str(TORCHRUN), "--standalone", "--nproc_per_node=2", *entry, "train",
        "--train", str(folder / "train.csv"), "--test", str(folder / "test.csv"), "--output-dir", str(out),
        "--model", str(model), "--epochs", "2", "--lr", "3e-3", "--batch-size", "8", "--max-length", "48",
        "--val-fraction", "0.5", "--save-steps", str(SAVE_STEPS), "--bf16", "off", "--no-progress", *extra,
    ]  # fmt: skip


def _run(command: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=_env(**env), capture_output=True, text=True, timeout=300)


def _scorer(model_dir: Path) -> Scorer:
    return Scorer(model_dir, device="cpu", backend="torch")  # fp32, as the CPU processes evaluated


def _scores(model_dir: Path, test_csv: Path) -> np.ndarray:
    test = pd.read_csv(test_csv)
    return _scorer(model_dir).score(test["body"].tolist(), test["rule"].tolist(), test["subreddit"].tolist())


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 train rows (280 labelled rows: 140 to validate on, more than one 64-row batch per process)."""
    folder = tmp_path_factory.mktemp("ddp-data")
    make_frame(48, seed=1).to_csv(folder / "train.csv", index=False)
    make_frame(10, seed=2, labelled=False).to_csv(folder / "test.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def trained(data_folder: Path, tiny_checkpoint: Path) -> tuple[Path, subprocess.CompletedProcess]:
    out = data_folder.parent / "ddp-model"
    done = _run(_torchrun(["--no-python", str(RULEBERT)], data_folder, tiny_checkpoint, out))
    assert done.returncode == 0, done.stderr[-4000:]
    return out, done


def test_torchrun_trains_a_model_dir_on_two_processes(trained, data_folder):
    out, done = trained
    record = verify_model_dir(out)  # finished, intact: weights match their recorded hashes
    metrics = json.loads((out / METRICS_FILE).read_text())
    assert metrics["world_size"] == 2 and metrics["device"] == "cpu"
    assert [e["epoch"] for e in metrics["epochs"]] == [1.0, 2.0]
    assert metrics["train_rows"] + metrics["validation_rows"] == record["data"]["rows"]
    # Only rank 0 wrote: no checkpoints left, no stray or half-moved files (e.g. a second .saving- dir).
    assert not (out / CHECKPOINT_DIR).exists()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert f'"model_dir": "{out}"' in done.stdout
    scores = _scores(out, data_folder / "test.csv")
    assert scores.shape == (10,) and np.all((scores >= 0) & (scores <= 1))


def _check_validation_metrics(model_dir: Path, data_folder: Path) -> None:
    """The validation metrics saved with ``model_dir`` (the last epoch's, evaluated by the processes
    together) are those of one process scoring all validation rows with the saved weights."""
    config = TrainConfig.from_dict(read_record(model_dir)["config"])
    rows, _ = prepare_rows(config, data_folder / "train.csv", data_folder / "test.csv")
    _, val = D.grouped_split(rows, config.val_fraction, config.seed)
    assert len(val) > 2 * 64  # more than one evaluation batch per process, the last one padded
    scorer = _scorer(model_dir)
    scorer.calibrator = None  # raw scores: the epoch metrics were measured before calibration
    scores = scorer.score(val[D.TEXT].tolist(), val[D.RULE].tolist(), val[D.SUBREDDIT].tolist())
    again = classification_metrics(val[D.LABEL], scores, val[D.RULE])
    kept = json.loads((model_dir / METRICS_FILE).read_text())["validation"]  # keep="last"
    assert kept["col_auc"] == pytest.approx(again["col_auc"], abs=1e-3)  # rows out of order: far off
    assert kept["roc_auc"] == pytest.approx(
        again["roc_auc"], abs=1e-3
    )  # (a tie flipped by float noise: 2e-4)
    assert kept["accuracy"] == pytest.approx(again["accuracy"], abs=1e-9)
    p, labels = np.clip(scores, 1e-12, 1 - 1e-12), val[D.LABEL].to_numpy()
    loss = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    assert kept["loss"] == pytest.approx(loss, abs=1e-5)  # not doubled, no padding rows counted
    assert len(pd.read_csv(model_dir / "validation_predictions.csv")) == len(val)


def test_distributed_validation_equals_one_process_scoring_the_rows(trained, data_folder):
    """Both processes evaluate (batches sharded, gathered, the last one padded); the metrics are still
    those of all validation rows, in order, once: per-rule AUC needs rows in order, the loss no repeats."""
    _check_validation_metrics(trained[0], data_folder)


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="needs a CPU with AVX512-BF16 or AMX")
def test_bf16_on_cpus_under_torchrun_evaluates_as_the_scorer(data_folder, tiny_checkpoint, tmp_path):
    """bf16 autocast trains on the CPU processes; evaluation runs in fp32 inside DDP, as a CPU Scorer."""
    out = tmp_path / "bf16"
    entry = ["--no-python", str(RULEBERT)]
    done = _run(_torchrun(entry, data_folder, tiny_checkpoint, out, "--bf16", "on", "--epochs", "1"))
    assert done.returncode == 0, done.stderr[-4000:]
    metrics = json.loads((out / METRICS_FILE).read_text())
    assert metrics["bf16"] and metrics["world_size"] == 2
    _check_validation_metrics(out, data_folder)


def test_crashed_mid_epoch_then_resumed_under_torchrun(trained, data_folder, tiny_checkpoint, tmp_path):
    """Both ranks die at step 14 (SIGKILL); `--resume` under torchrun continues from checkpoint-12 and
    gives the uninterrupted run's model. A torn newer checkpoint is deleted (by rank 0 only)."""
    reference, _ = trained
    out = tmp_path / "crashed"
    runner = tmp_path / "runner.py"
    runner.write_text(CRASHING_RUNNER)
    crashed = _run(
        _torchrun([str(runner)], data_folder, tiny_checkpoint, out), CRASH_AT_STEP=str(CRASH_AT_STEP)
    )
    assert crashed.returncode != 0 and "SIGKILL" in crashed.stderr, crashed.stderr[-4000:]
    assert not (out / RECORD_FILE).exists()
    newest = complete_checkpoints(out / CHECKPOINT_DIR)[0]
    assert newest.name == "checkpoint-12"
    marked = json.loads((newest / COMPLETE_MARKER).read_text())["files"]
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(marked)  # each rank's, written before the marker
    history = json.loads((newest / "trainer_state.json").read_text())["log_history"]
    first_eval = next(entry for entry in history if "eval_loss" in entry)  # epoch 1's, timed before the crash
    torn = out / CHECKPOINT_DIR / "checkpoint-9999"  # half-written: no marker, weights cut short
    shutil.copytree(newest, torn)
    (torn / COMPLETE_MARKER).unlink()
    (torn / "model.safetensors").write_bytes(b"\0" * 100)

    resumed = _run(_torchrun(["--no-python", str(RULEBERT)], data_folder, tiny_checkpoint, out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert not torn.exists()
    verify_model_dir(out)
    test_csv = data_folder / "test.csv"
    np.testing.assert_allclose(_scores(out, test_csv), _scores(reference, test_csv), rtol=0, atol=1e-5)
    ref_epochs = json.loads((reference / METRICS_FILE).read_text())["epochs"]
    new_epochs = json.loads((out / METRICS_FILE).read_text())["epochs"]
    assert [e["loss"] for e in new_epochs] == pytest.approx([e["loss"] for e in ref_epochs], abs=1e-6)
    # It resumed (rather than starting over): epoch 1's evaluation is the one from before the crash.
    assert (new_epochs[0]["runtime"], new_epochs[0]["samples_per_second"]) == (
        first_eval["eval_runtime"],
        first_eval["eval_samples_per_second"],
    )


def test_resume_refuses_a_checkpoint_of_another_world_size(tmp_path):
    """A checkpoint of a 2-process run is not resumed by 1 process: the global batch, and so the point in
    the data where the run stopped, differ."""
    folder = tmp_path / "checkpoint-3"
    folder.mkdir()
    (folder / "trainer_state.json").write_text("{}")
    record = {"config": TrainConfig(seed=1).to_dict(), "data": {"train_rows": "a", "val_rows": "b"}}
    mark_complete(folder, {**record, "world_size": 2})
    assert resume_checkpoint(tmp_path, {**record, "world_size": 2}, cleanup=False) == folder
    with pytest.raises(RulebertError, match="another number of processes"):
        resume_checkpoint(tmp_path, {**record, "world_size": 1}, cleanup=False)
    mark_complete(folder, record)  # a marker from before world sizes were recorded: one process
    assert resume_checkpoint(tmp_path, {**record, "world_size": 1}, cleanup=False) == folder
