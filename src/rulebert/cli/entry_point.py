"""The ``rulebert`` command line: its arguments, and the one place errors become exit codes. What each
command does is in :mod:`rulebert.cli.commands`.

Heavy libraries (torch, transformers) are imported inside the commands, so ``rulebert --help`` is instant.
Any :class:`RulebertError` ends the command with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rulebert._version import __version__
from rulebert.cli.commands import (
    cmd_adapt,
    cmd_evaluate,
    cmd_export,
    cmd_predict,
    cmd_run,
    cmd_score,
    cmd_serve,
    cmd_train,
)
from rulebert.core.config import DEFAULT_MODEL, MODERATION_RECIPE, MPNET, RECIPES, TrainConfig, settings
from rulebert.core.errors import RulebertError
from rulebert.core.logs import attach_stderr_handler

EXIT_USAGE = 2
EXIT_IO = 74  # sysexits.h EX_IOERR
# Errors of the machine, not of rulebert: reported in one line (file and reason), without a traceback.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def add_config_flags(group: Any, config_class: type) -> None:
    """One flag per field of ``config_class`` (:func:`rulebert.core.config.settings`): declared there, a
    field has its flag here, with its type, default, choices and help; booleans as ``--x`` / ``--no-x``."""
    recipes = RECIPES[DEFAULT_MODEL], RECIPES[MPNET]
    for setting in settings(config_class):
        help_text = setting.help.replace("%", "%%")
        first = help_text.split(" ", 1)[0]
        if first[1:].islower():  # "Seeds Python" -> "seeds Python"; "AdamW" stays
            help_text = help_text[:1].lower() + help_text[1:]
        help_text = help_text.rstrip(".")
        if setting.name in recipes[0]:  # None: the backbone's recipe
            mini, mpnet = (recipe[setting.name] for recipe in recipes)
            help_text += f"; default: the backbone's ({mini:g} for MiniLM, {mpnet:g} for mpnet)"
        elif setting.default is not None and "default" not in help_text:
            help_text += " (default: %(default)s)"
        options: dict[str, Any] = {"default": setting.default, "help": help_text, "dest": setting.name}
        if setting.kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif setting.choices:
            options["choices"] = list(setting.choices)
        elif setting.kind is not str:
            options["type"] = setting.kind
        group.add_argument(setting.flag, **options)


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training options")
    add_config_flags(group, TrainConfig)
    group.add_argument(
        "--overwrite", action="store_true", help="replace a different model already in the output dir"
    )
    group.add_argument(
        "--resume", action="store_true", help="continue from the last checkpoint in the output dir"
    )
    group.add_argument("--no-progress", action="store_true", help="no progress bars")


NO_EXPORT_HELP = (
    "do not write model.int8.onnx (by default it is written, checked against the torch model on the "
    "validation rows, and used by predict, score and serve on a CPU)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rulebert", description="Fine-tune BERT to predict whether a comment breaks a community rule."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train", help="fine-tune a model on a labelled CSV and/or moderators' decision logs"
    )
    train.add_argument("--train", type=Path, help="train.csv (needs rule_violation)")
    train.add_argument(
        "--decisions",
        type=Path,
        metavar="DIR",
        help="a folder of rules.jsonl + comments.csv (subreddit, body, removed): each community's decisions "
        "become (rulebook, comment) rows; unset --epochs/--lr/--max-length take the moderation recipe "
        f"({', '.join(f'{k} {v:g}' for k, v in MODERATION_RECIPE.items())})",
    )
    train.add_argument("--test", type=Path, help="a test.csv whose example columns become training rows")
    train.add_argument("--output-dir", required=True, type=Path, help="where the model dir is written")
    _add_train_options(train)
    train.add_argument("--no-export", action="store_true", help=NO_EXPORT_HELP)
    train.set_defaults(func=cmd_train)

    predict = commands.add_parser("predict", help="write row_id,rule_violation for a test CSV")
    predict.add_argument("--model-dir", required=True, type=Path)
    predict.add_argument("--test", required=True, type=Path)
    predict.add_argument("--output", required=True, type=Path)
    predict.add_argument("--sample", type=Path, help="sample_submission.csv to check row_ids against")
    predict.add_argument("--no-progress", action="store_true")
    predict.add_argument(
        "--backend",
        choices=["auto", "torch", "onnx"],
        default="auto",
        help="auto: an exported ONNX file (rulebert export) on a CPU, else torch",
    )
    predict.set_defaults(func=cmd_predict)

    export = commands.add_parser("export", help="write model.onnx (or model.int8.onnx) into a model dir")
    export.add_argument("--model-dir", required=True, type=Path)
    export.add_argument("--int8", action="store_true", help="dynamic int8 quantisation (fastest on a CPU)")
    export.add_argument(
        "--embedder",
        default=None,
        metavar="CHECKPOINT",
        help="instead, (re)write the sentence embedder that learns a rule's examples, from this checkpoint "
        "('default', 'mpnet' or a local HF folder)",
    )
    export.set_defaults(func=cmd_export)

    run = commands.add_parser("run", help="the Kaggle flow: train, then write OUT/submission.csv")
    run.add_argument(
        "--data-dir", required=True, type=Path, help="folder with train.csv, test.csv (+ sample)"
    )
    run.add_argument("--output-dir", required=True, type=Path)
    _add_train_options(run)
    run.add_argument("--no-export", action="store_true", help=NO_EXPORT_HELP)
    run.set_defaults(func=cmd_run)

    evaluate = commands.add_parser("evaluate", help="cross-validate a recipe beside a TF-IDF baseline")
    evaluate.add_argument("--train", required=True, type=Path, help="train.csv (needs rule_violation)")
    evaluate.add_argument(
        "--protocol", required=True, choices=["loro", "kfold"], help="leave one rule out, or grouped k-fold"
    )
    evaluate.add_argument("--folds", type=int, default=5, help="k for --protocol kfold (default 5)")
    evaluate.add_argument(
        "--recipe", choices=["finetune", "baseline"], default="finetune", help="baseline: TF-IDF+LR only"
    )
    evaluate.add_argument("--output-dir", required=True, type=Path, help="evaluation.json, ROC PNG go here")
    _add_train_options(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    adapt = commands.add_parser(
        "adapt", help="fine-tune a trained model dir on new rules' examples into a new model dir"
    )
    adapt.add_argument("--model-dir", required=True, type=Path, help="the trained model to start from")
    source = adapt.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--rules",
        type=Path,
        help='RULES.jsonl: one {"id", "text", "positive_examples", "negative_examples"} per line',
    )
    source.add_argument(
        "--test", type=Path, help="a competition-layout test.csv: its rules and example cells"
    )
    source.add_argument(
        "--rule",
        help="one rule's text (a whole rulebook works), its examples from --examples",
    )
    adapt.add_argument(
        "--examples",
        type=Path,
        help="with --rule: CSV/JSONL of text,label or a decision log body,removed (1 = breaks the rule)",
    )
    adapt.add_argument("--rule-id", default="rule", help="with --rule: the rule's id (default: rule)")
    adapt.add_argument(
        "--output-dir", required=True, type=Path, help="where the adapted model dir is written"
    )
    adapt.add_argument("--overwrite", action="store_true", help="replace a non-empty --output-dir")
    adapt.add_argument("--no-progress", action="store_true")
    adapt.add_argument("--no-export", action="store_true", help=NO_EXPORT_HELP)
    adapt.set_defaults(func=cmd_adapt)

    serve = commands.add_parser("serve", help="serve the HTTP API and web page for a model dir")
    serve.add_argument("--model-dir", required=True, type=Path)
    serve.add_argument("--host", default="127.0.0.1", help="default: loopback only")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="info", choices=["error", "warning", "info", "debug"])
    serve.add_argument(
        "--api-key-file",
        type=Path,
        help="file holding the API key that /v1/* requests must send as 'Authorization: Bearer KEY' "
        "(default: the RULEBERT_API_KEY environment variable; none: no key)",
    )
    serve.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="HOST",
        help="a Host header name to accept besides loopback and --host (repeatable; '*' accepts any)",
    )
    serve.add_argument(
        "--max-connections", type=int, default=64, help="connections served at once; beyond: 503 (default 64)"
    )
    serve.add_argument(
        "--request-timeout",
        type=float,
        default=10.0,
        help="seconds for a request's headers, then its body, to arrive; else 408 and closed (default 10)",
    )
    serve.add_argument(
        "--state-dir",
        type=Path,
        help="keep stored rules (/v1/rules) and adapted models (/v1/adapt) here; a restart with the same "
        "folder serves the newest adapted model and the stored rules",
    )
    serve.add_argument(
        "--rules-db", type=Path, help="the rules' SQLite file (default: STATE_DIR/rules.sqlite3)"
    )
    serve.set_defaults(func=cmd_serve)

    score = commands.add_parser("score", help="add a probability column to a CSV/JSONL of comments")
    score.add_argument("--model-dir", required=True, type=Path)
    which = score.add_mutually_exclusive_group(required=True)
    which.add_argument("--rule", help="the rule's text")
    which.add_argument(
        "--rules",
        type=Path,
        help="RULES.jsonl: every rule in one pass, one probability_<id> column each (with its examples)",
    )
    score.add_argument("--examples", type=Path, help="CSV/JSONL of text,label (1 = breaks the rule)")
    score.add_argument("--input", required=True, help="CSV/JSONL with a body or comment column; - for stdin")
    score.add_argument(
        "--output",
        default="-",
        help="a .csv or .jsonl file (the format follows the extension); - (default) stdout",
    )
    score.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="ray: --input is a folder or glob of .csv/.jsonl/.parquet shards, --output a folder (one shard "
        "each, same name and format), scored by Ray actors here or on a cluster (rulebert[ray])",
    )
    score.add_argument("--ray-address", metavar="ADDR", help="--engine ray: join this cluster (HEAD:6379)")
    score.add_argument("--actors", type=int, metavar="N", help="--engine ray: actors (default: CPUs/4)")
    score.add_argument("--no-progress", action="store_true")
    score.add_argument(
        "--raw-csv",
        action="store_true",
        help="write CSV cells as they are; by default a cell starting with = + - @ tab or CR gets a "
        "leading ' so that spreadsheets do not run it as a formula",
    )
    score.set_defaults(func=cmd_score)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    attach_stderr_handler()  # the library's log lines, as "rulebert: [warning: ]..." on stderr
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except RulebertError as err:
        print(f"rulebert: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:
        if err.errno not in ENVIRONMENT_ERRNOS:
            raise
        where = f"{err.filename}: " if err.filename else ""
        print(f"rulebert: error: {where}{err.strerror or err}", file=sys.stderr)
        return EXIT_IO
    except KeyboardInterrupt:
        print("rulebert: interrupted", file=sys.stderr)
        return 130
