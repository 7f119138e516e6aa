"""Follow ART/LATEST: load and warm a new version in the background, then swap it in.

The swap is one attribute assignment on :class:`ModelHolder` (atomic under the
GIL and on the event loop). Requests read ``holder.current`` once and keep that
object, so a request in flight finishes on the version it started with and its
response names it. The old :class:`LoadedModel` is freed by reference counting
when the last request holding it ends (it holds no reference cycles; tested),
so no garbage collection pass runs on the event loop at a swap.

A version that fails to load (a transient read error, a GPU out of memory, a
half-synced volume) is retried with capped exponential backoff without
waiting for LATEST to change: ``poll_s``, then twice that, and so on up to
``retry_max_s``.

Only versions under the artifact root are loaded: a LATEST naming ``../x``, an
absolute path, or a version that is (or holds) a symlink out of the root is a
failed load (:func:`common.artifacts.contained_version_dir`), logged, and the
current version keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable

from common import artifacts
from serving.cancel import cancel_task
from serving.model import LoadedModel, load_model

log = logging.getLogger(__name__)


def _shown(version: str) -> str:
    """A version id for logs and errors: quoted, escaped and cut (LATEST may hold anything)."""
    return repr(version if len(version) <= 80 else version[:80] + "...")


class ModelHolder:
    """The current model version, or None before the first load."""

    def __init__(self) -> None:
        self.current: LoadedModel | None = None
        self.last_error: str | None = None

    def swap(self, model: LoadedModel) -> LoadedModel | None:
        old, self.current = self.current, model
        return old


def retry_delay(failures: int, base_s: float, max_s: float) -> float:
    """Seconds before the next load attempt after ``failures`` consecutive failures (>= 1)."""
    return min(max_s, base_s * 2.0 ** max(0, failures - 1))


class Reloader:
    """Polls ``ART/LATEST`` every ``poll_s`` seconds and swaps in new versions.

    Loading runs in its own thread (``asyncio.to_thread``), not the batcher's,
    so serving continues on the old version while the new one loads and warms.

    Args:
      prepare: called with a newly loaded model in the loading thread, before it is
        swapped in (work a version needs before it serves).
      on_swap: called with the new model after each swap.
      on_failure: called with (version, exception) after each failed load.
      on_published: called with the version LATEST names (or None) at every check.
      clock: monotonic seconds (injectable so tests can step through the backoff).
    """

    def __init__(
        self,
        art: str | os.PathLike[str],
        holder: ModelHolder,
        *,
        poll_s: float = 2.0,
        retry_max_s: float = 60.0,
        use_gpu: str = "auto",
        prepare: Callable[[LoadedModel], None] | None = None,
        on_swap: Callable[[LoadedModel], None] | None = None,
        on_failure: Callable[[str, Exception], None] | None = None,
        on_published: Callable[[str | None], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.art = art
        self.holder = holder
        self.poll_s = poll_s
        self.retry_max_s = retry_max_s
        self.use_gpu = use_gpu
        self.prepare = prepare
        self.on_swap = on_swap
        self.on_failure = on_failure
        self.on_published = on_published
        self.clock = clock
        self.failed_version: str | None = None
        self.failures = 0
        self.retry_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def check_once(self) -> bool:
        """Load the published version if it is not the current one; True when swapped.

        A version that failed before is attempted again only once its backoff has passed.
        """
        async with self._lock:
            version = artifacts.latest_version(self.art)
            if self.on_published is not None:
                valid = version is None or artifacts.VERSION_ID.fullmatch(version)
                self.on_published(version if valid else "<invalid>")
            current = self.holder.current
            if current is not None and current.version == version:
                self.holder.last_error = None  # LATEST names what is served (e.g. a rollback)
                return False
            if version is None:
                return False
            if version == self.failed_version and self.clock() < self.retry_at:
                return False
            try:
                model = await asyncio.to_thread(self._load, version)
            except Exception as exc:
                self._failed(version, exc)
                return False
            old = self.holder.swap(model)
            self.holder.last_error = None
            self.failed_version, self.failures = None, 0
            log.info("serving version %s (was %s)", version, old.version if old else None)
            if self.on_swap is not None:
                self.on_swap(model)
            return True

    def _load(self, version: str) -> LoadedModel:
        model = load_model(self.art, version, use_gpu=self.use_gpu)
        if self.prepare is not None:
            self.prepare(model)
        return model

    def _failed(self, version: str, exc: Exception) -> None:
        if version != self.failed_version:
            self.failed_version, self.failures = version, 0
        self.failures += 1
        delay = retry_delay(self.failures, self.poll_s, self.retry_max_s)
        self.retry_at = self.clock() + delay
        current = self.holder.current
        self.holder.last_error = f"version {_shown(version)}: {exc}"
        log.error(
            "cannot load version %s (attempt %d; still serving %s; retrying in %.0fs): %s",
            _shown(version),
            self.failures,
            current and current.version,
            delay,
            exc,
        )
        if self.on_failure is not None:
            self.on_failure(version, exc)

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
