#!/usr/bin/env python3
"""One-shot seed job: publish an initial version so a fresh stack serves at once.

Installed in the images as ``twotower-seed``; the compose ``seed`` service
runs it before ``api`` and ``trainer`` start. When ``ART/LATEST`` already names
a version it does nothing (exit 0): the seed never overwrites a model the
pipeline has published since. Otherwise it runs, as separate processes::

    twotower ingest   --data SRC
    twotower pipeline --artifacts ART [--config FILE] [--set k=v ...]

both reading the store URL from ``TWOTOWER_STORE_URL`` (never on a command
line). The first version is the pipeline's own first run: it archives the
events just loaded, trains on them (nothing is published, so the gate passes)
and records that snapshot, so the scheduled pipeline's first run trains only
when new events arrived, and warm-starts from a model with exactly its inputs
(a model trained on SRC directly may carry source-only features, e.g. synthetic
item categories, an events-trained one lacks). Ingest goes first and is
idempotent (events carry stable ids, a second load counts duplicates), so a
seed interrupted anywhere is simply run again; the version is published last,
and only then does the API become ready.

Environment (all optional but the store):

==========================  ======================================================
``TWOTOWER_STORE_URL``      the online store (required), e.g. ``redis://:pw@redis:6379/0``
``TWOTOWER_ARTIFACTS``      artifact directory (default ``/artifacts``)
``TWOTOWER_SEED_DATA``      data source (default: a small synthetic set, ~1 min)
``TWOTOWER_SEED_SETTINGS``  space-separated ``key=value`` config overrides of the run
``TWOTOWER_SEED_CONFIG``    the pipeline config file to use (default: none)
==========================  ======================================================
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

DEFAULT_ARTIFACTS = "/artifacts"
#: Same size as ``twotower demo``: trains in about a minute on two cores.
DEFAULT_DATA = "synthetic:users=2000,items=1000,events_per_user=30,seed=7"
DEFAULT_SETTINGS = "train.epochs=4 train.batch_size=512"


class SeedError(ValueError):
    """The seed job is misconfigured (exit 2)."""


def published_version(art: Path) -> str | None:
    """The version ``ART/LATEST`` names, if that version is complete (has its manifest)."""
    from common.artifacts import MANIFEST, latest_version, version_dir

    version = latest_version(art)
    if version and (version_dir(art, version) / MANIFEST).is_file():
        return version
    return None


def plan(environ: Mapping[str, str]) -> list[list[str]]:
    """The ``twotower`` command lines to run (argv lists without the program), [] if seeded.

    The store URL is not in them: the commands read ``TWOTOWER_STORE_URL``.

    Raises:
      SeedError: ``TWOTOWER_STORE_URL`` is missing or ``TWOTOWER_SEED_SETTINGS`` is malformed.
    """
    store = environ.get("TWOTOWER_STORE_URL", "").strip()
    if not store:
        raise SeedError("TWOTOWER_STORE_URL is not set: the seed loads its events into that store")
    art = environ.get("TWOTOWER_ARTIFACTS", DEFAULT_ARTIFACTS).strip() or DEFAULT_ARTIFACTS
    if published_version(Path(art)) is not None:
        return []
    data = environ.get("TWOTOWER_SEED_DATA", "").strip() or DEFAULT_DATA
    pipeline = ["pipeline", "--artifacts", art]
    config = environ.get("TWOTOWER_SEED_CONFIG", "").strip()
    if config:
        pipeline += ["--config", config]
    for item in shlex.split(environ.get("TWOTOWER_SEED_SETTINGS", DEFAULT_SETTINGS)):
        if "=" not in item:
            raise SeedError(
                f"TWOTOWER_SEED_SETTINGS: {item!r} is not key=value (e.g. train.epochs=4)"
            )
        pipeline += ["--set", item]
    return [["ingest", "--data", data], pipeline]


def _twotower() -> list[str]:
    exe = shutil.which("twotower")
    return [exe] if exe else [sys.executable, "-m", "twotower.cli"]


def main() -> int:
    try:
        steps = plan(os.environ)
    except SeedError as exc:
        print(f"seed: error: {exc}", file=sys.stderr)
        return 2
    art = Path(os.environ.get("TWOTOWER_ARTIFACTS", DEFAULT_ARTIFACTS) or DEFAULT_ARTIFACTS)
    if not steps:
        print(
            f"seed: {art} already publishes {published_version(art)}; nothing to do",
            file=sys.stderr,
        )
        return 0
    for step in steps:
        print(f"seed: twotower {step[0]} ...", file=sys.stderr, flush=True)
        code = subprocess.call(_twotower() + step)  # inherits TWOTOWER_STORE_URL
        if code != 0:
            print(f"seed: twotower {step[0]} failed with exit code {code}", file=sys.stderr)
            return code
    print(f"seed: published {published_version(art)} under {art}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
