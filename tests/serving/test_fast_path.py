"""The batched recommend path answers exactly what one request alone answers.

Many concurrent ``/v1/recommend`` requests (their store reads coalesced into
one ``get_users`` call, their queries into one tower call and one FAISS
search, their bodies encoded once) are compared with the reference path, one
user at a time: ``store.get_user``, the same merge of stored state, one query
through :func:`serving.retrieval.run_batch`, the answer built as the
``RecommendResponse`` model. Items must be the same, in the same order, with
the same scores; the JSON must be what the response model gives.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.serving.artifact_factory import make_artifact
from tests.serving.conftest import redis_url

USERS = 48


@pytest.fixture(scope="module")
def ivf_art(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("fast-path-art")
    make_artifact(
        d,
        num_items=2000,
        dim=16,
        H=8,
        D=4,
        seed=5,
        index_type="ivf",
        index_params={"nlist": 32, "nprobe": 4},
    )
    return d


def _events(catalog: list[str]) -> list[dict[str, Any]]:
    """Clicks, dislikes and impressions of ``USERS`` users; the last one has only impressions."""
    rng = np.random.default_rng(11)
    out = []
    for u in range(USERS):
        picks = rng.choice(len(catalog), 24, replace=False).tolist()
        for j, row in enumerate(picks):
            if u == USERS - 1:
                etype = "impression"  # no usable history: the popular fallback
            else:
                etype = ("click", "click", "dislike", "impression")[j % 4]
            out.append(
                {
                    "event_id": f"e{u}-{j}",
                    "user_id": f"fp-u{u}",
                    "item_id": catalog[row],
                    "type": etype,
                }
            )
    return out


def _reference(model: Any, state: Any, k: int, exclude_seen: bool, settings: Any) -> dict[str, Any]:
    """One user, one query, no batching: the merge of stored state as the service documents it.

    The version has no times, so every stored dislike is fresh: demotion (on by
    default) reacts to the latest ``demote_recent`` of them.
    """
    from serving.retrieval import Demotion, Query, run_batch
    from serving.schemas import RecommendResponse
    from serving.service import popular_fallback

    index = model.id_to_index
    dislikes = [item for item, _ts in state.dislikes]
    blocked_ids = set(dislikes)
    if exclude_seen:
        blocked_ids |= set(state.positives) | (state.seen or set())
    blocked = {index[x] for x in blocked_ids if x in index}
    known = [x for x in state.positives if x in index]
    fallback = None
    if not known:
        fallback = "popular"
        rows, scores, _ = popular_fallback(model, blocked, k)
    else:
        query = Query(
            model=model,
            k=k,
            blocked=blocked,
            history=model.tokens(known, model.history_length),
            dislikes=model.tokens(dislikes, model.dislike_length),
            demote_rows=np.asarray(
                [index[x] for x in dislikes if x in index][-settings.demote_recent :], np.int64
            ),
        )
        demotion = Demotion(settings.demote_weight, settings.demote_threshold, settings.demote_near)
        result = run_batch([query], demotion)[0]
        rows, scores = result.rows.tolist(), result.scores.tolist()
    return RecommendResponse(
        user_id=state.user_id,
        items=[
            {"item_id": str(model.item_ids[r]), "score": float(s)}
            for r, s in zip(rows, scores, strict=True)
        ],
        model_version=model.version,
        fallback=fallback,
    ).model_dump(mode="json")


@pytest.mark.parametrize("index", ["flat", "ivf"])
def test_concurrent_answers_equal_one_at_a_time(index: str, art: Path, ivf_art: Path) -> None:
    from feature_store.events import make_event
    from serving.app import create_app
    from serving.settings import Settings

    artifact = art if index == "flat" else ivf_art
    url = redis_url(4)
    app = create_app(
        Settings(artifacts=artifact, store_url=url, reload_poll_s=3600)  # type: ignore[call-arg]
    )

    async def go() -> tuple[list[httpx.Response], list[dict[str, Any]], Any]:
        async with app.router.lifespan_context(app):
            state = app.state.twotower
            model = state.holder.current
            catalog = model.item_ids.tolist()
            store = state.store
            await store.append_events([make_event(e) for e in _events(catalog)])
            asks = [(f"fp-u{u}", 10 + u % 3, u % 5 != 0) for u in range(USERS)]
            asks.append(("fp-nobody", 10, True))  # unknown user: popular list
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                got = await asyncio.gather(
                    *(
                        client.post(
                            "/v1/recommend",
                            json={"user_id": u, "k": k, "exclude_seen": seen},
                        )
                        for u, k, seen in asks
                    )
                )
            # The reference: sequential, one store read and one query per user.
            want = []
            for u, k, seen in asks:
                stored = await store.get_user(u, with_seen=seen)
                want.append(_reference(model, stored, k, seen, state.settings))
            return list(got), want, state

    got, want, state = asyncio.run(go())
    reads = state.extra["store_reads"]
    assert reads.users == len(want)
    assert reads.calls < len(want) / 4, "concurrent reads were not coalesced"
    assert state.batcher.batches < state.batcher.queries / 4, "queries were not batched"
    for resp, ref in zip(got, want, strict=True):
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert [i["item_id"] for i in body["items"]] == [i["item_id"] for i in ref["items"]]
        np.testing.assert_allclose(
            [i["score"] for i in body["items"]], [i["score"] for i in ref["items"]], rtol=1e-5
        )
        for key in ("user_id", "model_version", "fallback", "degraded", "ignored_items"):
            assert body[key] == ref[key], key
    # The fallback and the filtering were exercised, not only the plain path.
    assert want[-1]["fallback"] == "popular" and want[-2]["fallback"] == "popular"
    assert any(r["fallback"] is None for r in want)


def test_body_is_the_response_model_json(client: Any) -> None:
    """The body encoded by the route is byte for byte what the response model encodes."""
    from serving.schemas import RecommendResponse

    r = client.post("/v1/recommend", json={"history": ["i1", "i2"], "dislikes": ["i3"], "k": 5})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    model = RecommendResponse.model_validate_json(r.content)
    assert r.content == model.model_dump_json().encode()


def test_faiss_thread_count_holds_in_the_thread_that_searches(
    art: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenMP counts threads per calling thread: the setting must reach the batcher's thread."""
    from concurrent.futures import ThreadPoolExecutor

    import faiss

    from common import artifacts
    from serving import model as model_mod

    loaded = model_mod.load_model(art, artifacts.latest_version(art))
    monkeypatch.setattr(model_mod, "_faiss_threads", 0)
    faiss.omp_set_num_threads(2)  # as a fresh thread starts on 2+ cores
    model_mod.configure_threads(0, 1)
    queries = loaded.embeddings[:3]

    def search_then_count() -> int:
        faiss.omp_set_num_threads(2)
        loaded.search(queries, 5)
        return int(faiss.omp_get_max_threads())

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(search_then_count).result() == 1


def test_faiss_threads_follow_the_batch_size(monkeypatch: pytest.MonkeyPatch) -> None:
    from serving import model as model_mod

    monkeypatch.setattr(model_mod, "_faiss_threads", 4)
    per = model_mod.QUERIES_PER_FAISS_THREAD
    assert [model_mod.faiss_threads_for(n) for n in (1, per, per + 1, 100 * per)] == [1, 1, 2, 4]
    monkeypatch.setattr(model_mod, "_faiss_threads", 0)
    assert model_mod.faiss_threads_for(64) == 0  # OpenMP's own default, untouched
