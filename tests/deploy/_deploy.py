"""Shared readers for the deployment tests: compose with its variable
interpolation, Kubernetes documents and their pod templates, the deploy
scripts imported by path, and effective command lines.

Nothing here needs a Docker engine or a cluster: the files are parsed and
interpreted the way compose and the kubelet would, for the parts we use.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
GPU_OVERRIDE = REPO / "deploy" / "compose.gpu.yml"
ENV_EXAMPLE = REPO / "deploy" / "compose.env.example"
PIPELINE_CONFIG = REPO / "deploy" / "config" / "pipeline.yaml"
DOCKERFILES = [REPO / "deploy" / "Dockerfile", REPO / "deploy" / "Dockerfile.gpu"]
K8S = REPO / "deploy" / "k8s"

PREFLIGHT = "twotower-preflight"

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}; $$ is a literal $.
_VAR = re.compile(
    r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])((?:[^{}]|\{[^{}]*\})*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)"
)


class InterpolationError(ValueError):
    """A required compose variable (``${VAR:?msg}``) is unset."""


def load_script(name: str) -> ModuleType:
    """Import ``deploy/<name>.py`` (deploy/ is not a package: the images install the files)."""
    mod_name = f"_deploy_{name}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, REPO / "deploy" / f"{name}.py")
    assert spec and spec.loader, name
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
    return module


def _interpolate_str(text: str, env: Mapping[str, str]) -> str:
    def sub(match: re.Match[str]) -> str:
        whole = match.group(0)
        if whole == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        op, arg = match.group(2), match.group(3) or ""
        value = env.get(name)
        unset_or_empty = value is None or (value == "" and op is not None and op.startswith(":"))
        if op in (":-", "-"):
            return arg if (value is None if op == "-" else unset_or_empty) else value  # type: ignore[return-value]
        if op in (":?", "?"):
            if value is None if op == "?" else unset_or_empty:
                raise InterpolationError(f"${{{name}}}: {arg or 'required'}")
            return value  # type: ignore[return-value]
        return value or ""

    return _VAR.sub(sub, text)


def interpolate(node: Any, env: Mapping[str, str]) -> Any:
    """Compose interpolation of every string value in ``node`` (keys are left alone)."""
    if isinstance(node, str):
        return _interpolate_str(node, env)
    if isinstance(node, list):
        return [interpolate(v, env) for v in node]
    if isinstance(node, dict):
        return {k: interpolate(v, env) for k, v in node.items()}
    return node


def referenced_variables(path: Path) -> set[str]:
    """Names of every ``${VAR...}`` / ``$VAR`` a compose file interpolates."""
    names = set()
    for match in _VAR.finditer(path.read_text()):
        if match.group(0) != "$$":
            names.add(match.group(1) or match.group(4))
    return names


def compose_raw(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    """The compose file as YAML (anchors and ``<<`` merges resolved, not interpolated)."""
    return yaml.safe_load(path.read_text())


def compose(env: Mapping[str, str] | None = None, path: Path = COMPOSE_FILE) -> dict[str, Any]:
    """The compose model after interpolation with ``env`` (default: nothing set)."""
    return interpolate(compose_raw(path), env or {})


def env_dict(environment: Any) -> dict[str, str]:
    """A service's ``environment`` (mapping or ``KEY=VALUE`` list) as a dict of strings."""
    if environment is None:
        return {}
    if isinstance(environment, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in environment)
    return {k: "" if v is None else str(v) for k, v in environment.items()}


def as_argv(command: Any) -> list[str]:
    """A compose ``command``/``entrypoint`` as an argv list (exec form; strings are shell-split)."""
    if command is None:
        return []
    if isinstance(command, str):
        import shlex

        return shlex.split(command)
    return [str(c) for c in command]


def strip_preflight(argv: list[str]) -> list[str]:
    """The command ``twotower-preflight [--] CMD...`` will exec (argv itself otherwise)."""
    if argv[:1] == [PREFLIGHT]:
        argv = argv[1:]
        if argv[:1] == ["--"]:
            argv = argv[1:]
    return argv


def twotower_args(argv: list[str]) -> list[str] | None:
    """Arguments after ``twotower`` in an effective command line, None if it runs something else."""
    argv = strip_preflight(argv)
    if argv[:1] == ["twotower"]:
        return argv[1:]
    return None


# --- Kubernetes ---------------------------------------------------------------------------


@cache
def k8s_documents() -> tuple[tuple[Path, dict[str, Any]], ...]:
    """Every YAML document under deploy/k8s (recursively), with its file."""
    out = []
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append((path, doc))
    return tuple(out)


def k8s_objects(kind: str | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """Kubernetes objects (not kustomizations), optionally of one ``kind``."""
    return [
        (p, d)
        for p, d in k8s_documents()
        if d.get("kind") != "Kustomization" and (kind is None or d.get("kind") == kind)
    ]


def pod_templates(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, pod template)`` of a workload: Deployment, CronJob, Job, TFJob replicas."""
    kind = doc.get("kind")
    spec = doc.get("spec", {})
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        yield kind, spec["template"]
    elif kind == "CronJob":
        yield kind, spec["jobTemplate"]["spec"]["template"]
    elif kind == "TFJob":
        for replica, rspec in spec["tfReplicaSpecs"].items():
            yield f"TFJob/{replica}", rspec["template"]


def containers(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """``(where, pod spec, container)`` for every container of a workload."""
    for where, template in pod_templates(doc):
        pod = template["spec"]
        for c in pod.get("initContainers", []) + pod["containers"]:
            yield f"{where}/{c['name']}", pod, c


_K8S_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand_k8s(argv: list[str], env: Mapping[str, str]) -> list[str]:
    """Kubernetes ``$(VAR)`` expansion of command/args (unknown names stay as written)."""
    return [_K8S_REF.sub(lambda m: env.get(m.group(1), m.group(0)), a) for a in argv]


def container_env_names(container: dict[str, Any]) -> set[str]:
    return {e["name"] for e in container.get("env", [])}
