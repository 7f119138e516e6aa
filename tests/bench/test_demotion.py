"""bench.demotion's pieces: the real-feedback users, the scores its AUC ranks, the tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench import demotion
from serving.model import load_model
from serving.retrieval import Demotion, Query, run_batch
from tests.serving.artifact_factory import make_artifact
from trainer.data.dataset import EvalSet


def _csr(lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    ptr = np.cumsum([0, *map(len, lists)]).astype(np.int64)
    items = np.asarray([x for xs in lists for x in xs], dtype=np.int32)
    return ptr, items


def test_first_dislike_moves_to_the_input_and_the_rest_stay_answers() -> None:
    # Three judged users; the middle one has a single held-out dislike (dropped).
    tp, ti = _csr([[1], [2, 3], [4]])
    mp, mi = _csr([[10], [11], [12, 13]])
    dp, di = _csr([[5, 7, 9], [3], [2, 6]])
    dislikes = np.array([[0, 21, 22], [0, 0, 23], [24, 25, 26]], np.int32)
    judged = EvalSet(
        np.array([4, 8, 9], np.int32), np.ones((3, 2), np.int32), dislikes, tp, ti, mp, mi, dp, di
    )
    users, d = demotion._first_dislike_out(judged)
    assert users.users.tolist() == [4, 9]
    assert d.tolist() == [5, 2]
    assert [users.heldout_dislikes(r).tolist() for r in range(2)] == [[7, 9], [6]]
    assert [users.targets(r).tolist() for r in range(2)] == [[1], [4]]
    assert [users.mask(r).tolist() for r in range(2)] == [[10], [12, 13]]
    # The moved dislike is each user's newest token (row + 1), the oldest dropped.
    assert users.dislikes.tolist() == [[21, 22, 6], [25, 26, 3]]


def test_auc_scores_are_the_served_scores(tmp_path: Path) -> None:
    version = make_artifact(tmp_path, num_items=200, dim=8, seed=5, clusters=4)
    model = load_model(tmp_path, version)
    rng = np.random.default_rng(1)
    history = rng.integers(1, 201, size=(6, model.history_length)).astype(np.int32)
    dislikes = rng.integers(0, 201, size=(6, model.dislike_length)).astype(np.int32)
    d = rng.integers(0, 200, size=6)
    vecs = model.embed(history, dislikes)
    for setting in (Demotion(), Demotion(2.0, 0.3)):
        scores_of = demotion._demoted_scores(model, vecs, d, setting)
        queries = [
            Query(
                model=model,
                k=15,
                blocked={int(d[r])},
                history=history[r],
                dislikes=dislikes[r],
                demote_rows=d[r : r + 1].astype(np.int64),
            )
            for r in range(6)
        ]
        for r, res in enumerate(run_batch(queries, setting)):
            rows = np.full(len(res.rows), r)
            np.testing.assert_allclose(scores_of(rows, res.rows), res.scores, rtol=1e-5, atol=1e-5)
    # Demotion changes the scores it ranks (the check above is not vacuous).
    plain = demotion._demoted_scores(model, vecs, d, Demotion())
    demoted = demotion._demoted_scores(model, vecs, d, Demotion(2.0, 0.3))
    rows, items = np.repeat(np.arange(6), 200), np.tile(np.arange(200), 6)
    assert (demoted(rows, items) < plain(rows, items) - 1e-6).any()


def _run(shift: float, fresh: dict[int, dict[str, float]] | None = None) -> dict[str, list[dict]]:
    """One seed's rows of one split: figure i + shift for setting i, ``fresh`` overriding."""
    out: dict[str, list[dict]] = {}
    for table, keys in demotion.TABLES:
        out[table] = [
            {
                **demotion.setting_label(setting),
                **{k: i + shift for k in keys},
                "users": 10 + shift,
                **(fresh or {}).get(i, {}),
            }
            for i, setting in enumerate(demotion.SETTINGS)
        ]
    return out


def test_summary_and_tables_come_from_the_per_seed_rows() -> None:
    per_seed = [
        {split: _run(0.0) for split in demotion.SPLITS},
        {"valid": _run(0.5), "test": _run(0.5)},
    ]
    summaries = {
        split: demotion.summarize([run[split] for run in per_seed]) for split in demotion.SPLITS
    }
    assert summaries["test"]["real"][2]["dislike_share@20"] == {
        "mean": 2.25,
        "std": pytest.approx(0.353553, abs=1e-6),  # sample std of 2 and 2.5
    }
    assert summaries["test"]["fresh"][3]["near"] == demotion.SETTINGS[3].near
    doc = {"seeds": [0, 1], "recent_dislikes": 5, "per_seed": per_seed, "chosen": 4, **summaries}
    md = demotion.markdown(doc)
    assert sum(line.startswith("|---") for line in md.splitlines()) == 5
    assert "The 10.0 judged users" in md  # the first seed's user count
    assert "2.2500 ± 0.3536" in md
    (marked,) = [line for line in md.splitlines() if "(default)" in line]
    assert marked.startswith(
        f"| {demotion._label_text(demotion.setting_label(demotion.SETTINGS[4]))}"
    )
    head, tail = md.split(demotion.HEADLINE_END)
    assert "validation" in head and "real feedback" in head and "recent" in tail


def test_choice_is_the_most_responsive_setting_within_the_limits() -> None:
    def summary(fresh: dict[int, dict[str, float]], auc: dict[int, float]) -> dict[str, list[dict]]:
        run = _run(0.0, fresh)
        for i, row in enumerate(run["real"]):
            row["like_dislike_auc"] = auc.get(i, 0.70)
        return demotion.summarize([run])

    base = {
        i: {"responsiveness@20": -0.01 * i, "recall@20": 0.20}
        for i in range(len(demotion.SETTINGS))
    }
    last = len(demotion.SETTINGS) - 1
    assert demotion.choose(summary(base, {})) == last  # every setting within the limits
    # The most responsive one loses too much recall after the dislike, the next too much AUC.
    base[last]["recall@20"] = 0.20 * demotion.RECALL_KEPT - 1e-4
    limited = summary(base, {last - 1: 0.70 - demotion.AUC_SLACK - 1e-4})
    assert demotion.choose(limited) == last - 2
    # Nothing within the limits moves the list more than the tower alone: it stays off.
    for i in range(1, last + 1):
        base[i]["recall@20"] = 0.1
    assert demotion.choose(summary(base, {})) == 0
