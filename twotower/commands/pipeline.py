"""``twotower pipeline``: flags to a :class:`~trainer.pipeline.config.PipelineConfig` and a run.

The exit status: 0 published or skipped, 1 refused by the gate (or another run holds
the lock), 2 bad flags or configuration (raised as :class:`ConfigError`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainer.pipeline.config import PipelineConfig


def pipeline_command(args: argparse.Namespace) -> int:
    """``twotower pipeline``: check the flags, then one run, a schedule, a freeze or a replica."""
    from common.config import ConfigError
    from trainer.pipeline.config import load_pipeline_config, published_config
    from trainer.pipeline.run import check_store, freeze_snapshot, train_as_worker
    from trainer.pipeline.schedule import next_run_delay, run_forever
    from trainer.pipeline.state import PipelineLocked

    sets = list(args.overrides or [])
    if args.epochs is not None:
        sets.append(f"train.epochs={args.epochs}")
    if getattr(args, "strategy", None):
        sets.append(f"train.strategy={args.strategy}")
    config = load_pipeline_config(file=args.config, overrides=sets)  # bad settings: exit 2 now

    def for_this_run() -> PipelineConfig:
        # What a run follows of the version it warm-starts from is read when it starts.
        published = published_config(args.artifacts, getattr(args, "snapshot", None))
        return load_pipeline_config(file=args.config, overrides=sets, published=published)

    snapshot = getattr(args, "snapshot", None)
    freeze = bool(getattr(args, "freeze", False))
    run_now = bool(getattr(args, "run_now", False))
    if snapshot and freeze:
        raise ConfigError("--freeze writes a snapshot and --snapshot trains on one: pick one")
    if (snapshot or freeze) and args.every:
        raise ConfigError("--snapshot/--freeze are one-off runs; they do not take --every")
    if run_now and not args.every:
        raise ConfigError("--run-now only applies with --every (a run without --every runs now)")
    if config.train.strategy == "multiworker" and not snapshot:
        raise ConfigError(
            "train.strategy=multiworker needs --snapshot DIR: every replica must read the same "
            "frozen data (write one with `twotower pipeline --freeze`)"
        )
    if not snapshot:
        check_store(args.store, scheduled=bool(args.every))
    if args.every:
        next_run_delay(args.every)  # a bad schedule is exit 2, before anything runs
        return run_forever(
            args.every,
            lambda: _run_and_report(args, for_this_run()),
            run_now=run_now,
            skip_errors=(PipelineLocked,),
        )
    if freeze:
        print(
            json.dumps(freeze_snapshot(args.store, Path(args.artifacts), for_this_run()), indent=2)
        )
        return 0
    if snapshot and not args.task_role.is_chief:  # TF_CONFIG, read by twotower.cli
        train_as_worker(Path(args.artifacts), for_this_run(), Path(snapshot))
        return 0
    return _run_and_report(args, for_this_run())


def _run_and_report(args: argparse.Namespace, config: PipelineConfig) -> int:
    """One run: its report as JSON on stdout; exit 1 when the gate refused or the lock is taken."""
    from trainer.pipeline.run import gate_lines, run_once
    from trainer.pipeline.state import PipelineLocked

    try:
        report = run_once(
            args.store,
            args.artifacts,
            config,
            force=args.force,
            snapshot=getattr(args, "snapshot", None),
        )
    except PipelineLocked as exc:
        print(f"twotower pipeline: {exc}", file=sys.stderr)
        return 1
    json.dump(report, sys.stdout, indent=2, default=str)
    print()
    sys.stdout.flush()
    if report["outcome"] == "refused":
        print(
            f"twotower pipeline: quality gate refused {report['version']}: {report['reason']}",
            file=sys.stderr,
        )
        for line in gate_lines(report):
            print(line, file=sys.stderr)
        return 1
    if any(row.get("left_out") for row in report.get("gate", [])):
        # A pass that compared less than the gate names: say which rules, and why.
        print(
            f"twotower pipeline: {report['outcome']} {report.get('version')}: {report['reason']}",
            file=sys.stderr,
        )
        for line in gate_lines(report):
            print(line, file=sys.stderr)
    return 0
