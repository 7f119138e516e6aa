"""The popularity-prior sweep: one more coordinate adds exactly weight x z to every score,
weight 0 ranks as the model does, and the summary compares the arms as the targets do."""

from __future__ import annotations

import numpy as np
import pytest

from bench import dislike_prior


def _model(n: int = 40, dim: int = 6) -> tuple[dislike_prior.Embed, np.ndarray]:
    rng = np.random.default_rng(0)
    items = rng.normal(size=(n, dim)).astype(np.float32)
    table = rng.normal(size=(n + 1, dim)).astype(np.float32)

    def embed(history: np.ndarray, dislikes: np.ndarray) -> np.ndarray:
        return table[history].sum(axis=1) - table[dislikes].sum(axis=1)

    return embed, items


def test_the_prior_coordinate_adds_weight_times_z_to_every_score() -> None:
    embed, items = _model()
    counts = np.arange(len(items)) % 7
    z = dislike_prior.popularity_z(counts)
    assert z.mean() == pytest.approx(0.0, abs=1e-6) and z.std() == pytest.approx(1.0, abs=1e-5)
    assert np.all(np.diff(z[:7]) > 0)  # more positives, larger z
    h = np.array([[1, 2, 3], [0, 4, 5]], np.int32)
    d = np.array([[6], [0]], np.int32)
    e2, items2 = dislike_prior.with_prior(embed, items, z, 0.7)
    np.testing.assert_allclose(
        e2(h, d) @ items2.T, embed(h, d) @ items.T + 0.7 * z[None, :], rtol=1e-5, atol=1e-5
    )
    e0, items0 = dislike_prior.with_prior(embed, items, z, 0.0)
    np.testing.assert_array_equal(
        np.argsort(-(e0(h, d) @ items0.T), axis=1, kind="stable"),
        np.argsort(-(embed(h, d) @ items.T), axis=1, kind="stable"),
    )
    with pytest.raises(ValueError, match="3 prior values for 40 items"):
        dislike_prior.with_prior(embed, items, z[:3], 1.0)


def test_a_constant_catalogue_has_no_prior() -> None:
    np.testing.assert_array_equal(dislike_prior.popularity_z(np.full(5, 3)), np.zeros(5))


def test_summary_compares_the_default_with_positives_only_at_the_same_beta_and_as_trained() -> None:
    def row(beta: float, recall: float, share: float, auc: float) -> dict[str, float]:
        base = {k: 0.0 for k in dislike_prior.KEYS}
        return {
            **base,
            "beta": beta,
            "recall@20": recall,
            "dislike_share@20": share,
            "like_dislike_auc": auc,
        }

    per_seed = [
        {
            "seed": i,
            "positives_only": [row(0.0, 0.30, 0.60, 0.70), row(0.5, 0.29, 0.55, 0.69)],
            "default": [row(0.0, 0.29, 0.55, 0.71), row(0.5, 0.30, 0.44, 0.72)],
        }
        for i in range(2)
    ]
    rows = dislike_prior.summarize(per_seed, (0.0, 0.5))["rows"]
    same, trained = (
        rows[1]["default_vs_positives_only"],
        rows[1]["default_vs_positives_only_as_trained"],
    )
    assert same["recall@20"] == pytest.approx(0.30 / 0.29 - 1)
    assert same["dislike_share@20"] == pytest.approx(0.44 / 0.55 - 1)
    assert same["like_dislike_auc"] == pytest.approx(0.03)
    assert trained["dislike_share@20"] == pytest.approx(0.44 / 0.60 - 1)
    assert trained["like_dislike_auc"] == pytest.approx(0.02)
    assert rows[1]["recall_vs_beta0"] == {
        "positives_only": pytest.approx(0.29 / 0.30 - 1),
        "default": pytest.approx(0.30 / 0.29 - 1),
    }
    md = dislike_prior.markdown({"seeds": 2, "summary": {"rows": rows}})
    assert "| 0.5 | default | 0.3000 ± 0.0000 |" in md
    assert "| 0.5 | +3.4% / -20.0% / +0.0300 | +0.0% / -26.7% / +0.0200 |" in md


