"""``twotower demo``: the zero-setup quickstart.

Generates a synthetic data set (power-law popularity, drifting interests,
dislikes), trains briefly, exports and publishes a version, loads the events
into the embedded SQLite store, then serves the API and, once ``/readyz``
answers, prints ``curl`` lines that show the dislike filter at work.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from trainer.data.dataset import Dataset

log = logging.getLogger(__name__)

DEMO_DATA = "synthetic:users=2000,items=1000,events_per_user=30,seed=7"
#: How long the demo waits for its API to become ready before saying so.
READY_TIMEOUT_S = 300.0
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


def _hold_work_dir(work: Path) -> IO[bytes]:
    """Lock ``work`` for this demo's lifetime (the OS drops the lock when the process ends).

    A second demo on the same directory, on another port, would otherwise train and
    publish into the running demo's artifacts, which hot-swaps the version it serves.

    Raises:
      ConfigError: another running demo holds the directory.
    """
    from common.config import ConfigError

    handle = (work / ".demo.lock").open("a+b")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ConfigError(
            f"--dir {work} is used by another running demo; stop it or pass another --dir"
        ) from None
    return handle


def demo_command(args: argparse.Namespace) -> int:
    if not args.no_serve:
        from serving.main import check_port

        # Before any work: a demo already running on this port would otherwise get a
        # second one's training published into its artifacts (and hot-swap it) first.
        check_port(args.host, args.port)
    from common.tf_logging import import_tensorflow_quietly

    import_tensorflow_quietly()  # also when called directly, not through the CLI

    work = Path(args.dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    lock = _hold_work_dir(work)  # noqa: F841 - held until the process ends
    art = work / "artifacts"
    store_url = f"sqlite:///{work / 'store.sqlite'}"
    started = time.perf_counter()

    ds = _train(art)
    print(f"[3/4] loading events into the embedded store {store_url}", file=sys.stderr)
    _load_events(store_url, ds)
    user = str(ds.user_ids[0])
    top = _top_pick(art, store_url, user)

    base = f"http://{_url_host(args.host)}:{args.port}"
    lines = _curl_lines(base, user, top)
    if args.no_serve:
        print(
            f"[4/4] done in {time.perf_counter() - started:.0f}s (--no-serve). Try, once "
            f"`twotower serve --artifacts {art} --store {store_url}` runs:\n",
            file=sys.stderr,
        )
        print(lines)
        sys.stdout.flush()
        return 0
    return _serve(args, art, store_url, lines, started)


def _train(art: Path) -> Dataset:
    """Steps 1 and 2: the demo data set, and a version trained on it published in ``art``."""
    from trainer.data.sources import load_source
    from trainer.run import train, trainer_config

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
    return ds


def _load_events(store_url: str, ds: Dataset) -> None:
    """Step 3: the data set's events into the embedded store."""
    from feature_store import open_store, run_sync
    from twotower.ingest import ingest_dataset

    async def _load() -> None:
        async with open_store(store_url) as store:
            await ingest_dataset(store, ds, progress=False)

    run_sync(_load())


def _top_pick(art: Path, store_url: str, user: str) -> str:
    """The item the published version would put first for ``user`` (from the store's history),
    so the printed curl lines show the dislike filter at work."""
    import numpy as np

    from common import artifacts
    from feature_store import open_store, run_sync
    from trainer.exported import ExportedModel

    exported = ExportedModel(art, artifacts.latest_version(art))

    async def _state():
        async with open_store(store_url) as store:
            return await store.get_user(user)

    state = run_sync(_state())
    index = {x: i + 1 for i, x in enumerate(exported.item_ids)}
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
    return next(
        str(exported.item_ids[i])
        for i in np.argsort(-scores)
        if str(exported.item_ids[i]) not in seen
    )


def _serve(args: argparse.Namespace, art: Path, store_url: str, lines: str, started: float) -> int:
    """Step 4: the API on the demo's version and store; the curl lines once it is ready."""
    from serving.main import check_settings, serve, serve_settings

    base = f"http://{_url_host(args.host)}:{args.port}"
    print(f"[4/4] starting the API on {base} ...", file=sys.stderr)
    # The curl lines only make sense once the API answers: printed when /readyz says so.
    threading.Thread(
        target=_announce_when_ready,
        args=(f"{_probe_base(args.host, args.port)}/readyz", lines, started),
        name="demo-ready",
        daemon=True,
    ).start()
    settings = serve_settings(
        artifacts=str(art), store=store_url, host=args.host, port=args.port, workers=1
    )
    return serve(check_settings(settings))


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _probe_base(host: str, port: int) -> str:
    """Where this machine reaches a server bound to ``host`` (a wildcard bind -> loopback)."""
    local = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://{_url_host(local)}:{port}"


def _announce_when_ready(
    url: str, lines: str, started: float, timeout_s: float = READY_TIMEOUT_S
) -> bool:
    """Poll ``url`` until it answers 200, then print the curl lines (stdout); False on timeout."""
    import httpx

    # The client logs every request at INFO: the user would see the probe polling.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                break
        except httpx.HTTPError:
            pass  # not listening yet
        time.sleep(0.2)  # another thread's start-up: nothing to await but the socket
    else:
        print(
            f"twotower demo: the API did not become ready within {timeout_s:.0f}s "
            f"({url}); see the log above",
            file=sys.stderr,
        )
        return False
    print(f"[4/4] ready in {time.perf_counter() - started:.0f}s. Try:\n", file=sys.stderr)
    print(lines)
    sys.stdout.flush()
    return True
