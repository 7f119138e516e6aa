"""Shared benchmark plumbing: machine facts, git revision, JSON results."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def mean_std(vals: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation over seeds (std 0 for one value)."""
    return {
        "mean": statistics.fmean(vals),
        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_revision() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def versions(*packages: str) -> dict[str, str]:
    out = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine_facts(*packages: str) -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "cpu": cpu_model(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions(*packages),
    }


def command_line(argv: list[str] | None = None) -> str:
    """The command that ran, as typed: ``python -m bench.x ...`` for a module of this repo.

    Under ``-m`` Python puts the module's file path in ``sys.argv[0]``; a result
    names the module instead, so its command runs from any checkout.
    """
    args = list(sys.argv if argv is None else argv)
    script = Path(args[0]).resolve() if args else None
    if script is not None and script.suffix == ".py" and REPO in script.parents:
        args[0:1] = ["-m", ".".join(script.relative_to(REPO).with_suffix("").parts)]
    return " ".join([Path(sys.executable).name, *args])


def write_result(name: str, figures: dict[str, Any], *, packages: tuple[str, ...] = ()) -> Path:
    """Write ``bench/results/<name>.json`` with the command, revision and machine facts."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": name,
        "command": command_line(),
        "git_revision": git_revision(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_facts(*packages),
        **figures,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return path


def write_report(
    name: str,
    figures: dict[str, Any],
    render: Callable[[dict[str, Any]], str],
    *,
    packages: tuple[str, ...] = (),
) -> str:
    """:func:`write_result`, then ``bench/results/<name>.md`` rendered from the saved JSON; returns it."""
    doc = json.loads(write_result(name, figures, packages=packages).read_text())
    text = render(doc)
    (RESULTS / f"{name}.md").write_text(text)
    return text
