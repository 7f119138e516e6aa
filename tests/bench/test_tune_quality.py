"""bench.tune's nested split and manifest rows, bench.quality's Gowalla table: pure parts."""

from __future__ import annotations

import json
from pathlib import Path

from bench.quality import PUBLISHED_GOWALLA, _from_manifest, markdown_gowalla
from bench.tune import grid_markdown, rows_from_manifests, write_nested_lightgcn
from trainer.run import trainer_config


def _lines(path: Path) -> dict[str, list[str]]:
    out = {}
    for line in path.read_text().splitlines():
        user, *items = line.split()
        out[user] = items
    return out


def test_nested_split_moves_an_eighth_of_train_to_valid_and_valid_to_test(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    train = {str(u): [str(i) for i in range(u * 10, u * 10 + 8 + u)] for u in range(6)}
    train["6"] = ["1", "2"]  # too few to lose any
    (src / "train.txt").write_text("\n".join(f"{u} {' '.join(v)}" for u, v in train.items()))
    (src / "valid.txt").write_text("0 900\n3 901 902\n")
    # src/test.txt does not exist: the nested split never reads it.
    spec = write_nested_lightgcn(src, tmp_path / "nested", seed=1)
    assert spec == f"lightgcn:{tmp_path / 'nested'}"
    new_train = _lines(tmp_path / "nested" / "train.txt")
    new_valid = _lines(tmp_path / "nested" / "valid.txt")
    assert (tmp_path / "nested" / "test.txt").read_text() == "0 900\n3 901 902\n"
    for user, items in train.items():
        kept, held = new_train[user], new_valid.get(user, [])
        assert sorted(kept + held) == sorted(items) and not set(kept) & set(held)
        assert len(held) == (round(len(items) / 8) if len(items) >= 4 else 0)
        assert kept == sorted(kept, key=items.index)  # the file's order kept
    # Seeded: the same call, the same files.
    write_nested_lightgcn(src, tmp_path / "again", seed=1)
    assert (tmp_path / "again" / "valid.txt").read_text() == (
        tmp_path / "nested" / "valid.txt"
    ).read_text()


def _manifest(tmp_path: Path, name: str, config: dict, refit: bool) -> str:
    training = {
        "valid_metrics": {"recall@20": 0.2, "ndcg@20": 0.1, "dislike_rate@20": 0.0},
        "valid_recall@20_by_similarity": {"cosine": 0.2, "dot": 0.19},
        "best_epoch": 6,
        "epochs_run": 9,
        "seconds": 600.0,
        "examples_per_second": 12000.0,
        "refit": {"done": False},
    }
    metrics = {
        "recall@20": 0.18,
        "ndcg@20": 0.15,
        "hit_rate@20": 0.5,
        "coverage@20": 0.7,
        "dislike_rate@20": 0.0,
        "longtail_recall@20": [0.1] * 10,
    }
    if refit:
        training["refit"] = {
            "done": True,
            "epochs": 6,
            "seconds": 300.0,
            "examples_per_second": 11000.0,
            "test_metrics_without_refit": {**metrics, "recall@20": 0.17, "ndcg@20": 0.14},
        }
    m = {
        "data": {"source": "lightgcn:/x", "kind": "lightgcn"},
        "config": config,
        "training": training,
        "metrics": metrics,
        "baseline_popular": {**metrics, "recall@20": 0.04, "ndcg@20": 0.03},
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(m))
    return str(path)


def test_manifest_rows_name_the_settings_that_differ_from_the_kinds_defaults(tmp_path):
    # Changed by hand, not by overrides: load_config's shallow copy of the per-kind defaults
    # lets an override leak into SOURCE_DEFAULTS for later calls in the same process.
    cfg = trainer_config("lightgcn").as_dict()
    cfg["train"]["refit"], cfg["loss"]["logq_label"] = False, "exact"  # lightgcn: refit on
    path = _manifest(tmp_path, "a", cfg, refit=True)
    spec, rows = rows_from_manifests([path], nested=True)
    assert spec == "lightgcn:/x"
    assert sorted(rows[0]["settings"]) == ["loss.logq_label=exact", "train.refit=false"]
    assert rows[0]["outer_valid"] == {
        "without_refit": {"recall@20": 0.17, "ndcg@20": 0.14},
        "with_refit": {"recall@20": 0.18, "ndcg@20": 0.15},
    }
    assert rows[0]["refit_seconds"] == 300.0 and rows[0]["train_seconds"] == 600.0
    _, plain = rows_from_manifests([path])
    assert "outer_valid" not in plain[0]  # test figures only where they are validation


def test_gowalla_table_has_both_refit_states_and_labels_published_rows(tmp_path):
    cfg = trainer_config("lightgcn").as_dict()
    runs = [_from_manifest(_manifest(tmp_path, n, cfg, refit=n == "a")) for n in ("a", "b")]
    doc = {
        "arms": {
            "logq_streaming": {"runs": [runs[0]]},
            "in_batch_no_logq": {"runs": [runs[1]]},
            "baseline_popular": runs[0]["baseline_popular"],
        },
        "published": [{"model": n, "recall@20": r, "ndcg@20": g} for n, r, g in PUBLISHED_GOWALLA],
        "from_manifests": True,
    }
    md = markdown_gowalla(doc)
    assert "| ours: logq_streaming | 0.1700 | 0.1400 |" in md
    assert "| ours: logq_streaming, refit | 0.1800 | 0.1500 |" in md
    assert "10.0 + 5.0 min" in md
    assert "| ours: in_batch_no_logq | 0.1800 |" in md and "in_batch_no_logq, refit" not in md
    for name, r, g in PUBLISHED_GOWALLA:
        assert f"| published: {name} | {r:.4f} | {g:.4f} |" in md


def test_grid_table_renders_each_row_and_the_result_note():
    row = {
        "settings": ["model.embedding_dim=128"],
        "valid": {"recall@20": 0.21517, "ndcg@20": 0.12058, "dislike_rate@20": 0.0},
        "valid_recall@20_by_similarity": {"cosine": 0.21517, "dot": 0.20171},
        "best_epoch": 3,
        "train_seconds": 746.0,
        "refit_seconds": 120.0,
        "examples_per_second": 2890.5,
    }
    doc = {"how": "`cmd`", "rows": [row, {**row, "settings": []}], "note": "stopped early."}
    md = grid_markdown("capacity", doc)
    assert md.startswith("### validation sweep: capacity\n\n`cmd`; ")
    assert (
        "| model.embedding_dim=128 | 0.2152 | 0.1206 | 0.0000 | 0.2152 / 0.2017 | 3 | "
        "12.4 min + refit 2.0 min | 2,890 |" in md
    )
    assert "| (defaults) | 0.2152 |" in md
    assert md.endswith("\nNote: stopped early.\n")
    assert "Note:" not in grid_markdown("capacity", {**doc, "note": ""})
