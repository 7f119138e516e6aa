"""bench.serving_compare: medians per side, head / base ratios, the table, the exported tree."""

from __future__ import annotations

import subprocess

import pytest

from bench.common import REPO
from bench.serving_compare import FIGURES, export_tree, markdown, summarise


def _side(rps: float, cpu: float) -> dict[str, float]:
    return {
        "rps_c32": rps,
        "p99_ms_c32": 40.0,
        "cpu_us_per_request_c32": cpu,
        "p50_ms_c1": 1.2,
        "p99_ms_c1": 2.0,
    }


ROUNDS = [
    {"base": _side(1000, 1200), "head": _side(1500, 800)},
    {"base": _side(1300, 1100), "head": _side(1400, 700)},
    {"base": _side(1100, 1150), "head": _side(900, 750)},
]


def test_summarise_takes_each_sides_median_and_the_median_of_the_rounds_ratios() -> None:
    s = summarise(ROUNDS)
    assert set(s) == set(FIGURES)
    # Ratios per round: 1.5, 1400/1300, 900/1100; their median is 1400/1300.
    assert s["rps_c32"]["base"] == 1100 and s["rps_c32"]["head"] == 1400
    assert s["rps_c32"]["head_over_base"] == pytest.approx(1400 / 1300)
    assert s["cpu_us_per_request_c32"]["head_over_base"] == pytest.approx(750 / 1150)
    assert s["p50_ms_c1"]["head_over_base"] == 1.0


def test_markdown_has_the_summary_then_every_round() -> None:
    doc = {
        "command": "python -m bench.serving_compare --base abc1234",
        "base_revision": "abc1234" + "0" * 33,
        "git_revision": "def5678",
        "catalog": "synthetic:users=2000,items=100000, 1 epoch",
        "duration_s": 8.0,
        "rounds": ROUNDS,
        "summary": summarise(ROUNDS),
    }
    text = markdown(doc)
    head, rest = text.split("<!-- headline:end -->")
    assert "| c=32 req/s (higher is better) | 1100.00 | 1400.00 | 1.08 |" in head
    assert "| c=32 server CPU µs / request (lower is better) | 1150.00 | 750.00 | 0.65 |" in head
    assert rest.count("| base |") == rest.count("| head |") == 3
    assert "its own catalog" not in head
    doc["base_settings"] = ["export.ivf_codec=flat"]
    assert "The base side serves its own catalog, trained with export.ivf_codec=flat." in markdown(
        doc
    )


def test_export_tree_writes_a_revisions_files(tmp_path) -> None:
    full = export_tree("HEAD", tmp_path / "tree")
    expected = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert full == expected
    assert (tmp_path / "tree" / "serving" / "retrieval.py").is_file()
