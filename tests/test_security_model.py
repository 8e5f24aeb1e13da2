"""Hardening of what rulebert reads and writes on disk: model dirs whose files were changed after training,
checkpoints that ask to run their own code, output folders that are someone else's, huge comments, output
permissions, and the Python API's own checks. Every refusal is one line on stderr, exit code 2, no traceback,
and nothing is scored with a dir that does not hold what it was saved with."""

from __future__ import annotations

import csv
import json
import math
import os
import stat
from pathlib import Path

import pandas as pd
import pytest

from rulebert.cli import main
from rulebert.core.config import TrainConfig
from rulebert.core.errors import RulebertError
from rulebert.core.files import sha256_file
from rulebert.model.backbones import load_checkpoint
from rulebert.model.model_dir import (
    CALIBRATION_FILE,
    RECORD_FILE,
    load_calibrator,
    save_calibrator,
    save_model_dir,
    verify_model_dir,
)

from .serving import RULE

PLATT = {"method": "platt", "slope": 1.5, "intercept": -0.2}


# ---- helpers -------------------------------------------------------------------------------------------


def run_cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err.strip()


def assert_one_line_refusal(code: int, err: str, *needles: str) -> None:
    """Exit 2 and one error line (after any loading progress bars), naming what is wrong."""
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert errors == [err.splitlines()[-1]] and errors[0].startswith("rulebert: error: "), err
    for needle in needles:
        assert needle in errors[0], err


def predict(capsys, model_dir: Path, data_dir: Path, out: Path, *extra: str) -> tuple[int, str]:
    return run_cli(
        capsys, "predict", "--model-dir", model_dir, "--test", data_dir / "test.csv", "--output", out,
        "--no-progress", *extra,
    )  # fmt: skip


def read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def write_json(path: Path, payload) -> None:
    path.write_text(json.dumps(payload), encoding="utf-8")


def edit_record(model_dir: Path, change) -> None:
    record = read_json(model_dir / RECORD_FILE)
    change(record)
    write_json(model_dir / RECORD_FILE, record)


def rehash(model_dir: Path, name: str) -> None:
    """Record ``name``'s current hash, as a dir crafted to pass the hash check would."""
    edit_record(model_dir, lambda r: r["files_sha256"].__setitem__(name, sha256_file(model_dir / name)))


def as_old_dir(model_dir: Path) -> None:
    """A format-1 dir saved before rulebert hashed more than the weights."""
    edit_record(model_dir, lambda r: r.pop("files_sha256", None))


@pytest.fixture()
def calibrated_dir(tiny_checkpoint, tmp_path) -> Path:
    model, tokenizer = load_checkpoint(str(tiny_checkpoint))
    return save_model_dir(
        tmp_path / "calibrated",
        model,
        tokenizer,
        config=TrainConfig(model=str(tiny_checkpoint), max_length=64),
        base_model="tiny",
        data={},
        metrics={},
        extra_files={CALIBRATION_FILE: PLATT},
    )


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- 5. every file that changes a score is hashed and checked ------------------------------------------


def test_every_file_that_changes_a_score_is_hashed(calibrated_dir):
    record = read_json(calibrated_dir / RECORD_FILE)
    assert set(record["weights_sha256"]) == {"model.safetensors"}
    unhashed = {RECORD_FILE, "metrics.json", "README.md", "model.safetensors"}  # README.md: the model card
    written = {p.name for p in calibrated_dir.iterdir()} - unhashed
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", CALIBRATION_FILE} <= written
    assert set(record["files_sha256"]) == written  # whatever save_pretrained wrote, and the calibration
    assert all(sha256_file(calibrated_dir / n) == h for n, h in record["files_sha256"].items())


EDITS = {
    "tokenizer.json": lambda text: text.replace('"[UNK]"', '"[UNKNOWN]"', 1),
    "tokenizer_config.json": lambda text: text.replace("{", '{"do_lower_case": false,', 1),
    "config.json": lambda text: text.replace('"model_type": "bert"', '"model_type": "roberta"'),
    CALIBRATION_FILE: lambda text: json.dumps({**json.loads(text), "slope": 40.0}),
}


