"""``twotower evaluate``: the metrics of an exported version on a source's test split."""

from __future__ import annotations

import argparse

from twotower.commands import print_json


def evaluate_command(args: argparse.Namespace) -> int:
    """Print the metrics JSON of the version beside the most-popular baseline; exit 0."""
    from common import interrupts
    from trainer.data.sources import load_source
    from trainer.exported import evaluate_version

    with interrupts.handled():
        ds = load_source(args.data, skip_bad_lines=args.skip_bad_lines, progress=True)
        interrupts.check()
        result = evaluate_version(args.artifacts, args.version, ds, args.topk_out)
    print_json(result)
    return 0
