"""bench.store_reads on the shared Redis (DB 2, its own prefix): both read modes, same states."""

from __future__ import annotations

import argparse
import asyncio

import redis

from bench import store_reads
from tests.feature_store.servers import SHARED_HOST, SHARED_PORT, shared_redis_url


def test_measure_compares_both_modes_on_the_same_users_and_cleans_up() -> None:
    url = shared_redis_url(2).split("?", 1)[0]  # fails with a hint when Redis is down
    args = argparse.Namespace(users=5, rounds=2, calls=1)
    row = asyncio.run(store_reads.measure(url, 12, args))
    assert row["state_per_user"] == {"positives": 9, "dislikes": 3, "seen": 12}
    for mode in store_reads.MODES:
        assert set(row[mode]) == {"wall_us", "client_cpu_us", "redis_cpu_us"}
        assert row[mode]["wall_us"] > 0 and row[mode]["client_cpu_us"] > 0
    assert row["ratio_script_over_pipeline"]["wall_us"] > 0
    leftover = redis.Redis(host=SHARED_HOST, port=SHARED_PORT, db=2).scan_iter("storereads*")
    assert next(leftover, None) is None
    doc = {
        "command": "python -m bench.store_reads",
        "git_revision": "0" * 40,
        "finished_at": "now",
        "settings": {"users": 5, "rounds": 2, "calls": 1, "read_chunk": 8},
        "results": [row],
    }
    text = store_reads.markdown(doc)
    assert "| 12 (9 / 3 / 12) | script |" in text and "**script / pipeline**" in text
