"""``twotower migrate-redis URL [--drop-v1]``: move a Redis store from key layout v1 to v2."""

from __future__ import annotations

import argparse
import json


def migrate_redis_command(args: argparse.Namespace) -> int:
    """Print the JSON line of what the migration did; exit 0."""
    from feature_store.redis_migrate import migrate_url

    print(json.dumps(migrate_url(args.url, drop_v1=args.drop_v1)))
    return 0
