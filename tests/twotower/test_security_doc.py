"""SECURITY.md names the tests behind each claim: every file and test it names exists."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_test_security_md_names_exists() -> None:
    text = (REPO / "SECURITY.md").read_text()
    table = text.split("## How each claim is tested", 1)[1]
    current: Path | None = None
    missing = []
    named = 0
    for ref in re.findall(r"`([^`]+)`", table):
        path_part, _, test = ref.partition("::")
        if path_part.startswith("tests/"):
            current = REPO / path_part.split(" ")[0]
        elif path_part.endswith(".py"):  # a file named before, by its base name
            (current,) = (REPO / "tests").rglob(path_part)
        elif path_part:
            continue
        if not current or not current.is_file():
            missing.append(path_part)
            continue
        if test:
            assert current is not None, ref
            named += 1
            if f"def {test}(" not in current.read_text():
                missing.append(f"{current.relative_to(REPO)}::{test}")
    assert named >= 20 and missing == []
