"""One rule for the store of every command: ``--store``, else ``TWOTOWER_STORE__URL`` (a password
need not be on a command line), else the embedded ``sqlite:///twotower-store.sqlite``; the
environment read once at the start (old names renamed, ``TF_CONFIG`` parsed)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from common.config import ConfigError
from common.urls import DEFAULT_STORE_URL, STORE_URL_ENV
from twotower.cli import STORE_COMMANDS, build_parser, main, read_environment

REPO = Path(__file__).resolve().parents[2]
URL = "redis://:s3cr3t@redis:6379/0"


def _args(*argv: str, environ: dict[str, str]):
    args = build_parser().parse_args(list(argv))
    read_environment(args, environ)
    return args


def test_the_environment_fills_in_a_missing_store():
    env = {STORE_URL_ENV: URL}
    assert _args("pipeline", "--artifacts", "a", environ=env).store == URL
    assert _args("ingest", "--data", "synthetic", environ=env).store == URL
    assert _args("forget", "--user", "u1", environ=env).store == URL
    assert _args("serve", "--artifacts", "a", environ=env).store == URL


ARGV = {
    "serve": ["serve", "--artifacts", "a"],
    "ingest": ["ingest", "--data", "synthetic"],
    "pipeline": ["pipeline", "--artifacts", "a"],
    "forget": ["forget", "--user", "u1"],
}


def test_one_rule_for_every_store_command():
    assert set(ARGV) == set(STORE_COMMANDS)
    env = {STORE_URL_ENV: URL}
    explicit = "sqlite:///x.sqlite"
    for argv in ARGV.values():
        assert _args(*argv, "--store", explicit, environ=dict(env)).store == explicit
        assert _args(*argv, environ=dict(env)).store == URL
        assert _args(*argv, environ={}).store == DEFAULT_STORE_URL
        assert _args(*argv, environ={STORE_URL_ENV: ""}).store == DEFAULT_STORE_URL
    # A run on a frozen snapshot reads no store: none is made up for its report.
    assert _args(*ARGV["pipeline"], "--snapshot", "s", environ={}).store is None


@pytest.mark.parametrize("old", ["TWOTOWER_STORE_URL", "TWOTOWER_SERVE_STORE_URL"])
def test_the_old_store_names_are_renamed_for_every_command(old):
    for argv in ARGV.values():
        env = {old: URL}
        args = build_parser().parse_args(argv)
        (warning,) = read_environment(args, env)
        assert args.store == URL and env == {STORE_URL_ENV: URL}
        assert f"{old} is deprecated: use {STORE_URL_ENV}" in warning
    with pytest.raises(ConfigError, match=f"{STORE_URL_ENV} and {old} are set to different"):
        _args(*ARGV["ingest"], environ={old: URL, STORE_URL_ENV: "sqlite:///other.sqlite"})
    # Both old names (serve and the other commands had one each) must agree too.
    both = {"TWOTOWER_STORE_URL": URL, "TWOTOWER_SERVE_STORE_URL": "sqlite:///other.sqlite"}
    with pytest.raises(ConfigError, match="TWOTOWER_SERVE_STORE_URL and TWOTOWER_STORE_URL"):
        _args(*ARGV["serve"], environ=both)


def test_an_unknown_store_variable_is_refused_with_the_nearest_name():
    with pytest.raises(ConfigError, match=f"TWOTOWER_STORE__URI.*did you mean {STORE_URL_ENV}"):
        _args(*ARGV["ingest"], environ={"TWOTOWER_STORE__URI": URL})


def test_the_old_serve_names_are_renamed_once_for_the_settings():
    env = {"TWOTOWER_SERVE_PORT": "9000", "TWOTOWER_SERVE__HOST": "0.0.0.0"}
    (warning,) = read_environment(build_parser().parse_args(ARGV["pipeline"]), env)
    assert env == {"TWOTOWER_SERVE__PORT": "9000", "TWOTOWER_SERVE__HOST": "0.0.0.0"}
    assert "TWOTOWER_SERVE_PORT is deprecated: use TWOTOWER_SERVE__PORT" in warning


def test_tf_config_is_read_once_for_a_snapshot_run():
    cluster = {"worker": ["a:1", "b:1"]}
    worker_1 = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}})
    snapshot = [*ARGV["pipeline"], "--snapshot", "s"]
    assert not _args(*snapshot, environ={"TF_CONFIG": worker_1}).task_role.is_chief
    assert _args(*snapshot, environ={}).task_role.is_chief
    # Only a snapshot run has replicas: elsewhere TF_CONFIG is TensorFlow's business.
    assert _args(*ARGV["pipeline"], environ={"TF_CONFIG": "{bad"}).task_role.is_chief
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        _args(*snapshot, environ={"TF_CONFIG": "{bad"})


def test_serve_settings_follow_the_rule(monkeypatch):
    from twotower.commands.serve import settings_from_args

    monkeypatch.delenv(STORE_URL_ENV, raising=False)
    assert settings_from_args(_args(*ARGV["serve"], environ={})).store_url == DEFAULT_STORE_URL
    args = _args(*ARGV["serve"], environ={STORE_URL_ENV: "sqlite:///serve.sqlite"})
    assert settings_from_args(args).store_url == "sqlite:///serve.sqlite"


@pytest.mark.parametrize("command", ["forget", "pipeline"])
def test_a_default_store_that_does_not_exist_is_refused_not_created(
    command, tmp_path, monkeypatch, capsys
):
    for name in (STORE_URL_ENV, "TWOTOWER_STORE_URL", "TWOTOWER_SERVE_STORE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(ARGV[command]) == 2
    err = capsys.readouterr().err
    assert "no store file twotower-store.sqlite" in err and STORE_URL_ENV in err
    assert not (tmp_path / "twotower-store.sqlite").exists()


def _cli(cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWOTOWER_")}
    return subprocess.run(
        [sys.executable, "-m", "twotower.cli", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=env,
    )


def test_ingest_pipeline_and_forget_share_the_default_store_without_a_flag(tmp_path):
    ingest = _cli(tmp_path, "ingest", "--data", "synthetic:users=30,items=40,seed=1")
    assert ingest.returncode == 0, ingest.stderr[-2000:]
    accepted = json.loads(ingest.stdout)["accepted"]
    assert accepted > 0 and (tmp_path / "twotower-store.sqlite").is_file()

    freeze = _cli(tmp_path, "pipeline", "--artifacts", "art", "--freeze")
    assert freeze.returncode == 0, freeze.stderr[-2000:]
    assert json.loads(freeze.stdout)["events"] == accepted  # it read what ingest wrote

    forget = _cli(tmp_path, "forget", "--user", "u0")
    assert forget.returncode == 0, forget.stderr[-2000:]
    assert json.loads(forget.stdout)["log_events_removed"] > 0


@pytest.mark.parametrize("variable", [STORE_URL_ENV, "TWOTOWER_STORE_URL"])
def test_ingest_writes_to_the_store_the_environment_names(tmp_path, variable):
    path = tmp_path / "from-env.sqlite"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWOTOWER_")}
    env[variable] = f"sqlite:///{path}"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "twotower.cli",
            "ingest",
            "--data",
            "synthetic:users=30,items=40,events_per_user=8,seed=1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout)["accepted"] > 0
    assert path.is_file() and not (tmp_path / "twotower-store.sqlite").exists()
    # The old name still works, with one warning naming the new one.
    deprecated = f"{variable} is deprecated: use {STORE_URL_ENV}"
    assert out.stderr.count(deprecated) == (variable != STORE_URL_ENV), out.stderr[-2000:]
    with sqlite3.connect(path) as db:
        assert db.execute("select count(*) from sqlite_master").fetchone()[0] > 0
