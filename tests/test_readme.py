"""Every ``rulebert`` command the README shows runs as written.

Commands come from the ```bash blocks and from the step-by-step list. Each one is parsed by the real
argument parser (a missing required flag or a misspelt one fails here); the cheap ones, ``rulebert score``
on the tiny model, are run as written in a shell, in a folder laid out as the README assumes
(``runs/model``, ``rules.jsonl``, ``comments.csv``, ...).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rulebert.cli.entry_point import build_parser
from tests.serving import COMMENTS, make_model_dir

README = Path(__file__).resolve().parent.parent / "README.md"
STEPS = "## A new rule, step by step"
SHELL_STOP = {"|", ">", "<", ">>", "&&", ";"}


def readme_commands(text: str) -> list[str]:
    """The ``rulebert ...`` command lines of the README: in ```bash blocks (continuations joined, a pipe's
    ``rulebert`` side included) and in the code spans of the step list."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if re.search(r"(^|\|\s*)rulebert ", line.strip()):
                commands.append(" ".join(line.split()))
    steps = text.split(STEPS, 1)[1].split("\n## ", 1)[0]
    commands += [" ".join(span.split()) for span in re.findall(r"`(rulebert [^`]+)`", steps)]
    return commands


def argv_of(command: str) -> list[str]:
    """The arguments ``rulebert`` gets from a command line: after ``rulebert``, up to a pipe or redirect,
    comments and ``[optional parts]`` left out."""
    tokens = shlex.split(command, comments=True)
    tokens = tokens[tokens.index("rulebert") + 1 :]
    out, optional = [], 0
    for token in tokens:
        if token in SHELL_STOP:
            break
        optional += token.startswith("[")
        if not optional:
            out.append(token)
        optional -= token.endswith("]") and optional > 0
    return out


COMMANDS = readme_commands(README.read_text(encoding="utf-8"))


def test_the_readme_shows_the_commands_it_should():
    assert any(argv_of(c)[:1] == ["score"] and "--rules" in c for c in COMMANDS)  # step 2
    assert {argv_of(c)[0] for c in COMMANDS} >= {"train", "predict", "run", "evaluate", "score", "adapt"}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_readme_command_parses_as_written(command):
    args = build_parser().parse_args(argv_of(command))  # SystemExit (exit 2) on a missing or bad flag
    assert callable(args.func)


@pytest.fixture()
def readme_folder(tiny_checkpoint, tmp_path):
    """A folder with what the README's score commands name: runs/model, runs/moderation/model, rules.jsonl
    (the README's own example rule), comments.csv / .jsonl, ads-examples.csv, rulebook.txt, decisions.csv."""
    make_model_dir(tiny_checkpoint, tmp_path / "runs" / "model")
    make_model_dir(tiny_checkpoint, tmp_path / "runs" / "moderation" / "model")  # the community section's
    rule = re.search(r"```json\n(\{.*?\})\n```", README.read_text(encoding="utf-8"), flags=re.S).group(1)
    (tmp_path / "rules.jsonl").write_text(json.dumps(json.loads(rule)) + "\n", encoding="utf-8")
    with open(tmp_path / "comments.csv", "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["body"], *[[c] for c in COMMENTS]])
    (tmp_path / "comments.jsonl").write_text("".join(json.dumps({"body": c}) + "\n" for c in COMMENTS))
    with open(tmp_path / "ads-examples.csv", "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["text", "label"], [COMMENTS[0], 1], [COMMENTS[1], 0]])
    # a community's rulebook and its moderators' decision log (the README's community section)
    (tmp_path / "rulebook.txt").write_text(
        "1. No spam: no selling.\n2. Be civil: no insults.\n", encoding="utf-8"
    )
    with open(tmp_path / "decisions.csv", "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["body", "removed"], [COMMENTS[0], 1], [COMMENTS[1], 0]])
    return tmp_path


SCORE_COMMANDS = [c for c in COMMANDS if argv_of(c)[:1] == ["score"] and "--engine" not in c]


@pytest.mark.skipif(
    shutil.which("rulebert", path=str(Path(sys.executable).parent)) is None, reason="no entry point"
)
@pytest.mark.parametrize("command", SCORE_COMMANDS)
def test_readme_score_commands_run_as_written(command, readme_folder):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {command}"],
        cwd=readme_folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    argv = argv_of(command)
    output = argv[argv.index("--output") + 1] if "--output" in argv else shlex.split(command)[-1]
    written = (readme_folder / output).read_text(encoding="utf-8")
    assert "probability" in written and "mode" in written
