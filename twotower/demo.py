"""``twotower demo``: the zero-setup quickstart.

Generates a synthetic data set (power-law popularity, drifting interests,
dislikes), trains briefly, exports and publishes a version, loads the events
into the embedded SQLite store, prints ``curl`` lines, then serves the API.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

DEMO_DATA = "synthetic:users=2000,items=1000,events_per_user=30,seed=7"
DEMO_SETTINGS = [
    "train.epochs=4",
    "train.batch_size=512",
    "train.early_stopping_patience=0",
]


def _curl_lines(base: str, user: str, item: str) -> str:
    rec = json.dumps({"user_id": user, "k": 5})
    dis = json.dumps(
        {
            "events": [
                {
                    "event_id": f"demo-{user}-{item}",
                    "user_id": user,
                    "item_id": item,
                    "type": "dislike",
                }
            ]
        }
    )
    return "\n".join(
        [
            "# 1. top-5 candidates for a user (their history comes from the store):",
            f"curl -s -X POST {base}/v1/recommend -H 'content-type: application/json' -d '{rec}'",
            f"# 2. the user dislikes item {item}:",
            f"curl -s -X POST {base}/v1/events -H 'content-type: application/json' -d '{dis}'",
            f"# 3. ask again: item {item} is gone, from the moment the dislike was acknowledged:",
            f"curl -s -X POST {base}/v1/recommend -H 'content-type: application/json' -d '{rec}'",
            "# more: GET /v1/model, GET /v1/items/<id>/similar?k=5, GET /metrics, GET /docs",
        ]
    )


def demo_command(args: argparse.Namespace) -> int:
    from feature_store import open_store, run_sync
    from trainer.data.sources import load_source
    from trainer.run import ExportedModel, train, trainer_config
    from twotower import artifacts
    from twotower.ingest import ingest_dataset

    work = Path(args.dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    art = work / "artifacts"
    store_url = f"sqlite:///{work / 'store.sqlite'}"
    started = time.perf_counter()

    print(f"[1/4] generating data: {DEMO_DATA}", file=sys.stderr)
    ds = load_source(DEMO_DATA)
    print(f"[2/4] training ({', '.join(DEMO_SETTINGS)}) into {art}", file=sys.stderr)
    cfg = trainer_config("synthetic", overrides=DEMO_SETTINGS)
    outcome = train(DEMO_DATA, art, cfg, ds=ds)
    m, b = outcome.metrics, outcome.baseline_popular
    print(
        f"      version {outcome.version}: recall@20 {m['recall@20']:.3f} (popular {b['recall@20']:.3f}), "
        f"dislike_rate@20 {m['dislike_rate@20']:.3f} (popular {b['dislike_rate@20']:.3f})",
        file=sys.stderr,
    )
    print(f"[3/4] loading events into the embedded store {store_url}", file=sys.stderr)

    async def _load() -> None:
        async with open_store(store_url) as store:
            await ingest_dataset(store, ds, progress=False)

    run_sync(_load())

    # Pick a user with history and the item the model would put first for them,
    # so the printed curl lines show the dislike filter at work.
    exported = ExportedModel(art, artifacts.latest_version(art))
    user = str(ds.user_ids[0])

    async def _state():
        async with open_store(store_url) as store:
            return await store.get_user(user)

    state = run_sync(_state())
    index = {x: i + 1 for i, x in enumerate(exported.item_ids)}
    import numpy as np

    h = exported.manifest["history_length"]
    d = exported.manifest["dislike_length"]
    hist = [index[x] for x in state.positives if x in index][-h:]
    disl = [index[x] for x, _ts in state.dislikes if x in index][-d:]
    hist_arr = np.zeros((1, h), np.int32)
    disl_arr = np.zeros((1, d), np.int32)
    if hist:
        hist_arr[0, -len(hist) :] = hist
    if disl:
        disl_arr[0, -len(disl) :] = disl
    scores = exported.embed(hist_arr, disl_arr)[0] @ exported.item_emb.T
    seen = set(state.positives) | {x for x, _ in state.dislikes}
    top = next(
        str(exported.item_ids[i])
        for i in np.argsort(-scores)
        if str(exported.item_ids[i]) not in seen
    )

    base = f"http://{args.host}:{args.port}"
    print(f"[4/4] ready in {time.perf_counter() - started:.0f}s. Try:\n", file=sys.stderr)
    print(_curl_lines(base, user, top))
    sys.stdout.flush()
    if args.no_serve:
        return 0
    from serving.main import serve_command

    return serve_command(
        argparse.Namespace(
            artifacts=str(art), store=store_url, host=args.host, port=args.port, workers=1
        )
    )
