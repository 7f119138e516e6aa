"""Layered configuration: defaults < file < ``TWOTOWER_*`` environment < ``--set``.

Every program (trainer, pipeline, serving) has one typed pydantic model; this
module only merges the layers into a plain nested dict and validates it with
that model, so an unknown key or a wrong type is refused with its dotted name.

Environment names, one scheme for every program (docs/CONTRACT.md,
"Configuration"): ``TWOTOWER_<SECTION>__<KEY>`` (double underscore between
levels), e.g. ``TWOTOWER_LOSS__NTR_WEIGHT=0.5`` sets ``loss.ntr_weight``. The
config file's sections are read here; the sections of :data:`PROGRAM_SECTIONS`
(``store``, ``serve``, ``deploy``, ``seed``) are no file's, each is read by
its own program and refused there when a name is unknown
(:func:`check_section_env`, ``serving.settings_env.unknown_env``).

A key or section that does not exist is refused before validation, naming
where it came from (the file, the variable or the ``--set``), the nearest
valid name and the valid names of its section. The environment is shared by
programs with different configs (``twotower train`` and ``twotower pipeline``
in one container), so a model may name sections it leaves to another program
(:data:`FOREIGN_SECTIONS_ATTR`); their variables are ignored, not refused.

Names from before the scheme (``TWOTOWER_SERVE_PORT``, ``TWOTOWER_STORE_URL``,
``TWOTOWER_ENV``...) still work: each program renames them once, at its start,
with :func:`rename_deprecated` (a warning each; an old and a new name with
different values are refused), so everything after reads the new names only.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

ENV_PREFIX = "TWOTOWER_"
#: Between the levels of a name: ``TWOTOWER_<SECTION>__<KEY>``.
ENV_SEPARATOR = "__"
#: Sections of the scheme that no config file has, each read by one program (which refuses
#: its unknown names); every config model ignores their variables.
PROGRAM_SECTIONS: dict[str, str] = {
    "store": "the online store of every command (common.urls.STORE_URL_ENV)",
    "serve": "twotower serve (serving/settings.py)",
    "deploy": "twotower-preflight (deploy/preflight.py)",
    "seed": "twotower-seed (deploy/seed.py)",
}
#: Class attribute of a config model: top-level sections that other programs read from
#: the same environment (their ``TWOTOWER_<SECTION>__*`` variables are not this model's typos).
FOREIGN_SECTIONS_ATTR = "foreign_env_sections"

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


def _dotted(parts: Sequence[str]) -> str:
    return ".".join(parts)


def _env_name(parts: Sequence[str]) -> str:
    return ENV_PREFIX + ENV_SEPARATOR.join(parts).upper()


def env_name(section: str, key: str) -> str:
    """The variable of ``section.key``: ``env_name("serve", "port")`` -> ``TWOTOWER_SERVE__PORT``."""
    return _env_name([section, key])


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The model of a field that is itself a section (a nested pydantic model), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _chain(value: Any) -> list[str]:
    """The keys below a one-key-per-level value (``{"encoder": "gru"}`` -> ``["encoder"]``)."""
    keys: list[str] = []
    while isinstance(value, Mapping) and len(value) == 1:
        key, value = next(iter(value.items()))
        keys.append(str(key))
    return keys


def check_keys(
    model: type[BaseModel],
    tree: Mapping[str, Any],
    origin: str,
    *,
    spell: Callable[[Sequence[str]], str] = _dotted,
    path: Sequence[str] = (),
) -> None:
    """Refuse a key of ``tree`` that ``model`` (or one of its sections) does not have.

    Values are left to the model's validation; only names are checked here, so the
    message can say where the name came from (``origin``), the nearest valid name
    (as ``spell`` writes it: a dotted key, an environment variable) and the
    section's valid names.

    Raises:
      ConfigError: ``"<origin>: unknown key model.encodr; did you mean model.encoder?
        valid model keys: encoder, ..."`` (or ``unknown section``).
    """
    fields = model.model_fields
    for key, value in tree.items():
        if key not in fields:
            valid = list(fields)
            close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
            hint = f"did you mean {spell([*path, close[0], *_chain(value)])}? " if close else ""
            if path:
                what = f"unknown key {_dotted([*path, str(key)])}"
                listing = f"valid {_dotted(path)} keys: {', '.join(valid)}"
            else:
                what = f"unknown section {key}"
                listing = f"valid sections: {', '.join(valid)}"
            raise ConfigError(f"{origin}: {what}; {hint}{listing}")
        section = _section_model(fields[key].annotation)
        if section is not None and isinstance(value, Mapping):
            check_keys(section, value, origin, spell=spell, path=[*path, key])


def _env_layer(model: type[BaseModel], environ: Mapping[str, str]) -> dict[str, Any]:
    """``TWOTOWER_SECTION__KEY`` variables as a tree, each name checked against ``model``."""
    # A subclass that adds a foreign section (PipelineConfig) reads it as its own.
    foreign = {
        s.lower() for s in (*getattr(model, FOREIGN_SECTIONS_ATTR, ()), *PROGRAM_SECTIONS)
    } - set(model.model_fields)
    tree: dict[str, Any] = {}
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or ENV_SEPARATOR not in name:
            continue
        parts = [p for p in name[len(ENV_PREFIX) :].lower().split(ENV_SEPARATOR) if p]
        if not parts or parts[0] in foreign:
            continue
        origin = f"environment {name}"
        one: dict[str, Any] = {}
        _set_dotted(one, ".".join(parts), _parse_scalar(environ[name]), origin)
        check_keys(model, one, origin, spell=_env_name)
        tree = _merge(tree, one)
    return tree


def check_section_env(environ: Mapping[str, str], section: str, keys: Iterable[str]) -> None:
    """Refuse a ``TWOTOWER_<SECTION>__*`` variable of a program section that names no key.

    Raises:
      ConfigError: ``environment TWOTOWER_STORE__URI: unknown store setting; did you mean
        TWOTOWER_STORE__URL? valid names: TWOTOWER_STORE__URL``.
    """
    prefix = _env_name([section]) + ENV_SEPARATOR
    valid = [env_name(section, key) for key in keys]
    for name in sorted(environ):
        if not name.upper().startswith(prefix) or name.upper() in valid:
            continue
        close = difflib.get_close_matches(name.upper(), valid, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(
            f"environment {name}: unknown {section} setting; {hint}valid names: {', '.join(valid)}"
        )


def rename_deprecated(environ: MutableMapping[str, str], renames: Mapping[str, str]) -> list[str]:
    """Move each old variable of ``environ`` to its new name (``renames``: old -> new).

    A program calls this once, at its start, before anything reads a setting: from
    then on the process, and every process it starts, sees the new names only. An
    old name matches in any case (as the settings read them); an old and a new name
    (or two old names of one new name) holding the same value are one setting.

    Returns:
      One warning per old name found, naming the new one.

    Raises:
      ConfigError: an old name and its new name, or two old names of one new name,
        hold different values (the message names the variables, never a value).
    """
    found: dict[str, list[str]] = {}
    for name in sorted(environ):
        new = renames.get(name.upper())
        if new is not None and name != new:
            found.setdefault(new, []).append(name)
    for new, olds in sorted(found.items()):  # every pair checked before anything moves
        names = [new, *olds] if new in environ else olds
        if len({environ[name] for name in names}) > 1:
            raise ConfigError(
                f"environment {' and '.join(names)} are set to different values: "
                f"{' and '.join(olds)} {'is the old name' if len(olds) == 1 else 'are old names'} "
                f"of {new}; set {new} only"
            )
    warnings: list[str] = []
    for new, olds in sorted(found.items()):
        environ[new] = environ[olds[0]]
        for old in olds:
            del environ[old]
            warnings.append(f"environment {old} is deprecated: use {new} (read as {new} for now)")
    return warnings


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
    # A deep copy: overrides are set into nested sections, which must not be the caller's.
    tree: dict[str, Any] = copy.deepcopy(dict(base or {}))
    if file is not None:
        from_file = read_config_file(file)
        check_keys(model, from_file, f"config file {file}")
        tree = _merge(tree, from_file)
    env = os.environ if environ is None else environ
    tree = _merge(tree, _env_layer(model, env))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. loss.ntr_weight=0.5")
        key, _, raw = item.partition("=")
        origin = f"--set {item}"
        one: dict[str, Any] = {}
        _set_dotted(one, key.strip(), _parse_scalar(raw), origin)
        check_keys(model, one, origin)
        _set_dotted(tree, key.strip(), _parse_scalar(raw), origin)
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from exc
