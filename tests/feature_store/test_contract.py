"""One contract, every backend: each test here runs against SQLite and real Redis."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from typing import Any

import pytest

from feature_store import (
    Event,
    EventError,
    OnlineStore,
    StoreError,
    make_event,
    open_store,
    run_sync,
)
from feature_store.base import user_hash
from tests.feature_store.conftest import Backend, run_on_store
from tests.feature_store.workers import append_in_process

T0 = 1_700_000_000.0


def ev(eid: str, user: str, item: str, etype: str = "like", ts: float = T0) -> Event:
    return make_event({"event_id": eid, "user_id": user, "item_id": item, "type": etype, "ts": ts})


async def log_of(store: OnlineStore) -> list[Event]:
    out, cursor = [], None
    while True:
        batch = await store.read_log(cursor, limit=7)  # small pages exercise the cursor
        if not batch.events:
            return out
        out.extend(batch.events)
        cursor = batch.cursor


def test_positives_are_time_ordered_and_capped(backend: Backend) -> None:
    async def body(store: OnlineStore) -> None:
        await store.append_events([ev(f"p{i}", "u", f"i{i}", ts=T0 + 10 * i) for i in range(8)])
        state = await store.get_user("u")
        assert state.positives == ["i3", "i4", "i5", "i6", "i7"]
        # A late event lands at its time position; one older than the window falls out.
        await store.append_events(
            [ev("late", "u", "late", ts=T0 + 45), ev("old", "u", "old", ts=T0 - 1)]
        )
        assert (await store.get_user("u")).positives == ["i4", "late", "i5", "i6", "i7"]
        # Equal timestamps keep arrival order; repeats of an item are kept (it is a history).
        await store.append_events([ev("t1", "u", "i7", ts=T0 + 70), ev("t2", "u", "x", ts=T0 + 70)])
        assert (await store.get_user("u")).positives == ["i5", "i6", "i7", "i7", "x"]

    run_on_store(backend.url, body, positives_cap=5)


def test_dislikes_distinct_latest_time_capped_and_separate_from_positives(backend: Backend) -> None:
    async def body(store: OnlineStore) -> None:
        await store.append_events(
            [
                ev("d1", "u", "a", "dislike", T0 + 1),
                ev("d2", "u", "b", "dislike", T0 + 2),
                ev("d3", "u", "a", "dislike", T0 + 5),  # a again: its time moves to the latest
                ev("d4", "u", "c", "dislike", T0 + 3),
                ev("d5", "u", "b", "dislike", T0 + 0.5),  # older repeat: b keeps T0 + 2
                ev("p1", "u", "z", "like", T0 + 4),
            ]
        )
        state = await store.get_user("u")
        assert state.dislikes == [("b", T0 + 2), ("c", T0 + 3), ("a", T0 + 5)]
        assert state.positives == ["z"]
        await store.append_events([ev("d6", "u", "d", "dislike", T0 + 6)])
        assert [i for i, _ in (await store.get_user("u")).dislikes] == ["c", "a", "d"]

    run_on_store(backend.url, body, dislikes_cap=3)


def test_every_dislike_is_kept_by_default(backend: Backend) -> None:
    """Serving filters what get_user returns: by default no dislike may age out."""

    async def body(store: OnlineStore) -> None:
        n = 1200  # far beyond any tower input length or cache size
        await store.append_events(
            [ev(f"dk{i}", "heavy", f"i{i}", "dislike", T0 + i) for i in range(n)]
        )
        state = await store.get_user("heavy")
        assert len(state.dislikes) == n
        assert state.dislikes[0] == ("i0", T0) and state.dislikes[-1] == (
            f"i{n - 1}",
            T0 + n - 1,
        )

    run_on_store(backend.url, body)


def test_seen_covers_every_type_and_is_capped(backend: Backend) -> None:
    async def body(store: OnlineStore) -> None:
        await store.append_events(
            [
                ev("s1", "u", "a", "impression", T0 + 1),
                ev("s2", "u", "b", "like", T0 + 2),
                ev("s3", "u", "c", "dislike", T0 + 3),
                ev("s4", "u", "d", "view", T0 + 4),
            ]
        )
        state = await store.get_user("u", with_seen=True)
        assert state.seen == {"b", "c", "d"}
        assert state.positives == ["b", "d"] and state.known
        assert (await store.get_user("u")).seen is None

    run_on_store(backend.url, body, seen_cap=3)


def test_idempotent_per_event_id(backend: Backend) -> None:
    async def body(store: OnlineStore) -> None:
        batch = [ev(f"e{i}", "u", f"i{i}", ts=T0 + i) for i in range(5)]
        first = await store.append_events([*batch, batch[0]])  # a repeat inside the call
        assert (first.accepted, first.duplicates) == (5, 1)
        again = await store.append_events(batch)
        assert (again.accepted, again.duplicates) == (0, 5)
        assert (await store.get_user("u")).positives == [f"i{i}" for i in range(5)]
        assert len(await log_of(store)) == 5
        # The id is scoped to its user: the same id for another user is another event.
        other = await store.append_events([ev("e0", "v", "i0", ts=T0)])
        assert other.accepted == 1
        # The same (user, id) with another payload is a duplicate too, and changes nothing.
        changed = await store.append_events([ev("e1", "u", "other", "dislike", T0 + 99)])
        assert (changed.accepted, changed.duplicates) == (0, 1)
        state = await store.get_user("u")
        assert state.positives == [f"i{i}" for i in range(5)] and state.dislikes == []
        assert len(await log_of(store)) == 6

    run_on_store(backend.url, body)


def test_idempotency_is_forever_unless_a_window_is_opted_into(backend: Backend) -> None:
    """Default: a resend after any delay is a duplicate. ``idempotency_ttl=1``: applied again."""

    async def body() -> None:
        async with (
            open_store(backend.url) as forever,
            open_store(backend.url, idempotency_ttl=1) as windowed,
        ):
            assert (await forever.append_events([ev("k", "keeps", "a")])).accepted == 1
            assert (await windowed.append_events([ev("k", "forgets", "a")])).accepted == 1
            accepted_at = time.monotonic()
            assert (await windowed.append_events([ev("k", "forgets", "a")])).duplicates == 1
            while time.monotonic() < accepted_at + 1.1:  # the window is real time on the server
                await asyncio.sleep(0.05)
            late = await forever.append_events([ev("k", "keeps", "a")])
            assert (late.accepted, late.duplicates) == (0, 1)
            again = await windowed.append_events([ev("k", "forgets", "a")])
            assert (again.accepted, again.duplicates) == (1, 0)  # as documented: the window passed
            logged = [(e.user_id, e.event_id) for e in await log_of(forever)]
            assert logged.count(("keeps", "k")) == 1 and logged.count(("forgets", "k")) == 2

    asyncio.run(body())


HOSTILE = [
    ("a", "x}:e:y"),
    ("a}:e:x", "y"),
    ("b", "z}:pos"),
    ("b}:e:z", "e"),
    ("c}", "1"),
    ("c%7D", "1"),
    ("{u:d}", "1"),
    ("d", "1"),
    ("e:ids", "1"),
    ("e", "ids"),
]


def test_hostile_ids_never_share_a_key(backend: Backend) -> None:
    """Ids with braces, colons and escapes: every user keeps their own state, log and ids."""

    async def body(store: OnlineStore) -> None:
        events = [
            ev(eid, user, f"item:{{{n}}}", ts=T0 + n) for n, (user, eid) in enumerate(HOSTILE)
        ]
        res = await store.append_events(events)
        assert (res.accepted, res.duplicates) == (len(HOSTILE), 0)
        states = await store.get_users([u for u, _ in HOSTILE], with_seen=True)
        for n, (user, _eid) in enumerate(HOSTILE):
            assert states[user].positives == [f"item:{{{n}}}"], user
            assert states[user].seen == {f"item:{{{n}}}"}, user
        again = await store.append_events(events)
        assert (again.accepted, again.duplicates) == (0, len(HOSTILE))
        assert await store.forget_user("a}:e:x") == 1
        assert (await store.get_user("a")).positives == ["item:{0}"]
        assert sorted((e.user_id, e.event_id) for e in await log_of(store)) == sorted(
            p for p in HOSTILE if p[0] != "a}:e:x"
        )
        await store.put_item_metadata({"i}:meta": {"n": 1}, "i%7D:meta": {"n": 2}})
        got = await store.get_item_metadata(["i}:meta", "i%7D:meta"])
        assert got == {"i}:meta": {"n": 1}, "i%7D:meta": {"n": 2}}

    run_on_store(backend.url, body)


def test_storage_caps_belong_to_the_store_not_to_the_writer(backend: Backend) -> None:
    """A process with lower caps reads less but cannot trim what others keep (dislikes above all)."""

    async def body() -> None:
        async with open_store(backend.url, positives_keep=6) as first:  # creates the store
            await first.append_events([ev(f"p{i}", "u", f"i{i}", ts=T0 + i) for i in range(4)])
        small = {"positives_cap": 2, "dislikes_cap": 2, "positives_keep": 2, "dislikes_keep": 2}
        async with open_store(backend.url, **small) as narrow:
            await narrow.append_events(
                [ev(f"p{i}", "u", f"i{i}", ts=T0 + i) for i in range(4, 8)]
                + [ev(f"d{i}", "u", f"bad{i}", "dislike", T0 + i) for i in range(5)]
            )
            state = await narrow.get_user("u")
            assert state.positives == ["i6", "i7"] and [d for d, _ in state.dislikes] == [
                "bad3",
                "bad4",
            ]
        async with open_store(backend.url) as wide:
            state = await wide.get_user("u")
            assert state.positives == [f"i{i}" for i in range(2, 8)]  # the store keeps 6
            assert [d for d, _ in state.dislikes] == [f"bad{i}" for i in range(5)]

    asyncio.run(body())


def test_store_id_is_stable_and_tombstones_are_recorded(backend: Backend) -> None:
    async def body() -> None:
        async with open_store(backend.url) as store:
            first = store.store_id
            assert len(first) == 32 and await store.forgotten_users() == {}
            await store.append_events([ev("t1", "gone", "i1")])
            before = time.time()
            await store.forget_user("gone")
            await store.forget_user("never-seen")  # a tombstone even for a user the log lacks
            tombstones = await store.forgotten_users()
        async with open_store(backend.url) as again:
            assert again.store_id == first
        assert set(tombstones) == {user_hash("gone"), user_hash("never-seen")}
        assert all(before <= t <= time.time() for t in tombstones.values())
        assert "gone" not in str(tombstones)

    asyncio.run(body())


def _race_events(n: int = 60) -> list[dict[str, Any]]:
    return [
        {"event_id": f"r{i}", "user_id": f"u{i % 3}", "item_id": f"i{i}", "type": ["like", "dislike"][i % 2],
         "ts": T0 + i}
        for i in range(n)
    ]  # fmt: skip


def _check_race(backend: Backend, counts: list[tuple[int, int]], n: int) -> None:
    assert sum(a for a, _ in counts) == n, counts
    assert sum(d for _, d in counts) == n * (len(counts) - 1), counts

    async def check(store: OnlineStore) -> None:
        logged = await log_of(store)
        assert sorted(e.event_id for e in logged) == sorted(f"r{i}" for i in range(n))
        states = await store.get_users(["u0", "u1", "u2"])
        assert sum(len(s.positives) + len(s.dislikes) for s in states.values()) == n

    run_on_store(backend.url, check)


def test_concurrent_duplicate_appends_threads(backend: Backend) -> None:
    raws, workers = _race_events(), 4
    go = threading.Barrier(workers)
    counts: list[tuple[int, int]] = []

    def worker() -> None:
        async def work() -> tuple[int, int]:
            async with open_store(backend.url) as store:
                await store.ping()
                go.wait(30)
                res = await store.append_events([make_event(r) for r in raws])
                return res.accepted, res.duplicates

        counts.append(run_sync(work()))

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(counts) == workers, "a worker thread failed (see the captured stderr)"
    _check_race(backend, counts, len(raws))


def test_concurrent_duplicate_appends_processes(backend: Backend) -> None:
    raws, workers = _race_events(), 3
    ctx = multiprocessing.get_context("spawn")
    go, results = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=append_in_process, args=(backend.url, raws, go, results))
        for _ in range(workers)
    ]
    for p in procs:
        p.start()
    go.set()
    counts = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    assert all(isinstance(c, tuple) for c in counts), counts
    _check_race(backend, counts, len(raws))


def test_concurrent_appends_in_one_loop(backend: Backend) -> None:
    async def body(store: OnlineStore) -> None:
        events = [make_event(r) for r in _race_events(30)]
        results = await asyncio.gather(*(store.append_events(events) for _ in range(5)))
        assert sum(r.accepted for r in results) == 30
        assert sum(r.duplicates for r in results) == 120

    run_on_store(backend.url, body)


def test_read_your_writes_across_connections(backend: Backend) -> None:
    async def body() -> None:
        async with open_store(backend.url) as writer, open_store(backend.url) as reader:
            for i in range(5):
                await writer.append_events(
                    [ev(f"w{i}", "u", f"i{i}", "dislike" if i % 2 else "like", T0 + i)]
                )
                state = await reader.get_user("u")
                assert f"i{i}" in state.positives or f"i{i}" in dict(state.dislikes)

    asyncio.run(body())


def test_get_users_batches_and_unknown_users(backend: Backend) -> None:
    async def body(store: OnlineStore) -> None:
        await store.append_events([ev(f"g{i}", f"u{i}", f"i{i}", ts=T0 + i) for i in range(4)])
        states = await store.get_users(["u0", "u3", "nobody", "u0"], with_seen=True)
        assert set(states) == {"u0", "u3", "nobody"}
        assert states["u3"].positives == ["i3"] and states["u3"].seen == {"i3"}
        assert not states["nobody"].known and states["nobody"].positives == []

    run_on_store(backend.url, body)


def test_forget_user_erases_state_and_log(backend: Backend) -> None:
    async def body(store: OnlineStore) -> None:
        await store.append_events(
            [
                ev(f"f{i}", "gone", f"i{i}", ["like", "dislike", "view"][i % 3], T0 + i)
                for i in range(6)
            ]
            + [ev("k1", "kept", "i1", ts=T0)]
        )
        assert await store.forget_user("gone") == 6
        state = await store.get_user("gone", with_seen=True)
        assert not state.known and state.seen == set()
        assert [e.user_id for e in await log_of(store)] == ["kept"]
        assert (await store.get_user("kept")).positives == ["i1"]
        assert await store.forget_user("gone") == 0
        # Erasure includes the idempotency memory: the same event can be recorded anew.
        assert (await store.append_events([ev("f0", "gone", "i0", ts=T0)])).accepted == 1

    run_on_store(backend.url, body)


def test_item_metadata_round_trip(backend: Backend) -> None:
    async def body(store: OnlineStore) -> None:
        await store.put_item_metadata(
            {"i1": {"title": "Heat", "genres": ["crime"]}, "i2": {"title": "x"}}
        )
        await store.put_item_metadata({"i2": {"title": "y"}})
        got = await store.get_item_metadata(["i1", "i2", "missing"])
        assert got == {"i1": {"title": "Heat", "genres": ["crime"]}, "i2": {"title": "y"}}

    run_on_store(backend.url, body)


def test_log_order_fields_and_cursor(backend: Backend) -> None:
    async def body(store: OnlineStore) -> None:
        before = time.time()
        await store.append_events([ev(f"l{i}", f"u{i % 2}", f"i{i}", ts=T0 - i) for i in range(10)])
        await store.append_events([ev("l10", "u0", "i10", "impression", T0)])
        logged = await log_of(store)
        assert [e.event_id for e in logged] == [f"l{i}" for i in range(11)]  # append order, not ts
        assert logged[3] == Event("l3", "u1", "i3", "like", T0 - 3, logged[3].received_at)
        assert all(before <= e.received_at <= time.time() for e in logged)
        tail = await store.read_log(None, limit=100)
        assert (await store.read_log(tail.cursor)).events == []
        assert (await store.read_log(tail.cursor)).cursor == tail.cursor

    run_on_store(backend.url, body)


def test_bad_input_is_refused_whole(backend: Backend) -> None:
    async def body(store: OnlineStore) -> None:
        good = ev("ok", "u", "i")
        bogus = Event("b1", "u", "i2", "bogus", T0, 0.0)
        with pytest.raises(EventError, match=r"events\[1\]\.type: unknown event type 'bogus'"):
            await store.append_events([good, bogus])
        future = Event("b2", "u", "i3", "like", time.time() + 86400 * 365, 0.0)
        with pytest.raises(EventError, match=r"events\[0\]\.ts: .* in the future"):
            await store.append_events([future])
        with pytest.raises(EventError, match=r"ts"):
            await store.append_events([Event("b3", "u", "i", "like", float("nan"), 0.0)])
        for bad_ts in (-1e18, 0.0, -1.0):  # would poison the export's dates forever
            with pytest.raises(EventError, match=r"events\[1\]\.ts: .* not after 1970"):
                await store.append_events([good, Event("b4", "u", "i", "like", bad_ts, 0.0)])
        assert not (await store.get_user("u")).known and await log_of(store) == []
        with pytest.raises(StoreError, match="cursor"):
            await store.read_log("not-a-cursor")
        with pytest.raises(EventError, match="type"):
            make_event({"user_id": "u", "item_id": "i", "type": "bogus"})

    run_on_store(backend.url, body)


def test_restart_durability(durable_backend: Backend) -> None:
    b = durable_backend

    async def write() -> None:
        async with open_store(b.url) as store:
            assert await store.ping()
            await store.append_events(
                [ev(f"d{i}", "u", f"i{i}", ["like", "dislike"][i % 2], T0 + i) for i in range(6)]
            )

    async def read() -> tuple[list[Event], Any]:
        async with open_store(b.url) as store:
            return await log_of(store), await store.get_user("u")

    asyncio.run(write())
    assert b.restart is not None
    b.restart()  # SQLite: a new open; Redis: SIGKILL and restart from the AOF
    logged, state = asyncio.run(read())
    assert [e.event_id for e in logged] == [f"d{i}" for i in range(6)]
    assert state.positives == ["i0", "i2", "i4"]
    assert state.dislikes == [("i1", T0 + 1), ("i3", T0 + 3), ("i5", T0 + 5)]


def test_ping_and_closed_store(backend: Backend) -> None:
    async def body() -> None:
        store = open_store(backend.url)
        with pytest.raises(StoreError, match="not open"):
            await store.get_user("u")
        async with store:
            assert await store.ping()
            await store.open()  # idempotent
        await store.close()  # idempotent

    asyncio.run(body())
