"""deploy/healthcheck.py against a real HTTP server on loopback."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.deploy import _deploy as d

healthcheck = d.load_script("healthcheck")


class _Handler(http.server.BaseHTTPRequestHandler):
    status = {"/healthz": 200, "/readyz": 503}

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        code = self.status.get(self.path, 404)
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def server() -> Iterator[int]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_200_is_healthy_and_503_is_not(server):
    assert healthcheck.probe("/healthz", port=server) == (
        True,
        f"http://127.0.0.1:{server}/healthz: HTTP 200",
    )
    healthy, reason = healthcheck.probe("readyz", port=server)
    assert not healthy and reason.endswith("HTTP 503")


def test_port_comes_from_the_serving_variable_and_main_exits_accordingly(server, monkeypatch):
    from serving.settings import deprecated_env, env_name

    new, old = healthcheck.PORT_ENV
    assert new == env_name("port") and deprecated_env()[old] == new
    monkeypatch.delenv(old, raising=False)
    monkeypatch.setenv(new, str(server))
    assert healthcheck.main(["/healthz"]) == 0
    assert healthcheck.main(["/readyz"]) == 1
    assert healthcheck.main([]) == 0  # /healthz by default
    monkeypatch.setenv(new, "eighty")
    assert healthcheck.main([]) == 2
    monkeypatch.delenv(new)
    monkeypatch.setenv(old, str(server))  # the name before the scheme still works
    assert healthcheck.main([]) == 0


def test_nothing_listening_is_unhealthy():
    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    healthy, reason = healthcheck.probe("/healthz", port=port)
    assert not healthy and str(port) in reason
