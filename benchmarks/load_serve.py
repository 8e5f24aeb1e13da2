"""Load the real server over loopback and print latency percentiles.

    python benchmarks/load_serve.py --tiny                 # a tiny random model (what the tests use)
    python benchmarks/load_serve.py --model-dir runs/model # a trained model dir
    python benchmarks/load_serve.py --url http://127.0.0.1:8000 --requests 2000

A seeded mix of valid requests (/v1/score with 1-3 rules, /v1/score/batch with 1-8 items) and invalid
ones (oversize comment, oversize body, malformed JSON, wrong types, too many items), 16 at a time. It
stops after --requests; latencies are for the valid requests only. Only loopback URLs are accepted.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.serving

from tests.serving import build_tiny_checkpoint, make_model_dir, run_load, start_server  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running server (loopback only)")
    target.add_argument("--model-dir", type=Path, help="start a server for this model dir")
    target.add_argument("--tiny", action="store_true", help="start a server for a tiny random model")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.url and urlparse(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        parser.error("--url must be a loopback address")

    with contextlib.ExitStack() as stack:
        url, pid = args.url, None
        if not url:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            model_dir = args.model_dir
            if args.tiny:
                (folder / "checkpoint").mkdir()
                model_dir = make_model_dir(build_tiny_checkpoint(folder / "checkpoint"), folder / "model")
            server = stack.enter_context(start_server(model_dir, folder / "server.log"))
            url, pid = server.url, server.process.pid
        rss = None
        if pid is not None:
            import psutil

            process = psutil.Process(pid)
            rss = process.memory_info().rss
        result = run_load(url, total=args.requests, concurrency=args.concurrency, seed=args.seed)
        rss_after = process.memory_info().rss if pid is not None else None

    valid = len(result.latencies)
    print(f"{result.requests} requests ({valid} valid), {args.concurrency} concurrent, {result.wall:.1f} s")
    print(f"throughput {result.requests / result.wall:.0f} req/s")
    print(
        f"valid latency p50 {1000 * result.percentile(50):.0f} ms, p99 {1000 * result.percentile(99):.0f} ms"
    )
    counts = sorted(result.statuses.items())
    print("statuses:", ", ".join(f"{kind} {status} x{n}" for (kind, status), n in counts))
    if rss is not None:
        print(f"server RSS {rss / 2**20:.0f} MiB -> {rss_after / 2**20:.0f} MiB")
    print(f"failures: {len(result.failures)}")
    for line in result.failures[:10]:
        print("  ", line)
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
