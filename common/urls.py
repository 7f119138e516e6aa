"""Store URLs as the programs show them: the default store, and passwords hidden.

A store URL may carry a password (``redis://:PASSWORD@host/0``,
``rediss://user:PASSWORD@host/0``). Everything that logs, reports or records a
URL (manifests, pipeline reports, error messages, ``/v1/settings``) goes
through :func:`redact_url`, and every message that may quote one through
:func:`mask_password`.

The rule, strictest of the forms the programs used to write separately:

* the whole user-info part is replaced when it holds a password:
  ``user:secret@`` -> ``user:***@``; a lone ``secret@`` (some clients read a
  single user-info field as the password) -> ``***@``;
* a query parameter whose name mentions a password, secret or token keeps its
  name, not its value;
* everything else is kept exactly as written (IPv6 brackets, port, path): the
  text is not parsed, so a URL a parser would refuse (a bad port, an unbalanced
  bracket) is redacted all the same.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote

#: The online store used when none is given (a SQLite file in the working directory).
DEFAULT_STORE_URL = "sqlite:///twotower-store.sqlite"
#: Where every command's store comes from without ``--store`` (``serve`` included), before
#: :data:`DEFAULT_STORE_URL`: a password need not be on a command line. Section ``store``
#: of the environment scheme (:mod:`common.config`).
STORE_URL_ENV = "TWOTOWER_STORE__URL"
#: Its names before the scheme, still read (renamed at a program's start, with a warning).
OLD_STORE_URL_ENV = ("TWOTOWER_STORE_URL", "TWOTOWER_SERVE_STORE_URL")
#: What a hidden value is replaced with.
MASK = "***"

_SECRET_QUERY = re.compile(r"pass|secret|token", re.IGNORECASE)


def _redact_query(query: str) -> str:
    if not query:
        return query
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(_SECRET_QUERY.search(k) for k, _ in pairs):
        return query
    out = []
    for part in query.split("&"):
        key, sep, _value = part.partition("=")
        out.append(f"{key}{sep}{MASK}" if sep and _SECRET_QUERY.search(unquote(key)) else part)
    return "&".join(out)


def _split_authority(url: str) -> tuple[str, str, str]:
    """``(before, authority, after)``: ``authority`` is what follows ``//`` up to ``/?#``."""
    head, sep, rest = url.partition("//")
    if not sep:
        return url, "", ""
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    return head + sep, rest[:end], rest[end:]


def redact_url(url: str) -> str:
    """``url`` with its password (and secret query values) replaced by ``***``.

    Works on the text as written (no parsing that could refuse or reformat it):

    >>> redact_url("redis://app:s3cret@cache:6380/2")
    'redis://app:***@cache:6380/2'
    >>> redact_url("sqlite:///var/store.sqlite")
    'sqlite:///var/store.sqlite'
    """
    head, authority, tail = _split_authority(url)
    if "@" in authority:
        userinfo, _, host = authority.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        authority = f"{user}:{MASK}@{host}" if colon else f"{MASK}@{host}"
    path, q, rest = tail.partition("?")
    if q:
        query, h, fragment = rest.partition("#")
        tail = f"{path}?{_redact_query(query)}{h}{fragment}"
    return head + authority + tail


def url_secrets(url: str) -> list[str]:
    """The secret strings of ``url`` (password or lone user-info, secret query values), as
    written and decoded; longest first."""
    found: set[str] = set()
    _head, authority, tail = _split_authority(url)
    if "@" in authority:
        userinfo = authority.rpartition("@")[0]
        user, colon, password = userinfo.partition(":")
        secret = password if colon else user
        if secret:
            found |= {secret, unquote(secret)}
    query = tail.partition("?")[2].partition("#")[0]
    for key, value in parse_qsl(query, keep_blank_values=True):
        if value and _SECRET_QUERY.search(key):
            found.add(value)
    return sorted((s for s in found if s), key=len, reverse=True)


def mask_password(url: str, text: str) -> str:
    """``text`` (a message that may quote ``url``) with every secret of ``url`` replaced by ``***``."""
    for secret in url_secrets(url):
        text = text.replace(secret, MASK)
    return text
