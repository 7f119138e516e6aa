"""``twotower serve``: flags to serving settings, checked before the model loads, then the API."""

from __future__ import annotations

import argparse
import os
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


#: OpenMP threads that wait passively between FAISS searches. By default libgomp's idle
#: threads spin after every parallel region; a server searches small batches a few
#: milliseconds apart, so the spinning took CPU time from the event loop, Redis and
#: other workers on the same cores (``python -m bench.serving_compare``: server CPU per
#: request, side by side). Set before OpenMP starts (FAISS's import); an operator's own
#: ``OMP_WAIT_POLICY`` wins.
OPENMP_WAIT_POLICY = "PASSIVE"


def serve_command(args: argparse.Namespace) -> int:
    """Run the API until interrupted; 0 on a clean shutdown."""
    os.environ.setdefault("OMP_WAIT_POLICY", OPENMP_WAIT_POLICY)
    from serving.main import serve

    return serve(check_serve_args(args))
