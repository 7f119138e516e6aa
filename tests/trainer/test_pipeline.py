"""The scheduled job: archive new events, warm-start, gate on a shared holdout, publish or refuse."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common import artifacts
from common.artifact_format import read_item_ids
from common.config import ConfigError
from feature_store import open_store, run_sync
from feature_store.events import make_event
from tests.trainer.tiny import TINY, TINY_SETS
from trainer.chief import TaskRole, parse_tf_config
from trainer.data.sources import load_source
from trainer.pipeline import reports, steps
from trainer.pipeline import run as pipeline_run
from trainer.pipeline.config import CHECKPOINTS_DIR, PipelineConfig, load_pipeline_config
from trainer.pipeline.gate import SCALAR_METRICS, GateRule, apply_gate
from trainer.pipeline.run import run_once
from trainer.pipeline.state import (
    PipelineLocked,
    apply_retention,
    checkpoint_dir,
    clear_checkpoints,
    read_state,
    run_lock,
)
from twotower.ingest import ingest_dataset

REPO = Path(__file__).resolve().parents[2]
DATA = TINY.replace("seed=3", "seed=5")
SETS = TINY_SETS
# A candidate that cannot be good: a new geometry (so no warm start) trained for one step.
BAD_CANDIDATE = ["model.embedding_dim=8", "train.epochs=1", "train.max_steps_per_epoch=1"]


def _config(*extra: str) -> PipelineConfig:
    return load_pipeline_config(overrides=[*SETS, *extra], environ={})


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


def _likes(prefix: str, item: str, users: int, ts: float) -> list[dict]:
    return [
        {
            "event_id": f"{prefix}-{u}",
            "user_id": f"u{u}",
            "item_id": item,
            "type": "like",
            "ts": ts + u,
        }
        for u in range(users)
    ]


def _reports(art: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((art / "reports").glob("*.json"))]


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


# -- warm start or cold start -------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "warm"),
    [
        ({}, True),
        ({"model": {"use_dislike_input": False}}, False),
        ({"model": {"embedding_dim": 32}}, False),
        ({"loss": {"logq": "none"}}, False),
        ({"loss": {"ntr_weight": 3.0}}, True),  # not an architecture change
    ],
)
def test_a_changed_architecture_cold_starts_instead_of_failing(change, warm):
    from trainer.config import TrainerConfig

    published = TrainerConfig()
    candidate = TrainerConfig.model_validate(
        {**published.as_dict(), **{k: {**published.as_dict()[k], **v} for k, v in change.items()}}
    )
    manifest = {"version": "v1", "config": published.as_dict()}
    assert steps.can_warm_start(manifest, candidate) is warm
    assert steps.can_warm_start(None, candidate) is False


# -- the gate and its configuration ---------------------------------------------------------


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


def test_gate_metric_names_are_checked_when_the_config_loads():
    with pytest.raises(ConfigError) as err:
        _config("pipeline.gate={'recall@25': {'direction': 'higher'}}")
    message = str(err.value)
    assert "'recall@25'" in message and "recall@20" in message and "coverage@20" in message
    with pytest.raises(ConfigError, match="longtail_recall@20"):  # a list, not a figure
        _config("pipeline.gate={'longtail_recall@20': {'direction': 'higher'}}")
    assert set(_config().pipeline.gate) <= set(SCALAR_METRICS)


def test_gate_names_are_exactly_the_scalar_metrics_evaluation_reports():
    """SCALAR_METRICS cannot drift from what the evaluation computes."""
    from trainer.data.examples import build_eval_set, build_judged_set
    from trainer.data.split import apply_dislike_holdout
    from trainer.evaluate import evaluate, reference_neighbors

    ds = load_source("synthetic:users=60,items=50,events_per_user=12,seed=1")
    ds = apply_dislike_holdout(ds, "last_fraction:0.2", 0.2)
    evalset = build_eval_set(ds, "test", 5, 3)
    judged = build_judged_set(ds, "test", 5, 3)
    rng = np.random.default_rng(0)
    items = rng.normal(size=(ds.num_items, 4)).astype(np.float32)

    def embed(history, dislikes):
        return rng.normal(size=(len(history), 4)).astype(np.float32)

    metrics = evaluate(
        embed, items, evalset, ds.train_item_counts(), reference_neighbors(ds, ds.num_items), judged
    ).metrics
    assert metrics["num_users_judged"] > 0
    # Every float is a figure a gate rule can name (counts are ints, longtail a list).
    scalars = {k for k, v in metrics.items() if isinstance(v, float)}
    assert scalars == set(SCALAR_METRICS)


def test_bad_gate_name_exits_2_before_any_work(tmp_path):
    out = subprocess.run(
        [
            *_pipeline_cmd(f"sqlite:///{tmp_path / 's.sqlite'}", tmp_path / "art"),
            "--set",
            "pipeline.gate={'recall@25': {'direction': 'higher'}}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "recall@25" in out.stderr and "recall@20" in out.stderr
    assert not (tmp_path / "art").exists() and not (tmp_path / "s.sqlite").exists()


def test_chief_task_from_tf_config():
    def chief(tf_config: str | None) -> bool:
        return parse_tf_config(tf_config).is_chief

    assert chief(None) and chief("") and parse_tf_config(None) == TaskRole()
    cluster = {"chief": ["a:1"], "worker": ["b:1", "c:1"]}
    assert chief(json.dumps({"cluster": cluster, "task": {"type": "chief", "index": 0}}))
    assert not chief(json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    no_chief = {"worker": ["b:1", "c:1"]}
    worker_1 = json.dumps({"cluster": no_chief, "task": {"type": "worker", "index": 1}})
    assert chief(json.dumps({"cluster": no_chief, "task": {"type": "worker", "index": 0}}))
    assert not chief(worker_1)
    assert parse_tf_config(worker_1) == TaskRole("worker", 1, cluster_has_chief=False)
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        parse_tf_config("{not json")


# -- runs that do not train: lock, reports, failures ----------------------------------------


def test_every_run_writes_a_report_with_a_unique_id(tmp_path):
    url = f"sqlite:///{tmp_path / 's.sqlite'}"
    art = tmp_path / "art"
    first = run_once(url, art, _config(), progress=False)
    second = run_once(url, art, _config(), progress=False)  # same second, most likely
    assert first["outcome"] == second["outcome"] == "skipped"
    assert first["run_id"] != second["run_id"]
    written = _reports(art)
    assert [r["run_id"] for r in written] == sorted([first["run_id"], second["run_id"]])
    assert all(r["outcome"] == "skipped" and "empty" in r["reason"] for r in written)
    assert Path(first["report_path"]).with_suffix(".html").is_file()

    with run_lock(art), pytest.raises(PipelineLocked, match="another pipeline run"):
        run_once(url, art, _config())
    locked = _reports(art)[-1]
    assert locked["outcome"] == "locked" and "another pipeline run" in locked["reason"]


def test_a_failed_run_writes_a_failure_report(tmp_path):
    art = tmp_path / "art"
    bad_store = f"sqlite:///{tmp_path / 'not-a-dir'}/s.sqlite"
    (tmp_path / "not-a-dir").write_text("a file where the store's directory should be")
    with pytest.raises(Exception) as err:
        run_once(bad_store, art, _config(), progress=False)
    (report,) = _reports(art)
    assert report["outcome"] == "failed"
    assert type(err.value).__name__ in report["reason"] and report["error"]
    assert not (art / "LATEST").exists()


def test_reports_are_pruned(tmp_path):
    url = f"sqlite:///{tmp_path / 's.sqlite'}"
    art = tmp_path / "art"
    ids = [run_once(url, art, _config("pipeline.keep_reports=2"))["run_id"] for _ in range(4)]
    assert sorted(p.stem for p in (art / "reports").glob("*.json")) == ids[-2:]
    assert sorted(p.stem for p in (art / "reports").glob("*.html")) == ids[-2:]


# -- retention and checkpoints (no training: hand-made versions) ------------------------------


def _fake_version(art: Path, outcome: str | None = None) -> str:
    with artifacts.staging_version(art) as (version, vdir):
        manifest = {"version": version}
        if outcome:
            manifest["pipeline"] = {"outcome": outcome}
        artifacts.write_manifest(vdir, manifest)
    return version


def test_retention_keeps_refused_candidates_apart_and_the_rollback_target(tmp_path):
    art = tmp_path
    v = [_fake_version(art) for _ in range(3)]
    refused = [_fake_version(art, "refused") for _ in range(4)]  # newer than every published one
    artifacts.publish(art, v[1])
    artifacts.publish(art, v[2])  # PREVIOUS = v[1]
    deleted = apply_retention(art, keep=1, keep_refused=1, protect=set())
    # Refused candidates do not push published ones out: v[2] (LATEST) and v[1]
    # (PREVIOUS) stay although keep=1, the newest refused one stays apart.
    assert set(deleted) == {v[0], *refused[:3]}
    assert artifacts.list_versions(art) == sorted([v[1], v[2], refused[3]])
    # Counts larger than what exists delete nothing.
    more = [_fake_version(art, "refused") for _ in range(2)]
    assert apply_retention(art, keep=10, keep_refused=5, protect=set()) == []
    assert set(more) <= set(artifacts.list_versions(art))
    assert apply_retention(art, keep=1, keep_refused=0, protect={v[1]}) == [refused[3], *more]


def test_checkpoint_dirs_are_keyed_by_snapshot_and_stale_ones_cleared(tmp_path):
    a = checkpoint_dir(tmp_path, {"archive_run": 3, "config": {"x": 1}})
    assert a == checkpoint_dir(tmp_path, {"config": {"x": 1}, "archive_run": 3})  # resumable
    b = checkpoint_dir(tmp_path, {"archive_run": 4, "config": {"x": 1}})
    assert a != b and a.parent == b.parent == tmp_path / CHECKPOINTS_DIR
    for d in (a, b):
        (d / "latest").mkdir(parents=True)
    assert clear_checkpoints(tmp_path, keep=b) == [a.name]
    assert not a.exists() and b.exists()


def test_no_users_to_gate_on_skips_before_training(tmp_path):
    url = f"sqlite:///{tmp_path / 's.sqlite'}"
    art = tmp_path / "art"
    artifacts.publish(art, _fake_version(art))
    # Two positives per user: nobody has a held-out event.
    _append(
        url,
        [
            {"event_id": f"p{u}-{j}", "user_id": f"w{u}", "item_id": f"i{j}", "type": "like"}
            for u in range(10)
            for j in range(2)
        ],
    )
    report = run_once(url, art, _config(), progress=False)
    assert report["outcome"] == "skipped" and "held-out" in report["reason"]
    assert not (art / CHECKPOINTS_DIR).exists()  # no training started
    assert len(artifacts.list_versions(art)) == 1


def test_window_keeps_the_last_days_by_event_time():
    from feature_store.events import Event

    events = [Event(f"e{i}", "u", "i", "like", 1_000_000.0 + i * 86400, 0.0) for i in range(10)]
    assert steps.window(events, None) == events
    assert [e.event_id for e in steps.window(events, 2.5)] == ["e7", "e8", "e9"]


# -- the whole job ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One store and artifact directory through seven runs of the job: publish, skip, refuse
    (through the command line), skip, a windowed publish, a publish that prunes, a publish
    raced by someone else. Each stage records what the tests below read, as it was then."""
    tmp = tmp_path_factory.mktemp("job")
    url = f"sqlite:///{tmp / 'store.sqlite'}"
    art = tmp / "art"
    s: dict[str, Any] = {"art": art}
    _ingest(url)
    data_end = float(load_source(DATA).ts.max())
    s["first"] = first = run_once(url, art, _config(), progress=False)
    v1 = first.get("version")
    s["latest_after_first"] = artifacts.latest_version(art)
    s["v1_manifest"] = artifacts.read_manifest(art, v1) if v1 else {}

    # Nothing new.
    s["again"] = run_once(url, art, _config(), progress=False)

    # New events on known items, and a candidate that cannot be good, through the CLI.
    known = [str(x) for x in load_source(DATA).item_ids]
    _append(
        url,
        [
            {**e, "item_id": known[(7 * u) % len(known)]}
            for u, e in enumerate(_likes("new", "", 40, data_end + 60))
        ],
    )
    s["cli"] = subprocess.run(
        [*_pipeline_cmd(url, art, *BAD_CANDIDATE)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    s["latest_after_refusal"] = artifacts.latest_version(art)

    # Nothing new after the refusal.
    s["after"] = run_once(url, art, _config(), progress=False)
    s["state_after_skip"] = read_state(art)

    # New events; the last 100 days; keep 1 published version and 1 refused candidate.
    _append(url, _likes("more", "brand-new-2", 30, data_end + 120))
    s["windowed"] = windowed = run_once(
        url,
        art,
        _config(
            "pipeline.window_days=100",
            "pipeline.keep_versions=1",
            "pipeline.keep_refused=1",
            "split.max_users_eval=10",
        ),
        force=True,
        progress=False,
    )
    from feature_store.archive import read_compacted

    s["archive_after_window"] = read_compacted(art / "events")
    s["versions_after_window"] = artifacts.list_versions(art)
    s["previous_after_window"] = artifacts.previous_version(art)
    v2 = windowed.get("version")
    if v2:
        s["v2_manifest"] = artifacts.read_manifest(art, v2)
        s["v2_ids"] = read_item_ids(artifacts.version_dir(art, v2) / artifacts.ITEMS).tolist()
    if v1:
        s["v1_ids"] = read_item_ids(artifacts.version_dir(art, v1) / artifacts.ITEMS).tolist()

    # Once more, keeping no refused candidate.
    _append(url, _likes("third", "brand-new-3", 30, data_end + 180))
    s["third"] = third = run_once(
        url, art, _config("pipeline.keep_versions=1", "pipeline.keep_refused=0"), force=True
    )
    s["versions_after_third"] = artifacts.list_versions(art)

    # Someone publishes v2 while a run is being gated against v3.
    _append(url, _likes("fourth", "brand-new-4", 30, data_end + 240))
    real = pipeline_run.evaluate_on_holdout

    def publish_meanwhile(art_, version, holdout_):
        if artifacts.latest_version(art) == third.get("version"):
            artifacts.publish(art, v2)  # e.g. a manual `twotower train` or a rollback
        return real(art_, version, holdout_)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline_run, "evaluate_on_holdout", publish_meanwhile)
        s["raced"] = run_once(url, art, _config(), force=True, progress=False)
    s["latest_after_race"] = artifacts.latest_version(art)
    s["state_after_race"] = read_state(art)
    s["reports"] = _reports(art)
    s["history"] = reports.read_history(art)
    return s


@pytest.mark.slow
def test_the_first_run_publishes_and_records_its_archive(job: dict[str, Any]) -> None:
    first = job["first"]
    assert first["outcome"] == "published", first
    assert job["latest_after_first"] == first["version"]
    assert first["events"]["new"] == first["events"]["archived"] > 0
    assert job["v1_manifest"]["pipeline"]["archived_events"] == first["events"]["archived"]


@pytest.mark.slow
def test_nothing_new_skips_training(job: dict[str, Any]) -> None:
    assert job["again"]["outcome"] == "skipped" and job["again"]["events"]["new"] == 0


@pytest.mark.slow
def test_a_bad_candidate_is_refused_by_the_command_line_with_the_regressions(
    job: dict[str, Any],
) -> None:
    cli = job["cli"]
    assert cli.returncode == 1, cli.stderr[-3000:]
    refused = json.loads(cli.stdout)
    assert refused["outcome"] == "refused"
    assert any(not r["ok"] for r in refused["gate"])
    assert f"quality gate refused {refused['version']}" in cli.stderr
    assert "REGRESSION" in cli.stderr
    assert job["latest_after_refusal"] == job["first"]["version"]  # untouched
    # Both versions scored on one holdout: the same users.
    holdout = refused["holdout"]
    assert refused["candidate"]["metrics"]["num_users"] == holdout["users"]
    assert refused["published"]["metrics"]["num_users"] == holdout["users"]
    for noise in ("oneDNN custom operations", "non-serializable objects"):
        assert noise not in cli.stderr


@pytest.mark.slow
def test_after_a_refusal_nothing_new_still_skips(job: dict[str, Any]) -> None:
    after = job["after"]
    assert after["outcome"] == "skipped" and after["events"]["since_last_gated_run"] == 0
    refused = json.loads(job["cli"].stdout)
    assert job["state_after_skip"]["last_gated_run"]["version"] == refused["version"]


@pytest.mark.slow
def test_the_window_and_one_holdout_and_catalog_for_both_versions(job: dict[str, Any]) -> None:
    windowed = job["windowed"]
    assert windowed["outcome"] == "published"
    events = job["archive_after_window"]
    expected = sum(e.ts >= max(x.ts for x in events) - 100 * 86400 for e in events)
    assert windowed["events"]["window"] == expected < windowed["events"]["archived"]
    assert job["v2_manifest"]["pipeline"]["window_events"] == expected
    assert windowed["holdout"]["users"] == 10  # one sample, used for both versions
    assert windowed["published"]["metrics"]["num_users"] == 10
    # One catalog for both: the candidate's, which has the new item the published one lacks.
    assert (
        windowed["holdout"]["catalog_items"]
        == job["v2_manifest"]["num_items"]
        == job["v1_manifest"]["num_items"] + 1
    )


@pytest.mark.slow
def test_a_warm_start_keeps_old_rows_and_adds_new_items(job: dict[str, Any]) -> None:
    ids, first_ids = job["v2_ids"], job["v1_ids"]
    assert "brand-new-2" in ids and ids[: len(first_ids)] == first_ids
    assert job["v2_manifest"]["training"]["warm_start"]["version"] == job["first"]["version"]


@pytest.mark.slow
def test_the_job_prunes_old_versions_but_keeps_the_rollback_target(
    job: dict[str, Any],
) -> None:
    v1, v2 = job["first"]["version"], job["windowed"]["version"]
    r1 = json.loads(job["cli"].stdout)["version"]
    assert job["versions_after_window"] == sorted([v1, r1, v2])
    assert job["previous_after_window"] == v1
    # v1 falls out (keep_versions=1, no longer PREVIOUS), and keep_refused=0 drops r1.
    third = job["third"]
    assert third["outcome"] == "published" and set(third["pruned"]) == {v1, r1}
    assert job["versions_after_third"] == sorted([v2, third["version"]])


@pytest.mark.slow
def test_a_version_published_while_a_run_is_gated_is_not_overwritten(
    job: dict[str, Any],
) -> None:
    raced = job["raced"]
    assert raced["outcome"] == "refused" and "another job published" in raced["reason"]
    assert job["latest_after_race"] == job["windowed"]["version"]
    # Retried next time: the run is not recorded as gated.
    assert job["state_after_race"]["last_gated_run"]["version"] == job["third"]["version"]


@pytest.mark.slow
def test_every_run_reports_and_every_gated_run_is_in_the_history(job: dict[str, Any]) -> None:
    outcomes = [r["outcome"] for r in job["reports"]]
    assert outcomes == [
        "published",
        "skipped",
        "refused",
        "skipped",
        "published",
        "published",
        "refused",
    ]
    history = job["history"]
    assert [h["outcome"] for h in history] == [
        "published",
        "refused",
        "published",
        "published",
        "refused",
    ]
    r1 = json.loads(job["cli"].stdout)["version"]
    v1, v2, v3 = (job[k]["version"] for k in ("first", "windowed", "third"))
    assert [h["candidate"] for h in history][:4] == [v1, r1, v2, v3]
    assert all(h["published"] is not None for h in history[1:])
    page = Path(job["raced"]["report_path"]).with_suffix(".html").read_text()
    assert page.count("<img") == 1 and "another job published" in page


@pytest.mark.slow
def test_killed_run_then_new_item_same_config_completes(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    art = tmp_path / "art"
    _ingest(url)
    first = run_once(url, art, _config(), progress=False)
    assert first["outcome"] == "published"
    published = first["version"]

    _append(url, _likes("k", "i1", 30, time.time()))
    long_run = ["train.epochs=50", "train.checkpoint_every=2", "train.early_stopping_patience=0"]
    proc = subprocess.Popen(
        _pipeline_cmd(url, art, *long_run),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    deadline = time.monotonic() + 300
    while not list(art.glob(f"{CHECKPOINTS_DIR}/*/latest/checkpoint")):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)  # another process's progress: polled
    killed_ckpt = next(art.glob(f"{CHECKPOINTS_DIR}/*")).name
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert artifacts.latest_version(art) == published
    assert all(
        (artifacts.version_dir(art, v) / "manifest.json").is_file()
        for v in artifacts.list_versions(art)
    )

    # A new item arrives; the same command runs again: a new snapshot, so the killed
    # run's checkpoint (built for one item fewer) is dropped and training starts fresh.
    _append(url, _likes("n", "brand-new-after-kill", 5, time.time()))
    nxt = subprocess.run(
        _pipeline_cmd(url, art, *long_run), capture_output=True, text=True, timeout=600, cwd=REPO
    )
    assert nxt.returncode in (0, 1), nxt.stderr[-3000:]
    report = json.loads(nxt.stdout)
    assert report["outcome"] in ("published", "refused"), report
    assert "incompatible" not in nxt.stderr
    assert not (art / CHECKPOINTS_DIR / killed_ckpt).exists()
    manifest = artifacts.read_manifest(art, report["version"])
    assert manifest["training"]["resumed_from"] is None
    with np.load(artifacts.version_dir(art, report["version"]) / "items.npz") as npz:
        assert "brand-new-after-kill" in set(npz["ids"].astype(str))
