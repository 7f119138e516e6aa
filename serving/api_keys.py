"""API keys: where they come from, how they rotate, how a presented key is checked.

Keys come from ``TWOTOWER_SERVE__API_KEYS`` (comma-separated) and
``TWOTOWER_SERVE__API_KEYS_FILE`` (one key per line; blank lines and ``#``
comments ignored). The file is looked at again at most once a second, on a
request, and re-read when its identity (device, inode, size, mtime, ctime)
changed, so keys rotate without a restart. ``os.stat`` follows symlinks, so a
Kubernetes Secret volume, which swaps its ``..data`` symlink to a new
directory, is seen as a new file. A key file that cannot be read any more
keeps the keys last read (logged); one that holds no key leaves no key valid
(every protected request is refused: fail closed).

A presented key (read from the request by :func:`serving.auth.credentials`) is
hashed (SHA-256) and compared with ``hmac.compare_digest``
against the digest of every configured key, without stopping at a match, so
neither which key matched nor how long the keys are shows in the timing. Keys
are never logged, never echoed in an error, never a metrics label: a request
is told only whether its key was missing, malformed or unknown.

Which routes need a key and the middleware that asks for it: :mod:`serving.auth`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from common.config import ConfigError

log = logging.getLogger(__name__)

#: How often the key file is looked at (at most; only when requests come).
KEY_FILE_CHECK_S = 1.0
MIN_PRODUCTION_KEY_LENGTH = 16
#: Values an example file ships with, meant to be replaced before deploying (the one list:
#: ``deploy/preflight.py`` refuses them in any ``TWOTOWER_*`` variable with :func:`is_placeholder`).
PLACEHOLDER_MARKERS = ("change-me", "changeme", "change_me", "placeholder", "replace-me")


class KeyConfigError(ConfigError):
    """The configured keys cannot be used (unreadable file, no key, weak key in production)."""


def is_placeholder(value: str) -> bool:
    """Whether ``value`` still holds a placeholder marker (any case)."""
    low = value.lower()
    return any(marker in low for marker in PLACEHOLDER_MARKERS)


def key_problem(key: str, production: bool) -> str | None:
    """Why ``key`` cannot be an API key (None: it can). Never includes the key."""
    if not all(0x21 <= ord(ch) <= 0x7E for ch in key):
        return "a key must be printable ASCII without spaces or control characters"
    if production:
        if is_placeholder(key):
            return "is still a placeholder; set a real secret"
        if len(key) < MIN_PRODUCTION_KEY_LENGTH:
            return (
                f"shorter than {MIN_PRODUCTION_KEY_LENGTH} characters "
                "(environment=production; use e.g. `openssl rand -hex 32`)"
            )
    return None


def parse_key_file(text: str, where: str, production: bool) -> tuple[list[str], list[str]]:
    """(keys, problems naming ``where:line``) of a key file's text."""
    keys: list[str] = []
    problems: list[str] = []
    for no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        why = key_problem(line, production)
        if why is None:
            keys.append(line)
        else:
            problems.append(f"{where}:{no}: {why}")
    return keys, problems


def parse_key_list(text: str, where: str, production: bool) -> tuple[list[str], list[str]]:
    """(keys, problems naming ``where`` and the key's position) of a comma-separated list."""
    keys: list[str] = []
    problems: list[str] = []
    for n, raw in enumerate(text.split(","), start=1):
        key = raw.strip()
        if not key:
            continue
        why = key_problem(key, production)
        if why is None:
            keys.append(key)
        else:
            problems.append(f"{where}: key #{n}: {why}")
    return keys, problems


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class KeyRing:
    """The valid API keys (as SHA-256 digests): the static list plus the key file, kept current.

    Args:
      static_keys: keys from ``TWOTOWER_SERVE__API_KEYS``.
      path: the key file (None: none).
      production: apply the production rules (length, placeholders) to the file's keys.
      clock: monotonic seconds (injectable for tests).
      check_every_s: the file is stat'ed at most this often.
    """

    def __init__(
        self,
        static_keys: Iterable[str] = (),
        path: Path | None = None,
        *,
        production: bool = False,
        clock: Callable[[], float] = time.monotonic,
        check_every_s: float = KEY_FILE_CHECK_S,
    ) -> None:
        self._static = tuple(_digest(k.encode("ascii")) for k in static_keys)
        self.path = path
        self.production = production
        self._clock = clock
        self._check_every_s = check_every_s
        self._file_keys: tuple[bytes, ...] = ()
        self._identity: tuple[int, ...] | None = None
        self._next_check = 0.0
        self._last_error: str | None = None
        self.reloads = 0

    @classmethod
    def from_settings(cls, settings: Any, **kwargs: Any) -> KeyRing:
        """The key ring of ``settings``, its file read once; raises KeyConfigError (exit 2)."""
        production = settings.environment == "production"
        static: list[str] = []
        if settings.api_keys is not None:
            static, problems = parse_key_list(
                settings.api_keys.get_secret_value(), "TWOTOWER_SERVE__API_KEYS", production
            )
            if problems:
                raise KeyConfigError("; ".join(problems))
        ring = cls(static, settings.api_keys_file, production=production, **kwargs)
        if ring.path is not None:
            ring.load_file()
        if settings.has_key_source and not len(ring):
            source = (
                f"TWOTOWER_SERVE__API_KEYS_FILE {ring.path}"
                if ring.path is not None
                else "TWOTOWER_SERVE__API_KEYS"
            )
            raise KeyConfigError(f"{source}: holds no API key")
        return ring

    def __len__(self) -> int:
        return len(self._static) + len(self._file_keys)

    def load_file(self) -> None:
        """Read the key file now (start-up): raises KeyConfigError naming the file and line."""
        assert self.path is not None
        try:
            st = os.stat(self.path)
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise KeyConfigError(
                f"TWOTOWER_SERVE__API_KEYS_FILE {self.path}: cannot read it ({reason})"
            ) from None
        keys, problems = parse_key_file(text, str(self.path), self.production)
        if problems:
            raise KeyConfigError("; ".join(problems))
        self._file_keys = tuple(_digest(k.encode("ascii")) for k in keys)
        self._identity = _identity(st)
        self._next_check = self._clock() + self._check_every_s

    def refresh(self) -> None:
        """Re-read the key file if it changed (looked at no more than once per ``check_every_s``)."""
        if self.path is None:
            return
        now = self._clock()
        if now < self._next_check:
            return
        self._next_check = now + self._check_every_s
        try:
            st = os.stat(self.path)
            if _identity(st) == self._identity:
                return
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            error = f"API key file {self.path}: cannot read it ({reason}); keeping the {len(self._file_keys)} key(s) read before"
            if error != self._last_error:
                log.error("%s", error)
                self._last_error = error
            return
        self._last_error = None
        keys, problems = parse_key_file(text, str(self.path), self.production)
        for problem in problems:
            log.error("API key ignored: %s", problem)
        self._file_keys = tuple(_digest(k.encode("ascii")) for k in keys)
        self._identity = _identity(st)
        self.reloads += 1
        if keys:
            log.info("API key file %s re-read: %d key(s)", self.path, len(keys))
        else:
            log.error(
                "API key file %s re-read: it holds no key; requests that need one are refused",
                self.path,
            )

    def match(self, presented: bytes) -> bytes | None:
        """The digest of the configured key equal to ``presented``, or None.

        Every configured key is compared (constant time per key, no early exit).
        """
        self.refresh()
        digest = _digest(presented)
        found: bytes | None = None
        for known in self._static + self._file_keys:
            if hmac.compare_digest(digest, known):
                found = known
        return found
