#!/usr/bin/env python3
"""One-shot seed job: publish an initial version so a fresh stack serves at once.

Installed in the images as ``twotower-seed``; the compose ``seed`` service
runs it before ``api`` and ``trainer`` start. When ``ART/LATEST`` already names
a version it does nothing (exit 0): the seed never overwrites a model the
pipeline has published since. Otherwise it runs, as separate processes::

    twotower ingest   --data SRC
    twotower pipeline --artifacts ART [--config FILE] [--set k=v ...]

both reading the store URL from ``TWOTOWER_STORE__URL`` (never on a command
line). The first version is the pipeline's own first run: it archives the
events just loaded, trains on them (nothing is published, so the gate passes)
and records that snapshot, so the scheduled pipeline's first run trains only
when new events arrived, and warm-starts from a model with exactly its inputs
(a model trained on SRC directly may carry source-only features, e.g. synthetic
item categories, an events-trained one lacks). Ingest goes first and is
idempotent (events carry stable ids, a second load counts duplicates), so a
seed interrupted anywhere is simply run again; the version is published last,
and only then does the API become ready.

Environment (all optional but the store), section ``seed`` of the scheme
(docs/CONTRACT.md, "Configuration"); an unknown ``TWOTOWER_SEED__*`` name is
refused (exit 2):

============================  ====================================================
``TWOTOWER_STORE__URL``       the online store (required), e.g. ``redis://:pw@redis:6379/0``
``TWOTOWER_SEED__ARTIFACTS``  artifact directory (default ``/artifacts``)
``TWOTOWER_SEED__DATA``       data source (default: a small synthetic set, ~1 min)
``TWOTOWER_SEED__SETTINGS``   space-separated ``key=value`` config overrides of the run
``TWOTOWER_SEED__CONFIG``     the pipeline config file to use (default: none)
============================  ====================================================

The names before the scheme (``TWOTOWER_STORE_URL``, ``TWOTOWER_ARTIFACTS``,
``TWOTOWER_SEED_DATA``, ``TWOTOWER_SEED_SETTINGS``, ``TWOTOWER_SEED_CONFIG``)
still work: renamed at the start, with a warning each, and passed on renamed.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from common.config import ConfigError, check_section_env, env_name, rename_deprecated
from common.urls import OLD_STORE_URL_ENV, STORE_URL_ENV

DEFAULT_ARTIFACTS = "/artifacts"
#: Same size as ``twotower demo``: trains in about a minute on two cores.
DEFAULT_DATA = "synthetic:users=2000,items=1000,events_per_user=30,seed=7"
DEFAULT_SETTINGS = "train.epochs=4 train.batch_size=512"
#: The seed's settings: section ``seed`` of the scheme (``TWOTOWER_SEED__<KEY>``).
SEED_KEYS = ("artifacts", "data", "settings", "config")
ARTIFACTS_ENV, DATA_ENV, SETTINGS_ENV, CONFIG_ENV = (env_name("seed", k) for k in SEED_KEYS)
#: Old name -> new name.
DEPRECATED = {
    **{old: STORE_URL_ENV for old in OLD_STORE_URL_ENV},
    "TWOTOWER_ARTIFACTS": ARTIFACTS_ENV,
    "TWOTOWER_SEED_DATA": DATA_ENV,
    "TWOTOWER_SEED_SETTINGS": SETTINGS_ENV,
    "TWOTOWER_SEED_CONFIG": CONFIG_ENV,
}


class SeedError(ValueError):
    """The seed job is misconfigured (exit 2)."""


def published_version(art: Path) -> str | None:
    """The version ``ART/LATEST`` names, if that version is complete (has its manifest)."""
    from common.artifacts import MANIFEST, latest_version, version_dir

    version = latest_version(art)
    if version and (version_dir(art, version) / MANIFEST).is_file():
        return version
    return None


def read_environment(environ: MutableMapping[str, str]) -> list[str]:
    """The seed's start: rename the old names in ``environ`` (``os.environ``: the commands
    it runs inherit it) and refuse an unknown ``TWOTOWER_SEED__*`` name.

    Returns:
      One warning per old name found.

    Raises:
      SeedError: an old and a new name hold different values, or a name is unknown.
    """
    try:
        warnings = rename_deprecated(environ, DEPRECATED)
        check_section_env(environ, "seed", SEED_KEYS)
    except ConfigError as exc:
        raise SeedError(str(exc)) from None
    return warnings


def _artifacts(environ: Mapping[str, str]) -> str:
    return environ.get(ARTIFACTS_ENV, "").strip() or DEFAULT_ARTIFACTS


def plan(environ: Mapping[str, str]) -> list[list[str]]:
    """The ``twotower`` command lines to run (argv lists without the program), [] if seeded.

    ``environ`` has the new names (:func:`read_environment`). The store URL is not in
    the command lines: the commands read ``TWOTOWER_STORE__URL``.

    Raises:
      SeedError: ``TWOTOWER_STORE__URL`` is missing or ``TWOTOWER_SEED__SETTINGS`` is malformed.
    """
    store = environ.get(STORE_URL_ENV, "").strip()
    if not store:
        raise SeedError(f"{STORE_URL_ENV} is not set: the seed loads its events into that store")
    art = _artifacts(environ)
    if published_version(Path(art)) is not None:
        return []
    data = environ.get(DATA_ENV, "").strip() or DEFAULT_DATA
    pipeline = ["pipeline", "--artifacts", art]
    config = environ.get(CONFIG_ENV, "").strip()
    if config:
        pipeline += ["--config", config]
    for item in shlex.split(environ.get(SETTINGS_ENV, DEFAULT_SETTINGS)):
        if "=" not in item:
            raise SeedError(f"{SETTINGS_ENV}: {item!r} is not key=value (e.g. train.epochs=4)")
        pipeline += ["--set", item]
    return [["ingest", "--data", data], pipeline]


def _twotower() -> list[str]:
    exe = shutil.which("twotower")
    return [exe] if exe else [sys.executable, "-m", "twotower.cli"]


def main() -> int:
    try:
        for warning in read_environment(os.environ):
            print(f"seed: warning: {warning}", file=sys.stderr)
        steps = plan(os.environ)
    except SeedError as exc:
        print(f"seed: error: {exc}", file=sys.stderr)
        return 2
    art = Path(_artifacts(os.environ))
    if not steps:
        print(
            f"seed: {art} already publishes {published_version(art)}; nothing to do",
            file=sys.stderr,
        )
        return 0
    for step in steps:
        print(f"seed: twotower {step[0]} ...", file=sys.stderr, flush=True)
        code = subprocess.call(_twotower() + step)  # inherits TWOTOWER_STORE__URL
        if code != 0:
            print(f"seed: twotower {step[0]} failed with exit code {code}", file=sys.stderr)
            return code
    print(f"seed: published {published_version(art)} under {art}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
