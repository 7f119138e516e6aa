"""deploy/seed.py: what it plans, and a real run against Redis (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common import artifacts
from tests.deploy import _deploy as d

seed = d.load_script("seed")
TINY = "synthetic:users=150,items=80,events_per_user=12,seed=3"


def _publish_fake_version(art: Path, version: str = "v1") -> None:
    (art / "versions" / version).mkdir(parents=True)
    (art / "versions" / version / "manifest.json").write_text("{}")
    (art / "LATEST").write_text(version + "\n")


def test_plan_ingests_then_runs_the_pipeline_when_nothing_is_published(tmp_path):
    env = {
        "TWOTOWER_STORE__URL": "redis://:pw@redis:6379/0",
        "TWOTOWER_SEED__ARTIFACTS": str(tmp_path),
    }
    ingest, pipeline = seed.plan(env)
    # The store URL is inherited through TWOTOWER_STORE__URL, never on the command line.
    assert ingest == ["ingest", "--data", seed.DEFAULT_DATA]
    assert pipeline == [
        "pipeline",
        "--artifacts",
        str(tmp_path),
        "--set",
        "train.epochs=4",
        "--set",
        "train.batch_size=512",
    ]
    with_config = seed.plan({**env, "TWOTOWER_SEED__CONFIG": "/etc/twotower/pipeline.yaml"})[1]
    assert with_config[3:5] == ["--config", "/etc/twotower/pipeline.yaml"]


def test_plan_is_empty_once_a_version_is_published(tmp_path):
    env = {
        "TWOTOWER_STORE__URL": "redis://:pw@redis:6379/0",
        "TWOTOWER_SEED__ARTIFACTS": str(tmp_path),
    }
    (tmp_path / "LATEST").write_text("v-missing\n")  # names no complete version: not published
    assert len(seed.plan(env)) == 2
    (tmp_path / "LATEST").unlink()
    _publish_fake_version(tmp_path)
    assert seed.plan(env) == []
    assert seed.published_version(tmp_path) == "v1"


def test_plan_errors(tmp_path):
    with pytest.raises(seed.SeedError, match="TWOTOWER_STORE__URL"):
        seed.plan({"TWOTOWER_SEED__ARTIFACTS": str(tmp_path)})
    env = {
        "TWOTOWER_STORE__URL": "redis://r/0",
        "TWOTOWER_SEED__ARTIFACTS": str(tmp_path),
        "TWOTOWER_SEED__SETTINGS": "epochs",
    }
    with pytest.raises(seed.SeedError, match="key=value"):
        seed.plan(env)


def test_old_names_are_renamed_at_the_start_and_unknown_ones_refused(tmp_path):
    env = {"TWOTOWER_STORE_URL": "redis://r/0", "TWOTOWER_ARTIFACTS": str(tmp_path), "X": "1"}
    warnings = seed.read_environment(env)
    assert env == {
        "TWOTOWER_STORE__URL": "redis://r/0",
        "TWOTOWER_SEED__ARTIFACTS": str(tmp_path),
        "X": "1",
    }
    assert (
        len(warnings) == 2
        and "TWOTOWER_ARTIFACTS is deprecated: use TWOTOWER_SEED__ARTIFACTS" in warnings[0]
    )
    assert len(seed.plan(env)) == 2
    with pytest.raises(seed.SeedError, match="did you mean TWOTOWER_SEED__DATA"):
        seed.read_environment({"TWOTOWER_SEED__DAT": TINY})
    with pytest.raises(seed.SeedError, match="TWOTOWER_SEED__DATA and TWOTOWER_SEED_DATA"):
        seed.read_environment({"TWOTOWER_SEED_DATA": TINY, "TWOTOWER_SEED__DATA": "synthetic"})


def test_the_seed_process_reads_old_names_with_a_warning(tmp_path):
    _publish_fake_version(tmp_path)  # so the run stops at "nothing to do"
    base = {k: v for k, v in os.environ.items() if not k.startswith("TWOTOWER_")}
    env = {"TWOTOWER_STORE_URL": "redis://r/0", "TWOTOWER_ARTIFACTS": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, str(d.REPO / "deploy" / "seed.py")],
        env={**base, "PYTHONPATH": str(d.REPO), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and f"{tmp_path} already publishes v1" in out.stderr, out.stderr
    assert out.stderr.count("seed: warning: environment TWOTOWER_") == 2, out.stderr
    typo = subprocess.run(
        [sys.executable, str(d.REPO / "deploy" / "seed.py")],
        env={**base, "PYTHONPATH": str(d.REPO), **env, "TWOTOWER_SEED__SETTING": "x=1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert typo.returncode == 2 and "did you mean TWOTOWER_SEED__SETTINGS" in typo.stderr


def run_seed(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The compose seed service's command line: preflight -- seed, as processes."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TWOTOWER_")}
    return subprocess.run(
        [
            sys.executable,
            str(d.REPO / "deploy" / "preflight.py"),
            "--",
            sys.executable,
            str(d.REPO / "deploy" / "seed.py"),
        ],
        env={**base, "PYTHONPATH": str(d.REPO), "TF_USE_LEGACY_KERAS": "1", **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_seed_publishes_once_records_its_snapshot_and_loads_the_store(stack_redis, tmp_path):
    art = tmp_path / "artifacts"
    env = {
        "TWOTOWER_DEPLOY__ENVIRONMENT": "production",  # and the preflight lets a strong password through
        "TWOTOWER_DEPLOY__REDIS_PASSWORD": stack_redis.password,
        "TWOTOWER_STORE__URL": stack_redis.url(),
        "TWOTOWER_SEED__ARTIFACTS": str(art),
        "TWOTOWER_SEED__DATA": TINY,
        "TWOTOWER_SEED__SETTINGS": "train.epochs=1 train.batch_size=256",
        "TWOTOWER_SEED__CONFIG": str(d.PIPELINE_CONFIG),
    }
    first = run_seed(env)
    assert first.returncode == 0, first.stderr[-4000:]
    version = artifacts.latest_version(art)
    manifest = artifacts.read_manifest(art, version)
    # The pipeline's own first run: the archived snapshot is recorded.
    assert manifest["pipeline"]["archived_events"] > 0
    assert manifest["pipeline"]["outcome"] == "published"
    keys = stack_redis.client().dbsize()
    assert keys > 150, f"expected per-user state and the log in Redis, found {keys} keys"

    again = run_seed(env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "nothing to do" in again.stderr
    assert (art / "LATEST").read_text().strip() == version
    assert stack_redis.client().dbsize() == keys

    # The scheduled pipeline's first run right after: nothing new, no retraining.
    base = {k: v for k, v in os.environ.items() if not k.startswith("TWOTOWER_")}
    scheduled = subprocess.run(
        [sys.executable, "-m", "twotower.cli", "pipeline", "--artifacts", str(art)],
        env={**base, "PYTHONPATH": str(d.REPO), "TWOTOWER_STORE__URL": stack_redis.url()},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert scheduled.returncode == 0, scheduled.stderr[-2000:]
    report = json.loads(scheduled.stdout)
    assert report["outcome"] == "skipped" and report["events"]["since_last_gated_run"] == 0
