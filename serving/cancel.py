"""Stopping a background asyncio task of the app (batcher, reloader, store watchdog)."""

from __future__ import annotations

import asyncio
import contextlib


async def cancel_task(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` and wait until it has stopped (no-op for None)."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
