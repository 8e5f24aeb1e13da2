"""What each ``rulebert`` command does with its parsed arguments: call the library, print a summary.

Heavy libraries (torch, transformers) are imported inside the commands, so ``rulebert --help`` is instant.
The parser and the error handling are in :mod:`rulebert.cli`.
"""

from __future__ import annotations

import argparse
import json
import sys

from rulebert.core.config import MODERATION_RECIPE, TrainConfig, settings
from rulebert.core.errors import RulebertError


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The flags as a :class:`TrainConfig` (one flag per field, :func:`~rulebert.core.config.settings`),
    which checks them (a bad value is a one-line error)."""
    values = {setting.name: getattr(args, setting.name) for setting in settings(TrainConfig)}
    if getattr(args, "decisions", None) is not None:  # rulebooks are long rule texts: their own recipe
        values |= {name: value for name, value in MODERATION_RECIPE.items() if values[name] is None}
    return TrainConfig(**values)


def _quiet_libraries() -> None:
    """Keep the transformers' start-up chatter (e.g. 'newly initialized weights') off the terminal."""
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # "Loading weights" / "Writing model shards" bars on every load and checkpoint are noise; rulebert's
    # own bars (training steps, predict rows) come from tqdm directly and stay.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # Through the environment when transformers is not loaded yet: importing it here would cost seconds
    # (it pulls in torch) that `rulebert predict` with the ONNX backend never needs.
    if "transformers" not in sys.modules:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        return
    from transformers.utils import logging

    logging.set_verbosity_error()


def _warn(message: str) -> None:
    print(f"rulebert: warning: {message}", file=sys.stderr)


