#!/usr/bin/env python3
"""Runtime requirements of an image variant, derived from ``pyproject.toml``.

The package's own dependency list is the single source of truth; the images
only swap the accelerator-specific packages:

* ``cpu``: ``tensorflow`` -> ``tensorflow-cpu`` and ``faiss-gpu`` -> ``faiss-cpu``
  (same versions, same Python API). For TF 2.21.0 / CPython 3.11 / manylinux
  x86_64 the ``tensorflow-cpu`` wheel is 274 MB (1.27 GB installed) against
  572 MB (1.87 GB) for ``tensorflow``; ``faiss-gpu`` would pull ~1 GB of CUDA
  libraries a CPU image never uses.
* ``gpu``: ``tensorflow`` -> ``tensorflow[and-cuda]`` (the CUDA/cuDNN wheels TF
  was built against), ``faiss-gpu`` kept.

Environment markers are dropped: an image is always Linux x86_64, and the
marker pair (faiss-gpu on Linux x86_64, faiss-cpu elsewhere) is exactly what a
variant decides explicitly.

A consistent set (``pip check`` passes in the image):

* ``--write-pyproject`` rewrites ``[project].dependencies`` of the given file to
  the variant's lines, so the project wheel built from it declares what the
  image installs (build stage only: the repository's file is never changed);
* ``--alias-dir DIR`` (cpu) writes ``tensorflow-<version>-py3-none-any.whl``, a
  metadata-only distribution named ``tensorflow`` that requires
  ``tensorflow-cpu==<version>``. ``tf-keras`` and ``tensorflow-recommenders``
  require ``tensorflow``; without the alias pip would install the full
  ``tensorflow`` beside ``tensorflow-cpu`` (both ship the ``tensorflow``
  module), and with ``--no-deps`` instead ``pip check`` would fail.

Usage (in the image build stage)::

    python deploy/requirements.py --variant cpu --alias-dir /tmp/alias \\
        --write-pyproject pyproject.toml > requirements.txt
    pip install -r requirements.txt /tmp/alias/*.whl
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import re
import sys
import tomllib
import zipfile
from pathlib import Path

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
        if name == "tensorflow":
            if variant == "gpu":
                extras = "[and-cuda]"
            else:
                name = "tensorflow-cpu"
        out.append(f"{name}{extras}{spec}")
    out.append(f"{'faiss-cpu' if variant == 'cpu' else 'faiss-gpu'}{faiss_spec}")
    return out


def pinned_version(lines: list[str], name: str) -> str:
    """The exact version ``name==X`` pins in ``lines``; raises RequirementsError otherwise."""
    for line in lines:
        match = re.fullmatch(rf"{re.escape(name)}(?:\[[^\]]*\])?==([A-Za-z0-9.+!-]+)", line)
        if match:
            return match.group(1)
    raise RequirementsError(f"{name} is not pinned to one version (name==X) in {lines}")


_DEPS = re.compile(r"^dependencies\s*=\s*\[.*?^\]", re.M | re.S)


def rewrite_pyproject(text: str, lines: list[str]) -> str:
    """``text`` (a pyproject.toml) with ``[project].dependencies`` replaced by ``lines``."""
    if len(_DEPS.findall(text)) != 1:
        raise RequirementsError("expected exactly one top-level `dependencies = [...]` array")
    body = "".join(f'  "{line}",\n' for line in lines)
    new = _DEPS.sub(lambda _m: f"dependencies = [\n{body}]", text)
    if tomllib.loads(new)["project"]["dependencies"] != lines:
        raise RequirementsError("rewriting the dependencies did not give the expected list")
    return new


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def write_alias_wheel(out_dir: Path, version: str) -> Path:
    """A metadata-only wheel ``tensorflow==version`` that requires ``tensorflow-cpu==version``.

    It installs no module (``tensorflow-cpu`` provides ``import tensorflow``); it only
    tells pip that the ``tensorflow`` requirement of tf-keras and TFRS is met.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    info = f"tensorflow-{version}.dist-info"
    files = {
        f"{info}/METADATA": (
            "Metadata-Version: 2.1\n"
            "Name: tensorflow\n"
            f"Version: {version}\n"
            "Summary: Alias: TensorFlow's CPU build (tensorflow-cpu) under the name tensorflow\n"
            f"Requires-Dist: tensorflow-cpu=={version}\n"
        ).encode(),
        f"{info}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: twotower deploy/requirements.py\n"
            b"Root-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in files.items())
    files[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    path = out_dir / f"tensorflow-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", required=True, choices=VARIANTS)
    parser.add_argument(
        "--write-pyproject",
        action="store_true",
        help="rewrite the file's [project].dependencies to the variant's lines",
    )
    parser.add_argument(
        "--alias-dir",
        type=Path,
        help="cpu: write the metadata-only `tensorflow` wheel that requires tensorflow-cpu here",
    )
    parser.add_argument("pyproject", nargs="?", default="pyproject.toml", type=Path)
    args = parser.parse_args(argv)
    try:
        lines = runtime_requirements(args.pyproject, args.variant)
        if args.alias_dir is not None:
            if args.variant != "cpu":
                raise RequirementsError("--alias-dir is for the cpu variant (tensorflow-cpu)")
            write_alias_wheel(args.alias_dir, pinned_version(lines, "tensorflow-cpu"))
        if args.write_pyproject:
            args.pyproject.write_text(rewrite_pyproject(args.pyproject.read_text(), lines))
    except RequirementsError as exc:
        print(f"requirements: error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
