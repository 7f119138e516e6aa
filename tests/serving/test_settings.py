"""Settings validation: limits, refused production values, env round-trip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from serving.settings import ENV_PREFIX, Settings

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_the_spec_limits(tmp_path: Path) -> None:
    s = Settings(artifacts=tmp_path)
    assert s.store_url == "sqlite:///twotower-store.sqlite"
    assert (s.host, s.port, s.workers) == ("127.0.0.1", 8000, 1)
    assert (s.max_k, s.default_k) == (1000, 20)
    assert s.demote_weight == 0.0  # soft demotion is off by default


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"max_k": 1001}, "max_k"),
        ({"max_k": 10, "default_k": 20}, "default_k"),
        ({"store_url": "mysql://x"}, "unknown scheme"),
        ({"store_url": "redis://h:abc/0"}, "port must be a number"),
        ({"store_url": "redis://h:6379/zero"}, "database must be a number"),
        ({"store_url": "redis://h:6379/0?socket_timeut=1"}, "unknown store option"),
        ({"store_url": "sqlite://relative.db"}, "sqlite:///"),
        ({"batch_max_size": 0}, "batch_max_size"),
        ({"environment": "production"}, "needs a redis"),
        ({"environment": "production", "store_url": "redis://cache.internal:6379/0"}, "password"),
        ({"unknown_field": 1}, "unknown_field"),
    ],
)
def test_unsafe_or_invalid_values_are_refused(tmp_path: Path, overrides: dict, needle: str) -> None:
    with pytest.raises(ValidationError) as err:
        Settings(artifacts=tmp_path, **overrides)
    assert needle in str(err.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://:secret@cache.internal:6379/0",
        "rediss://cache.internal:6380/0",
        "redis://127.0.0.1:6379/0",
    ],
)
def test_production_accepts_authenticated_tls_or_loopback_redis(tmp_path: Path, url: str) -> None:
    s = Settings(artifacts=tmp_path, environment="production", store_url=url, api_keys="k" * 32)
    assert s.store_url == url


def test_env_round_trip_and_password_masking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Unset optional settings stay unset in a worker (not the string "None").
    plain = Settings(artifacts=tmp_path)
    assert f"{ENV_PREFIX}API_KEYS" not in plain.to_env() and plain.auth_mode == "none"
    s = Settings(
        artifacts=tmp_path,
        store_url="redis://:hunter2@h:6379/1",
        batch_max_size=7,
        port=9001,
        api_keys="key-one-0123456789,key-two-0123456789",
        auth="all",
        rate_limit_per_s=2.5,
    )
    for name, value in s.to_env().items():
        assert name.startswith(ENV_PREFIX)
        monkeypatch.setenv(name, value)
    assert Settings() == s  # type: ignore[call-arg]
    assert "hunter2" not in str(s.public())
    assert "key-one" not in str(s.public()) and "key-one" not in repr(s)


def test_store_url_errors_do_not_show_the_password(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as err:
        Settings(artifacts=tmp_path, store_url="redis://:hunter2@h:abc/0")
    assert "port must be a number" in str(err.value) and "hunter2" not in str(err.value)


@pytest.mark.parametrize(
    ("variable", "nearest"),
    [
        ("TWOTOWER_SERVE_BATCH_MAXSIZE", "TWOTOWER_SERVE_BATCH_MAX_SIZE"),
        ("twotower_serve_store_timeout", "TWOTOWER_SERVE_STORE_TIMEOUT_S"),
    ],
)
def test_unknown_environment_variables_are_refused_with_the_nearest_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, nearest: str
) -> None:
    monkeypatch.setenv(variable, "8")
    with pytest.raises(ValidationError) as err:
        Settings(artifacts=tmp_path)
    assert variable in str(err.value) and f"did you mean {nearest}?" in str(err.value)
    monkeypatch.delenv(variable)
    monkeypatch.setenv("TWOTOWER_SERVE_BATCH_MAX_SIZE", "8")  # the real name is read
    assert Settings(artifacts=tmp_path).batch_max_size == 8


def _serve_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
    environ.update(PYTHONPATH=str(REPO), **env)
    cmd = [sys.executable, "-m", "twotower.cli", "serve", "--artifacts", str(tmp_path), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=environ, timeout=120)


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (("--store", "redis://h:abc/0"), {}, "port must be a number"),
        (("--store", "memcached://h/0"), {}, "unknown scheme"),
        ((), {"TWOTOWER_SERVE_BATCH_MAXSIZE": "8"}, "TWOTOWER_SERVE_BATCH_MAX_SIZE"),
    ],
)
def test_serve_cli_exits_2_with_the_reason_on_bad_settings(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], needle: str
) -> None:
    """The real ``twotower serve``: a bad store URL or a misspelt variable is bad usage, not a crash."""
    out = _serve_cli(tmp_path, "--port", "0", *args, **env)
    assert out.returncode == 2, out.stderr[-2000:]
    assert needle in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
