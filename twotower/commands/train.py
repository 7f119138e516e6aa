"""``twotower train`` and ``twotower evaluate`` (their flags are still read in :mod:`trainer.run`)."""

from __future__ import annotations

import argparse


def train_command(args: argparse.Namespace) -> int:
    from trainer.run import train_command as run

    return int(run(args) or 0)


def evaluate_command(args: argparse.Namespace) -> int:
    from trainer.run import evaluate_command as run

    return int(run(args) or 0)
