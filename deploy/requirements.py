#!/usr/bin/env python3
"""Runtime requirements of an image variant, derived from ``pyproject.toml``.

The package's own dependency list is the single source of truth; the images
only swap the accelerator-specific packages:

* ``cpu``: ``faiss-gpu`` -> ``faiss-cpu`` (same version). On Linux x86_64 the
  project depends on ``faiss-gpu``, whose wheel pulls ~1 GB of CUDA libraries a
  CPU image never uses; ``faiss-cpu`` has the same Python API.
* ``gpu``: ``tensorflow`` -> ``tensorflow[and-cuda]`` (the CUDA/cuDNN wheels TF
  was built against), ``faiss-gpu`` kept.

Environment markers are dropped: an image is always Linux x86_64, and the
marker pair (faiss-gpu on Linux x86_64, faiss-cpu elsewhere) is exactly what a
variant decides explicitly.

Usage (in the image build stage)::

    python deploy/requirements.py --variant cpu pyproject.toml > requirements.txt
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import tomllib

VARIANTS = ("cpu", "gpu")

# A PEP 508 requirement: name, optional [extras], the rest (version spec; marker after ';').
_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;]*?)\s*(?:;.*)?$")


class RequirementsError(ValueError):
    """pyproject.toml cannot be turned into the requirements of a variant."""


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _split(req: str, where: str) -> tuple[str, str, str]:
    match = _REQ.match(req)
    if not match:
        raise RequirementsError(f"{where}: cannot parse dependency {req!r}")
    name, extras, spec = match.groups()
    return _canonical(name), extras or "", spec


def runtime_requirements(pyproject: Path, variant: str) -> list[str]:
    """The pinned runtime requirement lines of ``variant`` (``cpu`` or ``gpu``).

    Args:
      pyproject: path to the project's ``pyproject.toml``.
      variant: ``cpu`` or ``gpu``.

    Returns:
      One PEP 508 line per distribution (no markers), in pyproject order, each
      distribution once.

    Raises:
      RequirementsError: unknown variant, unreadable file, or a dependency list
        without the faiss/tensorflow entries the variants rely on.
    """
    if variant not in VARIANTS:
        raise RequirementsError(f"--variant {variant!r}: expected one of {', '.join(VARIANTS)}")
    try:
        data = tomllib.loads(Path(pyproject).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RequirementsError(f"{pyproject}: {exc}") from exc
    deps = data.get("project", {}).get("dependencies")
    if not isinstance(deps, list) or not deps:
        raise RequirementsError(f"{pyproject}: [project] dependencies is missing or empty")

    by_name: dict[str, tuple[str, str]] = {}
    for i, req in enumerate(deps):
        name, extras, spec = _split(req, f"{pyproject}: project.dependencies[{i}]")
        by_name.setdefault(name, (extras, spec))  # first entry of a name wins (marker pairs)
    for needed in ("faiss-gpu", "tensorflow"):
        if needed not in by_name:
            raise RequirementsError(
                f"{pyproject}: no {needed!r} dependency to build the {variant} image from"
            )

    faiss_spec = by_name["faiss-gpu"][1]
    out: list[str] = []
    for name, (extras, spec) in by_name.items():
        if name in ("faiss-gpu", "faiss-cpu"):
            continue  # re-added below, once, as the variant's build
        if name == "tensorflow" and variant == "gpu":
            extras = "[and-cuda]"
        out.append(f"{name}{extras}{spec}")
    out.append(f"{'faiss-cpu' if variant == 'cpu' else 'faiss-gpu'}{faiss_spec}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", required=True, choices=VARIANTS)
    parser.add_argument("pyproject", nargs="?", default="pyproject.toml", type=Path)
    args = parser.parse_args(argv)
    try:
        lines = runtime_requirements(args.pyproject, args.variant)
    except RequirementsError as exc:
        print(f"requirements: error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
