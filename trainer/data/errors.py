"""Errors raised by the data readers, and their malformed-line policy (:class:`BadLines`)."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A data source is missing or malformed; the message names the file and line."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None):
        self.path = path
        self.line = line
        where = f"{path}:{line}: " if path and line else (f"{path}: " if path else "")
        super().__init__(f"{where}{message}")


class BadLines:
    """The malformed-line policy of the file readers: raise, or skip and count.

    Never a silent drop: strict mode raises a :class:`DataError` naming the
    file and line; lenient mode counts every skipped line and logs the count
    with the first offender.
    """

    def __init__(self, path: str, skip: bool):
        self.path = path
        self.skip = skip
        self.count = 0
        self.first: tuple[int, str] | None = None

    def bad(self, line: int, why: str) -> None:
        if not self.skip:
            raise DataError(
                f"{why} (pass --skip-bad-lines to skip malformed lines)", path=self.path, line=line
            )
        self.count += 1
        if self.first is None:
            self.first = (line, why)

    def report(self) -> int:
        """Log the skipped count (if any) and return it."""
        if self.count and self.first is not None:
            line, why = self.first
            log.warning(
                "%s: skipped %d malformed line(s); first at line %d: %s",
                self.path,
                self.count,
                line,
                why,
            )
        return self.count
