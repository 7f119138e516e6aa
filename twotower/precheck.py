"""What ``twotower`` checks before any heavy import or data read.

:func:`check_args` runs in :func:`twotower.cli.main` before TensorFlow is
imported and before a data set is read, so a mistake is an exit 2 in a
fraction of a second: a data source that does not exist (or malformed
``synthetic:`` parameters), a config file that is missing or does not parse,
an unknown or ill-typed config key, an artifact directory with nothing
published (or without the named version), a store URL that does not parse, a
port in use. Nothing here imports TensorFlow or FAISS, opens a store or reads
data; what only the real work can tell (a malformed line, an unreachable
Redis) is still reported by it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from common import artifacts
from common.artifacts import ArtifactError


def check_args(args: argparse.Namespace) -> None:
    """Refuse ``args`` of ``args.command`` if a cheap check fails (see the module docstring).

    Raises:
      ConfigError, DataError, ArtifactError, StoreURLError: the CLI's exit 2.
    """
    check = _CHECKS.get(args.command)
    if check is not None:
        check(args)


def _source(spec: str) -> None:
    from trainer.data.sources import check_source

    check_source(spec)


def _store(url: str | None) -> None:
    if url:
        from feature_store.urls import parse_url

        parse_url(url)


def _published(flag: str, art: str, version: str | None) -> None:
    if not Path(art).is_dir():
        raise ArtifactError(f"{flag} {art}: no such directory (nothing published there)")
    artifacts.resolve_version(art, version)


def _train(args: argparse.Namespace) -> None:
    from common.config import load_config
    from trainer.config import SOURCE_DEFAULTS, TrainerConfig

    _source(args.data)
    # The layering of trainer.run.trainer_config (tuned defaults < file < env < --set).
    sets = list(args.overrides or [])
    if args.epochs is not None:
        sets.append(f"train.epochs={args.epochs}")
    if args.strategy is not None:
        sets.append(f"train.strategy={args.strategy}")
    kind = args.data.strip().split(":", 1)[0]
    load_config(TrainerConfig, file=args.config, overrides=sets, base=SOURCE_DEFAULTS.get(kind, {}))
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"--out {out}: not a directory")
    if args.warm_start is not None:
        _published("--out", args.out, None if args.warm_start == "latest" else args.warm_start)


def _evaluate(args: argparse.Namespace) -> None:
    _published("--artifacts", args.artifacts, args.version)
    _source(args.data)
    if args.topk_out:
        parent = Path(args.topk_out).parent
        if not parent.is_dir():
            raise ArtifactError(f"--topk-out {args.topk_out}: no such directory {parent}")


def _serve(args: argparse.Namespace) -> None:
    from twotower.commands.serve import check_serve_args

    check_serve_args(args)


def _demo(args: argparse.Namespace) -> None:
    if not args.no_serve:
        from serving.main import check_port

        check_port(args.host, args.port)


def _ingest(args: argparse.Namespace) -> None:
    _store(args.store)
    _source(args.data)


def _store_only(args: argparse.Namespace) -> None:
    _store(args.store)


def _archive(args: argparse.Namespace) -> None:
    """``archive rebind``: an export directory, and a store that exists (opening a missing
    SQLite file would create an empty store and bind the export to it)."""
    from feature_store.events import EventError
    from feature_store.export_state import STATE_FILE, is_export_dir
    from feature_store.urls import missing_sqlite_file

    _store(args.store)
    if not is_export_dir(args.out_dir):
        raise EventError("DIR", f"{args.out_dir} is not an export directory (no {STATE_FILE})")
    missing = missing_sqlite_file(args.store)
    if missing is not None:
        raise EventError("--store", f"no store file {missing}; nothing was changed")


def _migrate_redis(args: argparse.Namespace) -> None:
    _store(args.url)


_CHECKS: dict[str, Callable[[argparse.Namespace], None]] = {
    "train": _train,
    "evaluate": _evaluate,
    "serve": _serve,
    "demo": _demo,
    "ingest": _ingest,
    "pipeline": _store_only,
    "forget": _store_only,
    "archive": _archive,
    "migrate-redis": _migrate_redis,
}
