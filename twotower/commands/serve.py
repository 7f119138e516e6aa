"""``twotower serve``: flags to serving settings, checked before the model loads, then the API."""

from __future__ import annotations

import argparse
from typing import Any


def settings_from_args(args: argparse.Namespace) -> Any:
    """Serving settings: their variables (``TWOTOWER_SERVE__*``) with the flags that were given on top."""
    from serving.main import serve_settings

    return serve_settings(
        artifacts=getattr(args, "artifacts", None),
        store=getattr(args, "store", None),
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        workers=getattr(args, "workers", None),
    )


def check_serve_args(args: argparse.Namespace) -> Any:
    """The settings of ``args`` once everything checkable without the model is (exit 2 if not)."""
    from serving.main import check_settings

    return check_settings(settings_from_args(args))


def serve_command(args: argparse.Namespace) -> int:
    """Run the API until interrupted; 0 on a clean shutdown."""
    from serving.main import serve

    return serve(check_serve_args(args))
