"""``--store`` defaults from ``TWOTOWER_STORE_URL``: a password need not be on a command line."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from twotower.cli import DEFAULT_STORE, build_parser, main, store_from_environment

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


def test_an_explicit_store_wins_and_fallbacks_hold():
    env = {"TWOTOWER_STORE_URL": URL}
    explicit = "sqlite:///x.sqlite"
    assert _args("pipeline", "--store", explicit, "--artifacts", "a", environ=env).store == explicit
    assert _args("ingest", "--data", "synthetic", environ={}).store == DEFAULT_STORE
    assert _args("pipeline", "--artifacts", "a", environ={}).store is None  # refused later
    # serve: its own setting (TWOTOWER_SERVE_STORE_URL) is read by serving; leave it alone.
    both = {**env, "TWOTOWER_SERVE_STORE_URL": "redis://other:6379/1"}
    assert _args("serve", "--artifacts", "a", environ=both).store is None
    assert _args("serve", "--artifacts", "a", environ={}).store is None


def test_forget_without_any_store_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.delenv("TWOTOWER_STORE_URL", raising=False)
    with pytest.raises(SystemExit) as exc:
        main(["forget", "--user", "u1"])
    assert exc.value.code == 2 and "TWOTOWER_STORE_URL" in capsys.readouterr().err


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
