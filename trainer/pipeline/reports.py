"""Pipeline run reports and the gate history.

Every run, whatever its outcome (published, refused, skipped, locked, failed),
leaves ``ART/reports/<run_id>.json`` and ``<run_id>.html``. Runs that reached
the gate also append one line to ``ART/reports/history.jsonl``: the candidate's
and the published version's figures *on the same holdout* (see
:mod:`trainer.pipeline.gate`), the rule rows and the outcome. The HTML page charts that
history, candidate against published per run, published runs and refused runs
marked apart. Old report files are pruned (``pipeline.keep_reports``) and the
history keeps the last ``pipeline.keep_history`` runs.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

from common.files import atomic_write_text

log = logging.getLogger(__name__)

REPORTS_DIR = "reports"
HISTORY_FILE = "history.jsonl"
#: Charted when the gate names none of them.
DEFAULT_CHART = ("recall@20", "like_dislike_auc", "dislike_share@20", "dislike_rate@20")


def reports_dir(art: Path) -> Path:
    return Path(art) / REPORTS_DIR


def append_history(art: Path, report: dict[str, Any]) -> None:
    """Append the gate outcome of ``report`` to ``history.jsonl`` (one line, fsynced)."""
    row = {
        "run_id": report["run_id"],
        "finished_at": report.get("finished_at"),
        "outcome": report["outcome"],
        "reason": report.get("reason"),
        "candidate": report.get("candidate", {}).get("version"),
        "published": report.get("published", {}).get("version"),
        "holdout": report.get("holdout"),
        "gate": report.get("gate", []),
    }
    out = reports_dir(art)
    out.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(row, default=str) + "\n").encode()
    fd = os.open(out / HISTORY_FILE, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line  # a torn last line (killed mid-write) stays alone on its line
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_history(art: Path) -> list[dict[str, Any]]:
    """The history rows, oldest first; a damaged line (a torn last write) is skipped and logged."""
    path = reports_dir(art) / HISTORY_FILE
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    rows, bad = [], 0
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(row, dict) and "run_id" in row:
            rows.append(row)
        else:
            bad += 1
    if bad:
        log.warning("%s: skipped %d unreadable line(s)", path, bad)
    return rows


def trim_history(art: Path, keep: int) -> None:
    """Keep the last ``keep`` runs of the history (atomic rewrite; only the lock holder calls it)."""
    rows = read_history(art)
    if len(rows) > keep:
        text = "".join(json.dumps(r, default=str) + "\n" for r in rows[-keep:])
        atomic_write_text(reports_dir(art) / HISTORY_FILE, text)


def prune_reports(art: Path, keep: int) -> list[str]:
    """Delete the report files of all but the newest ``keep`` runs; returns the run ids removed."""
    out = reports_dir(art)
    runs = sorted(p.stem for p in out.glob("*.json"))
    doomed = runs[:-keep] if keep > 0 else runs
    for run_id in doomed:
        for suffix in (".json", ".html"):
            with contextlib.suppress(FileNotFoundError):  # another process pruned it first
                (out / f"{run_id}{suffix}").unlink()
    return doomed


def chart_series(history: list[dict[str, Any]]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """What the chart draws, per gated metric: ``(run index, value)`` points of the
    version each run was compared with (``published``) and of the candidate, split by
    outcome (``candidate published`` / ``candidate refused``)."""
    gated = [r for r in history if r.get("gate")]
    names = list(dict.fromkeys(row["metric"] for r in gated for row in r["gate"]))
    names = [n for n in names if n in DEFAULT_CHART] or names[:2]
    series: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for name in names:
        out: dict[str, list[tuple[int, float]]] = {
            "published": [],
            "candidate published": [],
            "candidate refused": [],
        }
        for i, r in enumerate(gated):
            row: dict[str, Any] = next((g for g in r["gate"] if g["metric"] == name), {})
            if row.get("published") is not None:
                out["published"].append((i, float(row["published"])))
            if row.get("candidate") is not None and r["outcome"] in ("published", "refused"):
                out[f"candidate {r['outcome']}"].append((i, float(row["candidate"])))
        series[name] = out
    return series


STYLES = {
    "published": {"linestyle": "--", "color": "grey", "marker": "."},
    "candidate published": {"linestyle": "none", "color": "tab:green", "marker": "o"},
    "candidate refused": {"linestyle": "none", "color": "tab:red", "marker": "x"},
}


def chart_png(history: list[dict[str, Any]]) -> bytes | None:
    """PNG of :func:`chart_series` (None when no run reached the gate yet)."""
    series = chart_series(history)
    if not series:
        return None
    gated = [r for r in history if r.get("gate")]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(series), 1, figsize=(8, 2.6 * len(series)), squeeze=False, sharex=True
    )
    for ax, (name, lines) in zip(axes[:, 0], series.items(), strict=True):
        for label, points in lines.items():
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, label=label, **STYLES[label])
        ax.set_ylabel(name)
        ax.legend(fontsize=7, loc="best")
    ticks = list(range(len(gated)))
    axes[-1, 0].set_xticks(ticks, [r["run_id"][:15] for r in gated], rotation=30, fontsize=6)
    axes[0, 0].set_title("quality gate per run: candidate vs published, on the same holdout")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else html.escape(str(value))


def _verdict(row: dict[str, Any]) -> str:
    if row.get("left_out"):
        return html.escape(str(row.get("why", "left out")))
    return "ok" if row["ok"] else "REGRESSION"


def render_html(report: dict[str, Any], history: list[dict[str, Any]]) -> str:
    """The run's page: outcome, gate table, the history chart and table. Everything escaped."""
    esc = html.escape
    gate_rows = "".join(
        f"<tr><td>{esc(r['metric'])}</td><td>{esc(str(r.get('direction', '')))}</td>"
        f"<td>{_fmt(r.get('published'))}</td><td>{_fmt(r['candidate'])}</td>"
        f"<td>{_fmt(r.get('tolerance'))}</td><td>{_verdict(r)}</td></tr>"
        for r in report.get("gate", [])
    )
    img = ""
    try:
        png = chart_png(history)
        if png:
            img = f'<img alt="gate history" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
    except Exception as exc:  # a missing chart must not fail the run
        log.warning("could not draw the gate history: %s", exc)
    runs = "".join(
        f"<tr><td>{esc(str(r['run_id']))}</td><td>{esc(str(r['outcome']))}</td>"
        f"<td>{esc(str(r.get('candidate')))}</td><td>{esc(str(r.get('published')))}</td>"
        f"<td>{esc(str(r.get('reason') or ''))}</td></tr>"
        for r in reversed(history[-50:])
    )
    details = {k: report[k] for k in ("events", "candidate", "published", "holdout") if k in report}
    return (
        f"<!doctype html><meta charset=utf-8><title>twotower pipeline {esc(report['run_id'])}</title>"
        f"<h1>pipeline run {esc(report['run_id'])}: {esc(report['outcome'])}</h1>"
        f"<p>{esc(str(report.get('reason', '')))}</p>"
        "<table border=1><tr><th>metric</th><th>direction</th><th>published</th>"
        f"<th>candidate</th><th>tolerance</th><th>gate</th></tr>{gate_rows}</table>"
        f"{img}<h2>recent gated runs</h2><table border=1><tr><th>run</th><th>outcome</th>"
        f"<th>candidate</th><th>compared with</th><th>reason</th></tr>{runs}</table>"
        f"<pre>{esc(json.dumps(details, indent=2, default=str))}</pre>"
    )


def write_report(art: Path, report: dict[str, Any], keep: int) -> Path:
    """Write the run's JSON and HTML report, then prune old ones; returns the JSON path."""
    out = reports_dir(art)
    out.mkdir(parents=True, exist_ok=True)
    stem = report["run_id"]
    json_path = out / f"{stem}.json"
    atomic_write_text(json_path, json.dumps(report, indent=2, default=str))
    atomic_write_text(out / f"{stem}.html", render_html(report, read_history(art)))
    prune_reports(art, keep)
    return json_path
