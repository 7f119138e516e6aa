"""The ``twotower`` argument parser: its subcommands, their flags and help texts.

Each subcommand's parser names the function that runs it (``func``, in
:mod:`twotower.commands` or :mod:`twotower.demo`); :func:`twotower.cli.main`
parses, reads the environment and calls it. Building the parser imports no
library beyond the command modules (which import theirs when they run), so
``--help`` is instant.
"""

from __future__ import annotations

import argparse

from common.urls import DEFAULT_STORE_URL, STORE_URL_ENV
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

STORE_HELP = (
    f"online store URL (redis://, rediss://, sqlite:///path); default: ${STORE_URL_ENV}, "
    f"else {DEFAULT_STORE_URL} (in the working directory)"
)

SOURCE_HELP = (
    "data source: synthetic[:key=value,...] | movielens:PATH (u.data or ratings.csv) | "
    "lightgcn:DIR (train.txt/valid.txt/test.txt) | events:STORE_URL (the store's event log) | "
    "events:DIR (a Parquet log export, such as ART/events)"
)
SKIP_BAD_LINES_HELP = "skip malformed input lines (counted and reported) instead of failing"
CONFIG_HELP = "YAML/JSON config file"
SET_HELP = "override a config key, e.g. --set loss.ntr_weight=0 (repeatable)"
EPOCHS_HELP = "shorthand for --set train.epochs=N"


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
        "TWOTOWER_SERVE__<SETTING> variables (see serving/settings.py).",
    )
    p.add_argument(
        "--artifacts",
        required=True,
        metavar="ART",
        help="artifact directory to follow (must exist; nothing published yet = 503 until then)",
    )
    p.add_argument("--store", default=None, metavar="URL", help=STORE_HELP)
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
