"""Right to erasure: ``twotower forget --store URL --user ID [--user ID ...] [--export DIR ...]``.

For each user, :meth:`OnlineStore.forget_user` erases the state, the
idempotency record and the store's log entries, and records a durable
tombstone (sha256 of the id and the time). Every later export run
(:func:`feature_store.archive.compact`) purges the user's already exported
events from its Parquet files and every read of an export leaves them out;
``--export DIR`` purges those directories right away.

Prints one JSON line: ``{"users", "log_events_removed", "export_rows_removed"}``.
Exit codes: 0 done, 2 bad usage or input (a malformed URL or user id; nothing
was erased), 1 anything else (e.g. the store is unreachable: retry, erasure
is idempotent).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.urls import STORE_URL_ENV
from feature_store.events import EventError, check_id


def forget_users(
    url: str, user_ids: Sequence[str], *, export_dirs: Sequence[str | Path] = ()
) -> dict[str, Any]:
    """Erase ``user_ids`` from the store at ``url`` (and purge ``export_dirs``); returns counts.

    Raises:
      EventError: a user id is malformed (checked for all before anything is erased),
        an export directory is not one, or a ``sqlite:///`` store file does not exist.
      StoreURLError: the URL is malformed.
      StoreError / StoreUnavailable: from the store; users erased before it stay erased.
    """
    from feature_store import open_store, run_sync
    from feature_store.archive import apply_tombstones
    from feature_store.export_state import STATE_FILE, is_export_dir
    from feature_store.urls import missing_sqlite_file

    users = [check_id(u, "--user") for u in user_ids]
    if not users:
        raise EventError("--user", "give at least one --user ID")
    for d in export_dirs:
        if not is_export_dir(d):
            raise EventError("--export", f"{d} is not an export directory (no {STATE_FILE})")
    missing = missing_sqlite_file(url)
    if missing is not None:  # opening it would create an empty store and "erase" nothing
        raise EventError(
            "--store",
            f"no store file {missing} (pass --store URL or set {STORE_URL_ENV} to the "
            "store that holds the users); nothing was erased",
        )
    store = open_store(url)

    async def erase() -> int:
        async with store:
            removed = 0
            for user in dict.fromkeys(users):
                removed += await store.forget_user(user)
            return removed

    removed = run_sync(erase())
    purged = sum(apply_tombstones(url, d) for d in export_dirs)
    return {
        "users": len(dict.fromkeys(users)),
        "log_events_removed": removed,
        "export_rows_removed": purged,
    }
