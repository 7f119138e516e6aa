"""One rule for the store of every command: ``--store``, else ``TWOTOWER_STORE_URL`` (a password
need not be on a command line), else the embedded ``sqlite:///twotower-store.sqlite``."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from twotower.cli import DEFAULT_STORE, STORE_COMMANDS, build_parser, main, store_from_environment

REPO = Path(__file__).resolve().parents[2]
URL = "redis://:s3cr3t@redis:6379/0"


def _args(*argv: str, environ: dict[str, str]):
    args = build_parser().parse_args(list(argv))
    store_from_environment(args, environ)
    return args


def test_the_environment_fills_in_a_missing_store():
    env = {"TWOTOWER_STORE_URL": URL}
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
    env = {"TWOTOWER_STORE_URL": URL}
    explicit = "sqlite:///x.sqlite"
    for argv in ARGV.values():
        assert _args(*argv, "--store", explicit, environ=env).store == explicit
        assert _args(*argv, environ=env).store == URL
        assert _args(*argv, environ={}).store == DEFAULT_STORE
        assert _args(*argv, environ={"TWOTOWER_STORE_URL": ""}).store == DEFAULT_STORE
    # serve: its own setting (TWOTOWER_SERVE_STORE_URL) comes first and is read by serving.
    both = {**env, "TWOTOWER_SERVE_STORE_URL": "redis://other:6379/1"}
    assert _args(*ARGV["serve"], environ=both).store is None
    assert _args(*ARGV["serve"], "--store", explicit, environ=both).store == explicit
    # A run on a frozen snapshot reads no store: none is made up for its report.
    assert _args(*ARGV["pipeline"], "--snapshot", "s", environ={}).store is None


def test_serve_settings_follow_the_rule(monkeypatch):
    from twotower.commands.serve import settings_from_args

    for name in ("TWOTOWER_STORE_URL", "TWOTOWER_SERVE_STORE_URL"):
        monkeypatch.delenv(name, raising=False)
    assert settings_from_args(_args(*ARGV["serve"], environ={})).store_url == DEFAULT_STORE
    monkeypatch.setenv("TWOTOWER_SERVE_STORE_URL", "sqlite:///serve.sqlite")
    args = _args(*ARGV["serve"], environ={**os.environ, "TWOTOWER_STORE_URL": URL})
    assert settings_from_args(args).store_url == "sqlite:///serve.sqlite"


@pytest.mark.parametrize("command", ["forget", "pipeline"])
def test_a_default_store_that_does_not_exist_is_refused_not_created(
    command, tmp_path, monkeypatch, capsys
):
    monkeypatch.delenv("TWOTOWER_STORE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(ARGV[command]) == 2
    err = capsys.readouterr().err
    assert "no store file twotower-store.sqlite" in err and "TWOTOWER_STORE_URL" in err
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


def test_ingest_writes_to_the_store_the_environment_names(tmp_path):
    path = tmp_path / "from-env.sqlite"
    env = {**os.environ, "TWOTOWER_STORE_URL": f"sqlite:///{path}"}
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
    with sqlite3.connect(path) as db:
        assert db.execute("select count(*) from sqlite_master").fetchone()[0] > 0
