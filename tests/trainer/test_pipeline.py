"""The scheduled job: archive new events, warm-start, gate, publish or refuse."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from feature_store import open_store, run_sync
from feature_store.events import make_event
from tests.trainer.tiny import TINY, TINY_SETS
from trainer.data.sources import load_source
from trainer.pipeline import (
    GateRule,
    PipelineConfig,
    PipelineLocked,
    apply_gate,
    next_run_delay,
    run_lock,
    run_once,
)
from twotower import artifacts
from twotower.config import ConfigError, load_config
from twotower.ingest import ingest_dataset

REPO = Path(__file__).resolve().parents[2]
DATA = TINY.replace("seed=3", "seed=5")
SETS = TINY_SETS


def _config(*extra: str) -> PipelineConfig:
    return load_config(PipelineConfig, overrides=[*SETS, *extra], environ={})


def _ingest(url: str, spec: str = DATA) -> None:
    ds = load_source(spec)

    async def go():
        async with open_store(url) as store:
            await ingest_dataset(store, ds, progress=False)

    run_sync(go())


def _append(url: str, raws: list[dict]) -> None:
    async def go():
        async with open_store(url) as store:
            await store.append_events([make_event(r) for r in raws])

    run_sync(go())


def test_gate_rules():
    rules = {
        "recall@20": GateRule(direction="higher", tolerance=0.01),
        "dislike_rate@20": GateRule(direction="lower", tolerance=0.0),
    }
    ok, rows = apply_gate(
        {"recall@20": 0.295, "dislike_rate@20": 0.1},
        {"recall@20": 0.3, "dislike_rate@20": 0.1},
        rules,
    )
    assert ok and all(r["ok"] for r in rows)
    ok, rows = apply_gate(
        {"recall@20": 0.28, "dislike_rate@20": 0.1},
        {"recall@20": 0.3, "dislike_rate@20": 0.1},
        rules,
    )
    assert not ok and [r["metric"] for r in rows if not r["ok"]] == ["recall@20"]
    ok, rows = apply_gate(
        {"recall@20": 0.4, "dislike_rate@20": 0.11},
        {"recall@20": 0.3, "dislike_rate@20": 0.1},
        rules,
    )
    assert not ok and [r["metric"] for r in rows if not r["ok"]] == ["dislike_rate@20"]
    ok, rows = apply_gate({"recall@20": 0.0, "dislike_rate@20": 1.0}, None, rules)
    assert ok  # nothing published yet: the first version always passes


def test_schedule_parsing():
    assert next_run_delay("3600") == 3600
    now = 1_800_000_000.0  # a whole minute
    assert 0 < next_run_delay("*/5 * * * *", now=now + 1) <= 300
    with pytest.raises(ConfigError, match="cron"):
        next_run_delay("every tuesday")
    with pytest.raises(ConfigError, match="positive"):
        next_run_delay("-5")


def test_lock_prevents_overlap(tmp_path):
    with run_lock(tmp_path), pytest.raises(PipelineLocked, match="another pipeline run"):
        run_once(f"sqlite:///{tmp_path / 's.sqlite'}", tmp_path, _config())


@pytest.mark.slow
def test_publish_skip_refuse_force(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    art = tmp_path / "art"
    assert run_once(url, art, _config(), progress=False)["outcome"] == "skipped"  # empty log

    _ingest(url)
    first = run_once(url, art, _config(), progress=False)
    assert first["outcome"] == "published", first
    assert artifacts.latest_version(art) == first["version"]
    assert first["events"]["new"] == first["events"]["archived"] > 0
    report = json.loads(Path(first["report_path"]).read_text())
    assert report["outcome"] == "published"
    assert Path(first["report_path"]).with_suffix(".html").read_text().count("<img") == 1

    # Nothing new: no training.
    again = run_once(url, art, _config(), progress=False)
    assert again["outcome"] == "skipped" and again["events"]["new"] == 0

    # New events for a brand-new item: warm start grows the vocabulary.
    now = time.time()
    _append(
        url,
        [
            {
                "event_id": f"new-{u}",
                "user_id": f"u{u}",
                "item_id": "brand-new",
                "type": "like",
                "ts": now - 60 + u,
            }
            for u in range(40)
        ],
    )
    # A gate that cannot be met (recall must not drop at all and must rise by >1) refuses.
    strict = _config(
        "pipeline.gate={'recall@20': {'direction': 'lower', 'tolerance': 0.0}, 'coverage@20': {'direction': 'higher', 'tolerance': 0.0}}"
    )
    refused = run_once(url, art, strict, progress=False)
    published_before = artifacts.latest_version(art)
    if refused["outcome"] == "refused":
        assert published_before == first["version"]  # untouched
        assert any(not r["ok"] for r in refused["gate"])
    forced = run_once(url, art, strict, force=True, progress=False)
    assert forced["outcome"] == "published"
    assert forced["events"]["archived"] == first["events"]["archived"] + 40  # each event once
    m = artifacts.read_manifest(art)
    assert m["training"]["warm_start"]["version"] in (first["version"], refused.get("version"))
    with __import__("numpy").load(artifacts.version_dir(art, m["version"]) / "items.npz") as npz:
        ids = list(npz["ids"].astype(str))
    assert "brand-new" in ids
    first_ids = list(
        __import__("numpy")
        .load(artifacts.version_dir(art, first["version"]) / "items.npz")["ids"]
        .astype(str)
    )
    assert ids[: len(first_ids)] == first_ids  # old ids keep their rows


def _pipeline_cmd(url: str, art: Path, *sets: str) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "twotower.cli",
        "pipeline",
        "--store",
        url,
        "--artifacts",
        str(art),
    ]
    for s in [*SETS, *sets]:
        cmd += ["--set", s]
    return cmd


@pytest.mark.slow
def test_killed_run_leaves_published_version_and_next_run_starts_clean(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    art = tmp_path / "art"
    _ingest(url)
    first = subprocess.run(
        _pipeline_cmd(url, art), capture_output=True, text=True, timeout=600, cwd=REPO
    )
    assert first.returncode == 0, first.stderr[-3000:]
    published = artifacts.latest_version(art)
    assert published

    _append(
        url,
        [
            {"event_id": f"k-{u}", "user_id": f"u{u}", "item_id": "i1", "type": "like"}
            for u in range(30)
        ],
    )
    # A long run, killed once training has checkpointed.
    proc = subprocess.Popen(
        _pipeline_cmd(
            url,
            art,
            "train.epochs=50",
            "train.checkpoint_every=2",
            "train.early_stopping_patience=0",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    deadline = time.monotonic() + 300
    while not list(art.glob(".train-*/latest/checkpoint")):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert artifacts.latest_version(art) == published
    assert all(
        (artifacts.version_dir(art, v) / "manifest.json").is_file()
        for v in artifacts.list_versions(art)
    )

    # The lock died with the process; the next run completes (gate forced: quality is not the point here).
    nxt = subprocess.run(
        _pipeline_cmd(url, art) + ["--force"], capture_output=True, text=True, timeout=600, cwd=REPO
    )
    assert nxt.returncode == 0, nxt.stderr[-3000:]
    report = json.loads(nxt.stdout)
    assert report["outcome"] == "published"
    assert artifacts.latest_version(art) == report["version"] != published
