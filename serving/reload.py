"""Follow ART/LATEST: load and warm a new version in the background, then swap it in.

The swap is one attribute assignment on :class:`ModelHolder` (atomic under the
GIL and on the event loop). Requests read ``holder.current`` once and keep that
object, so a request in flight finishes on the version it started with and its
response names it. The old :class:`LoadedModel` is released when the last
request holding it ends (reference counting); nothing closes it under a reader.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import Callable

from serving.model import LoadedModel, load_model
from serving.tasks import cancel_task
from twotower import artifacts

log = logging.getLogger(__name__)


class ModelHolder:
    """The current model version, or None before the first load."""

    def __init__(self) -> None:
        self.current: LoadedModel | None = None
        self.last_error: str | None = None

    def swap(self, model: LoadedModel) -> LoadedModel | None:
        old, self.current = self.current, model
        return old


class Reloader:
    """Polls ``ART/LATEST`` every ``poll_s`` seconds and swaps in new versions.

    Loading runs in its own thread (``asyncio.to_thread``), not the batcher's,
    so serving continues on the old version while the new one loads and warms.
    A version that fails to load is logged and not retried until LATEST changes.
    """

    def __init__(
        self,
        art: str | os.PathLike[str],
        holder: ModelHolder,
        *,
        poll_s: float = 2.0,
        use_gpu: str = "auto",
        on_swap: Callable[[LoadedModel], None] | None = None,
        on_failure: Callable[[str, Exception], None] | None = None,
    ) -> None:
        self.art = art
        self.holder = holder
        self.poll_s = poll_s
        self.use_gpu = use_gpu
        self.on_swap = on_swap
        self.on_failure = on_failure
        self._failed: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def check_once(self) -> bool:
        """Load the published version if it is not the current one; True when swapped."""
        async with self._lock:
            version = artifacts.latest_version(self.art)
            current = self.holder.current
            if (
                version is None
                or (current is not None and current.version == version)
                or version == self._failed
            ):
                return False
            try:
                model = await asyncio.to_thread(load_model, self.art, version, use_gpu=self.use_gpu)
            except Exception as exc:
                self._failed = version
                self.holder.last_error = f"version {version}: {exc}"
                log.error(
                    "cannot load version %s (still serving %s): %s",
                    version,
                    current and current.version,
                    exc,
                )
                if self.on_failure is not None:
                    self.on_failure(version, exc)
                return False
            old = self.holder.swap(model)
            self.holder.last_error = None
            self._failed = None
            log.info("serving version %s (was %s)", version, old.version if old else None)
            if self.on_swap is not None:
                self.on_swap(model)
            del old
            # TF resources of the old SavedModel are freed once no request holds it.
            gc.collect()
            return True

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.check_once()
            except Exception:  # never let the watcher die: the next poll retries
                log.exception("reload check failed")

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="twotower-reloader")

    async def stop(self) -> None:
        await cancel_task(self._task)
        self._task = None
