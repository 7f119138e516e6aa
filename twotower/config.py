"""Layered configuration: defaults < file < ``TWOTOWER_*`` environment < ``--set``.

Every program (trainer, pipeline, serving) has one typed pydantic model; this
module only merges the layers into a plain nested dict and validates it with
that model, so an unknown key or a wrong type is refused with its dotted name.

Environment names: ``TWOTOWER_<SECTION>__<KEY>`` (double underscore between
levels), e.g. ``TWOTOWER_LOSS__NTR_WEIGHT=0.5`` sets ``loss.ntr_weight``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

ENV_PREFIX = "TWOTOWER_"

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, origin: str) -> None:
    parts = [p for p in dotted.split(".") if p]
    if not parts:
        raise ConfigError(f"{origin}: empty key")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{origin}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def _parse_scalar(text: str) -> Any:
    """Parse a command-line/env value: YAML scalars (1, 0.5, true, [1,2]) else the string."""
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML or JSON config file into a nested dict."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from exc
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"{p}: not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {exc}"
        ) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{p}: top level must be a mapping of sections, got {type(data).__name__}"
        )
    return data


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def env_overrides(environ: Mapping[str, str], sections: Iterable[str]) -> dict[str, Any]:
    """Collect ``TWOTOWER_SECTION__KEY`` variables for the given top-level sections."""
    wanted = {s.lower() for s in sections}
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        dotted = name[len(ENV_PREFIX) :].lower().replace("__", ".")
        if dotted.split(".", 1)[0] in wanted:
            _set_dotted(tree, dotted, _parse_scalar(raw), f"environment {name}")
    return tree


def load_config(
    model: type[M],
    *,
    file: str | os.PathLike[str] | None = None,
    overrides: Iterable[str] = (),
    base: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> M:
    """Build ``model`` from defaults, ``base``, a file, the environment and ``key=value`` overrides.

    Args:
      model: the pydantic model of the program's config (sections as fields).
      file: optional YAML/JSON file.
      overrides: ``key.sub=value`` strings (from ``--set``), applied last.
      base: values applied before the file (e.g. per-source tuned defaults).
      environ: environment mapping; ``os.environ`` when None.

    Raises:
      ConfigError: naming the offending dotted key and why.
    """
    tree: dict[str, Any] = dict(base or {})
    if file is not None:
        tree = _merge(tree, read_config_file(file))
    env = os.environ if environ is None else environ
    tree = _merge(tree, env_overrides(env, model.model_fields.keys()))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. loss.ntr_weight=0.5")
        key, _, raw = item.partition("=")
        _set_dotted(tree, key.strip(), _parse_scalar(raw), f"--set {item}")
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from exc