def test_one_arm_on_data_without_dislikes_reports_recall_against_beta_zero_only() -> None:
    per_seed = [
        {"seed": 0, "default": [{"beta": b, **dict.fromkeys(dislike_prior.KEYS, 0.0),
                                 "recall@20": r, "ndcg@20": r / 2} for b, r in ((0.0, 0.20), (0.1, 0.19))]}
    ]  # fmt: skip
    rows = dislike_prior.summarize(per_seed, (0.0, 0.1), ("default",))["rows"]
    assert "default_vs_positives_only" not in rows[1] and "positives_only" not in rows[1]
    assert rows[1]["recall_vs_beta0"] == {"default": pytest.approx(0.19 / 0.20 - 1)}
    doc = {
        "seeds": 1,
        "suite": "gowalla_prior",
        "data": dislike_prior.GOWALLA,
        "arms": ["default"],
        "keys": dislike_prior.KEYS[:2],
        "extra_settings": dislike_prior.GOWALLA_SETTINGS,
        "summary": {"rows": rows},
    }
    md = dislike_prior.markdown(doc)
    assert "gowalla validation (1 seed)" in md
    assert "--suite gowalla_prior" in md and "(train.refit=false)" in md
    assert "| 0.1 | default | 0.1900 | 0.0950 | -5.0% |" in md
    assert "like_dislike_auc" not in md and "Targets" not in md


@pytest.mark.slow
def test_beta_zero_is_the_trained_model_and_a_prior_changes_it() -> None:
    """The sweep's beta = 0 row gives the validation figures training reports."""
    from bench import dislikes
    from trainer.data.sources import load_source
    from trainer.run import trainer_config

    spec = "synthetic:users=300,items=150,aversions=1,seed=3"
    sets = ["train.epochs=2", "train.seed=0"]
    ds = load_source(spec)
    run = dislikes.run_arm(spec, ds, sets, keep_model=True)
    out = run.pop("outcome")
    rows = dislike_prior.prior_figures(
        out, ds, trainer_config("synthetic", overrides=sets), (0.0, 1.0)
    )
    valid = out.training["valid_metrics"]
    for key in ("recall@20", "ndcg@20", "like_dislike_auc", "dislike_share@20"):
        assert rows[0][key] == pytest.approx(valid[key], abs=1e-9), key
    assert rows[0]["responsiveness@20"] == pytest.approx(run["valid"]["responsiveness@20"])
    assert [r["beta"] for r in rows] == [0.0, 1.0]
    assert {k: v for k, v in rows[1].items() if k != "beta"} != {
        k: v for k, v in rows[0].items() if k != "beta"
    }


def test_quality_term_is_minus_the_smoothed_dislike_ratio_standardised() -> None:
    likes, bad = np.array([9, 0, 5, 0]), np.array([1, 4, 5, 0])
    # the catalogue's dislike share m = 10 / 24; ratio_i = (d_i + 5 m) / (l_i + d_i + 5)
    m = 10 / 24
    ratio = np.array([(1 + 5 * m) / 15, (4 + 5 * m) / 9, (5 + 5 * m) / 15, (5 * m) / 5])
    expected = (-ratio - (-ratio).mean()) / (-ratio).std()
    z = dislike_prior.quality_z(likes, bad)
    np.testing.assert_allclose(z, expected, rtol=1e-5)
    assert z[0] > z[2] > z[1]  # fewer dislikes per event, higher quality
    assert z[3] == pytest.approx(float(expected[3]))  # no events: the catalogue's share
    with pytest.raises(ValueError, match="unknown term 'taste'"):
        dislike_prior.item_term(None, "taste")
