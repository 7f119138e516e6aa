#!/usr/bin/env python3
"""Deployment preflight: refuse unsafe settings in production, then run the real command.

Installed in the images as ``twotower-preflight``; compose and Kubernetes start
every twotower process through it::

    twotower-preflight -- twotower serve --artifacts /artifacts --host 0.0.0.0

Its settings are section ``deploy`` of the environment scheme (docs/CONTRACT.md,
"Configuration"): ``TWOTOWER_DEPLOY__ENVIRONMENT`` selects the mode:
``development`` (the default; local defaults are accepted, with a warning) or
``production``, where the process is not started (exit 2, one line per
problem) while any of these holds:

* a Redis password (``TWOTOWER_DEPLOY__REDIS_PASSWORD`` or the password inside
  a store URL) is the local-stack default, a placeholder (``CHANGE-ME``...),
  shorter than 16 characters, or missing from a plain ``redis://`` URL to
  another host;
* any ``TWOTOWER_*`` variable still holds a placeholder value (an example
  Secret deployed as is; the markers are ``serving.api_keys``', the ones the
  API keys are checked against);
* a store URL the command will use is refused by the serving settings'
  production rules (sqlite, unauthenticated remote Redis): those rules live in
  ``serving.settings`` and are called from here, not restated;
* a ``rediss://`` URL turns certificate verification off (``ssl_cert_reqs=none``);
* ``TWOTOWER_SERVE__ENVIRONMENT`` is not ``production`` (serving would skip its
  own production checks) or the benchmark-only ``/_floor`` route is enabled;
* ``twotower serve`` gets no API keys (neither ``TWOTOWER_SERVE__API_KEYS`` nor
  ``TWOTOWER_SERVE__API_KEYS_FILE``; serving refuses that too, and checks the
  keys themselves: length, placeholders).

In any mode a Redis password with characters that are not URL-safe is refused:
it is pasted into ``redis://:PASSWORD@host`` unescaped (use ``openssl rand -hex 32``).
So are an unknown ``TWOTOWER_DEPLOY__*`` name and an old name (``TWOTOWER_ENV``,
``TWOTOWER_REDIS_PASSWORD``, ``TWOTOWER_SERVE_<FIELD>``, ``TWOTOWER_STORE_URL``...)
set beside its new one to another value. Old names are judged under their new
ones, with a warning each, and handed to the command renamed (it does not warn
again).

Nothing secret is printed: problems name the variable or flag, never its value.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from common.config import ConfigError, check_section_env, env_name, rename_deprecated
from common.urls import STORE_URL_ENV, mask_password, redact_url
from serving import settings as serve_settings
from serving.api_keys import is_placeholder

MODES = ("development", "production")
#: The compose file's local default; anything but local use must replace it.
LOCAL_REDIS_PASSWORD = "twotower-local-only"
MIN_SECRET_LENGTH = 16
_URL_SAFE = re.compile(r"^[A-Za-z0-9._~-]*$")
_URL_ENCODED = re.compile(r"^(?:[A-Za-z0-9._~-]|%[0-9A-Fa-f]{2})*$")
#: The preflight's own settings, section ``deploy`` of the scheme.
DEPLOY_KEYS = ("environment", "redis_password")
ENVIRONMENT_ENV = env_name("deploy", "environment")
REDIS_PASSWORD_ENV = env_name("deploy", "redis_password")
#: Their names before the scheme.
OLD_DEPLOY_ENV = {"TWOTOWER_ENV": ENVIRONMENT_ENV, "TWOTOWER_REDIS_PASSWORD": REDIS_PASSWORD_ENV}


def deprecated_names() -> dict[str, str]:
    """Old name -> new name of every variable judged here: the preflight's, serve's, the store's."""
    return {**OLD_DEPLOY_ENV, **serve_settings.deprecated_env()}


@dataclass
class Verdict:
    """Outcome of :func:`check`: ``problems`` block the start, ``warnings`` do not."""

    mode: str
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def store_urls(environ: Mapping[str, str], argv: Sequence[str]) -> list[tuple[str, str]]:
    """Every store URL the process will use, as ``(where it comes from, url)``.

    Sources: ``--store URL`` / ``--store=URL`` and ``--data events:URL`` in
    ``argv``, and ``TWOTOWER_STORE__URL`` (every command's store variable).
    """
    found: list[tuple[str, str]] = []
    for i, token in enumerate(argv):
        for flag in ("--store", "--data"):
            value = None
            if token == flag and i + 1 < len(argv):
                value = argv[i + 1]
            elif token.startswith(flag + "="):
                value = token.split("=", 1)[1]
            if value is None:
                continue
            if flag == "--data":
                if not value.startswith("events:"):
                    continue
                value = value[len("events:") :]
            found.append((flag, value))
    if environ.get(STORE_URL_ENV):
        found.append((STORE_URL_ENV, environ[STORE_URL_ENV]))
    return found


def _password_problems(where: str, password: str) -> list[str]:
    if password == LOCAL_REDIS_PASSWORD:
        return [f"{where}: is the local-stack default password; set a secret of your own"]
    if is_placeholder(password):
        return [f"{where}: is still a placeholder; set a real secret"]
    if len(password) < MIN_SECRET_LENGTH:
        return [
            f"{where}: shorter than {MIN_SECRET_LENGTH} characters; use e.g. `openssl rand -hex 32`"
        ]
    return []


def _serving_rule(url: str) -> str | None:
    """The serving settings' production verdict on ``url`` (None = accepted)."""
    from feature_store.options import StoreURLError
    from feature_store.urls import parse_url

    try:
        parse_url(url)
    except StoreURLError as exc:
        return mask_password(url, str(exc))
    return serve_settings.production_store_problem(url)