@pytest.mark.parametrize("name", sorted(EDITS))
def test_a_file_changed_after_training_is_refused(calibrated_dir, data_dir, tmp_path, capsys, name):
    path = calibrated_dir / name
    edited = EDITS[name](path.read_text(encoding="utf-8"))
    assert edited != path.read_text(encoding="utf-8")
    path.write_text(edited, encoding="utf-8")
    out = tmp_path / "submission.csv"
    code, err = predict(capsys, calibrated_dir, data_dir, out)
    assert_one_line_refusal(code, err, f"{path}:", "SHA-256 mismatch")
    assert not out.exists()


def test_the_onnx_path_checks_the_same_files(model_dir, data_dir, tmp_path, capsys):
    from rulebert.backend.export import export_onnx

    export_onnx(model_dir)
    tokenizer = model_dir / "tokenizer.json"  # the ONNX backend's tokenizer reads it without transformers
    tokenizer.write_text(EDITS["tokenizer.json"](tokenizer.read_text(encoding="utf-8")), encoding="utf-8")
    out = tmp_path / "submission.csv"
    code, err = predict(capsys, model_dir, data_dir, out, "--backend", "onnx")
    assert_one_line_refusal(code, err, "tokenizer.json", "SHA-256 mismatch")
    assert not out.exists()


def test_a_scored_file_added_after_training_is_refused(model_dir):
    write_json(model_dir / CALIBRATION_FILE, PLATT)  # this model was saved without one
    with pytest.raises(RulebertError, match=r"calibration.json: not listed in rulebert.json"):
        verify_model_dir(model_dir)


def test_save_calibrator_records_the_new_hash(calibrated_dir):
    from rulebert.domain.calibration import Calibrator

    save_calibrator(Calibrator("platt", {"slope": 2.0, "intercept": 0.0}), calibrated_dir)
    verify_model_dir(calibrated_dir)
    assert load_calibrator(calibrated_dir).params["slope"] == 2.0


def test_an_old_dir_without_file_hashes_still_scores(model_dir, data_dir, tmp_path, capsys):
    as_old_dir(model_dir)
    out = tmp_path / "submission.csv"
    code, err = predict(capsys, model_dir, data_dir, out)
    assert code == 0, err
    assert pd.read_csv(out)["rule_violation"].between(0, 1).all()


@pytest.mark.parametrize("weights", [{}, None, [], "model.safetensors"])
def test_a_record_without_weight_hashes_is_refused(model_dir, data_dir, tmp_path, capsys, weights):
    edit_record(
        model_dir, lambda r: r.pop("weights_sha256") if weights is None else r.update(weights_sha256=weights)
    )
    code, err = predict(capsys, model_dir, data_dir, tmp_path / "out.csv")
    assert_one_line_refusal(code, err, str(model_dir / RECORD_FILE))


