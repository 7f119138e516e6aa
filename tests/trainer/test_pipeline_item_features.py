"""The README's path: train on a source, ingest it, run the pipeline -> it warm-starts.

The pipeline trains on the store's events; its dataset must carry the item
features the source had (through the store's item metadata), or the feature
sets differ and every run after a `twotower train` cold-starts.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common import artifacts
from feature_store import open_store
from feature_store.events import make_event
from tests.trainer.test_pipeline import DATA, _config, _ingest
from trainer.pipeline.run import freeze_snapshot, run_once

ML100K = Path(__file__).resolve().parents[3] / "shared" / "data" / "ml-100k" / "u.data"


def _twotower(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "twotower.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )


@pytest.mark.slow
def test_readme_ml100k_train_ingest_pipeline_warm_starts(tmp_path):
    assert ML100K.is_file(), f"reference data missing: {ML100K}"
    data = f"movielens:{ML100K}"
    train = _twotower(tmp_path, "train", "--data", data, "--out", "artifacts", "--epochs", "1")
    assert train.returncode == 0, train.stderr[-3000:]
    ingest = _twotower(tmp_path, "ingest", "--data", data, "--store", "sqlite:///store.sqlite")
    assert ingest.returncode == 0, ingest.stderr[-3000:]
    assert json.loads(ingest.stdout)["items_with_metadata"] == 1682
    pipeline = _twotower(
        tmp_path,
        *("pipeline", "--store", "sqlite:///store.sqlite", "--artifacts", "artifacts"),
        *("--epochs", "1"),
    )
    assert pipeline.returncode in (0, 1), pipeline.stderr[-3000:]  # 1: the gate refused
    assert "not warm-starting" not in pipeline.stderr, pipeline.stderr[-3000:]

    art = tmp_path / "artifacts"
    trained = json.loads(train.stdout)["version"]
    (report,) = [json.loads(p.read_text()) for p in (art / "reports").glob("*.json")]
    assert report["outcome"] in ("published", "refused"), report.get("reason")
    assert report["warm_start"] is not None, "the pipeline cold-started"
    assert report["published"]["version"] == report["warm_start"]["version"] == trained
    manifest = artifacts.read_manifest(art, report["version"])
    assert manifest["training"]["warm_start"]["version"] == trained
    assert manifest["item_feature_sizes"] == {"genre": 20}  # u.item: 19 genre flags + unknown


@pytest.mark.slow
def test_snapshot_and_store_runs_warm_start_and_a_new_feature_value_grows_the_table(tmp_path):
    from trainer.run import train

    url = f"sqlite:///{tmp_path / 's.sqlite'}"
    art = tmp_path / "art"
    config = _config("train.epochs=1")
    first = train(DATA, art, config.trainer(), progress=False)  # publishes
    sizes = artifacts.read_manifest(art, first.version)["item_feature_sizes"]
    assert sizes == {"category": 21}  # synthetic: 20 categories + unknown
    _ingest(url)

    # Multi-worker runs read a frozen snapshot: the item metadata is frozen with the events.
    snap = freeze_snapshot(url, art, config)
    on_snapshot = run_once(None, art, config, progress=False, snapshot=snap["snapshot"])
    assert on_snapshot["warm_start"]["version"] == first.version
    assert artifacts.read_manifest(art, on_snapshot["version"])["item_feature_sizes"] == sizes

    # A new item in a category no version has seen yet: the feature table grows.
    async def new_item() -> None:
        async with open_store(url) as store:
            await store.put_item_metadata({"fresh": {"category": 30}})
            await store.append_events(
                [
                    make_event(
                        {
                            "event_id": f"fresh-{u}",
                            "user_id": f"u{u}",
                            "item_id": "fresh",
                            "type": "like",
                            "ts": time.time() - 3600 + u,
                        }
                    )  # fmt: skip
                    for u in range(20)
                ]
            )

    asyncio.run(new_item())
    published = artifacts.latest_version(art)
    on_store = run_once(url, art, config, progress=False)
    assert on_store["warm_start"]["version"] == published
    assert on_store["warm_start"]["grown"] >= 2  # the item id table and the category table
    manifest = artifacts.read_manifest(art, on_store["version"])
    assert manifest["item_feature_sizes"] == {"category": 31}
