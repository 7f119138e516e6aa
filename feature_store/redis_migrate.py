"""Move a Redis store of key layout v1 to layout v2, in place: ``twotower migrate-redis URL``.

Layout v1 (``<prefix>:v1:...``) built key names from raw ids and kept its
idempotency keys for a limited time; v2 (:mod:`feature_store.redis.keys`) is what
this code reads. The migration keeps the log itself: the v1 stream is
renamed to the v2 name (same entries, same ids, consumer groups included),
so exporters' cursors stay valid and nothing is exported twice. Every entry
is then applied, in log order, to the v2 per-user state with the same APPLY
script a Cluster append uses (idempotent: an entry whose id is already
known is skipped, so an interrupted migration can simply be run again).
Every entry joins its user's erasure index, a v1 repeat of an event
included. Item metadata keys are copied. Afterwards ``--drop-v1`` deletes the old
per-user and item keys.

The state is rebuilt from the log, so it is what the events say: positives
that a v1 ``state_ttl`` had expired come back (dislikes were never meant to
expire and are all kept).
"""

from __future__ import annotations

from typing import Any

from feature_store.events import EVENT_TYPES
from feature_store.options import StoreURLError
from feature_store.redis.config import RedisConfig
from feature_store.redis.conn import retrying
from feature_store.redis.scripts import SHA
from feature_store.redis.store import RedisStore
from feature_store.sync import run_sync

PAGE = 1000


def _v1(prefix: str) -> str:
    return f"{prefix}:v1"


async def migrate(store: RedisStore, *, drop_v1: bool = False) -> dict[str, int]:
    """Migrate the open store's prefix from layout v1; returns counts of what was done."""
    cfg, k, client = store.config, store.keys, store.client
    old_stream = f"{_v1(cfg.prefix)}:{{log}}:events"
    moved = 0
    if await client.exists(old_stream):
        if await client.exists(k.stream):
            raise SystemExit(
                f"both {old_stream} and {k.stream} exist: the v2 store is already in use; "
                "migrate into a fresh prefix or delete one of them"
            )
        await client.rename(old_stream, k.stream)
        moved = 1
    applied = entries = 0
    start = "-"
    while True:
        page: list[Any] = await store.xrange(start, "+", PAGE)
        if not page:
            break
        entries += len(page)

        def build(pipe: Any, page: list[Any] = page) -> None:
            for sid, f in page:
                uk = k.user(f["user_id"])
                keys = [uk.ids, uk.pos, uk.dis, uk.seen, uk.log, uk.pend]
                args = ["v1", f["event_id"], f["user_id"], f["item_id"], f["type"],
                        EVENT_TYPES.get(f["type"], "neutral"), f["ts"], f["received_at"],
                        store.keep["positives_keep"], store.keep["dislikes_keep"],
                        store.keep["seen_keep"], cfg.idempotency_ttl, cfg.state_ttl, sid]  # fmt: skip
                pipe.execute_command("EVALSHA", SHA["APPLY"], len(keys), *keys, *args)

        codes = await retrying(cfg, "migrate", lambda _a: store._scripts(build), size=len(page))
        applied += sum(1 for c in codes if int(c) == 1)
        repeats = [(sid, f) for (sid, f), c in zip(page, codes, strict=True) if int(c) != 1]

        async def index(_a: Any, repeats: list[Any] = repeats) -> None:
            # A v1 log may hold an event twice (its ids expired): the repeat is not applied,
            # but an erasure must still find it.
            pipe = client.pipeline(transaction=False)
            for sid, f in repeats:
                pipe.zadd(
                    k.user(f["user_id"]).log, {f"{sid} {f['event_id']}": int(sid.split("-")[0])}
                )
            await pipe.execute()

        if repeats:
            await retrying(cfg, "migrate", index, size=len(repeats))
        start = f"({page[-1][0]}"
    items = 0
    old_keys: list[str] = []
    async for key in client.scan_iter(match=f"{_v1(cfg.prefix)}:*", count=1000):
        old_keys.append(key)
        head, tag = f"{_v1(cfg.prefix)}:{{i:", "}:meta"
        if key.startswith(head) and key.endswith(tag):
            value = await client.get(key)
            if value is not None:
                await client.set(k.item_meta(key[len(head) : -len(tag)]), value)
                items += 1
    dropped = 0
    if drop_v1:
        for i in range(0, len(old_keys), 500):
            for key in old_keys[i : i + 500]:  # one by one: v1 keys of many slots
                dropped += int(await client.delete(key))
    return {
        "stream_renamed": moved,
        "log_entries": entries,
        "events_applied": applied,
        "items": items,
        "v1_keys_left": len(old_keys) - dropped,
    }


def migrate_url(url: str, *, drop_v1: bool = False) -> dict[str, int]:
    """Open the Redis store at ``url``, :func:`migrate` it and close it (sync); returns the counts.

    Raises:
      StoreURLError: ``url`` is malformed or names no Redis store (nothing was opened).
    """
    from feature_store.urls import open_store, parse_url

    if not isinstance(parse_url(url), RedisConfig):
        raise StoreURLError("only Redis stores have key layouts; SQLite files migrate when opened")
    store = open_store(url)
    assert isinstance(store, RedisStore)  # every Redis URL opens one (the Cluster store is one)

    async def run() -> dict[str, int]:
        async with store:
            return await migrate(store, drop_v1=drop_v1)

    return run_sync(run())