@pytest.mark.parametrize("key", ["weights_sha256", "files_sha256"])
@pytest.mark.parametrize("where", ["absolute", "dotdot", "nested dotdot", "symlinked folder"])
def test_hash_entries_that_leave_the_dir_are_refused(model_dir, tmp_path, key, where):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"not part of the model")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "outside.bin").write_bytes(outside.read_bytes())
    (model_dir / "sub").mkdir()
    (model_dir / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    name = {
        "absolute": str(outside),
        "dotdot": "../outside.bin",
        "nested dotdot": "sub/../../outside.bin",
        "symlinked folder": "link/outside.bin",
    }[where]
    # The right hash: only the name itself can be refused.
    edit_record(model_dir, lambda r: r[key].__setitem__(name, sha256_file(outside)))
    with pytest.raises(RulebertError, match="leads outside the model dir") as err:
        verify_model_dir(model_dir)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("payload", [[], "a string", 3, None])
def test_a_record_that_is_not_a_json_object_is_refused(model_dir, data_dir, tmp_path, capsys, payload):
    write_json(model_dir / RECORD_FILE, payload)
    code, err = predict(capsys, model_dir, data_dir, tmp_path / "out.csv")
    assert_one_line_refusal(code, err, f"{model_dir / RECORD_FILE}: not a JSON object")


BAD_CONFIGS = {
    "unknown input_format": ({"input_format": "haiku"}, "--input-format must be one of pair, template"),
    "unknown keep": ({"keep": "x"}, "--keep must be one of"),
    "text for a number": ({"max_length": "64"}, "--max-length must be an integer"),
    "NaN learning rate": ({"lr": math.nan}, "--lr must be a finite number"),
    "max_length past the positions": ({"max_length": 4096}, "max_length 4096 is beyond the model's 512"),
    "config not an object": ("pair", "training settings must be a JSON object"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_a_bad_recorded_config_is_one_line_naming_rulebert_json(model_dir, data_dir, tmp_path, capsys, case):
    change, message = BAD_CONFIGS[case]
    edit_record(
        model_dir,
        lambda r: r.update(config={**r["config"], **change} if isinstance(change, dict) else change),
    )
    code, err = predict(capsys, model_dir, data_dir, tmp_path / "out.csv")
    assert_one_line_refusal(code, err, f"{model_dir / RECORD_FILE}:", message)
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[1, 2]", "config.json: not a JSON object"),
        ('{"model_type": "bert", "max_position_embeddings": "lots"}', "is not a positive integer"),
        ('{"hidden_size": 32}', "config.json: names no model_type"),
    ],
)
def test_a_bad_hf_config_is_refused_even_when_its_hash_is_right(model_dir, content, message):
    (model_dir / "config.json").write_text(content, encoding="utf-8")
    rehash(model_dir, "config.json")
    with pytest.raises(RulebertError, match=message):
        verify_model_dir(model_dir)


def test_a_smaller_position_table_than_max_length_is_refused(model_dir):
    config = read_json(model_dir / "config.json")
    write_json(model_dir / "config.json", {**config, "max_position_embeddings": 32})  # max_length is 64
    rehash(model_dir, "config.json")
    with pytest.raises(RulebertError, match="max_length 64 is beyond the model's 32 positions"):
        verify_model_dir(model_dir)


BAD_CALIBRATIONS = {
    "NaN slope": ('{"method": "platt", "slope": NaN, "intercept": 0.0}', "slope must be a finite number"),
    "negative slope": ('{"method": "platt", "slope": -1.0, "intercept": 0.0}', "slope -1.0 is not positive"),
    "zero slope": ('{"method": "platt", "slope": 0, "intercept": 0.0}', "is not positive"),
    "isotonic unsorted": ('{"method": "isotonic", "x": [0.5, 0.1], "y": [0.1, 0.2]}', "non-decreasing"),
    "isotonic lengths": ('{"method": "isotonic", "x": [0.1, 0.5], "y": [0.1]}', "of one length"),
    "isotonic empty": ('{"method": "isotonic", "x": [], "y": []}', "non-empty"),
    "isotonic y above 1": ('{"method": "isotonic", "x": [0.1, 0.5], "y": [0.1, 1.5]}', "lie in [0, 1]"),
    "isotonic not lists": ('{"method": "isotonic", "x": 0.5, "y": 0.5}', "x must be a list"),
    "isotonic NaN": ('{"method": "isotonic", "x": [0.1, NaN], "y": [0.1, 0.2]}', "x must be a finite"),
    "not an object": ("[1.5, -0.2]", "not a calibrator"),
}


@pytest.mark.parametrize("case", sorted(BAD_CALIBRATIONS))
def test_a_bad_calibration_is_one_line_and_never_scores(calibrated_dir, data_dir, tmp_path, capsys, case):
    content, message = BAD_CALIBRATIONS[case]
    (calibrated_dir / CALIBRATION_FILE).write_text(content, encoding="utf-8")
    with pytest.raises(RulebertError, match="calibration.json: unreadable calibration") as err:
        load_calibrator(calibrated_dir)
    assert message in str(err.value) and "\n" not in str(err.value)
    as_old_dir(calibrated_dir)  # no file hashes: the calibrator's own checks are what refuse it
    out = tmp_path / "submission.csv"
    code, err_line = predict(capsys, calibrated_dir, data_dir, out)
    assert_one_line_refusal(code, err_line, "calibration.json: unreadable calibration", message)
    assert not out.exists()


# ---- 6. no checkpoint or model dir runs code of its own ------------------------------------------------

EVIL_CODE = "import pathlib\npathlib.Path({sentinel!r}).write_text('ran')\n"
AUTO_MAP = {
    "AutoConfig": "evil.EvilConfig",
    "AutoModelForSequenceClassification": "evil.EvilModel",
    "AutoTokenizer": ["evil.EvilTokenizer", None],
}


def add_remote_code(folder: Path, sentinel: Path) -> None:
    (folder / "evil.py").write_text(EVIL_CODE.format(sentinel=str(sentinel)), encoding="utf-8")
    config = read_json(folder / "config.json")
    write_json(folder / "config.json", {**config, "auto_map": AUTO_MAP})


def test_train_refuses_a_checkpoint_with_its_own_code(tiny_checkpoint, data_dir, tmp_path, capsys):
    import shutil

    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint, checkpoint)
    sentinel = tmp_path / "code-ran"
    add_remote_code(checkpoint, sentinel)
    out = tmp_path / "model"
    code, err = run_cli(
        capsys, "train", "--train", data_dir / "train.csv", "--output-dir", out, "--model", checkpoint,
        "--epochs", "1", "--max-length", "32", "--no-progress",
    )  # fmt: skip
    assert_one_line_refusal(code, err, "config.json: asks to run its own code (auto_map)")
    assert not sentinel.exists() and not (out / RECORD_FILE).exists()


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_predict_refuses_a_model_dir_with_its_own_code(model_dir, data_dir, tmp_path, capsys, backend):
    if backend == "onnx":
        from rulebert.backend.export import export_onnx

        export_onnx(model_dir)
    sentinel = tmp_path / "code-ran"
    add_remote_code(model_dir, sentinel)
    rehash(model_dir, "config.json")  # crafted to pass the hash check: auto_map itself must be refused
    out = tmp_path / "submission.csv"
    code, err = predict(capsys, model_dir, data_dir, out, "--backend", backend)
    assert_one_line_refusal(code, err, "config.json: asks to run its own code (auto_map)")
    assert not sentinel.exists() and not out.exists()


