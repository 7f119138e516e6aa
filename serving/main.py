"""Run the API under uvicorn (uvloop + httptools when installed); ``twotower serve`` calls it.

One worker gets the app object directly. Several workers are separate
processes, so they get the settings through their variables
(:meth:`~serving.settings.Settings.to_env`: ``TWOTOWER_SERVE__*``,
``TWOTOWER_STORE__URL``) and build the app with the import-string factory
``serving.app:create_app_from_env``. They also share a fresh metrics directory
(the setting ``metrics_dir``, passed as ``PROMETHEUS_MULTIPROC_DIR``; removed at
exit), so any worker's ``/metrics`` reports the sum over all of them (see
``serving.metrics``).

Everything that can be checked before the model loads is checked first
(:func:`check_settings`: settings, artifact directory, a free port), so a
mistake is exit 2 in a fraction of a second. uvicorn's own start-up failure
(its exit code 3: a port taken meanwhile, a failing start-up) never leaves
``twotower``: a port in use is exit 2, anything else exit 1.
"""

from __future__ import annotations

import errno
import importlib.util
import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from common.artifacts import ArtifactError
from common.config import ConfigError

log = logging.getLogger(__name__)

FACTORY = "serving.app:create_app_from_env"
#: uvicorn's exit code when the server did not start (``uvicorn.config.STARTUP_FAILURE``).
UVICORN_STARTUP_FAILURE = 3


class PortUnavailable(ConfigError):
    """The address to serve on cannot be bound (in use, not this machine's, privileged)."""


class ServeStartupError(RuntimeError):
    """The server did not start for a reason other than its port (uvicorn logged it)."""


def check_port(host: str, port: int) -> None:
    """Bind ``host:port`` as uvicorn will (SO_REUSEADDR) and release it; port 0 = any free port.

    Raises:
      PortUnavailable: ``port 8000 is in use; pass --port`` (or why else it cannot be bound).
    """
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortUnavailable(f"port {port} is in use; pass --port") from None
        if exc.errno == errno.EACCES:
            raise PortUnavailable(
                f"port {port}: permission denied (ports below 1024 need privileges); pass --port"
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
            raise PortUnavailable(
                f"--host {host}: not an address of this machine ({exc.strerror or exc}); "
                "pass --host 127.0.0.1 or 0.0.0.0"
            ) from None
        raise PortUnavailable(f"cannot listen on {host}:{port}: {exc}") from None


def serve_settings(
    *,
    artifacts: str | None = None,
    store: str | None = None,
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
) -> Any:
    """Settings from the environment with the values that were given (None = not given) on top.

    Raises:
      ConfigError: naming every setting that does not validate.
    """
    from serving.settings import Settings

    given: dict[str, Any] = {
        "artifacts": artifacts,
        "store_url": store,
        "host": host,
        "port": port,
        "workers": workers,
    }
    overrides = {field: value for field, value in given.items() if value is not None}
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid serve settings: {problems}") from exc


def uvicorn_options(settings: Any) -> dict[str, Any]:
    """uvicorn keyword arguments: fastest available loop/parser, no per-request access log."""
    return {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        "http": "httptools" if importlib.util.find_spec("httptools") else "h11",
        "access_log": False,
        "log_level": "info",
        "timeout_graceful_shutdown": 10,
    }


def check_settings(settings: Any) -> Any:
    """``settings`` once everything checkable without the model is: raises ConfigError
    (API key file, PortUnavailable) or ArtifactError (no such directory)."""
    if not settings.artifacts.is_dir():
        raise ArtifactError(f"--artifacts {settings.artifacts}: no such directory")
    from serving.api_keys import KeyRing

    KeyRing.from_settings(settings)  # an unreadable or empty key file: KeyConfigError, exit 2
    check_port(settings.host, settings.port)
    return settings


def serve(settings: Any) -> int:
    """Run the API until interrupted; returns the exit code (0 on a clean shutdown).

    Call :func:`check_settings` first: it refuses in a fraction of a second what
    would otherwise fail after the model loaded.

    Raises:
      ConfigError: the port cannot be bound (taken while the model loaded).
      ServeStartupError: the server did not start for another reason (logged by uvicorn).
    """
    try:
        _run_uvicorn(settings)
    except SystemExit as exc:
        if exc.code != UVICORN_STARTUP_FAILURE:
            raise
        check_port(settings.host, settings.port)  # taken while the model loaded: exit 2
        raise ServeStartupError(
            "the API did not start; uvicorn logged why above (startup failure)"
        ) from None
    return 0


def _run_uvicorn(settings: Any) -> None:
    import uvicorn

    if settings.workers > 1 and settings.store_url.startswith("sqlite"):
        log.warning(
            "%d workers share the SQLite store %s: fine on one host, use redis:// across hosts",
            settings.workers,
            settings.store_url,
        )
    options = uvicorn_options(settings)
    log.info(
        "serving %s on http://%s:%d (%d worker(s), %s/%s)",
        settings.artifacts,
        settings.host,
        settings.port,
        settings.workers,
        options["loop"],
        options["http"],
    )
    if settings.workers == 1:
        from serving.app import create_app

        uvicorn.run(create_app(settings), **options)
    else:
        # A fresh directory: files left by an earlier run would be summed into this one's counters.
        metrics_dir = tempfile.mkdtemp(prefix="twotower-metrics-")
        # Worker processes re-read the settings from the environment (absolute artifact path).
        workers = {"artifacts": settings.artifacts.resolve(), "metrics_dir": Path(metrics_dir)}
        os.environ.update(settings.model_copy(update=workers).to_env())
        try:
            uvicorn.run(FACTORY, factory=True, workers=settings.workers, **options)
        finally:
            shutil.rmtree(metrics_dir, ignore_errors=True)
