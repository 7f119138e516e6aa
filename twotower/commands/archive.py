"""``twotower archive rebind DIR --store URL``: tie an event export to a store whose log started over."""

from __future__ import annotations

import argparse


def rebind_command(args: argparse.Namespace) -> int:
    """Rebind ``args.out_dir`` to ``args.store`` (checked by :mod:`twotower.precheck`); exit 0."""
    from common.urls import redact_url
    from feature_store.archive import rebind

    rebind(args.out_dir, args.store)
    print(
        f"{args.out_dir}: bound to {redact_url(args.store)}; "
        "the next run exports its log from the start"
    )
    return 0
