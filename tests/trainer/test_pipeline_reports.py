"""Pipeline reports: the gate history file, its chart data, escaping and retention."""

from __future__ import annotations

import base64
import json
import re

from trainer.pipeline import reports


def _report(run_id: str, outcome: str, cand: float, pub: float | None, **extra) -> dict:
    gate = [
        {
            "metric": "recall@20",
            "direction": "higher",
            "candidate": cand,
            "published": pub,
            "tolerance": 0.01,
            "ok": outcome == "published",
        }
    ]
    return {
        "run_id": run_id,
        "outcome": outcome,
        "reason": extra.pop("reason", outcome),
        "candidate": {"version": f"c-{run_id}"},
        "published": {"version": f"p-{run_id}"} if pub is not None else {},
        "gate": gate,
        **extra,
    }


def test_history_rows_and_chart_series_mark_published_and_refused(tmp_path):
    runs = [
        _report("r1", "published", 0.30, None),
        _report("r2", "refused", 0.25, 0.30),
        _report("r3", "published", 0.33, 0.30),
    ]
    for r in runs:
        reports.append_history(tmp_path, r)
    history = reports.read_history(tmp_path)
    assert [h["run_id"] for h in history] == ["r1", "r2", "r3"]
    assert [h["candidate"] for h in history] == ["c-r1", "c-r2", "c-r3"]
    series = reports.chart_series(history)["recall@20"]
    assert series["candidate published"] == [(0, 0.30), (2, 0.33)]
    assert series["candidate refused"] == [(1, 0.25)]
    assert series["published"] == [(1, 0.30), (2, 0.30)]  # the figure each run was gated against
    png = reports.chart_png(history)
    assert png is not None and png.startswith(b"\x89PNG")
    assert reports.chart_png([{"run_id": "s", "outcome": "skipped", "gate": []}]) is None


def test_a_torn_last_line_is_skipped(tmp_path, caplog):
    reports.append_history(tmp_path, _report("r1", "published", 0.3, None))
    with open(tmp_path / "reports" / reports.HISTORY_FILE, "a") as fh:
        fh.write('{"run_id": "r2", "outc')  # the process died mid-write
    assert [h["run_id"] for h in reports.read_history(tmp_path)] == ["r1"]
    assert "skipped 1 unreadable line" in caplog.text
    reports.append_history(tmp_path, _report("r3", "refused", 0.2, 0.3))
    # The next row starts on a line of its own: only the torn fragment is lost.
    assert [h["run_id"] for h in reports.read_history(tmp_path)] == ["r1", "r3"]


def test_history_is_trimmed_to_the_newest_runs(tmp_path):
    for i in range(6):
        reports.append_history(tmp_path, _report(f"r{i}", "published", 0.3, 0.3))
    reports.trim_history(tmp_path, keep=4)
    assert [h["run_id"] for h in reports.read_history(tmp_path)] == ["r2", "r3", "r4", "r5"]


def test_html_escapes_everything_it_shows(tmp_path):
    evil = "<script>alert(1)</script>"
    run = _report("r1", "refused", 0.2, 0.3, reason=f"regression on {evil}")
    run["gate"][0]["metric"] = evil
    reports.append_history(tmp_path, run)
    path = reports.write_report(tmp_path, run, keep=10)
    page = path.with_suffix(".html").read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert json.loads(path.read_text())["reason"] == f"regression on {evil}"
    (img,) = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert base64.b64decode(img).startswith(b"\x89PNG")


def test_old_report_files_are_pruned(tmp_path):
    for i in range(5):
        reports.write_report(tmp_path, {"run_id": f"2026-{i}", "outcome": "skipped"}, keep=3)
    names = sorted(p.name for p in (tmp_path / "reports").iterdir())
    assert names == [f"2026-{i}.{ext}" for i in (2, 3, 4) for ext in ("html", "json")]
