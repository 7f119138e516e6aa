#!/usr/bin/env python3
"""Container health check: GET a route of the local API, exit 0 on HTTP 200.

Installed in the images as ``twotower-healthcheck`` (the slim image has no
curl). ``twotower-healthcheck /readyz`` checks readiness, the default
``/healthz`` liveness. The port is ``TWOTOWER_SERVE__PORT`` (default 8000), the
same variable the API binds with, or its old name ``TWOTOWER_SERVE_PORT`` (the
check is a process of its own, started with the container's environment as
written, and imports nothing of the package to stay quick); the timeout is 3 s
so a wedged server counts as unhealthy rather than hanging the check.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_PORT = 8000
#: The API's port setting (serving.settings.env_name("port")), then its name before the scheme.
PORT_ENV = ("TWOTOWER_SERVE__PORT", "TWOTOWER_SERVE_PORT")
TIMEOUT_S = 3.0


def probe(
    path: str = "/healthz", port: int | None = None, host: str = "127.0.0.1"
) -> tuple[bool, str]:
    """GET ``http://host:port/path``; returns (healthy, one-line reason)."""
    if port is None:
        value = next((os.environ[name] for name in PORT_ENV if os.environ.get(name)), None)
        port = int(value or DEFAULT_PORT)
    url = f"http://{host}:{port}/{path.lstrip('/')}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
            return resp.status == 200, f"{url}: HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{url}: HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"{url}: {reason}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        healthy, reason = probe(args[0] if args else "/healthz")
    except ValueError as exc:  # a non-numeric port setting
        print(f"healthcheck: {PORT_ENV[0]}: {exc}", file=sys.stderr)
        return 2
    print(reason, file=sys.stderr if not healthy else sys.stdout)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
