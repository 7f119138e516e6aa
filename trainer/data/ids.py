"""Integer ids and numbers in data files: what the readers accept.

An id is a non-negative integer written in ASCII digits (``0-9``) that fits
in int64. ``str.isdigit`` is not that test: it accepts ``'²'`` and other
Unicode digits that ``int()`` then refuses or reads as something else, and
an over-long digit string overflows int64. A number (rating, timestamp) is
an ASCII decimal without sign or exponent (``4``, ``3.5``, ``978300760``).

Readers take a vectorised fast path when every token passes the cheap
checks below and fall back to a line-by-line path that names the first bad
token with :func:`id_problem` / :func:`number_problem`.
"""

from __future__ import annotations

import re

import numpy as np

INT64_MAX = (1 << 63) - 1
#: Digit strings up to this long always fit in int64 (10^18 - 1 < 2^63 - 1).
SAFE_DIGITS = 18

_DIGITS = re.compile(r"[0-9]+", re.ASCII)
_DECIMAL = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)", re.ASCII)


def id_problem(token: str) -> str | None:
    """None when ``token`` is a valid id, else a sentence saying what is wrong with it."""
    if not _DIGITS.fullmatch(token):
        return f"{token!r} is not a non-negative integer id (ASCII digits 0-9 only)"
    if int(token) > INT64_MAX:
        shown = token if len(token) <= 30 else f"{token[:12]}...{token[-6:]} ({len(token)} digits)"
        return f"id {shown} is out of range (ids must be at most {INT64_MAX})"
    return None


def number_problem(token: str, what: str) -> str | None:
    """None when ``token`` is a plain ASCII decimal, else why not (``what`` names the field)."""
    if not _DECIMAL.fullmatch(token):
        return f"{what} {token!r} is not a number (ASCII decimal, e.g. 4 or 3.5)"
    return None


def plain_ids(tokens: np.ndarray) -> bool:
    """True when every entry of a str array is 1-18 ASCII digits (exact as int64).

    The caller must have checked that the text is ASCII (``str.isascii``):
    ``np.char.isdigit`` alone accepts Unicode digits.
    """
    if tokens.size == 0:
        return True
    return bool(np.char.isdigit(tokens).all() and (np.char.str_len(tokens) <= SAFE_DIGITS).all())


def plain_decimals(tokens: np.ndarray) -> bool:
    """True when every entry of an ASCII str array is digits with at most one ``.``."""
    if tokens.size == 0:
        return True
    stripped = np.char.replace(tokens, ".", "", count=1)
    return bool(np.char.isdigit(stripped).all())
