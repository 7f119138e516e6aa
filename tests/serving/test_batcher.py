"""The micro-batcher: concurrent queries share batches, and answers equal unbatched ones."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

import serving.batcher
from common import artifacts
from serving.batcher import Batcher, BatcherClosed, run_isolated
from serving.model import LoadedModel, load_model
from serving.retrieval import Query, run_batch


@pytest.fixture(scope="module")
def model(art: Path) -> LoadedModel:
    return load_model(art, artifacts.latest_version(art))


def _queries(model: LoadedModel, n: int) -> list[Query]:
    rng = np.random.default_rng(7)
    out = []
    for i in range(n):
        hist = model.tokens(
            [f"i{j}" for j in rng.integers(0, model.num_items, 5)], model.history_length
        )
        dis = model.tokens(
            [f"i{j}" for j in rng.integers(0, model.num_items, 2)], model.dislike_length
        )
        out.append(
            Query(
                model=model,
                k=10 + i % 7,
                blocked=set(rng.integers(0, 300, 30).tolist()),
                history=hist,
                dislikes=dis,
            )
        )
    return out


async def _fire(batcher: Batcher, queries: list[Query]) -> list[list[int]]:
    await batcher.start()
    try:
        results = await asyncio.gather(*(batcher.submit(q) for q in queries))
    finally:
        await batcher.stop()
    return [r.rows.tolist() for r in results]


def test_concurrent_queries_form_batches_and_match_unbatched(model: LoadedModel) -> None:
    queries = _queries(model, 40)
    sizes: list[int] = []
    batched = Batcher(max_size=16, max_wait_ms=5.0, on_batch=sizes.append)
    got = asyncio.run(_fire(batched, queries))
    assert sum(sizes) == 40 and max(sizes) > 1 and max(sizes) <= 16
    assert batched.batches < 40

    single_sizes: list[int] = []
    unbatched = Batcher(max_size=1, max_wait_ms=0.0, on_batch=single_sizes.append)
    want = asyncio.run(_fire(unbatched, queries))
    assert single_sizes == [1] * 40
    assert got == want
    assert want == [r.rows.tolist() for r in (run_batch([q])[0] for q in queries)]


def test_stopped_batcher_refuses() -> None:
    async def go() -> None:
        b = Batcher()
        with pytest.raises(BatcherClosed):
            await b.submit(None)  # type: ignore[arg-type]

    asyncio.run(go())


def test_a_failing_batch_fails_its_queries_not_the_loop(model: LoadedModel) -> None:
    async def go() -> list[int]:
        b = Batcher(max_size=4, max_wait_ms=1.0)
        await b.start()
        try:
            bad = Query(
                model=model, k=5, history=np.zeros(3, np.int32), dislikes=np.zeros(2, np.int32)
            )  # wrong H
            with pytest.raises(Exception):  # noqa: B017 - TF raises its own argument error type
                await b.submit(bad)
            good = _queries(model, 1)[0]
            return (await b.submit(good)).rows.tolist()
        finally:
            await b.stop()

    assert len(asyncio.run(go())) == 10


def test_waits_only_for_announced_queries(model: LoadedModel) -> None:
    q1, q2 = _queries(model, 2)

    async def go(announce: bool) -> list[int]:
        sizes: list[int] = []
        b = Batcher(max_size=8, max_wait_ms=2000.0, on_batch=sizes.append)
        await b.start()
        try:
            if announce:
                with b.incoming() as arrival:
                    first = asyncio.create_task(b.submit(q1))
                    await asyncio.sleep(0.02)  # the second request is still "reading the store"
                    assert not first.done()  # held back: a query is announced
                    await b.submit(q2, arrival)
                    await first
            else:
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                await b.submit(q1)
                assert loop.time() - t0 < 1.0  # nobody announced: no 2 s wait
        finally:
            await b.stop()
        return sizes

    assert asyncio.run(go(True)) == [2]
    assert asyncio.run(go(False)) == [1]


def test_a_lone_announced_query_is_answered_in_the_calling_thread(
    model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    threads: list[int] = []

    def recording(queries: list[Query], demotion: object) -> object:
        threads.append(threading.get_ident())
        return run_isolated(queries, demotion)  # type: ignore[arg-type]

    monkeypatch.setattr(serving.batcher, "run_isolated", recording)
    q1, q2 = _queries(model, 2)

    async def go(inline: bool) -> tuple[list[list[int]], list[int], int]:
        sizes: list[int] = []
        b = Batcher(max_size=8, max_wait_ms=50.0, on_batch=sizes.append, inline_when_idle=inline)
        await b.start()
        try:
            with b.incoming() as arrival:  # alone: nothing queued, nobody else announced
                alone = await b.submit(q1, arrival)
            with b.incoming() as a1, b.incoming() as a2:  # two on their way: one batch
                both = await asyncio.gather(b.submit(q1, a1), b.submit(q2, a2))
        finally:
            await b.stop()
        return [r.rows.tolist() for r in (alone, *both)], sizes, threading.get_ident()

    got, sizes, loop_thread = asyncio.run(go(inline=True))
    assert sizes == [1, 2] and threads[0] == loop_thread and threads[1] != loop_thread
    assert got == [run_batch([q])[0].rows.tolist() for q in (q1, q1, q2)]
    threads.clear()
    _, sizes, loop_thread = asyncio.run(go(inline=False))
    assert sizes == [1, 2] and loop_thread not in threads


def _broken_copy(model: LoadedModel) -> LoadedModel:
    """The same version with a FAISS index of the wrong dimension: every search raises."""
    import dataclasses

    import faiss

    from serving.model import PlacedIndex

    wrong = faiss.IndexFlatIP(model.dim + 1)
    wrong.add(np.zeros((model.num_items, model.dim + 1), np.float32))
    return dataclasses.replace(model, index=PlacedIndex(wrong, "cpu"))


def test_one_bad_query_fails_alone_not_its_batch(model: LoadedModel) -> None:
    good = _queries(model, 3)
    bad = Query(model=model, k=5, history=np.zeros(3, np.int32), dislikes=np.zeros(2, np.int32))

    async def go() -> tuple[list[object], list[int]]:
        sizes: list[int] = []
        b = Batcher(max_size=8, max_wait_ms=50.0, on_batch=sizes.append)
        await b.start()
        try:
            with b.incoming() as a0, b.incoming() as a1, b.incoming() as a2, b.incoming() as a3:
                out = await asyncio.gather(
                    b.submit(good[0], a0),
                    b.submit(bad, a1),
                    b.submit(good[1], a2),
                    b.submit(good[2], a3),
                    return_exceptions=True,
                )
        finally:
            await b.stop()
        return list(out), sizes

    out, sizes = asyncio.run(go())
    assert sizes == [4]  # they did share one batch
    assert isinstance(out[1], Exception)
    for q, res in zip(good, (out[0], out[2], out[3]), strict=True):
        assert not isinstance(res, BaseException), res
        assert res.rows.tolist() == run_batch([q])[0].rows.tolist()  # type: ignore[union-attr]


def test_a_broken_version_in_a_batch_fails_only_its_own_queries(model: LoadedModel) -> None:
    broken = _broken_copy(model)
    ok = _queries(model, 2)
    doomed = [dataclasses_replace(q, model=broken) for q in _queries(model, 2)]
    results = run_isolated([ok[0], doomed[0], ok[1], doomed[1]])
    assert [isinstance(r, Exception) for r in results] == [False, True, False, True]
    assert results[0].rows.tolist() == run_batch([ok[0]])[0].rows.tolist()  # type: ignore[union-attr]


def dataclasses_replace(q: Query, **changes: object) -> Query:
    import dataclasses

    return dataclasses.replace(q, **changes)  # type: ignore[arg-type]


def test_failing_callback_and_short_results_do_not_kill_the_loop(
    model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(_n: int) -> None:
        raise RuntimeError("metrics backend down")

    async def go() -> list[int]:
        b = Batcher(max_size=4, max_wait_ms=1.0, on_batch=explode)
        await b.start()
        try:
            first = await b.submit(_queries(model, 1)[0])
            # run_batch answering fewer queries than asked: caught, each query is retried alone.
            real = serving.batcher.run_batch
            calls: list[int] = []

            def short(queries, demotion):  # type: ignore[no-untyped-def]
                calls.append(len(queries))
                return real(queries, demotion)[:-1] if len(queries) > 1 else real(queries, demotion)

            monkeypatch.setattr(serving.batcher, "run_batch", short)
            qs = _queries(model, 3)
            with b.incoming() as a0, b.incoming() as a1, b.incoming() as a2:
                got = await asyncio.gather(
                    b.submit(qs[0], a0), b.submit(qs[1], a1), b.submit(qs[2], a2)
                )
            assert calls == [3, 1, 1, 1] and b.alive
            return [len(first.rows)] + [len(r.rows) for r in got]
        finally:
            await b.stop()

    assert asyncio.run(go()) == [10, 10, 11, 12]


def test_a_dead_collector_is_restarted_then_given_up_on(model: LoadedModel) -> None:
    async def go() -> None:
        restarts: list[int] = []
        b = Batcher(max_size=4, max_wait_ms=1.0, on_restart=lambda: restarts.append(1))
        await b.start()
        try:
            real_collect = b._collect
            deaths = {"left": 1}

            async def dying_collect() -> list:  # type: ignore[type-arg]
                if deaths["left"] > 0:
                    deaths["left"] -= 1
                    raise RuntimeError("collector bug")
                return await real_collect()

            b._collect = dying_collect  # type: ignore[method-assign]
            await b.submit(_queries(model, 1)[0])  # answered; the next collect dies once
            res = await b.submit(_queries(model, 1)[0])  # ... and the restarted task answers
            assert len(res.rows) == 10 and restarts == [1] and b.alive

            deaths["left"] = 10**6  # now it dies every time: restarts stop, alive turns False
            await b.submit(_queries(model, 1)[0])
            while b.alive:
                await asyncio.sleep(0)  # the done-callbacks run on this loop
            assert len(restarts) == serving.batcher.MAX_RESTARTS
            assert "collector bug" in (b.last_error or "")
            with pytest.raises(BatcherClosed, match="collector bug"):
                await b.submit(_queries(model, 1)[0])
        finally:
            await b.stop()

    asyncio.run(go())


def test_stop_answers_a_query_taken_off_the_queue_but_not_run_yet(model: LoadedModel) -> None:
    async def go() -> None:
        b = Batcher(max_size=8, max_wait_ms=5000.0)
        await b.start()
        with b.incoming():  # announced and never submitted: the collector keeps waiting
            first = asyncio.create_task(b.submit(_queries(model, 1)[0]))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5.0
            while not b._inflight:  # until the collector holds it (visible to stop())
                assert loop.time() < deadline, "the collector's query is invisible to stop()"
                await asyncio.sleep(0)
            await b.stop()
            with pytest.raises(BatcherClosed, match="shutting down"):
                await asyncio.wait_for(first, 5.0)

    asyncio.run(go())
