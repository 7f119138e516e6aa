"""The serve settings' environment names: the scheme's, the shared ones, the old ones.

Environment names follow the scheme of :mod:`common.config`: section ``serve``,
``TWOTOWER_SERVE__<FIELD>`` (e.g. ``TWOTOWER_SERVE__BATCH_MAX_SIZE=32``), except
two fields read under a name shared with others: the store is every command's
``TWOTOWER_STORE__URL``, and the Prometheus multiprocess directory is
prometheus_client's own ``PROMETHEUS_MULTIPROC_DIR``. A ``TWOTOWER_SERVE__*``
variable that names no field is refused (with the nearest valid name), so a
typo never silently leaves a default in place; so is one spelt the old way,
``TWOTOWER_SERVE_<FIELD>``, unless it names a field: then it is the field's
deprecated name, which the program's start renames (:func:`deprecated_names`).

The rules here work on the table of every field's variable (variable -> field),
which :func:`serving.settings.env_names` builds from the settings model; the
model refuses unknown names (:func:`unknown_env`) each time it is built.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping

from common.urls import OLD_STORE_URL_ENV, STORE_URL_ENV

ENV_PREFIX = "TWOTOWER_SERVE__"
#: The spelling before the scheme, ``TWOTOWER_SERVE_<FIELD>``: still read (:func:`deprecated_names`).
OLD_ENV_PREFIX = "TWOTOWER_SERVE_"
#: prometheus_client's own switch (it reads it too, at import): set = multiprocess mode.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def deprecated_names(names: Mapping[str, str]) -> dict[str, str]:
    """Old name -> new name of every setting that had one, given ``names`` (variable ->
    field of every setting): ``TWOTOWER_SERVE_<FIELD>``, and the store's
    ``TWOTOWER_STORE_URL`` and ``TWOTOWER_SERVE_STORE_URL``."""
    renames = {f"{OLD_ENV_PREFIX}{name.upper()}": env for env, name in names.items()}
    renames.pop(f"{OLD_ENV_PREFIX}METRICS_DIR")  # always read as PROMETHEUS_MULTIPROC_DIR
    renames.update({old: STORE_URL_ENV for old in OLD_STORE_URL_ENV})
    return renames


def unknown_env(environ: Mapping[str, str], names: Mapping[str, str]) -> None:
    """Refuse serve variables that name no field, and old names left in place.

    ``TWOTOWER_SERVE__<NAME>`` or ``TWOTOWER_SERVE_<NAME>`` with no field ``name``
    (a typo would be ignored otherwise), and a field's deprecated name: the
    program's start renames those (:func:`serving.settings.settings_environment`),
    so one seen here would be ignored too.

    Args:
      environ: the process environment.
      names: variable -> field of every setting (:func:`serving.settings.env_names`).

    Raises:
      ValueError: naming the variable and the closest valid name.
    """
    serve_names = [name for name in names if name.startswith(ENV_PREFIX)]
    field_env = {field: env for env, field in names.items()}
    renames = deprecated_names(names)
    for key in sorted(environ):
        name = key.upper()
        if not name.startswith(OLD_ENV_PREFIX) or name in names:
            continue
        if name in renames:
            raise ValueError(
                f"environment variable {key} is the old name of {renames[name]}: rename it"
            )
        field = name.removeprefix(ENV_PREFIX).removeprefix(OLD_ENV_PREFIX).lower()
        if field in field_env:  # TWOTOWER_SERVE__STORE_URL: read under another name
            hint = f"; did you mean {field_env[field]}?"
        else:
            close = difflib.get_close_matches(
                f"{ENV_PREFIX}{field.upper()}", serve_names, n=1, cutoff=0.6
            )
            hint = f"; did you mean {close[0]}?" if close else f"; valid names: {sorted(names)}"
        raise ValueError(f"environment variable {key} is not a serve setting{hint}")
