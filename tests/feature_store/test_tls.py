"""``rediss://`` against a real TLS redis-server with certificates made for the test.

A private CA signs a server certificate for ``localhost`` only and a client
certificate; the server requires client certificates (mutual TLS). Skipped
only when this redis-server was built without TLS.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from feature_store import StoreError, make_event, open_store
from tests.feature_store.servers import free_port


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _certificates(d: Path) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test CA",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=d)  # fmt: skip
    for name, ext in (
        ("server", "subjectAltName=DNS:localhost"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", cwd=d)  # fmt: skip
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "1", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=d)  # fmt: skip


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the test certificates (apt-get install openssl)")
    d = tmp_path_factory.mktemp("tls")
    _certificates(d)
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", "server.pem", "--tls-key-file", "server.key", "--tls-ca-cert-file", "ca.pem",
         "--tls-auth-clients", "yes", "--save", "", "--appendonly", "no", "--dir", str(d)],
        cwd=d, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    client = redis.Redis(
        host="localhost", port=port, ssl=True, ssl_ca_certs=str(d / "ca.pem"),
        ssl_certfile=str(d / "client.pem"), ssl_keyfile=str(d / "client.key"), socket_timeout=0.5,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:  # poll "answers PING over TLS"
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            if "tls" in out.lower() and ("not" in out.lower() or "unrecognized" in out.lower()):
                pytest.skip(f"this redis-server has no TLS support: {out.strip()[-200:]}")
            pytest.fail(f"the TLS redis-server exited: {out[-500:]}")
        try:
            if client.ping():
                break
        except (redis.ConnectionError, redis.TimeoutError):
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the TLS redis-server did not answer within 10 s")
        time.sleep(0.05)
    yield port, d
    proc.kill()
    proc.wait(10)


def _url(port: int, d: Path, host: str = "localhost", **options: str) -> str:
    query = {
        "prefix": "tls",
        "retries": "0",
        "ssl_ca_certs": str(d / "ca.pem"),
        "ssl_certfile": str(d / "client.pem"),
        "ssl_keyfile": str(d / "client.key"),
        **options,
    }
    return f"rediss://{host}:{port}/0?" + "&".join(f"{k}={v}" for k, v in query.items() if v)


def test_mutual_tls_round_trip(tls_server: tuple[int, Path]) -> None:
    port, d = tls_server

    async def go() -> None:
        async with open_store(_url(port, d)) as store:
            ev = make_event({"event_id": "t1", "user_id": "u", "item_id": "i", "type": "like"})
            assert (await store.append_events([ev])).accepted == 1
            assert (await store.get_user("u")).positives == ["i"] and await store.ping()

    asyncio.run(go())


@pytest.mark.parametrize(
    ("host", "options", "why"),
    [
        ("localhost", {"ssl_certfile": "", "ssl_keyfile": ""}, "Connection reset|certificate"),
        ("localhost", {"ssl_ca_certs": ""}, "certificate verify failed"),  # unknown CA
        (
            "127.0.0.1",
            {},
            "certificate verify failed.*(IP address mismatch|match)",
        ),  # names localhost
    ],
)
def test_tls_refusals(
    tls_server: tuple[int, Path], host: str, options: dict[str, str], why: str
) -> None:
    port, d = tls_server
    with pytest.raises(StoreError, match=why):
        asyncio.run(open_store(_url(port, d, host, **options)).open())


def test_the_host_name_check_can_be_turned_off(tls_server: tuple[int, Path]) -> None:
    port, d = tls_server

    async def go() -> None:
        async with open_store(_url(port, d, "127.0.0.1", ssl_check_hostname="false")) as store:
            assert await store.ping()

    asyncio.run(go())
