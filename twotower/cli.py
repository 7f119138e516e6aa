"""The ``twotower`` command line: one entry point, one subcommand per job.

Exit codes: 0 success, 2 bad usage or bad input (the message says what and
where), 1 anything else. Heavy imports (TensorFlow, FAISS) happen inside the
subcommand so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence

from twotower import __version__

log = logging.getLogger("twotower")

DEFAULT_STORE = "sqlite:///twotower-store.sqlite"
#: Where ``--store`` comes from when it is not given: a password stays off the command line.
STORE_ENV = "TWOTOWER_STORE_URL"
STORE_HELP = f"online store URL (redis://, rediss://, sqlite:///path); default: ${STORE_ENV}"
#: Subcommands that always load TensorFlow (``pipeline`` loads it only when it trains).
TF_COMMANDS = ("demo", "train", "evaluate", "serve")

SOURCE_HELP = (
    "data source: synthetic[:key=value,...] | movielens:PATH (u.data or ratings.csv) | "
    "lightgcn:DIR (train.txt/valid.txt/test.txt) | events:STORE_URL (the store's event log)"
)


def _input_error_types() -> tuple[type[BaseException], ...]:
    """Exception types that mean "bad usage or bad input" (exit 2)."""
    from feature_store.events import EventError
    from twotower.artifacts import ArtifactError
    from twotower.config import ConfigError

    types: list[type[BaseException]] = [ConfigError, EventError, ArtifactError]
    try:
        from trainer.data.errors import DataError

        types.append(DataError)
    except ImportError:  # pragma: no cover - partial installs
        pass
    # A version that cannot initialise the requested model (architecture changed).
    # Looked up, not imported: it lives beside TensorFlow, and if its module was
    # never loaded the exception cannot be one.
    warmstart = sys.modules.get("trainer.warmstart")
    if warmstart is not None:
        types.append(warmstart.WarmStartError)
    try:
        from feature_store.urls import StoreURLError

        types.append(StoreURLError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train, evaluate, export a new version and publish it",
        description="Train the two-tower model on SRC, evaluate on its held-out split, "
        "export a new version under ART and publish it (LATEST).",
    )
    p.add_argument("--data", required=True, metavar="SRC", help=SOURCE_HELP)
    p.add_argument("--out", required=True, metavar="ART", help="artifact directory")
    p.add_argument("--config", metavar="FILE", help="YAML/JSON config file")
    p.add_argument("--epochs", type=int, help="shorthand for --set train.epochs=N")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set loss.ntr_weight=0 (repeatable)",
    )
    p.add_argument(
        "--strategy",
        choices=["default", "mirrored", "multiworker"],
        help="tf.distribute strategy (multiworker reads TF_CONFIG)",
    )
    p.add_argument(
        "--warm-start",
        metavar="VERSION",
        nargs="?",
        const="latest",
        help="initialise from a published version's checkpoint (default: LATEST)",
    )
    p.add_argument(
        "--checkpoint-dir",
        metavar="DIR",
        help="where resumable checkpoints go (default: ART/.train-<hash of the run>)",
    )
    p.add_argument(
        "--no-publish", action="store_true", help="export the version but leave LATEST alone"
    )
    p.add_argument(
        "--skip-bad-lines",
        action="store_true",
        help="skip malformed input lines (counted and reported) instead of failing",
    )
    p.set_defaults(func=_run("trainer.run", "train_command"))


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="print the metrics JSON of a version on SRC's test split")
    p.add_argument("--artifacts", required=True, metavar="ART")
    p.add_argument("--version", metavar="V", help="version id (default: the published one)")
    p.add_argument("--data", required=True, metavar="SRC", help=SOURCE_HELP)
    p.add_argument(
        "--topk-out",
        metavar="FILE",
        help='also write one JSON line per test user: {"user_id", "items": [top 50]}',
    )
    p.add_argument("--skip-bad-lines", action="store_true")
    p.set_defaults(func=_run("trainer.run", "evaluate_command"))


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the HTTP API (follows ART/LATEST, hot reload)")
    p.add_argument("--artifacts", required=True, metavar="ART")
    p.add_argument(
        "--store",
        default=None,
        metavar="URL",
        help=f"online store URL (redis://, rediss://, sqlite:///path); default: "
        f"$TWOTOWER_SERVE_STORE_URL, else ${STORE_ENV}, else {DEFAULT_STORE}",
    )
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000)")
    p.add_argument("--workers", type=int, default=None, help="uvicorn worker processes (default 1)")
    p.set_defaults(func=_run("serving.main", "serve_command"))


def _add_ingest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ingest", help="bulk-load a source's events into the online store and event log"
    )
    p.add_argument("--data", required=True, metavar="SRC", help=SOURCE_HELP)
    p.add_argument(
        "--store", default=None, metavar="URL", help=f"{STORE_HELP}, else {DEFAULT_STORE}"
    )
    p.add_argument("--skip-bad-lines", action="store_true")
    p.set_defaults(func=_run("twotower.ingest", "ingest_command"))


def _add_forget(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "forget",
        help="erase users from the online store, its event log and exported events",
        description="Erase each user's state and log entries and record an erasure tombstone, "
        "so exports drop the user's events on their next run (or now, with --export).",
    )
    p.add_argument("--store", default=None, metavar="URL", help=STORE_HELP)
    p.add_argument(
        "--user", dest="users", action="append", required=True, metavar="ID", help="repeatable"
    )
    p.add_argument(
        "--export",
        dest="exports",
        action="append",
        default=[],
        metavar="DIR",
        help="also purge this export directory now (e.g. ART/events; repeatable)",
    )
    p.set_defaults(func=_run("feature_store.erasure", "forget_command"))


def _add_pipeline(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pipeline",
        help="scheduled job: new events -> warm-started training -> evaluation -> quality gate -> publish",
    )
    p.add_argument("--store", default=None, metavar="URL", help=STORE_HELP)
    p.add_argument("--artifacts", required=True, metavar="ART")
    p.add_argument("--config", metavar="FILE")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--epochs", type=int)
    p.add_argument(
        "--force", action="store_true", help="publish even if the quality gate fails (logged)"
    )
    p.add_argument(
        "--every",
        metavar="INTERVAL|CRON",
        help="keep running on a schedule: seconds between runs (the first run starts at once) "
        "or a cron expression in UTC (the first run waits for the first fire time)",
    )
    p.add_argument(
        "--run-now", action="store_true", help="with a cron --every: also run once at start"
    )
    p.add_argument(
        "--strategy",
        choices=["default", "mirrored", "multiworker"],
        help="tf.distribute strategy (multiworker reads TF_CONFIG and needs --snapshot)",
    )
    p.add_argument(
        "--freeze",
        action="store_true",
        help="archive new events, write a frozen snapshot under ART/snapshots and exit "
        "(the input of a multi-worker run)",
    )
    p.add_argument(
        "--snapshot",
        metavar="DIR",
        help="train on a frozen snapshot (from --freeze) instead of the store's log; every "
        "replica of a multi-worker run reads the same one",
    )
    p.set_defaults(func=_run("trainer.pipeline", "pipeline_command"))


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="zero-setup quickstart: synthetic data, brief training, API on :8000"
    )
    p.add_argument(
        "--dir", default="twotower-demo", help="working directory for data, store and artifacts"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--no-serve", action="store_true", help="train and export, then exit")
    p.set_defaults(func=_run("twotower.demo", "demo_command"))


def _run(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    def call(args: argparse.Namespace) -> int:
        import importlib

        fn = getattr(importlib.import_module(module), name)
        return int(fn(args) or 0)

    return call


def store_from_environment(args: argparse.Namespace, environ: Mapping[str, str]) -> None:
    """Fill ``args.store`` from ``TWOTOWER_STORE_URL`` when ``--store`` was not given.

    ``serve`` keeps None while ``TWOTOWER_SERVE_STORE_URL`` is set (its settings read
    that); ``ingest`` falls back to the embedded store; ``pipeline`` refuses to run
    without a store (unless it trains on a snapshot).
    """
    if getattr(args, "store", "") is not None:
        return
    url = environ.get(STORE_ENV) or None
    if args.command == "serve" and environ.get("TWOTOWER_SERVE_STORE_URL"):
        url = None
    elif url is None and args.command == "ingest":
        url = DEFAULT_STORE
    args.store = url


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twotower",
        description="Two-tower candidate retrieval that learns from dislikes.",
    )
    parser.add_argument("--version", action="version", version=f"twotower {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(sub)
    _add_train(sub)
    _add_evaluate(sub)
    _add_serve(sub)
    _add_ingest(sub)
    _add_forget(sub)
    _add_pipeline(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    store_from_environment(args, os.environ)
    if args.command == "forget" and args.store is None:
        parser.error(f"forget: no store: pass --store URL or set {STORE_ENV}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Library chatter (FAISS's loader probing CPU variants, TF's absl INFO) is not the user's business.
    for noisy in ("faiss.loader", "absl", "tensorflow", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        if (
            args.command in TF_COMMANDS
        ):  # before anything imports it: its start-up notices are noise
            from twotower.tf_logging import import_tensorflow_quietly

            import_tensorflow_quietly()
        return args.func(args)
    except KeyboardInterrupt:
        # SPEC's exit codes are 0, 2 and 1 ("anything else"): an interrupted run is 1.
        print("twotower: interrupted", file=sys.stderr)
        return 1
    except Exception as exc:
        if isinstance(exc, _input_error_types()):
            print(f"twotower {args.command}: error: {exc}", file=sys.stderr)
            return 2
        log.exception("twotower %s failed", args.command)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
