"""The ``twotower`` command line: one entry point, one subcommand per job.

Exit codes (the same for every subcommand):

* 0 -- success; also ``--help``/``--version``, a ``pipeline`` run skipped
  for too few new events, and ``serve``/``demo`` shut down with Ctrl-C (SIGINT:
  a clean shutdown).
* 2 -- bad usage or bad input, the message says what and where: a flag
  argparse refuses, a config key or value (file, ``TWOTOWER_<SECTION>__<KEY>``,
  ``--set``), a data source that does not exist or a malformed line, a store
  URL, an artifact directory with nothing published or without the version,
  a port in use (``serve``, ``demo``). Checked before TensorFlow is imported
  or data is read wherever possible (:mod:`twotower.precheck`).
* 1 -- anything else: a failure while working (store unreachable, the API
  did not start, an unexpected error: logged with its traceback), the
  ``pipeline`` quality gate refusing a candidate, another ``pipeline`` run
  holding the lock, any other command interrupted with Ctrl-C.
* 128+N -- the process ended by signal N, as any program does (the shell
  shows 143 for SIGTERM, 137 for SIGKILL or the OOM killer; Python's
  ``subprocess`` shows -N). ``serve`` and ``demo`` first shut down gracefully
  on SIGTERM (what ``docker stop`` and a Kubernetes pod deletion send), then
  end with it: 143; ``serve --workers N`` (N > 1) ends a SIGTERM shutdown with 0.

uvicorn's own start-up status 3 is never returned: a port in use is 2, any
other start-up failure 1.

Heavy imports (TensorFlow, FAISS) happen inside the subcommand so ``--help``
is instant.

The online store (``serve``, ``ingest``, ``pipeline``, ``forget``) is, in this
order: ``--store``, else ``$TWOTOWER_STORE_URL``, else the embedded
``sqlite:///twotower-store.sqlite`` in the working directory, so ``ingest``,
``pipeline`` and ``serve`` run from one directory share one store without a
flag. ``serve`` also reads ``$TWOTOWER_SERVE_STORE_URL`` (its settings'
variable), which comes before ``$TWOTOWER_STORE_URL``. ``forget`` and a
one-off ``pipeline`` refuse a SQLite store file that does not exist (exit 2)
rather than create an empty one (``pipeline --every`` may start before the
store does); ``pipeline --snapshot`` reads no store. The maintenance commands
``archive rebind`` and ``migrate-redis`` act on the one store they are given.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Mapping, Sequence

from common import interrupts
from common.tf_env import set_tensorflow_environment
from common.urls import DEFAULT_STORE_URL
from twotower import __version__, demo
from twotower.commands import (
    archive,
    evaluate,
    forget,
    ingest,
    migrate_redis,
    pipeline,
    serve,
    train,
)

log = logging.getLogger("twotower")

DEFAULT_STORE = DEFAULT_STORE_URL
#: Where ``--store`` comes from when it is not given: a password stays off the command line.
STORE_ENV = "TWOTOWER_STORE_URL"
#: ``serve``'s own settings variable for the store (read by :mod:`serving.settings`).
SERVE_STORE_ENV = "TWOTOWER_SERVE_STORE_URL"
#: Subcommands that use the online store, all with one default (module docstring).
STORE_COMMANDS = ("serve", "ingest", "pipeline", "forget")
STORE_HELP = (
    f"online store URL (redis://, rediss://, sqlite:///path); default: ${STORE_ENV}, "
    f"else {DEFAULT_STORE} (in the working directory)"
)
#: Subcommands that always load TensorFlow (``pipeline`` loads it only when it trains).
TF_COMMANDS = ("demo", "train", "evaluate", "serve")

SOURCE_HELP = (
    "data source: synthetic[:key=value,...] | movielens:PATH (u.data or ratings.csv) | "
    "lightgcn:DIR (train.txt/valid.txt/test.txt) | events:STORE_URL (the store's event log) | "
    "events:DIR (a Parquet log export, such as ART/events)"
)
SKIP_BAD_LINES_HELP = "skip malformed input lines (counted and reported) instead of failing"
CONFIG_HELP = "YAML/JSON config file"
SET_HELP = "override a config key, e.g. --set loss.ntr_weight=0 (repeatable)"
EPOCHS_HELP = "shorthand for --set train.epochs=N"


def _input_error_types() -> tuple[type[BaseException], ...]:
    """Exception types that mean "bad usage or bad input" (exit 2)."""
    from common.artifacts import ArtifactError
    from common.config import ConfigError
    from feature_store.events import EventError

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
        from feature_store.options import StoreURLError

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
    p.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    p.add_argument("--epochs", type=int, metavar="N", help=EPOCHS_HELP)
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP
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
    p.add_argument("--skip-bad-lines", action="store_true", help=SKIP_BAD_LINES_HELP)
    p.set_defaults(func=train.train_command)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="print the metrics JSON of a version on SRC's test split",
        description="Score a version of ART (default: the published one) on SRC's test split "
        "with the training's protocol and masking, and print the metrics JSON beside the "
        "most-popular baseline.",
    )
    p.add_argument(
        "--artifacts", required=True, metavar="ART", help="artifact directory holding the version"
    )
    p.add_argument("--version", metavar="V", help="version id (default: the published one)")
    p.add_argument("--data", required=True, metavar="SRC", help=SOURCE_HELP)
    p.add_argument(
        "--topk-out",
        metavar="FILE",
        help='also write one JSON line per test user: {"user_id", "items": [top 50]}',
    )
    p.add_argument("--skip-bad-lines", action="store_true", help=SKIP_BAD_LINES_HELP)
    p.set_defaults(func=evaluate.evaluate_command)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the HTTP API (follows ART/LATEST, hot reload)",
        description="Run the recommend/events API on the version ART/LATEST names, switching "
        "to each newly published version without dropping a request. Other settings come from "
        "TWOTOWER_SERVE_* variables (see serving/settings.py).",
    )
    p.add_argument(
        "--artifacts",
        required=True,
        metavar="ART",
        help="artifact directory to follow (must exist; nothing published yet = 503 until then)",
    )
    p.add_argument(
        "--store",
        default=None,
        metavar="URL",
        help=f"online store URL (redis://, rediss://, sqlite:///path); default: "
        f"${SERVE_STORE_ENV}, else ${STORE_ENV}, else {DEFAULT_STORE} (in the working directory)",
    )
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    p.add_argument(
        "--port",
        type=int,
        default=None,
        help="port (default 8000; checked before the model loads: in use = exit 2)",
    )
    p.add_argument("--workers", type=int, default=None, help="uvicorn worker processes (default 1)")
    p.set_defaults(func=serve.serve_command)


def _add_ingest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ingest",
        help="bulk-load a source's events into the online store and event log",
        description="Append every event of SRC to the online store (user state) and its "
        "durable event log (what `twotower pipeline` trains on). Event ids are deterministic, "
        "so a re-run adds nothing twice. Prints a JSON summary.",
    )
    p.add_argument("--data", required=True, metavar="SRC", help=SOURCE_HELP)
    p.add_argument("--store", default=None, metavar="URL", help=STORE_HELP)
    p.add_argument("--skip-bad-lines", action="store_true", help=SKIP_BAD_LINES_HELP)
    p.set_defaults(func=ingest.ingest_command)


def _add_forget(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "forget",
        help="erase users from the online store, its event log and exported events",
        description="Erase each user's state and log entries and record an erasure tombstone, "
        "so exports drop the user's events on their next run (or now, with --export).",
    )
    p.add_argument(
        "--store", default=None, metavar="URL", help=f"{STORE_HELP}; a SQLite file must exist"
    )
    p.add_argument(
        "--user",
        dest="users",
        action="append",
        required=True,
        metavar="ID",
        help="user id to erase (repeatable)",
    )
    p.add_argument(
        "--export",
        dest="exports",
        action="append",
        default=[],
        metavar="DIR",
        help="also purge this export directory now (e.g. ART/events; repeatable)",
    )
    p.set_defaults(func=forget.forget_command)


def _add_pipeline(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pipeline",
        help="scheduled job: new events -> warm-started training -> evaluation -> quality gate -> publish",
        description="Move new events from the store's log into ART/events, warm-start a "
        "candidate from the published version, score both on one holdout and publish the "
        "candidate only if the quality gate passes (or refuse, exit 1, with the reason). "
        "Writes a report under ART/reports.",
    )
    p.add_argument(
        "--store",
        default=None,
        metavar="URL",
        help=f"{STORE_HELP}; a SQLite file must exist (unless --every); not read with --snapshot",
    )
    p.add_argument(
        "--artifacts", required=True, metavar="ART", help="artifact directory (created if missing)"
    )
    p.add_argument("--config", metavar="FILE", help=f"{CONFIG_HELP} (trainer and pipeline keys)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP
    )
    p.add_argument("--epochs", type=int, metavar="N", help=EPOCHS_HELP)
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
    p.set_defaults(func=pipeline.pipeline_command)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="zero-setup quickstart: synthetic data, brief training, API on :8000",
        description="Generate a synthetic data set, train briefly, publish a version under "
        "DIR/artifacts, load the events into the embedded store DIR/store.sqlite, then serve "
        "the API and print curl lines that show the dislike filter at work.",
    )
    p.add_argument(
        "--dir",
        default="twotower-demo",
        metavar="DIR",
        help="working directory for data, store and artifacts (default: twotower-demo)",
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument(
        "--port",
        type=int,
        default=8000,
        help="port (default 8000; checked before anything runs: in use = exit 2)",
    )
    p.add_argument("--no-serve", action="store_true", help="train and export, then exit")
    p.set_defaults(func=demo.demo_command)


def _add_archive(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "archive",
        help="maintenance of an event export directory (rebind)",
        description="Maintenance of an event export directory (such as ART/events).",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION", help="what to do")
    r = actions.add_parser(
        "rebind",
        help="tie an export directory to a store whose log started over",
        description="Tie DIR to the store at URL, whose log started over (a recreated file, a "
        "restored Redis): the events already exported stay, the next run exports the store's "
        "log from its start.",
    )
    r.add_argument("out_dir", metavar="DIR", help="the export directory (holds _cursor.json)")
    r.add_argument(
        "--store",
        required=True,
        metavar="URL",
        help="the store (redis://, rediss://, sqlite:///path)",
    )
    r.set_defaults(func=archive.rebind_command)


def _add_migrate_redis(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "migrate-redis",
        help="move a Redis store from key layout v1 to v2, in place",
        description="Move the Redis store at URL from key layout v1 to v2 in place: the log "
        "stream is renamed (exporters' cursors stay valid), the user state is rebuilt from it, "
        "item metadata is copied; an interrupted run can be run again. Prints a JSON summary.",
    )
    p.add_argument("url", metavar="URL", help="the store URL (redis://... with its prefix)")
    p.add_argument("--drop-v1", action="store_true", help="delete the v1 keys afterwards")
    p.set_defaults(func=migrate_redis.migrate_redis_command)


def store_from_environment(args: argparse.Namespace, environ: Mapping[str, str]) -> None:
    """Fill a missing ``args.store``: ``$TWOTOWER_STORE_URL``, else :data:`DEFAULT_STORE`.

    One rule for every command with ``--store`` (module docstring). Two cases keep
    None: ``serve`` while ``TWOTOWER_SERVE_STORE_URL`` is set (its settings read that
    variable, which comes first), and ``pipeline --snapshot``, which reads no store.
    """
    if args.command not in STORE_COMMANDS or getattr(args, "store", None) is not None:
        return
    if args.command == "serve" and environ.get(SERVE_STORE_ENV):
        return
    if args.command == "pipeline" and getattr(args, "snapshot", None):
        return
    args.store = environ.get(STORE_ENV) or DEFAULT_STORE


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
    _add_archive(sub)
    _add_migrate_redis(sub)
    return parser


#: Commands whose Ctrl-C is recorded from the start (TensorFlow start-up included), so
#: one that library code swallows still stops them; serve and demo stop through uvicorn.
INTERRUPTIBLE = {
    "train": interrupts.RESUME_HINT,
    "pipeline": interrupts.RESUME_HINT,
    "evaluate": "",
}


def _ctrl_c_handled(command: str) -> contextlib.AbstractContextManager[None]:
    if command in INTERRUPTIBLE:
        return interrupts.handled(hint=INTERRUPTIBLE[command])
    return contextlib.nullcontext()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    store_from_environment(args, os.environ)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Library chatter (FAISS's loader probing CPU variants, TF's absl INFO) is not the user's business.
    for noisy in ("faiss.loader", "absl", "tensorflow", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    set_tensorflow_environment()
    try:
        from twotower.precheck import check_args

        check_args(args)  # milliseconds, before TensorFlow and before any data is read
        with _ctrl_c_handled(args.command):
            if args.command in TF_COMMANDS:  # before anything imports it: its notices are noise
                from common.tf_logging import import_tensorflow_quietly

                import_tensorflow_quietly()
                # TensorFlow's import runs bare ``except:`` blocks: a Ctrl-C they swallowed
                # is still recorded (common.interrupts) and stops the command here.
                interrupts.check()
            return args.func(args)
    except KeyboardInterrupt:
        # The exit codes (docs/CONTRACT.md) are 0, 2 and 1 ("anything else"): an interrupted run is 1.
        # Training checkpoints as it goes: the same command picks up where this one stopped.
        from common.interrupts import EXIT_STATUS, RESUME_HINT

        resumable = args.command in ("train", "pipeline")
        print(
            "twotower: interrupted" + (f"; {RESUME_HINT}" if resumable else ""),
            file=sys.stderr,
            flush=True,
        )
        return EXIT_STATUS
    except Exception as exc:
        if isinstance(exc, _input_error_types()):
            print(f"twotower {args.command}: error: {exc}", file=sys.stderr)
            return 2
        log.exception("twotower %s failed", args.command)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