def _check_listen(host: str, port: int) -> None:
    """The port is a port and free, checked before the model loads: a one-line error, not uvicorn's."""
    import socket

    if not 0 <= port <= 65535:
        raise RulebertError(f"--port {port}: a port is 0-65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as err:
        raise RulebertError(f"--host {host!r}: cannot resolve it ({err})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as err:
            raise RulebertError(f"cannot listen on {host}:{port} ({err.strerror or err})") from None


EXIT_NOT_LEARNED = 3
"""``train`` / ``run`` / ``adapt``: the model learned nothing (validation AUC at chance, constant scores, or
the loss at ln 2). The model dir is written and its metrics.json says ``"learned": false``."""


def _learned(metrics: dict, model_dir: object) -> int:
    """0, or :data:`EXIT_NOT_LEARNED` after one line on stderr, for a run that learned nothing."""
    if metrics.get("learned", True):
        return 0
    print(
        f"rulebert: error: {model_dir}: the model learned nothing: {metrics.get('not_learned')} (written "
        'anyway, marked "learned": false in metrics.json; try a lower --lr or more data)',
        file=sys.stderr,
    )
    return EXIT_NOT_LEARNED


def _is_rank_zero() -> bool:
    """False in the other processes of a ``torchrun`` / ``accelerate launch`` run."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def cmd_train(args: argparse.Namespace) -> int:
    config = _config_from_args(args)
    _quiet_libraries()
    import contextlib

    from rulebert.training.train import train_model

    with contextlib.redirect_stdout(sys.stderr):  # the Trainer's log lines: stdout is the JSON summary
        result = train_model(
            config,
            args.train,
            args.output_dir,
            args.test,
            decisions_path=args.decisions,
            overwrite=args.overwrite,
            resume=args.resume,
            progress=not args.no_progress,
            export_int8=not args.no_export,
        )
    if _is_rank_zero():  # under torchrun every process returns here; one summary is enough
        summary = {"model_dir": str(result.output_dir), "validation": result.metrics["validation"]}
        print(json.dumps(summary, indent=2))
        return _learned(result.metrics, result.output_dir)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    _quiet_libraries()
    from rulebert.pipeline import predict_file

    submission = predict_file(
        args.model_dir,
        args.test,
        args.output,
        sample_path=args.sample,
        progress=not args.no_progress,
        backend=args.backend,
    )
    print(f"wrote {len(submission)} rows to {args.output}", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    _quiet_libraries()
    from rulebert.backend.export import export_embedder, export_onnx
    from rulebert.model.backbones import resolve_checkpoint
    from rulebert.model.model_dir import verify_model_dir

    if args.embedder is not None:  # the embedder alone: the classifier and its files are left as they are
        verify_model_dir(args.model_dir)
        path = export_embedder(args.model_dir, resolve_checkpoint(args.embedder))
        print(f"wrote {path} (recorded in {path.parents[1] / 'onnx.json'})", file=sys.stderr)
        return 0
    path = export_onnx(args.model_dir, int8=args.int8)
    print(f"wrote {path} (recorded in {path.parent / 'onnx.json'})", file=sys.stderr)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    config = _config_from_args(args)
    _quiet_libraries()
    import contextlib

    from rulebert.pipeline import run_competition

    with contextlib.redirect_stdout(sys.stderr):  # the Trainer's log lines: stdout is the JSON summary
        summary = run_competition(
            args.data_dir,
            args.output_dir,
            config,
            overwrite=args.overwrite,
            resume=args.resume,
            progress=not args.no_progress,
            export_int8=not args.no_export,
        )
    if _is_rank_zero():
        print(
            json.dumps(
                {k: summary[k] for k in ("model_dir", "submission", "validation", "wall_seconds")}, indent=2
            )
        )
        return _learned(summary, summary["model_dir"])
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from importlib.util import find_spec

    missing = [name for name in ("fastapi", "uvicorn") if find_spec(name) is None]
    if missing:  # the `serve` extra; a core install (e.g. a Kaggle notebook's) lacks it
        raise RulebertError(f"serving needs `pip install rulebert[serve]` (missing: {', '.join(missing)})")
    _quiet_libraries()
    from rulebert.server.app import run_server
    from rulebert.server.guard import read_api_key

    api_key = read_api_key(args.api_key_file)  # RULEBERT_API_KEY when there is no file; checked first
    _check_listen(args.host, args.port)
    run_server(
        args.model_dir,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        api_key=api_key,
        allowed_hosts=args.allowed_host,
        max_connections=args.max_connections,
        request_timeout=args.request_timeout,
        state_dir=args.state_dir,
        rules_db=args.rules_db,
    )
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    _quiet_libraries()
    options = {"examples_path": args.examples, "rules_path": args.rules, "raw_csv": args.raw_csv}
    options["progress"] = not args.no_progress
    if args.engine == "ray":  # a folder (or glob) of shards in, a folder out
        from rulebert.scoring.ray_engine import score_shards

        cluster = {"address": args.ray_address, "actors": args.actors}
        rows, shards = score_shards(args.model_dir, args.rule, args.input, args.output, **options, **cluster)
        print(f"wrote {rows} rows in {shards} shard(s) to {args.output}", file=sys.stderr)
        return 0
    if args.ray_address is not None or args.actors is not None:
        raise RulebertError("--ray-address and --actors go with --engine ray")
    from rulebert.scoring.local import score_file

    count = score_file(args.model_dir, args.rule, args.input, args.output, **options, warn=_warn)
    if args.output != "-":
        print(f"wrote {count} rows to {args.output}", file=sys.stderr)
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    _quiet_libraries()
    from rulebert.domain.rules import read_rules_jsonl, rules_from_competition
    from rulebert.training.adapt import adapt_model

    if (args.rule is None) != (args.examples is None):
        raise RulebertError("--rule and --examples go together (a rule's text and its labelled examples)")
    if args.rules is not None:
        rules = read_rules_jsonl(args.rules)
    elif args.rule is not None:
        from rulebert.domain.rules import StoredRule, check_rule_id
        from rulebert.scoring.local import check_rule_text
        from rulebert.scoring.readers import read_examples

        check_rule_text(args.rule)
        examples = read_examples(args.examples)
        rule_id = check_rule_id(args.rule_id, "--rule-id")
        rules = [StoredRule(rule_id, args.rule, tuple(examples.positive), tuple(examples.negative))]
    else:
        from rulebert.domain.data import read_csv

        rules = rules_from_competition(read_csv(args.test, labelled=False))
    import contextlib

    with contextlib.redirect_stdout(sys.stderr):  # the Trainer's log lines: stdout is the JSON summary
        result = adapt_model(
            args.model_dir,
            rules,
            args.output_dir,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            export_int8=not args.no_export,
        )
    summary = {
        "model_dir": str(result.output_dir),
        "adapted_from": str(args.model_dir),
        "rules": [rule.id for rule in result.rules],
        "validation": result.metrics.get("validation"),
    }
    print(json.dumps(summary, indent=2))
    return _learned(result.metrics, result.output_dir)


def cmd_evaluate(args: argparse.Namespace) -> int:
    config = _config_from_args(args)
    _quiet_libraries()
    from rulebert.evaluation.evaluate import evaluate, markdown_table

    result = evaluate(
        args.train,
        args.protocol,
        args.output_dir,
        config,
        folds=args.folds,
        recipe=args.recipe,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(markdown_table(result))
    print(f"wrote {args.output_dir / 'evaluation.json'} in {result['wall_seconds']} s", file=sys.stderr)
    return 0