def _check_url(where: str, url: str, production: bool, verdict: Verdict) -> None:
    parts = urlsplit(url)
    if parts.password is not None and not _URL_ENCODED.match(parts.password):
        verdict.problems.append(
            f"{where}: the password has characters that are not URL-safe (percent-encode them)"
        )
    if not production:
        if parts.password == LOCAL_REDIS_PASSWORD:
            verdict.warnings.append(
                f"{where}: uses the local-stack default password (fine for local use)"
            )
        return
    refusal = _serving_rule(url)
    if refusal:
        verdict.problems.append(f"{where} ({redact_url(url)}): {refusal}")
    if parts.password:
        verdict.problems.extend(_password_problems(f"{where}: the password", parts.password))
    query = dict(parse_qsl(parts.query))
    if parts.scheme == "rediss" and query.get("ssl_cert_reqs", "required").lower() == "none":
        verdict.problems.append(
            f"{where}: rediss:// with ssl_cert_reqs=none does not verify the server certificate"
        )
    if parts.scheme == "redis" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        verdict.warnings.append(
            f"{where}: plain redis:// to {parts.hostname}; use rediss:// (TLS) outside a private network"
        )


def check(environ: Mapping[str, str], argv: Sequence[str] = ()) -> Verdict:
    """Judge the environment and the command line a process is about to start with.

    Args:
      environ: the process environment (``os.environ``), old names included: they are
        judged under their new names (:func:`deprecated_names`), with a warning each.
      argv: the command it will exec, e.g. ``["twotower", "serve", ...]``.

    Returns:
      A :class:`Verdict`; ``verdict.ok`` is False when the start must be refused.
    """
    env = dict(environ)
    try:
        renamed = rename_deprecated(env, deprecated_names())
        check_section_env(env, "deploy", DEPLOY_KEYS)
    except ConfigError as exc:  # fail closed: nothing else is judged on names that disagree
        return Verdict(mode="unknown", problems=[str(exc)])
    verdict = _check(env, argv)
    verdict.warnings[:0] = renamed
    return verdict


def _check(environ: Mapping[str, str], argv: Sequence[str]) -> Verdict:
    """:func:`check` on an environment with the new names only."""
    raw_mode = environ.get(ENVIRONMENT_ENV, "development").strip().lower() or "development"
    verdict = Verdict(mode=raw_mode)
    if raw_mode not in MODES:
        verdict.problems.append(
            f"{ENVIRONMENT_ENV}={raw_mode!r}: expected one of {', '.join(MODES)}"
        )
    # Fail closed: an unknown mode gets the production checks too.
    production = raw_mode != "development"

    password = environ.get(REDIS_PASSWORD_ENV)
    if password is not None and not _URL_SAFE.match(password):
        verdict.problems.append(
            f"{REDIS_PASSWORD_ENV}: has characters that are not URL-safe (it goes into "
            "redis://:PASSWORD@host); use letters, digits and -._~ (e.g. `openssl rand -hex 32`)"
        )
    for where, url in store_urls(environ, argv):
        _check_url(where, url, production, verdict)

    if not production:
        if password == LOCAL_REDIS_PASSWORD:
            verdict.warnings.append(
                f"{REDIS_PASSWORD_ENV}: local-stack default (refused when "
                f"{ENVIRONMENT_ENV}=production)"
            )
        return verdict

    if password is not None:
        verdict.problems.extend(_password_problems(REDIS_PASSWORD_ENV, password))
    for name in sorted(environ):
        if (
            name.startswith("TWOTOWER_")
            and name != REDIS_PASSWORD_ENV
            and is_placeholder(environ[name])
        ):
            verdict.problems.append(f"{name}: still holds a placeholder value from an example file")
    serve_name = serve_settings.env_name
    serve_env = environ.get(serve_name("environment"))
    serving = "serve" in argv[1:2] or serve_env is not None
    if serving and serve_env != "production":
        verdict.problems.append(
            f"{serve_name('environment')}={serve_env!r}: must be 'production' when "
            f"{ENVIRONMENT_ENV}=production (serving applies its own production checks only then)"
        )
    keys = (serve_name("api_keys"), serve_name("api_keys_file"))
    if "serve" in argv[1:2] and not any(environ.get(name, "").strip() for name in keys):
        verdict.problems.append(
            f"{' / '.join(keys)}: neither is set; the API needs keys in production (a Secret: "
            "see deploy/README.md)"
        )
    floor = serve_name("floor_route")
    if environ.get(floor, "").strip().lower() in ("1", "true", "yes", "on"):
        verdict.problems.append(
            f"{floor}: the benchmark-only /_floor route must be off in production"
        )
    return verdict


def main(argv: Sequence[str] | None = None) -> int:
    """``twotower-preflight [--] [COMMAND ARG...]``: check, then exec COMMAND (or exit 0)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    if args[:1] == ["--"]:
        args = args[1:]
    verdict = check(os.environ, args)
    for line in verdict.warnings:
        print(f"preflight: warning: {line}", file=sys.stderr)
    if not verdict.ok:
        print(f"preflight: refusing to start ({ENVIRONMENT_ENV}={verdict.mode}):", file=sys.stderr)
        for line in verdict.problems:
            print(f"  - {line}", file=sys.stderr)
        return 2
    if not args:
        print(f"preflight: ok ({ENVIRONMENT_ENV}={verdict.mode})", file=sys.stderr)
        return 0
    # The command gets the names it was judged under (warned about above, not again).
    rename_deprecated(os.environ, deprecated_names())
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(args[0], args)  # replaces this process: signals go straight to the service
    except OSError as exc:
        print(f"preflight: cannot run {args[0]!r}: {exc.strerror}", file=sys.stderr)
        return 127
    return 0  # pragma: no cover - execvp does not return


if __name__ == "__main__":
    sys.exit(main())
