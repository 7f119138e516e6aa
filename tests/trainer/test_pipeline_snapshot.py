"""Frozen snapshots: what multi-worker replicas train on (``--freeze`` / ``--snapshot``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from common import artifacts
from common.urls import STORE_URL_ENV
from feature_store.archive import read_compacted
from feature_store.events import Event
from tests.trainer.test_pipeline import DATA, SETS, _config, _ingest
from trainer.pipeline.run import run_once
from trainer.pipeline.snapshot import (
    EVENTS_FILE,
    SnapshotError,
    list_snapshots,
    load_snapshot,
    pinned_versions,
    write_snapshot,
)

REPO = Path(__file__).resolve().parents[2]


def _events(n: int) -> list[Event]:
    return [Event(f"e{i}", f"u{i % 7}", f"i{i % 5}", "like", 1e9 + i, 1e9 + i) for i in range(n)]


def _cli(*args: str, env: dict | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "twotower.cli", "pipeline", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=env,
    )


def test_snapshot_round_trip_and_checksum(tmp_path):
    events = _events(50)
    path = write_snapshot(tmp_path, events, archive_run=3, archived_events=50, warm_version="v1")
    loaded, meta = load_snapshot(path)
    assert loaded == events
    assert (meta["archive_run"], meta["archived_events"], meta["warm_version"]) == (3, 50, "v1")
    assert list_snapshots(tmp_path) == [path] and pinned_versions(tmp_path) == {"v1"}

    write_snapshot(tmp_path, _events(3), archive_run=4, archived_events=3, warm_version=None)
    (path / EVENTS_FILE).write_bytes((path / EVENTS_FILE).read_bytes()[:-40] + b"\0" * 40)
    with pytest.raises(SnapshotError, match="checksum"):
        load_snapshot(path)
    with pytest.raises(SnapshotError, match="--freeze"):
        load_snapshot(tmp_path / "nope")


def test_freeze_writes_the_archive_and_keeps_the_newest(tmp_path):
    url = f"sqlite:///{tmp_path / 's.sqlite'}"
    art = tmp_path / "art"
    _ingest(url)
    first = _cli("--freeze", "--store", url, "--artifacts", str(art))
    assert first.returncode == 0, first.stderr[-2000:]
    summary = json.loads(first.stdout)
    events, meta = load_snapshot(summary["snapshot"])
    assert events == read_compacted(art / "events") and meta["warm_version"] is None
    assert summary["events"] == len(events) == meta["archived_events"]

    second = _cli("--freeze", "--artifacts", str(art), env={**_env(), STORE_URL_ENV: url})
    assert second.returncode == 0, second.stderr[-2000:]
    assert json.loads(second.stdout)["pruned"] == [meta["id"]]  # pipeline.keep_snapshots = 1
    assert [p.name for p in list_snapshots(art)] == [json.loads(second.stdout)["id"]]


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if "STORE" not in k}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "train.strategy=multiworker"], "needs --snapshot"),
        (["--strategy", "multiworker"], "needs --snapshot"),
        (["--freeze", "--snapshot", "x"], "pick one"),
        (["--freeze", "--every", "60"], "do not take --every"),
        (["--run-now"], "only applies with --every"),
    ],
)
def test_flag_combinations_that_cannot_work_exit_2(tmp_path, args, message):
    out = _cli("--store", f"sqlite:///{tmp_path / 's'}", "--artifacts", str(tmp_path), *args)
    assert out.returncode == 2 and message in out.stderr, out.stderr[-2000:]


def test_no_store_exits_2_and_names_the_variable(tmp_path):
    # No --store, no TWOTOWER_STORE__URL: the default store, which does not exist here.
    out = _cli("--artifacts", str(tmp_path / "art"), env=_env(), cwd=tmp_path)
    assert out.returncode == 2 and STORE_URL_ENV in out.stderr
    assert "no store file twotower-store.sqlite" in out.stderr
    assert not (tmp_path / "twotower-store.sqlite").exists()


@pytest.mark.slow
def test_training_on_a_snapshot_publishes_and_records_it(tmp_path):
    url = f"sqlite:///{tmp_path / 's.sqlite'}"
    art = tmp_path / "art"
    _ingest(url, DATA)
    first = run_once(url, art, _config(), progress=False)
    froze = _cli("--freeze", "--store", url, "--artifacts", str(art))
    snap = json.loads(froze.stdout)
    assert snap["warm_version"] == first["version"]
    sets = [a for s in SETS for a in ("--set", s)]
    out = _cli(
        "--artifacts", str(art), "--snapshot", snap["snapshot"], "--force", *sets, env=_env()
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert report["outcome"] == "published" and report["snapshot"] == snap["snapshot"]
    manifest = artifacts.read_manifest(art, report["version"])
    assert manifest["pipeline"]["snapshot"] == snap["id"]
    assert manifest["training"]["warm_start"]["version"] == first["version"]  # pinned
    assert report["events"]["archived"] == snap["events"]
