"""``twotower serve``: run the API under uvicorn (uvloop + httptools when installed).

One worker gets the app object directly. Several workers are separate
processes, so they get the settings through ``TWOTOWER_SERVE_*`` variables and
build the app with the import-string factory ``serving.app:create_app_from_env``.
They also share a fresh ``PROMETHEUS_MULTIPROC_DIR`` (removed at exit), so any
worker's ``/metrics`` reports the sum over all of them (see ``serving.metrics``).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import shutil
import tempfile
from typing import Any

from pydantic import ValidationError

from twotower.artifacts import ArtifactError
from twotower.config import ConfigError

log = logging.getLogger(__name__)

FACTORY = "serving.app:create_app_from_env"


def settings_from_args(args: argparse.Namespace) -> Any:
    """Settings from the environment with the CLI flags that were given (None = not given) on top."""
    from serving.settings import Settings

    overrides: dict[str, Any] = {}
    for attr, field in (
        ("artifacts", "artifacts"),
        ("store", "store_url"),
        ("host", "host"),
        ("port", "port"),
        ("workers", "workers"),
    ):
        value = getattr(args, attr, None)
        if value is not None:
            overrides[field] = value
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


def serve_command(args: argparse.Namespace) -> int:
    """Run the API until interrupted; returns the exit code (0 on a clean shutdown).

    ``args`` attributes ``artifacts``, ``store``, ``host``, ``port``, ``workers``
    may be None (the settings default / ``TWOTOWER_SERVE_*`` value is used).
    """
    import uvicorn

    settings = settings_from_args(args)
    if not settings.artifacts.is_dir():
        raise ArtifactError(f"--artifacts {settings.artifacts}: no such directory")
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
        from serving.metrics import MULTIPROC_ENV

        # Worker processes re-read the settings from the environment (absolute artifact path).
        env = settings.model_copy(update={"artifacts": settings.artifacts.resolve()}).to_env()
        # A fresh directory: files left by an earlier run would be summed into this one's counters.
        metrics_dir = tempfile.mkdtemp(prefix="twotower-metrics-")
        os.environ.update(env)
        os.environ[MULTIPROC_ENV] = metrics_dir
        try:
            uvicorn.run(FACTORY, factory=True, workers=settings.workers, **options)
        finally:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0
