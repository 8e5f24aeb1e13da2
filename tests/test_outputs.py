"""No command leaves a partial output when it is interrupted: a submission, a model dir or a report is
either whole or absent (an older whole one is kept or, where it no longer applies, removed)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rulebert import pipeline
from rulebert.cli import main
from rulebert.core.errors import RulebertError
from rulebert.inference import predict as P
from rulebert.model import model_dir as M
from rulebert.model.model_dir import RECORD_FILE, load_model_dir
from rulebert.training.train import CHECKPOINT_DIR


def _train_args(tiny_checkpoint: Path, data_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--train", str(data_dir / "train.csv"), "--test", str(data_dir / "test.csv"),
        "--output-dir", str(out), "--model", str(tiny_checkpoint), "--epochs", "2", "--lr", "1e-3",
        "--batch-size", "16", "--max-length", "32", "--val-fraction", "0.2", "--no-progress", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tiny_checkpoint, tmp_path_factory) -> tuple[Path, Path]:
    """(data folder, a model dir trained the ordinary way)."""
    from .conftest import make_frame

    folder = tmp_path_factory.mktemp("outputs")
    make_frame(48, seed=1).to_csv(folder / "train.csv", index=False)
    make_frame(10, seed=2, labelled=False).to_csv(folder / "test.csv", index=False)
    assert main(_train_args(tiny_checkpoint, folder, folder / "model")) == 0
    return folder, folder / "model"


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _fail_on_call(monkeypatch, target: object, name: str, call: int, error: BaseException) -> None:
    """Make ``target.name`` raise ``error`` on its ``call``-th call (the earlier calls go through)."""
    original, calls = getattr(target, name), [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == call:
            raise error
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, wrapper)


# ---- predict ----


def test_predict_failing_mid_way_leaves_no_file(trained, tmp_path, monkeypatch):
    folder, model_dir = trained
    _fail_on_call(monkeypatch, P.Scorer, "score", 2, RuntimeError("out of memory"))  # the 2nd of 3 chunks
    with pytest.raises(RuntimeError, match="out of memory"):
        pipeline.predict_file(
            model_dir, folder / "test.csv", tmp_path / "sub.csv", progress=False, chunk_rows=4
        )
    assert _files(tmp_path) == []


def test_predict_csv_writer_failing_half_way_keeps_the_old_submission(trained, tmp_path, monkeypatch):
    folder, model_dir = trained
    old = b"row_id,rule_violation\n1,0.5\n"
    (tmp_path / "sub.csv").write_bytes(old)

    def disk_full(self, handle, **kwargs):
        handle.write("row_id,rule_violation\n1000,0.")  # half a file, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", disk_full)
    with pytest.raises(OSError, match="No space left"):
        pipeline.predict_file(model_dir, folder / "test.csv", tmp_path / "sub.csv", progress=False)
    assert _files(tmp_path) == ["sub.csv"] and (tmp_path / "sub.csv").read_bytes() == old


def test_predict_command_interrupted_exits_130_with_no_file(trained, tmp_path, monkeypatch, capsys):
    folder, model_dir = trained
    _fail_on_call(monkeypatch, P.Scorer, "score", 1, KeyboardInterrupt())
    out = tmp_path / "sub.csv"
    code = main(["predict", "--model-dir", str(model_dir), "--test", str(folder / "test.csv"),
                 "--output", str(out), "--no-progress"])  # fmt: skip
    assert code == 130 and "interrupted" in capsys.readouterr().err
    assert _files(tmp_path) == []


# ---- train: interrupted while the model dir is being saved ----


def test_train_interrupted_while_saving_leaves_a_dir_that_is_refused_then_resume_finishes_it(
    trained, tiny_checkpoint, tmp_path, monkeypatch
):
    folder, reference = trained
    out = tmp_path / "model"
    moves_into_out = [0]
    original_replace = os.replace

    def replace(source, target):  # the process dies after the first file lands in the model dir
        if Path(target).parent == out:
            moves_into_out[0] += 1
            if moves_into_out[0] == 2:
                raise KeyboardInterrupt
        return original_replace(source, target)

    monkeypatch.setattr(M.os, "replace", replace)
    assert main(_train_args(tiny_checkpoint, folder, out)) == 130
    monkeypatch.undo()

    assert moves_into_out[0] == 2 and not (out / RECORD_FILE).exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging dir or temp file left
    with pytest.raises(RulebertError, match=r"not a rulebert model dir \(no rulebert.json; did training"):
        load_model_dir(out)

    # The Trainer's checkpoints survived: --resume finishes the job without training again.
    assert main(_train_args(tiny_checkpoint, folder, out, "--resume")) == 0
    assert not (out / CHECKPOINT_DIR).exists()
    test = pd.read_csv(folder / "test.csv")
    args = (test["body"].tolist(), test["rule"].tolist())
    np.testing.assert_allclose(P.Scorer(out).score(*args), P.Scorer(reference).score(*args), atol=1e-6)


def test_resaving_over_a_finished_model_that_fails_does_not_leave_a_mix(trained, tmp_path, monkeypatch):
    """An interrupted save over an older model: the dir is refused, not loaded half old and half new."""
    _, reference = trained
    model, tokenizer, config, record = load_model_dir(reference)
    out = tmp_path / "model"
    M.save_model_dir(out, model, tokenizer, config=config, base_model="x", data={}, metrics={})
    load_model_dir(out)
    _fail_on_call(monkeypatch, M.os, "replace", 3, OSError(5, "Input/output error"))
    with pytest.raises(OSError):
        M.save_model_dir(out, model, tokenizer, config=config, base_model="x", data={}, metrics={})
    with pytest.raises(RulebertError, match="not a rulebert model dir"):
        load_model_dir(out)


# ---- run ----


def test_interrupted_run_leaves_no_submission_or_report(tiny_checkpoint, data_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "submission.csv").write_text("row_id,rule_violation\n1,0.5\n")  # an older run's result
    (out / "report.md").write_text("# old\n")
    _fail_on_call(monkeypatch, P.Scorer, "score", 1, RuntimeError("CUDA error: device lost"))
    args = ["run", "--data-dir", str(data_dir), "--output-dir", str(out), "--model", str(tiny_checkpoint),
            "--epochs", "1", "--max-length", "32", "--no-progress"]  # fmt: skip
    with pytest.raises(RuntimeError, match="device lost"):
        main(args)
    assert _files(out) == ["model"]  # the new model only: no stale or partial submission, report, temp file
    load_model_dir(out / "model")
