"""The dislike-strength sweep: scaling M by sqrt(s) scales the subtract move by exactly s,
s = 1 reproduces training's own validation figures, and the table is built from them."""

from __future__ import annotations

import numpy as np
import pytest

from bench import dislike_strength
from common.config import load_config
from trainer.config import TrainerConfig
from trainer.model import TwoTowerModel

N_ITEMS, H, D = 30, 5, 4
SMALL = [
    "model.embedding_dim=8",
    "model.hidden_units=8",
    f"model.history_length={H}",
    f"model.dislike_length={D}",
    "model.dislike_pathway=subtract",
    "loss.logq=none",
]


def test_scaling_m_by_sqrt_s_scales_the_move_by_s():
    cfg = load_config(TrainerConfig, overrides=SMALL, environ={})
    model = TwoTowerModel(cfg, N_ITEMS)
    rng = np.random.default_rng(0)
    history = rng.integers(1, N_ITEMS + 1, size=(16, H)).astype(np.int32)
    dislikes = rng.integers(0, N_ITEMS + 1, size=(16, D)).astype(np.int32)
    none = np.zeros_like(dislikes)
    tower = model.user_tower
    tower.dislike_direction.assign(rng.normal(size=(8, 8)).astype(np.float32))
    trained = tower.dislike_direction.numpy().copy()
    move = model.embed_users(history, dislikes) - model.embed_users(history, none)
    for s in (0.5, 3.0):
        dislike_strength.scale_move(model, s, trained)
        scaled = model.embed_users(history, dislikes) - model.embed_users(history, none)
        np.testing.assert_allclose(scaled, s * move, rtol=1e-4, atol=1e-5)
    dislike_strength.scale_move(model, 1.0, trained)
    np.testing.assert_array_equal(tower.dislike_direction.numpy(), trained)


def test_the_sweep_needs_the_subtract_pathway():
    cfg = load_config(TrainerConfig, overrides=[*SMALL[:4], "loss.logq=none"], environ={})
    with pytest.raises(ValueError, match="subtract"):
        dislike_strength.scale_move(TwoTowerModel(cfg, N_ITEMS), 2.0, np.eye(8))


def test_summary_is_relative_to_positives_only_and_the_table_shows_it():
    row = {k: 0.0 for k in dislike_strength.KEYS}
    per_seed = [
        {
            "seed": i,
            "positives_only": {**row, "recall@20": 0.30 + 0.02 * i},
            "default": [
                {"strength": 1.0, **row, "recall@20": 0.30 + 0.02 * i},
                {"strength": 4.0, **row, "recall@20": 0.24 + 0.02 * i, "responsiveness@20": -0.1},
            ],
        }
        for i in range(2)
    ]
    summary = dislike_strength.summarize(per_seed, (1.0, 4.0))
    at1, at4 = summary["default"]
    assert at1["recall_vs_positives_only"] == pytest.approx(0.0)
    assert at4["recall_vs_positives_only"] == pytest.approx(0.25 / 0.31 - 1.0)
    assert at4["responsiveness@20"]["mean"] == pytest.approx(-0.1)
    md = dislike_strength.markdown({"seeds": 2, "summary": summary})
    assert "| 4 | 0.2500 ± 0.0141 |" in md
    assert "-19.4%" in md


@pytest.mark.slow
def test_strength_one_reproduces_the_trained_models_validation_figures():
    """The sweep's s = 1 row is the trained tower: the same validation figures training
    reports, and a larger move changes them."""
    from bench import dislikes
    from trainer.data.sources import load_source
    from trainer.run import trainer_config

    spec = "synthetic:users=300,items=150,aversions=1,seed=3"
    sets = ["train.epochs=2", "train.seed=0", "model.dislike_pathway=subtract"]
    ds = load_source(spec)
    run = dislikes.run_arm(spec, ds, sets, keep_model=True)
    out = run.pop("outcome")
    cfg = trainer_config("synthetic", overrides=sets)
    rows = dislike_strength.strength_figures(out, ds, cfg, (1.0, 8.0))
    valid = out.training["valid_metrics"]
    for key in ("recall@20", "ndcg@20", "like_dislike_auc", "dislike_share@20"):
        assert rows[0][key] == pytest.approx(valid[key], abs=1e-9), key
    assert rows[0]["responsiveness@20"] == pytest.approx(run["valid"]["responsiveness@20"])
    assert rows[1] != rows[0]
