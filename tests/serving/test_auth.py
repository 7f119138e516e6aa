"""API keys: which routes need one, the 401 answers, constant-time matching, key files that
rotate without a restart (incl. a Kubernetes Secret volume's symlink swap), production refusals,
and that a key never shows in an answer, a log line or /metrics."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from common.urls import STORE_URL_ENV
from serving import api_keys
from serving.api_keys import KeyConfigError, KeyRing
from serving.auth import AccessMiddleware, credentials, needs_key
from serving.settings import Settings
from serving.settings_env import ENV_PREFIX

REPO = Path(__file__).resolve().parents[2]
KEY = "test-key-0123456789abcdef"
OTHER = "second-key-0123456789abcd"
WRONG = "wrong-key-SENTINEL-0123456789"
EVENT = {"events": [{"event_id": "a1", "user_id": "u-auth", "item_id": "i1", "type": "click"}]}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_without_keys_every_route_is_open_and_no_scheme_is_declared(client: TestClient) -> None:
    assert client.post("/v1/events", json=EVENT).status_code == 200
    assert client.post("/v1/recommend", json={"k": 3}).status_code == 200
    spec = client.get("/openapi.json").json()
    assert "securitySchemes" not in spec.get("components", {})
    assert all("security" not in op for item in spec["paths"].values() for op in item.values())


def test_writes_mode_protects_events_only(make_client: Callable[..., TestClient]) -> None:
    c = make_client(api_keys=f"{KEY}, {OTHER}")  # auth unset: writes, because keys are set
    missing = c.post("/v1/events", json=EVENT)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == 'Bearer realm="twotower"'
    body = missing.json()
    assert body["error"] == "unauthorized" and "needs an API key" in body["detail"]
    assert body["errors"][0]["type"] == "missing_api_key"

    assert c.post("/v1/events", json=EVENT, headers=bearer(KEY)).status_code == 200
    assert c.post("/v1/events", json=EVENT, headers={"X-API-Key": OTHER}).json() == {
        "accepted": 0,
        "duplicates": 1,
    }
    assert c.post("/v1/events", json=EVENT, headers={"authorization": f"bearer  {KEY} "}).is_success

    unknown = c.post("/v1/events", json=EVENT, headers=bearer(WRONG))
    assert unknown.status_code == 401 and unknown.json()["errors"][0]["type"] == "invalid_api_key"
    assert 'error="invalid_token"' in unknown.headers["www-authenticate"]
    assert "unknown or revoked" in unknown.json()["detail"]
    for headers in ({"Authorization": f"Basic {KEY}"}, {"Authorization": KEY}):
        bad = c.post("/v1/events", json=EVENT, headers=headers)
        assert bad.status_code == 401 and bad.json()["errors"][0]["type"] == "malformed_credentials"
        assert KEY not in bad.text
    assert c.post("/v1/events", json=EVENT, headers={"X-API-Key": " "}).status_code == 401

    # Reads stay open with auth=writes; probes and metrics always.
    assert c.post("/v1/recommend", json={"k": 3}).status_code == 200
    assert c.get("/v1/model").status_code == 200
    assert c.get("/v1/items/i1/similar").status_code == 200
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
        assert c.get(path).status_code == 200, path


def test_the_key_is_checked_before_the_body_is_read(make_client: Callable[..., TestClient]) -> None:
    c = make_client(api_keys=KEY)
    headers = {"content-type": "application/json"}
    for body in (b"{not json", b"[" * 100_000, b"\xff\xfe"):
        r = c.post("/v1/events", content=body, headers=headers)
        assert r.status_code == 401, r.text
    assert (
        c.post("/v1/events", content=b"{not json", headers={**headers, **bearer(KEY)}).status_code
        == 422
    )


def test_all_mode_protects_every_v1_route_but_not_the_probes(
    make_client: Callable[..., TestClient],
) -> None:
    c = make_client(api_keys=KEY, auth="all")
    for method, path, body in (
        ("post", "/v1/recommend", {"k": 3}),
        ("post", "/v1/events", EVENT),
        ("get", "/v1/model", None),
        ("get", "/v1/items/i1/similar", None),
        ("get", "/v1/no-such-route", None),
    ):
        r = c.request(method, path, json=body)
        assert r.status_code == 401, path
        ok = c.request(method, path, json=body, headers=bearer(KEY))
        assert ok.status_code == (404 if "no-such" in path else 200), path
    for path in ("/healthz", "/readyz", "/metrics"):
        assert c.get(path).status_code == 200, path


def test_metrics_can_be_closed(make_client: Callable[..., TestClient]) -> None:
    c = make_client(api_keys=KEY, metrics_auth=True)
    assert c.get("/metrics").status_code == 401
    assert c.get("/metrics", headers={"X-API-Key": KEY}).status_code == 200
    assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200


def test_openapi_declares_the_schemes_on_exactly_the_protected_operations(
    make_client: Callable[..., TestClient],
) -> None:
    for mode in ("writes", "all"):
        c = make_client(api_keys=KEY, auth=mode, metrics_auth=True)
        spec = c.get("/openapi.json").json()
        schemes = spec["components"]["securitySchemes"]
        assert schemes["bearerAuth"] == {
            "type": "http",
            "scheme": "bearer",
            "description": "Authorization: Bearer <API key>",
        }
        assert (schemes["apiKeyHeader"]["in"], schemes["apiKeyHeader"]["name"]) == (
            "header",
            "X-API-Key",
        )
        for path, item in spec["paths"].items():
            for method, op in item.items():
                protected = needs_key(mode, True, path)
                assert ("security" in op) == protected, (mode, method, path)
                assert ("401" in op["responses"]) == protected, (mode, method, path)
                if protected:
                    assert op["security"] == [{"bearerAuth": []}, {"apiKeyHeader": []}]
        protected_paths = {p for p in spec["paths"] if needs_key(mode, True, p)}
        expected = {"/v1/events", "/metrics"}
        if mode == "all":
            expected |= {"/v1/recommend", "/v1/model", "/v1/items/{item_id}/similar"}
        assert protected_paths == expected


def test_a_key_never_shows_in_answers_logs_or_metrics(
    make_client: Callable[..., TestClient], caplog: pytest.LogCaptureFixture
) -> None:
    c = make_client(api_keys=KEY, auth="all")
    with caplog.at_level(logging.DEBUG):
        answers = [
            c.post("/v1/events", json=EVENT, headers=bearer(WRONG)),
            c.post("/v1/events", json=EVENT, headers={"Authorization": WRONG}),
            c.post("/v1/events", json=EVENT, headers={"X-API-Key": WRONG}),
            c.post("/v1/recommend", json={"k": 2}, headers=bearer(KEY)),
            c.post("/v1/events", json={"events": "x"}, headers=bearer(KEY)),  # a 422
        ]
    metrics = c.get("/metrics").text
    for text in [a.text for a in answers] + [caplog.text, metrics]:
        assert KEY not in text and WRONG not in text and "SENTINEL" not in text
    assert 'twotower_auth_refused_total{reason="unknown"} 2.0' in metrics
    assert 'twotower_auth_refused_total{reason="malformed"} 1.0' in metrics
    # A refusal is timed under its route, like any answer.
    assert 'route="/v1/events",status="401"' in metrics


def test_every_key_is_compared_and_no_match_stops_early(monkeypatch: pytest.MonkeyPatch) -> None:
    ring = KeyRing(["k1-" + "a" * 20, "k2-" + "b" * 20, "k3-" + "c" * 20])
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(api_keys.hmac, "compare_digest", counting)
    for presented, matched in (
        (b"k1-" + b"a" * 20, True),
        (b"k3-" + b"c" * 20, True),
        (b"x", False),
    ):
        calls.clear()
        assert (ring.match(presented) is not None) == matched
        assert len(calls) == 3
        # Digests of equal length are compared, so the key's length does not show either.
        assert {len(a) for a, _ in calls} == {len(b) for _, b in calls} == {32}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_key_file_rotates_without_a_restart_checked_at_most_once_a_second(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    _write(path, f"# rotated weekly\n{KEY}\n\n")
    clock = Clock()
    ring = KeyRing([], path, clock=clock)
    ring.load_file()
    assert ring.match(KEY.encode()) and not ring.match(OTHER.encode())
    _write(path, f"{OTHER}\n")
    clock.now += 0.5  # within the second: the file is not looked at
    assert ring.match(KEY.encode()) and not ring.match(OTHER.encode())
    clock.now += 0.6
    assert ring.match(OTHER.encode()) and not ring.match(KEY.encode())  # KEY revoked
    assert ring.reloads == 1
    clock.now += 5
    ring.match(OTHER.encode())
    assert ring.reloads == 1  # unchanged file: not read again


def test_kubernetes_secret_volume_symlink_swap_is_seen(tmp_path: Path) -> None:
    """The kubelet writes a new ``..<timestamp>`` directory and renames a new ``..data``
    symlink over the old one; the mounted file is ``keys -> ..data/keys``."""
    vol = tmp_path / "secret"
    vol.mkdir()

    def publish(name: str, text: str) -> None:
        (vol / name).mkdir()
        (vol / name / "api-keys").write_text(text)
        (vol / "..data_tmp").symlink_to(name)
        os.replace(vol / "..data_tmp", vol / "..data")

    publish("..2026_01_01_00_00_00.1", f"{KEY}\n")
    (vol / "api-keys").symlink_to("..data/api-keys")
    clock = Clock()
    ring = KeyRing([], vol / "api-keys", clock=clock)
    ring.load_file()
    assert ring.match(KEY.encode())
    publish("..2026_01_02_00_00_00.2", f"{OTHER}\n{KEY}\n")
    clock.now += 1.1
    assert ring.match(OTHER.encode()) and ring.match(KEY.encode())
    publish("..2026_01_03_00_00_00.3", f"{OTHER}\n")
    clock.now += 1.1
    assert ring.match(OTHER.encode()) and not ring.match(KEY.encode())


def test_an_unreadable_file_keeps_the_keys_an_empty_one_revokes_all(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys"
    _write(path, f"{KEY}\n")
    clock = Clock()
    ring = KeyRing([], path, clock=clock)
    ring.load_file()
    path.unlink()
    clock.now += 1.1
    with caplog.at_level(logging.ERROR):
        assert ring.match(KEY.encode())  # a missing file (mid-rotation?) keeps the last keys
    assert "cannot read it" in caplog.text and KEY not in caplog.text
    _write(path, "# nothing\n")
    clock.now += 1.1
    assert not ring.match(KEY.encode())  # fail closed
    _write(path, f"{KEY}\nnot a key\n")
    clock.now += 1.1
    with caplog.at_level(logging.ERROR):
        assert ring.match(KEY.encode())
    assert f"{path}:2: a key must be printable ASCII" in caplog.text


def test_app_rereads_the_key_file(make_client: Callable[..., TestClient], tmp_path: Path) -> None:
    path = tmp_path / "keys"
    _write(path, f"{KEY}\n")
    c = make_client(api_keys_file=path)
    assert c.post("/v1/events", json=EVENT, headers=bearer(KEY)).status_code == 200
    _write(path, f"{OTHER}\n")
    time.sleep(1.1)  # the file is looked at no more than once a second
    assert c.post("/v1/events", json=EVENT, headers=bearer(KEY)).status_code == 401
    assert c.post("/v1/events", json=EVENT, headers=bearer(OTHER)).status_code == 200


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (
            {"environment": "production"},
            f"set {ENV_PREFIX}API_KEYS (comma-separated) or {ENV_PREFIX}API_KEYS_FILE",
        ),
        ({"environment": "production", "api_keys": KEY, "auth": "none"}, f"{ENV_PREFIX}AUTH=none"),
        ({"auth": "all"}, f"{ENV_PREFIX}AUTH=all need API keys"),
        ({"metrics_auth": True}, f"{ENV_PREFIX}METRICS_AUTH=true need API keys"),
        ({"api_keys": " , "}, None),  # an empty list is no key source: auth none
    ],
)
def test_settings_refuse_auth_without_keys(
    tmp_path: Path, overrides: dict, needle: str | None
) -> None:
    base = {"artifacts": tmp_path, "store_url": "redis://127.0.0.1:6379/0"}
    if needle is None:
        assert Settings(**base, **overrides).auth_mode == "none"
        return
    with pytest.raises(ValidationError) as err:
        Settings(**base, **overrides)
    assert needle in str(err.value)


def test_key_problems_name_the_place_never_the_key(tmp_path: Path) -> None:
    prod = {
        "artifacts": tmp_path,
        "store_url": "redis://127.0.0.1:6379/0",
        "environment": "production",
    }
    with pytest.raises(KeyConfigError) as err:
        KeyRing.from_settings(Settings(**prod, api_keys="short1,CHANGE-ME-0123456789abcdef"))
    text = str(err.value)
    assert "key #1: shorter than 16" in text and "key #2: is still a placeholder" in text
    assert "short1" not in text and "CHANGE-ME-0123" not in text
    path = tmp_path / "keys"
    path.write_text(f"{KEY}\nweak\n")
    with pytest.raises(KeyConfigError, match=rf"{path}:2: shorter than 16") as err:
        KeyRing.from_settings(Settings(**prod, api_keys_file=path))
    assert "weak" not in str(err.value)
    path.write_text("# only comments\n")
    with pytest.raises(KeyConfigError, match="holds no API key"):
        KeyRing.from_settings(Settings(**prod, api_keys_file=path))
    with pytest.raises(KeyConfigError, match="cannot read it"):
        KeyRing.from_settings(Settings(**prod, api_keys_file=tmp_path / "missing"))


def _serve(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.upper().startswith("TWOTOWER_")}
    environ.update(PYTHONPATH=str(REPO), **env)
    cmd = [
        sys.executable,
        "-m",
        "twotower.cli",
        "serve",
        "--artifacts",
        str(tmp_path),
        "--port",
        "0",
    ]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=environ, timeout=120)


def test_production_serve_without_keys_exits_2_naming_the_variable(tmp_path: Path) -> None:
    prod = {
        f"{ENV_PREFIX}ENVIRONMENT": "production",
        STORE_URL_ENV: "redis://127.0.0.1:6379/0",
    }
    out = _serve(tmp_path, **prod)
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"{ENV_PREFIX}API_KEYS" in out.stderr and "Traceback" not in out.stderr
    out = _serve(tmp_path, **prod, **{f"{ENV_PREFIX}API_KEYS_FILE": str(tmp_path / "nope")})
    assert out.returncode == 2 and "cannot read it" in out.stderr, out.stderr[-2000:]


def test_credentials_from_hostile_headers_never_raise() -> None:
    cases: list[tuple[list[tuple[bytes, bytes]], bytes | None]] = [
        ([], None),
        ([(b"authorization", b"Bearer \xff\xfe\x00")], b"\xff\xfe\x00"),
        ([(b"authorization", b"Bearer")], None),
        ([(b"authorization", b"\x00" * 10)], None),
        ([(b"authorization", b"Basic x"), (b"x-api-key", b"k")], b"k"),
        ([(b"x-api-key", b"k" * 100_000)], b"k" * 100_000),
    ]
    for headers, token in cases:
        assert credentials(headers)[0] == token


def test_middleware_answers_hostile_headers_with_401_not_500() -> None:
    """Straight through the ASGI interface: bytes no HTTP client library would send."""
    from serving.metrics import Metrics

    reached: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["path"])

    mw = AccessMiddleware(
        app,
        mode="writes",
        metrics_auth=False,
        keyring=KeyRing([KEY]),
        limiter=None,
        metrics=Metrics(),
    )
    for value in (b"Bearer \xff\xfe", b"Bearer " + b"\x00" * 5000, b"\xc3\x28", b"Bearer   "):
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any], sent: list[dict[str, Any]] = sent) -> None:
            sent.append(message)

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/v1/events",
            "headers": [(b"authorization", value)],
            "client": ("127.0.0.1", 1),
        }
        asyncio.run(mw(scope, receive, send))
        assert sent[0]["status"] == 401
    assert reached == []
