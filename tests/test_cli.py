"""The command line: real subprocesses for the happy paths, ``main()`` in-process for each bad input."""

import os
import subprocess
import sys

import pandas as pd
import pytest

from rulebert.cli import main

TINY = ["--epochs", "1", "--lr", "1e-3", "--max-length", "48", "--no-progress"]


def rulebert(*args, check=True):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "rulebert.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_help_lists_the_commands():
    out = rulebert("--help").stdout
    for command in ("train", "predict", "run"):
        assert command in out


def test_run_then_predict(tiny_checkpoint, data_dir, tmp_path):
    out = tmp_path / "out"
    rulebert("run", "--data-dir", data_dir, "--output-dir", out, "--model", tiny_checkpoint, *TINY)
    submission = pd.read_csv(out / "submission.csv")
    assert submission["row_id"].tolist() == pd.read_csv(data_dir / "sample_submission.csv")["row_id"].tolist()
    assert submission["rule_violation"].between(0, 1).all()
    assert (out / "model" / "rulebert.json").is_file() and (out / "report.md").is_file()
    assert "| epoch |" in (out / "report.md").read_text()

    again = tmp_path / "again.csv"
    rulebert(
        "predict",
        "--model-dir",
        out / "model",
        "--test",
        data_dir / "test.csv",
        "--output",
        again,
        "--no-progress",
    )
    pd.testing.assert_frame_equal(pd.read_csv(again), submission)


def test_bad_input_is_one_line_without_traceback(data_dir, tmp_path):
    frame = pd.read_csv(data_dir / "train.csv").rename(columns={"rule": "rulez"})
    frame.to_csv(tmp_path / "bad.csv", index=False)
    result = rulebert("train", "--train", tmp_path / "bad.csv", "--output-dir", tmp_path / "m", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"rulebert: error: {tmp_path / 'bad.csv'}: missing column 'rule' (did you mean 'rulez'?)"
    ]
    assert not (tmp_path / "m").exists()


def run_main(capsys, *args):
    code = main([str(a) for a in args])
    err = capsys.readouterr().err.strip()
    return code, err


def edit_csv(data_dir, tmp_path, name, change):
    frame = pd.read_csv(data_dir / name)
    change(frame)
    path = tmp_path / f"edited_{name}"
    frame.to_csv(path, index=False)
    return path


