"""Settings validation: limits, refused production values, env round-trip."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from serving.settings import ENV_PREFIX, Settings


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
        ({"store_url": "mysql://x"}, "unsupported scheme"),
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
    assert Settings(artifacts=tmp_path, environment="production", store_url=url).store_url == url


def test_env_round_trip_and_password_masking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = Settings(
        artifacts=tmp_path, store_url="redis://:hunter2@h:6379/1", batch_max_size=7, port=9001
    )
    for name, value in s.to_env().items():
        assert name.startswith(ENV_PREFIX)
        monkeypatch.setenv(name, value)
    assert Settings() == s  # type: ignore[call-arg]
    assert "hunter2" not in str(s.public())
