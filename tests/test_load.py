"""A bounded load test against the real server on 127.0.0.1: a seeded mix of valid, oversize and malformed
requests, 16 at a time. Every valid request must succeed, every invalid one get its 4xx, the server must
stay up, and its memory must not keep growing. It stops by itself after a fixed number of requests.
"""

from __future__ import annotations

import httpx
import psutil
import pytest

from tests.serving import EXPECTED, make_model_dir, run_load, start_server

REQUESTS = 600
CONCURRENCY = 16
RSS_GROWTH_LIMIT = 150 * 2**20  # bytes: a leak of 256 kB or more per request would cross it


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("load")
    model_dir = make_model_dir(tiny_checkpoint, folder / "model")
    with start_server(model_dir, folder / "server.log") as running:
        yield running


def test_mixed_load_under_concurrency(server):
    process = psutil.Process(server.process.pid)
    warm = run_load(server.url, total=100, concurrency=CONCURRENCY, seed=1)  # allocators and caches settle
    assert warm.failures == []
    rss_before = process.memory_info().rss

    result = run_load(server.url, total=REQUESTS, concurrency=CONCURRENCY, seed=2)

    assert result.failures == [], result.failures[:5]
    assert sum(result.statuses.values()) == REQUESTS
    kinds = {kind for kind, _ in result.statuses}
    assert kinds == set(EXPECTED)  # the seeded mix holds every kind of request
    assert {status for _, status in result.statuses} == {200, 413, 422}
    assert httpx.get(server.url + "/healthz").json()["status"] == "ok"
    assert server.process.poll() is None
    growth = process.memory_info().rss - rss_before
    assert growth < RSS_GROWTH_LIMIT, f"server RSS grew by {growth / 2**20:.0f} MiB over {REQUESTS} requests"