BAD_TRAIN_FILES = {
    "empty body": (
        lambda f: f.__setitem__("body", f["body"].where(f.index != 5, "")),
        "row 6 (row_id=1005), column 'body': empty",
    ),
    "label 3": (
        lambda f: f.__setitem__("rule_violation", f["rule_violation"].where(f.index != 2, 3)),
        "column 'rule_violation': label '3'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_TRAIN_FILES))
def test_bad_train_file(capsys, data_dir, tmp_path, tiny_checkpoint, case):
    change, message = BAD_TRAIN_FILES[case]
    path = edit_csv(data_dir, tmp_path, "train.csv", change)
    code, err = run_main(
        capsys, "train", "--train", path, "--output-dir", tmp_path / "m", "--model", tiny_checkpoint
    )
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "m").exists()


def test_non_utf8_and_empty_files(capsys, data_dir, tmp_path):
    raw = (data_dir / "train.csv").read_bytes()
    (tmp_path / "latin1.csv").write_bytes(raw.replace(b"the", b"th\xe9", 1))
    code, err = run_main(capsys, "train", "--train", tmp_path / "latin1.csv", "--output-dir", tmp_path / "m")
    assert code == 2 and "latin1.csv: line" in err and "not valid UTF-8" in err
    (tmp_path / "empty.csv").write_bytes(b"")
    code, err = run_main(capsys, "train", "--train", tmp_path / "empty.csv", "--output-dir", tmp_path / "m")
    assert code == 2 and err == f"rulebert: error: {tmp_path / 'empty.csv'}: file is empty"


def test_model_path_that_does_not_exist(capsys, data_dir, tmp_path):
    code, err = run_main(
        capsys,
        "train",
        "--train",
        data_dir / "train.csv",
        "--output-dir",
        tmp_path / "m",
        "--model",
        tmp_path / "no-model",
    )
    assert code == 2 and err == f"rulebert: error: {tmp_path / 'no-model'}: model path does not exist"
    assert not (tmp_path / "m").exists()


def test_output_dir_holding_a_different_model(capsys, data_dir, tmp_path, tiny_checkpoint):
    out = tmp_path / "m"
    args = [
        "train",
        "--train",
        data_dir / "train.csv",
        "--output-dir",
        out,
        "--model",
        tiny_checkpoint,
        *TINY,
    ]
    assert run_main(capsys, *args)[0] == 0
    before = (out / "model.safetensors").read_bytes()
    code, err = run_main(capsys, *args[: -len(TINY)], *TINY[:-1], "--seed", "3", "--no-progress")
    assert code == 2 and "already holds a different model" in err and "--overwrite" in err
    assert (out / "model.safetensors").read_bytes() == before


def test_predict_errors_leave_no_output(capsys, data_dir, tmp_path):
    out = tmp_path / "sub.csv"
    code, err = run_main(
        capsys, "predict", "--model-dir", tmp_path / "nope", "--test", data_dir / "test.csv", "--output", out
    )
    assert code == 2 and "model dir does not exist" in err and not out.exists()
    bad_test = edit_csv(data_dir, tmp_path, "test.csv", lambda f: f.pop("row_id"))
    code, err = run_main(capsys, "predict", "--model-dir", tmp_path, "--test", bad_test, "--output", out)
    assert code == 2 and "missing column 'row_id'" in err and not out.exists()


def test_run_needs_the_competition_files(capsys, tmp_path):
    code, err = run_main(capsys, "run", "--data-dir", tmp_path, "--output-dir", tmp_path / "out")
    assert code == 2 and "train.csv: file not found" in err


def test_a_full_disk_is_one_line_and_leaves_nothing(capsys, model_dir, data_dir, tmp_path, monkeypatch):
    """ENOSPC while the submission is written: one line naming the file, exit 74, nothing left behind."""
    import errno

    from rulebert.core import files

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", disk_full)
    out = tmp_path / "results" / "sub.csv"
    code, err = run_main(
        capsys,
        "predict",
        "--model-dir",
        model_dir,
        "--test",
        data_dir / "test.csv",
        "--output",
        out,
        "--no-progress",
    )
    assert code == 74, err
    last = err.splitlines()[-1]
    assert last == f"rulebert: error: {out}: No space left on device"
    # no file, no temp file, and not the folder the run made for it (issue 27)
    assert "Traceback" not in err and not out.exists() and not out.parent.exists()


def _train_flags(parser):
    train = next(a for a in parser._actions if a.dest == "command").choices["train"]
    return {option: action for action in train._actions for option in action.option_strings}


def test_every_config_field_is_a_train_flag_with_its_default():
    import dataclasses

    from rulebert.cli.entry_point import build_parser
    from rulebert.core.config import TrainConfig

    flags = _train_flags(build_parser())
    for field in dataclasses.fields(TrainConfig):
        if field.metadata.get("flag", True) is False:
            continue
        flag = "--" + field.name.replace("_", "-")
        assert flag in flags, flag
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        assert flags[flag].default == default and flags[flag].dest == field.name
    # the flags of before the fields drove them, with their choices and --x / --no-x forms
    assert flags["--keep"].choices == ["last", "best"] and flags["--bf16"].choices == ["auto", "on", "off"]
    assert flags["--train-rules"].choices == ["target", "all"]
    assert flags["--input-format"].choices == ["pair", "template"]
    for name in ("include-subreddit", "dedupe", "blend-examples", "use-test-examples"):
        assert flags[f"--no-{name}"] is flags[f"--{name}"]
    assert {"--warmup-ratio", "--weight-decay", "--overwrite", "--resume", "--no-progress"} <= set(flags)


def test_a_newly_declared_field_gets_its_flag(monkeypatch):
    import dataclasses
    from typing import Literal

    from rulebert.cli import commands, entry_point
    from rulebert.core.config import TrainConfig

    @dataclasses.dataclass
    class Extended(TrainConfig):
        label_smoothing: float = 0.0
        """Share of the target moved to the other class."""
        pooling: Literal["cls", "mean"] = "cls"
        """How a row becomes one vector."""
        notes: dict = dataclasses.field(default_factory=dict, metadata={"flag": False})

    monkeypatch.setattr(entry_point, "TrainConfig", Extended)
    monkeypatch.setattr(commands, "TrainConfig", Extended)
    parser = entry_point.build_parser()
    flags = _train_flags(parser)
    assert flags["--label-smoothing"].type is float and flags["--label-smoothing"].default == 0.0
    assert flags["--label-smoothing"].help.startswith("share of the target moved to the other class")
    assert flags["--pooling"].choices == ["cls", "mean"] and "--notes" not in flags
    args = parser.parse_args(["train", "--train", "t.csv", "--output-dir", "o", "--label-smoothing", "0.1"])
    config = commands._config_from_args(args)
    assert isinstance(config, Extended) and config.label_smoothing == 0.1 and config.pooling == "cls"


def test_a_field_no_flag_can_hold_must_say_so():
    import dataclasses

    from rulebert.core.config import TrainConfig, settings

    @dataclasses.dataclass
    class Odd(TrainConfig):
        layers: list = dataclasses.field(default_factory=list)

    with pytest.raises(TypeError, match="layers"):
        settings(Odd)