# ---- 7. train --output-dir never deletes what rulebert did not write -----------------------------------


def train_args(tiny_checkpoint: Path, data_dir: Path, out: Path, *extra: str) -> list:
    return [
        "train", "--train", data_dir / "train.csv", "--output-dir", out, "--model", tiny_checkpoint,
        "--epochs", "1", "--lr", "1e-3", "--max-length", "32", "--val-fraction", "0.25", "--no-progress",
        *extra,
    ]  # fmt: skip


@pytest.fixture()
def users_folder(tmp_path) -> Path:
    folder = tmp_path / "my-project"
    (folder / "checkpoints" / "checkpoint-1").mkdir(parents=True)
    (folder / "notes.txt").write_text("my notes\n", encoding="utf-8")
    (folder / "checkpoints" / "best.pt").write_bytes(os.urandom(1000))
    (folder / "checkpoints" / "checkpoint-1" / "weights.bin").write_bytes(os.urandom(1000))
    return folder


@pytest.mark.parametrize("extra", [(), ("--overwrite",), ("--resume",)])
def test_a_foreign_folder_survives_train_byte_for_byte(
    users_folder, tiny_checkpoint, data_dir, capsys, extra
):
    before = snapshot(users_folder)
    code, err = run_cli(capsys, *train_args(tiny_checkpoint, data_dir, users_folder, *extra))
    assert_one_line_refusal(code, err, str(users_folder))
    assert snapshot(users_folder) == before


def test_a_foreign_folder_without_checkpoints_is_refused_unless_overwrite(
    tiny_checkpoint, data_dir, tmp_path, capsys
):
    folder = tmp_path / "my-project"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes\n", encoding="utf-8")
    code, err = run_cli(capsys, *train_args(tiny_checkpoint, data_dir, folder))
    assert_one_line_refusal(code, err, f"{folder}: not empty and holds no rulebert model", "--overwrite")
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]

    # --overwrite saves the model into it, keeps the user's file, and removes only its own checkpoints.
    code, err = run_cli(capsys, *train_args(tiny_checkpoint, data_dir, folder, "--overwrite"))
    assert code == 0, err
    assert (folder / "notes.txt").read_text(encoding="utf-8") == "my notes\n"
    assert (folder / RECORD_FILE).is_file() and not (folder / "checkpoints").exists()


def test_train_with_keep_checkpoints_then_retrain_removes_only_rulebert_checkpoints(
    tiny_checkpoint, data_dir, tmp_path
):
    from rulebert.training.checkpoints import OWNER_MARKER
    from rulebert.training.train import train_model

    config = TrainConfig(model=str(tiny_checkpoint), epochs=1, max_length=32, val_fraction=0)
    out = tmp_path / "m"
    train_model(config, data_dir / "train.csv", out, progress=False, keep_checkpoints=True)
    assert (out / "checkpoints" / OWNER_MARKER).is_file()
    (out / "checkpoints" / "README.txt").write_text("mine", encoding="utf-8")  # a user's file inside
    train_model(config, data_dir / "train.csv", out, progress=False, overwrite=True)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["README.txt"]


