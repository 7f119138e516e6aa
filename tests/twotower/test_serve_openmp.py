"""``twotower serve`` makes OpenMP's idle threads wait passively (FAISS searches small
batches milliseconds apart; spinning threads took CPU from the event loop and Redis)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from twotower.commands import serve as serve_module

REPO = Path(__file__).resolve().parents[2]


def _serve_seeing_policy(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    import os

    import serving.main

    seen: list[str | None] = []
    monkeypatch.setattr(serve_module, "check_serve_args", lambda args: "settings")
    monkeypatch.setattr(
        serving.main, "serve", lambda settings: seen.append(os.environ.get("OMP_WAIT_POLICY")) or 0
    )
    assert serve_module.serve_command(None) == 0  # type: ignore[arg-type]
    return seen


def test_serve_sets_a_passive_openmp_wait_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "")  # recorded, so the test's setting is undone
    monkeypatch.delenv("OMP_WAIT_POLICY")
    assert _serve_seeing_policy(monkeypatch) == ["PASSIVE"]


def test_an_operators_own_wait_policy_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert _serve_seeing_policy(monkeypatch) == ["ACTIVE"]


def test_the_command_line_loads_no_openmp_before_the_command_runs() -> None:
    """OpenMP reads the policy once, when FAISS loads it: the CLI must not import FAISS first."""
    out = subprocess.run(
        [sys.executable, "-c", "import sys, twotower.cli; print('faiss' in sys.modules)"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    assert out.stdout.strip() == "False"
