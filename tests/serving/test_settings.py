"""Settings validation: limits, refused production values, env round-trip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from common.config import ConfigError
from common.urls import STORE_URL_ENV
from serving.settings import Settings, deprecated_env, env_names, load_settings
from serving.settings_env import ENV_PREFIX, MULTIPROC_ENV
from tests.serving.server import running_server

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_the_spec_limits(tmp_path: Path) -> None:
    s = Settings(artifacts=tmp_path)
    assert s.store_url == "sqlite:///twotower-store.sqlite"
    assert (s.host, s.port, s.workers) == ("127.0.0.1", 8000, 1)
    assert (s.max_k, s.default_k) == (1000, 20)
    # Soft demotion is on, near fresh dislikes, at the version's own threshold.
    assert (s.demote_weight, s.demote_near, s.demote_threshold) == (0.5, 0.05, None)
    assert s.demote_dislikes == "fresh"


def test_faiss_threads_default_to_the_cores_per_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert Settings(artifacts=tmp_path).faiss_thread_count() == 4
    assert Settings(artifacts=tmp_path, workers=2).faiss_thread_count() == 2
    assert Settings(artifacts=tmp_path, workers=8).faiss_thread_count() == 1  # at least one
    assert Settings(artifacts=tmp_path, workers=2, faiss_threads=3).faiss_thread_count() == 3
    assert Settings(artifacts=tmp_path, faiss_threads=0).faiss_thread_count() == 0  # OpenMP's
    # Unset stays unset for the workers, which apply the rule with their own count.
    assert "TWOTOWER_SERVE__FAISS_THREADS" not in Settings(artifacts=tmp_path).to_env()


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
    env = s.to_env()
    assert env[STORE_URL_ENV] == "redis://:hunter2@h:6379/1"  # every command's store variable
    for name, value in env.items():
        assert name in env_names() and (name.startswith(ENV_PREFIX) or name == STORE_URL_ENV)
        monkeypatch.setenv(name, value)
    assert Settings() == s  # type: ignore[call-arg]
    assert "hunter2" not in str(s.public())
    assert "key-one" not in str(s.public()) and "key-one" not in repr(s)


def test_store_url_errors_do_not_show_the_password(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as err:
        Settings(artifacts=tmp_path, store_url="redis://:hunter2@h:abc/0")
    assert "port must be a number" in str(err.value) and "hunter2" not in str(err.value)


def test_the_store_is_every_commands_variable_and_a_value_given_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STORE_URL_ENV, "redis://from-env:6379/0")
    assert Settings(artifacts=tmp_path).store_url == "redis://from-env:6379/0"
    assert Settings(artifacts=tmp_path, store_url="sqlite:///given").store_url == "sqlite:///given"


def test_the_metrics_directory_is_prometheus_clients_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Settings(artifacts=tmp_path).metrics_dir is None
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path / "m"))
    s = Settings(artifacts=tmp_path)
    assert s.metrics_dir == tmp_path / "m" and s.to_env()[MULTIPROC_ENV] == str(tmp_path / "m")


@pytest.mark.parametrize(
    ("variable", "nearest"),
    [
        ("TWOTOWER_SERVE__BATCH_MAXSIZE", "TWOTOWER_SERVE__BATCH_MAX_SIZE"),
        ("twotower_serve__store_timeout", "TWOTOWER_SERVE__STORE_TIMEOUT_S"),
        # The old spelling, misspelt: the nearest name is the new one.
        ("TWOTOWER_SERVE_BATCH_MAXSIZE", "TWOTOWER_SERVE__BATCH_MAX_SIZE"),
        # A field read under a shared name.
        ("TWOTOWER_SERVE__STORE_URL", STORE_URL_ENV),
        ("TWOTOWER_SERVE__METRICS_DIR", MULTIPROC_ENV),
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
    monkeypatch.setenv("TWOTOWER_SERVE__BATCH_MAX_SIZE", "8")  # the real name is read
    assert Settings(artifacts=tmp_path).batch_max_size == 8


def test_every_old_name_is_a_settings_new_name() -> None:
    renames = deprecated_env()
    assert renames["TWOTOWER_SERVE_BATCH_MAX_SIZE"] == "TWOTOWER_SERVE__BATCH_MAX_SIZE"
    assert renames["TWOTOWER_SERVE_STORE_URL"] == renames["TWOTOWER_STORE_URL"] == STORE_URL_ENV
    assert set(renames.values()) <= set(env_names())
    assert MULTIPROC_ENV not in renames.values()  # prometheus_client's name never changed


def test_an_old_name_is_renamed_at_the_start_with_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TWOTOWER_SERVE_BATCH_MAX_SIZE", "9")
    with pytest.raises(ValidationError, match="old name of TWOTOWER_SERVE__BATCH_MAX_SIZE"):
        Settings(artifacts=tmp_path)  # left in place it would be ignored: refused instead
    # Recorded as unset, so monkeypatch removes the name load_settings is about to set.
    monkeypatch.setenv("TWOTOWER_SERVE__BATCH_MAX_SIZE", "")
    monkeypatch.delenv("TWOTOWER_SERVE__BATCH_MAX_SIZE")
    with caplog.at_level("WARNING", logger="serving.settings"):
        assert load_settings(artifacts=tmp_path).batch_max_size == 9
        assert load_settings(artifacts=tmp_path).batch_max_size == 9  # renamed once
    assert os.environ["TWOTOWER_SERVE__BATCH_MAX_SIZE"] == "9"
    assert "TWOTOWER_SERVE_BATCH_MAX_SIZE" not in os.environ
    (warning,) = [r.getMessage() for r in caplog.records]
    assert (
        "TWOTOWER_SERVE_BATCH_MAX_SIZE is deprecated: use TWOTOWER_SERVE__BATCH_MAX_SIZE" in warning
    )


def test_an_old_and_a_new_name_with_different_values_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TWOTOWER_SERVE_PORT", "9001")
    monkeypatch.setenv("TWOTOWER_SERVE__PORT", "9002")
    with pytest.raises(ConfigError) as err:
        load_settings(artifacts=tmp_path)
    assert "TWOTOWER_SERVE__PORT and TWOTOWER_SERVE_PORT" in str(err.value)
    assert "9001" not in str(err.value)  # names, never values (they may be secrets)
    monkeypatch.setenv("TWOTOWER_SERVE__PORT", "9001")  # the same value: one setting
    assert load_settings(artifacts=tmp_path).port == 9001


def _serve_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.upper().startswith("TWOTOWER_")}
    environ.update(PYTHONPATH=str(REPO), **env)
    cmd = [sys.executable, "-m", "twotower.cli", "serve", "--artifacts", str(tmp_path), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=environ, timeout=120)


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (("--store", "redis://h:abc/0"), {}, "port must be a number"),
        (("--store", "memcached://h/0"), {}, "unknown scheme"),
        ((), {STORE_URL_ENV: "redis://h:abc/0"}, "port must be a number"),
        (
            (),
            {"TWOTOWER_SERVE__BATCH_MAXSIZE": "8"},
            "did you mean TWOTOWER_SERVE__BATCH_MAX_SIZE?",
        ),
        ((), {"TWOTOWER_SERVE_BATCH_MAXSIZE": "8"}, "did you mean TWOTOWER_SERVE__BATCH_MAX_SIZE?"),
        ((), {"TWOTOWER_SERVE__MAX_K": "1001"}, "max_k"),
        (
            (),
            {"TWOTOWER_SERVE_PORT": "9001", "TWOTOWER_SERVE__PORT": "9002"},
            "TWOTOWER_SERVE__PORT and TWOTOWER_SERVE_PORT are set to different values",
        ),
        (
            (),
            {"TWOTOWER_STORE_URL": "sqlite:///a", "TWOTOWER_SERVE_STORE_URL": "sqlite:///b"},
            "TWOTOWER_SERVE_STORE_URL and TWOTOWER_STORE_URL are set to different values",
        ),
        ((), {"TWOTOWER_STORE__URI": "sqlite:///a"}, "did you mean TWOTOWER_STORE__URL?"),
    ],
)
def test_serve_cli_exits_2_with_the_reason_on_bad_settings(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], needle: str
) -> None:
    """The real ``twotower serve``: a bad store URL or a misspelt variable is bad usage, not a crash."""
    out = _serve_cli(tmp_path, "--port", "0", *args, **env)
    assert out.returncode == 2, out.stderr[-2000:]
    assert needle in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"TWOTOWER_SERVE_MAX_K": "1001"}, "max_k"),  # read, as TWOTOWER_SERVE__MAX_K
        ({"TWOTOWER_SERVE_STORE_URL": "redis://h:abc/0"}, "port must be a number"),
        ({"TWOTOWER_STORE_URL": "redis://h:abc/0"}, "port must be a number"),
    ],
)
def test_serve_cli_reads_an_old_name_with_one_warning_naming_the_new(
    tmp_path: Path, env: dict[str, str], needle: str
) -> None:
    """Old names still work: renamed at the start, one warning naming the new variable (the
    values here are refused only to end the run after the settings were read)."""
    out = _serve_cli(tmp_path, "--port", "0", **env)
    assert out.returncode == 2 and needle in out.stderr, out.stderr[-2000:]
    (old,) = env
    new = deprecated_env()[old]
    assert out.stderr.count(f"{old} is deprecated: use {new}") == 1, out.stderr[-2000:]


@pytest.mark.slow
def test_serve_workers_get_the_settings_by_their_new_names(art: Path, tmp_path: Path) -> None:
    """``serve --workers 2`` started with an old name: the command renames it once, the
    worker processes get every setting by its new name (an old name left over would stop
    them) and all apply it."""
    store = f"sqlite:///{tmp_path / 'store.sqlite'}"
    with running_server(art, store, workers=2, TWOTOWER_SERVE_MAX_K="30") as srv:
        for _ in range(8):  # new connections land on either worker
            with httpx.Client(base_url=srv.url, timeout=30) as c:
                r = c.post("/v1/recommend", json={"history": ["i1", "i2"], "k": 31})
                assert r.status_code == 422 and "at most 30" in r.text, r.text
                assert c.post("/v1/recommend", json={"history": ["i1"], "k": 30}).status_code == 200
        log = srv.log()
    assert log.count("TWOTOWER_SERVE_MAX_K is deprecated: use TWOTOWER_SERVE__MAX_K") == 1, log