# ---- 9. a huge comment costs what its first characters cost --------------------------------------------


def test_a_5_mb_comment_is_scored_from_its_first_characters(model_dir, tmp_path, capsys, monkeypatch):
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    words = "buy cheap followers now, click the link for a discount and free shipping today "
    huge = (words * (5_000_000 // len(words) + 1))[:5_000_000]
    source = tmp_path / "in.jsonl"
    rows = [{"comment": huge, "n": 0}, {"comment": huge[:100_000], "n": 1}]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    longest = [0]
    original = PreTrainedTokenizerBase.__call__

    def spy(self, text=None, text_pair=None, *args, **kwargs):
        for texts in (text, text_pair):
            for t in [texts] if isinstance(texts, str) else texts or []:
                longest[0] = max(longest[0], len(t))
        return original(self, text, text_pair, *args, **kwargs)

    monkeypatch.setattr(PreTrainedTokenizerBase, "__call__", spy)
    out = tmp_path / "out.jsonl"
    code, err = run_cli(
        capsys, "score", "--model-dir", model_dir, "--rule", RULE, "--input", source, "--output", out,
        "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    written = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [w["n"] for w in written] == [0, 1] and written[0]["comment"] == huge  # the row is kept whole
    assert written[0]["probability"] == written[1]["probability"]
    assert 0 < longest[0] <= 64 * 100  # the tokenizer never saw more than max_length x 100 characters

    from rulebert.inference.predict import Scorer

    scorer = Scorer(model_dir, backend="torch")
    big, small = scorer.encode([huge, huge[:100_000]], [RULE, RULE])
    assert big == small and len(big["input_ids"]) == 64


# ---- 10. replacing an output keeps its permissions; the umask is read, never set ----------------------


def test_predict_keeps_a_replaced_files_mode_and_never_sets_the_umask(
    model_dir, data_dir, tmp_path, capsys, monkeypatch
):
    real_umask = os.umask
    previous = real_umask(0o027)
    try:

        def no_umask(*args):
            raise AssertionError("os.umask was called (it changes the umask of every thread)")

        monkeypatch.setattr(os, "umask", no_umask)
        private = tmp_path / "private.csv"
        private.write_text("row_id,rule_violation\n1,0.5\n", encoding="utf-8")
        private.chmod(0o600)
        code, err = predict(capsys, model_dir, data_dir, private)
        assert code == 0, err
        assert stat.S_IMODE(private.stat().st_mode) == 0o600 and len(pd.read_csv(private)) == 10

        fresh = tmp_path / "fresh.csv"
        code, err = predict(capsys, model_dir, data_dir, fresh)
        assert code == 0, err
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~0o027
    finally:
        monkeypatch.undo()
        real_umask(previous)


# ---- the Python API gets the CLI's checks; no process-wide state leaks ---------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"epochs": 0}, "--epochs, --lr and --batch-size must be positive"),
        ({"keep": "x"}, "--keep must be one of last, best, got 'x'"),
        ({"input_format": "haiku"}, "--input-format must be one of pair, template"),
        ({"batch_size": 8.5}, "--batch-size must be an integer"),
        ({"epochs": math.inf}, "--epochs must be a finite number"),
        ({"dedupe": "yes"}, "--dedupe must be true or false"),
    ],
)
def test_train_config_checks_python_callers_too(values, message):
    with pytest.raises(RulebertError, match=message):
        TrainConfig(**values)


def test_reading_a_csv_with_a_200_kb_cell_restores_the_field_limit(tmp_path):
    from rulebert.domain.data import read_csv

    frame = pd.DataFrame({"body": ["x" * 200_000, "short"], "rule": ["r", "r"], "rule_violation": [1, 0]})
    frame.to_csv(tmp_path / "train.csv", index=False)
    previous = csv.field_size_limit(131_072)  # the standard library's default, whatever ran before
    try:
        read = read_csv(tmp_path / "train.csv", labelled=True)
        assert len(read["body"][0]) == 200_000
        assert csv.field_size_limit() == 131_072  # raised for the read only
    finally:
        csv.field_size_limit(previous)
