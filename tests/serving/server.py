"""Run the real server (``twotower serve`` under uvicorn) on a free loopback port, for any artifact dir.

Usage::

    with running_server(art_dir, store_url, TWOTOWER_SERVE__RELOAD_POLL_S="0.2") as srv:
        httpx.post(f"{srv.url}/v1/recommend", json={...})

It waits for ``/readyz`` (or, with ``ready=False``, ``/healthz``) and fails
with the server's log when the process dies or never becomes ready.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.serving.conftest import free_port

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _wait(srv: Server, path: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if srv.proc.poll() is not None:
            raise RuntimeError(
                f"server exited with {srv.proc.returncode} before {path} was ready:\n{srv.log()[-4000:]}"
            )
        try:
            r = httpx.get(srv.url + path, timeout=2.0)
            if r.status_code == 200:
                return
            last = f"{r.status_code} {r.text}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.1)  # polling a process we do not control: no event to await
    raise RuntimeError(f"{path} not ready after {timeout_s}s ({last}):\n{srv.log()[-4000:]}")


@contextlib.contextmanager
def running_server(
    art: str | os.PathLike[str],
    store_url: str,
    *,
    workers: int = 1,
    ready: bool = True,
    timeout_s: float = 90.0,
    code: Path = REPO,
    **env: str,
) -> Iterator[Server]:
    """Start ``python -m twotower.cli serve`` on a free port; stop it (SIGTERM, then SIGKILL) on exit.

    ``code``: the source tree the server runs from (this checkout by default; another
    revision's tree to compare with it). Extra keyword arguments are environment
    variables (e.g. ``TWOTOWER_SERVE__BATCH_MAX_SIZE="1"``).
    """
    port = free_port()
    environ = {**os.environ, "PYTHONPATH": str(code), "TF_CPP_MIN_LOG_LEVEL": "2", **env}
    cmd = [
        sys.executable, "-m", "twotower.cli", "serve",
        "--artifacts", str(art), "--store", store_url,
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
    ]  # fmt: skip
    with tempfile.NamedTemporaryFile(
        prefix="twotower-serve-", suffix=".log", delete=False
    ) as log_file:
        log_path = Path(log_file.name)
        proc = subprocess.Popen(
            cmd, stdout=log_file, stderr=subprocess.STDOUT, cwd=code, env=environ
        )
    srv = Server(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        _wait(srv, "/readyz" if ready else "/healthz", timeout_s)
        yield srv
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_path.unlink(missing_ok=True)
