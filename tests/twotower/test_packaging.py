"""The install the README gives: every declared requirement is pinned by constraints.txt.

``pip install -c constraints.txt -e .`` installs the versions CI tested only if
the lock names every package ``pyproject.toml`` asks for, at a version that
satisfies the declared range. A requirement added to ``pyproject.toml`` without
regenerating the lock fails here, not on a user's machine.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]


def _declared() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    return [Requirement(line) for line in lines]


def _pins() -> dict[str, list[tuple[str, Marker | None]]]:
    pins: dict[str, list[tuple[str, Marker | None]]] = {}
    for raw in (REPO / "constraints.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)\s*(?:;\s*(.+))?", line)
        assert m, f"constraints.txt: not a pin: {raw!r}"
        marker = Marker(m.group(3)) if m.group(3) else None
        pins.setdefault(canonicalize_name(m.group(1)), []).append((m.group(2), marker))
    return pins


def test_every_declared_requirement_is_pinned_within_its_range():
    pins = _pins()
    linux = {"sys_platform": "linux", "platform_system": "Linux"}
    for req in _declared():
        name = canonicalize_name(req.name)
        for machine in ("x86_64", "aarch64"):
            env = {**linux, "platform_machine": machine, "python_full_version": "3.11.7"}
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            versions = [v for v, mk in pins.get(name, []) if mk is None or mk.evaluate(env)]
            assert versions, f"{req.name} ({machine}) is declared but not pinned in constraints.txt"
            assert all(req.specifier.contains(v, prereleases=True) for v in versions), (
                f"constraints.txt pins {req.name}=={versions} outside the declared {req.specifier}"
            )


def test_readme_and_ci_install_through_the_same_lock():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "pip install -c constraints.txt -e . && twotower demo" in readme
    test_install = 'pip install -c constraints.txt -e ".[test]"'
    assert f"{test_install} && python3 -m pytest -q" in readme
    assert test_install in ci and "python3 -m pytest -q" in ci
