"""Helpers for the server tests and benchmarks/load_serve.py: a tiny model dir, the real server as a
subprocess on a free loopback port, and a bounded load generator.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

RULE = "No advertising: spam and promotional links are not allowed."
COMMENTS = [
    "buy cheap followers now, click the link for a discount",
    "I really think this movie was better than the book",
    "free offer today only at my store, http deal",
    "the weather was nice so we took the dog to the river",
]


def build_tiny_checkpoint(folder: Path) -> Path:
    """A random 2-layer, 32-wide BERT with MiniLM's tokenizer (as conftest's ``tiny_checkpoint``)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from rulebert.model.backbones import default_checkpoint

    tokenizer = AutoTokenizer.from_pretrained(default_checkpoint())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    import torch

    torch.manual_seed(0)  # the same random weights in every session: test outcomes must not vary by run
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_model_dir(checkpoint: Path, out: Path, metrics: dict | None = None) -> Path:
    """A finished model dir (rulebert.json, metrics.json) around ``checkpoint``'s random weights."""
    from rulebert.core.config import TrainConfig
    from rulebert.model.backbones import load_checkpoint
    from rulebert.model.model_dir import save_model_dir

    model, tokenizer = load_checkpoint(str(checkpoint))
    return save_model_dir(
        out,
        model,
        tokenizer,
        config=TrainConfig(model=str(checkpoint), max_length=64),
        base_model="tiny",
        data={},
        metrics=metrics if metrics is not None else {},
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path


@contextlib.contextmanager
def start_server(
    model_dir: Path, log: Path, timeout: float = 120.0, extra_args: tuple[str, ...] = ()
) -> Iterator[Server]:
    """``python -m rulebert.cli serve`` on 127.0.0.1; yields once ``/healthz`` answers, stops it after."""
    port = free_port()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "rulebert.cli", "serve", "--model-dir", str(model_dir)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *extra_args]
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not up after {timeout:.0f} s:\n{log.read_text()}")
            time.sleep(0.2)
        yield Server(url, process, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- load ---------------------------------------------------------------------------------------------

# kind -> the status the server must answer
EXPECTED = {
    "score": 200,
    "batch": 200,
    "oversize_comment": 422,
    "too_many_items": 422,
    "malformed_json": 422,
    "wrong_type": 422,
    "oversize_body": 413,
}
WEIGHTS = {
    "score": 40,
    "batch": 30,
    "oversize_comment": 6,
    "too_many_items": 6,
    "malformed_json": 6,
    "wrong_type": 6,
    "oversize_body": 6,
}


def make_request(kind: str, rng: random.Random) -> tuple[str, bytes]:
    """(path, JSON body bytes) for one request of ``kind``."""
    rule = {"text": RULE, "positive_examples": [COMMENTS[0]], "negative_examples": [COMMENTS[1]]}
    if kind == "score":
        rules = [{**rule, "id": f"r{i}"} for i in range(rng.randint(1, 3))]
        return "/v1/score", json.dumps({"comment": rng.choice(COMMENTS), "rules": rules}).encode()
    if kind == "batch":
        items = [{"comment": rng.choice(COMMENTS), "rule": rule} for _ in range(rng.randint(1, 8))]
        return "/v1/score/batch", json.dumps({"items": items}).encode()
    if kind == "oversize_comment":
        return "/v1/score", json.dumps({"comment": "spam " * 2500, "rules": [rule]}).encode()
    if kind == "too_many_items":
        items = [{"comment": "hi", "rule": {"text": "r"}}] * 300
        return "/v1/score/batch", json.dumps({"items": items}).encode()
    if kind == "malformed_json":
        return "/v1/score", b'{"comment": "unterminated'
    if kind == "wrong_type":
        return "/v1/score", json.dumps({"comment": 7, "rules": "all of them"}).encode()
    if kind == "oversize_body":
        return "/v1/score", json.dumps({"comment": "x", "rules": [rule], "pad": "y" * 1_200_000}).encode()
    raise ValueError(kind)


@dataclass
class LoadResult:
    requests: int = 0
    statuses: Counter = field(default_factory=Counter)  # (kind, status) -> count
    failures: list[str] = field(default_factory=list)  # what went wrong, one line each
    latencies: list[float] = field(default_factory=list)  # seconds, valid requests only
    wall: float = 0.0

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else float("nan")


async def _load(url: str, total: int, concurrency: int, seed: int) -> LoadResult:
    rng = random.Random(seed)
    kinds = rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()), k=total)
    plan = [(kind, *make_request(kind, rng)) for kind in kinds]
    result, queue = LoadResult(requests=total), iter(plan)
    headers = {"Content-Type": "application/json"}

    async def worker(client: httpx.AsyncClient) -> None:
        for kind, path, body in queue:  # the shared iterator hands each request to one worker
            start = time.perf_counter()
            try:
                response = await client.post(path, content=body, headers=headers)
            except httpx.TransportError as err:
                result.failures.append(f"{kind}: {type(err).__name__}: {err}")
                continue
            elapsed = time.perf_counter() - start
            result.statuses[(kind, response.status_code)] += 1
            if response.status_code != EXPECTED[kind]:
                result.failures.append(f"{kind}: HTTP {response.status_code} {response.text[:200]}")
            elif response.status_code == 200:
                result.latencies.append(elapsed)
                scores = response.json()["scores"]
                if not all(0.0 <= s["probability"] <= 1.0 for s in scores):
                    result.failures.append(f"{kind}: probability out of [0, 1]: {scores}")

    start = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    result.wall = time.perf_counter() - start
    return result


def run_load(url: str, total: int = 600, concurrency: int = 16, seed: int = 0) -> LoadResult:
    """``total`` requests (a fixed, seeded mix of valid and invalid ones), ``concurrency`` at a time."""
    return asyncio.run(_load(url, total, concurrency, seed))
