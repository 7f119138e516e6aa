"""``twotower forget``: erase users from the store, its log and export directories."""

from __future__ import annotations

import argparse
import json


def forget_command(args: argparse.Namespace) -> int:
    """Print the JSON summary of the erasure; exit 0."""
    from feature_store.erasure import forget_users

    summary = forget_users(args.store, args.users, export_dirs=args.exports or ())
    print(json.dumps(summary))
    return 0
