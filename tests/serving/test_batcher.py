"""The micro-batcher: concurrent queries share batches, and answers equal unbatched ones."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from serving.batcher import Batcher, BatcherClosed
from serving.model import LoadedModel, load_model
from serving.retrieval import Query, run_batch
from twotower import artifacts


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
