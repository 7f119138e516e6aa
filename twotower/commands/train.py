"""``twotower train``: flags to a trainer config and one training run."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from twotower.commands import print_json

if TYPE_CHECKING:
    from trainer.run import TrainOutcome

#: The figures of the one-line summary, as docs/CONTRACT.md names them.
SUMMARY_METRICS = ("recall@20", "ndcg@20", "dislike_rate@20")


def train_command(args: argparse.Namespace) -> int:
    """``twotower train``: the outcome as JSON on stdout, a one-line summary on stderr."""
    from common import interrupts
    from trainer.run import train, trainer_config

    kind = args.data.split(":", 1)[0]
    cfg = trainer_config(kind, args.config, args.overrides, args.epochs, args.strategy)
    publish = not args.no_publish
    with interrupts.handled(hint=interrupts.RESUME_HINT):
        outcome = train(
            args.data,
            args.out,
            cfg,
            warm_version=args.warm_start,
            checkpoint_dir=args.checkpoint_dir,
            publish=publish,
            skip_bad_lines=args.skip_bad_lines,
            progress=True,
        )
    print(train_summary(outcome, published=publish), file=sys.stderr, flush=True)
    print_json(
        {
            "version": outcome.version,
            "published": bool(outcome.version) and publish,
            "metrics": outcome.metrics,
            "baseline_popular": outcome.baseline_popular,
            "eval": outcome.manifest_extra["eval"],
            "training": {k: v for k, v in outcome.training.items() if k != "history"},
        }
    )
    return 0


def train_summary(outcome: TrainOutcome, published: bool) -> str:
    """One line for a person: the version, its headline metrics beside the most-popular
    baseline's, and how the training went (the JSON on stdout has everything)."""
    from trainer.train import format_duration

    if not outcome.version:
        return "twotower train: done (a worker of a multi-worker run: the chief exports)"
    m, b, t = outcome.metrics, outcome.baseline_popular, outcome.training
    what = "published" if published else "exported (not published)"
    figures = ", ".join(
        f"{name} {float(m[name]):.4f} (most popular {float(b[name]):.4f})"
        for name in SUMMARY_METRICS
        if name in m and name in b
    )
    epochs = f"{t['epochs_run']} epochs"
    if t.get("best_epoch", -1) > 0:
        epochs += f", best {t['best_epoch']}"
    return (
        f"twotower train: {what} version {outcome.version}: {figures}; "
        f"{epochs}, {format_duration(float(t['seconds']))} of training"
    )
