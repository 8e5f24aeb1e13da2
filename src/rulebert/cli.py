"""The ``rulebert`` command: parses arguments and calls the library. Nothing else lives here.

Heavy libraries (torch, transformers) are imported inside the commands, so ``rulebert --help`` is instant.
Any :class:`RulebertError` ends the command with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from rulebert.config import TrainConfig
from rulebert.errors import RulebertError

EXIT_USAGE = 2


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    group = parser.add_argument_group("training options")
    group.add_argument(
        "--model",
        default=defaults.model,
        help="'default' (bundled MiniLM-L6), a local HF folder or a hub name",
    )
    group.add_argument("--epochs", type=float, default=defaults.epochs)
    group.add_argument("--lr", type=float, default=defaults.lr)
    group.add_argument("--batch-size", type=int, default=defaults.batch_size)
    group.add_argument("--max-length", type=int, default=defaults.max_length)
    group.add_argument("--seed", type=int, default=defaults.seed)
    group.add_argument("--val-fraction", type=float, default=defaults.val_fraction)
    group.add_argument("--input-format", choices=["pair", "template"], default=defaults.input_format)
    group.add_argument(
        "--include-subreddit", action=argparse.BooleanOptionalAction, default=defaults.include_subreddit
    )
    group.add_argument("--dedupe", action=argparse.BooleanOptionalAction, default=defaults.dedupe)
    group.add_argument("--bf16", choices=["auto", "on", "off"], default=defaults.bf16)
    group.add_argument(
        "--overwrite", action="store_true", help="replace a different model already in the output dir"
    )
    group.add_argument(
        "--resume", action="store_true", help="continue from the last checkpoint in the output dir"
    )
    group.add_argument("--no-progress", action="store_true", help="no progress bars")


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    if args.epochs <= 0 or args.lr <= 0 or args.batch_size <= 0 or args.max_length < 16:
        raise RulebertError("--epochs, --lr and --batch-size must be positive and --max-length at least 16")
    return TrainConfig(
        model=args.model,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        max_length=args.max_length,
        seed=args.seed,
        val_fraction=args.val_fraction,
        input_format=args.input_format,
        include_subreddit=args.include_subreddit,
        dedupe=args.dedupe,
        bf16=args.bf16,
    )


def _quiet_libraries() -> None:
    """Keep the transformers' start-up chatter (e.g. 'newly initialized weights') off the terminal."""
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging

    logging.set_verbosity_error()


def cmd_train(args: argparse.Namespace) -> int:
    config = _config_from_args(args)
    _quiet_libraries()
    from rulebert.train import train_model

    result = train_model(
        config,
        args.train,
        args.output_dir,
        args.test,
        overwrite=args.overwrite,
        resume=args.resume,
        progress=not args.no_progress,
    )
    print(
        json.dumps(
            {"model_dir": str(result.output_dir), "validation": result.metrics["validation"]}, indent=2
        )
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    _quiet_libraries()
    from rulebert.predict import predict_file

    submission = predict_file(
        args.model_dir, args.test, args.output, sample_path=args.sample, progress=not args.no_progress
    )
    print(f"wrote {len(submission)} rows to {args.output}", file=sys.stderr)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    config = _config_from_args(args)
    _quiet_libraries()
    from rulebert.pipeline import run_competition

    summary = run_competition(
        args.data_dir,
        args.output_dir,
        config,
        overwrite=args.overwrite,
        resume=args.resume,
        progress=not args.no_progress,
    )
    print(
        json.dumps(
            {k: summary[k] for k in ("model_dir", "submission", "validation", "wall_seconds")}, indent=2
        )
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rulebert", description="Fine-tune BERT to predict whether a comment breaks a community rule."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="fine-tune a model on a labelled CSV")
    train.add_argument("--train", required=True, type=Path, help="train.csv (needs rule_violation)")
    train.add_argument("--test", type=Path, help="a test.csv whose example columns become training rows")
    train.add_argument("--output-dir", required=True, type=Path, help="where the model dir is written")
    _add_train_options(train)
    train.set_defaults(func=cmd_train)

    predict = commands.add_parser("predict", help="write row_id,rule_violation for a test CSV")
    predict.add_argument("--model-dir", required=True, type=Path)
    predict.add_argument("--test", required=True, type=Path)
    predict.add_argument("--output", required=True, type=Path)
    predict.add_argument("--sample", type=Path, help="sample_submission.csv to check row_ids against")
    predict.add_argument("--no-progress", action="store_true")
    predict.set_defaults(func=cmd_predict)

    run = commands.add_parser("run", help="the Kaggle flow: train, then write OUT/submission.csv")
    run.add_argument(
        "--data-dir", required=True, type=Path, help="folder with train.csv, test.csv (+ sample)"
    )
    run.add_argument("--output-dir", required=True, type=Path)
    _add_train_options(run)
    run.set_defaults(func=cmd_run)
    return parser


def _version() -> str:
    from rulebert import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except RulebertError as err:
        print(f"rulebert: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("rulebert: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
