"""How far a dislike may move the user: the subtract pathway's learned move, scaled.

``python -m bench.tune --suite ml100k_dislike_strength [--seeds 3] [--quick]``

The responsiveness target (a new dislike of the user's top item leaves 30%
fewer items like it in the rest of the list) asks for a larger move than the
trained tower makes. This sweep asks what a larger move costs. For each seed
it trains positives-only (the recall reference) and the movielens default
(``subtract`` pathway), then evaluates the default's tower on **validation**
with its move ``g(n) W sum_d a_d v_d/|v_d|`` multiplied by s: W = M M^T, so
setting M to sqrt(s) M scales W, and the move, by exactly s, with every other
weight as trained. s = 1 is the trained model. Validation figures only; the
test split is not read.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from bench import dislikes
from bench.common import mean_std

STRENGTHS = (1.0, 1.5, 2.0, 4.0, 8.0, 16.0)
QUICK_STRENGTHS = (1.0, 4.0)
KEYS = ["recall@20", "ndcg@20", "like_dislike_auc", "dislike_share@20", "responsiveness@20"]


def scale_move(model: Any, strength: float, direction: np.ndarray) -> None:
    """Set the subtract pathway's M to sqrt(strength) x ``direction`` (the trained M):
    the user tower's move away from the disliked items is then ``strength`` times the
    trained one, every other weight unchanged."""
    tower = model.user_tower
    if not hasattr(tower, "dislike_direction"):
        raise ValueError(
            "the strength sweep needs model.dislike_pathway=subtract with dislike input"
        )
    tower.dislike_direction.assign((np.sqrt(strength) * direction).astype(np.float32))


def strength_figures(
    out: Any, ds: Any, cfg: Any, strengths: tuple[float, ...]
) -> list[dict[str, Any]]:
    """Validation figures of a trained default (``out`` kept its model) at each strength."""
    from trainer.evaluate import evaluate, reference_neighbors
    from trainer.export import item_embeddings, serving_embed

    dsh, valid, judged = dislikes.valid_sets(ds, cfg)
    neighbors, counts = reference_neighbors(dsh, dsh.num_items), dsh.train_item_counts()
    tower = out.model.user_tower
    trained = tower.dislike_direction.numpy().copy()
    sim = dislikes._similarity(out)
    rows = []
    try:
        for s in strengths:
            scale_move(out.model, s, trained)
            embed = serving_embed(out.model, sim)
            items = item_embeddings(out.model, sim)
            metrics = evaluate(embed, items, valid, counts, neighbors, judged).metrics
            rows.append({"strength": s, **{k: float(metrics[k]) for k in KEYS}})
    finally:
        scale_move(out.model, 1.0, trained)
    return rows


def sweep(
    seeds: int,
    extra: list[str],
    strengths: tuple[float, ...] = STRENGTHS,
    spec: str = dislikes.ML100K,
) -> dict[str, Any]:
    """Per seed: positives-only's validation figures, the default's at each strength."""
    from trainer.data.sources import load_source
    from trainer.run import trainer_config

    kind = spec.split(":", 1)[0]
    ds = load_source(spec)
    reference = dislikes.arm(dislike_input=False)
    per_seed = []
    t0 = time.perf_counter()
    for seed in range(seeds):
        sets = [*extra, f"train.seed={seed}"]
        ref = dislikes.run_arm(spec, ds, [*sets, *reference])
        cfg = trainer_config(kind, overrides=sets)
        if not (cfg.model.use_dislike_input and cfg.model.dislike_pathway == "subtract"):
            raise ValueError(f"{kind}: the default is not the subtract pathway with dislike input")
        run = dislikes.run_arm(spec, ds, sets, keep_model=True)
        out = run.pop("outcome")
        per_seed.append(
            {
                "seed": seed,
                "positives_only": {k: ref["valid"].get(k) for k in KEYS},
                "default": strength_figures(out, ds, cfg, strengths),
            }
        )
        print(
            f"[strength seed {seed + 1}/{seeds}, {(time.perf_counter() - t0) / 60:.1f} min] "
            + ", ".join(
                f"s={r['strength']:g}: recall {r['recall@20']:.4f} resp {r['responsiveness@20']:.3f}"
                for r in per_seed[-1]["default"]
            ),
            flush=True,
        )
    default_cfg = trainer_config(kind, overrides=extra)
    return {
        "data": spec,
        "seeds": seeds,
        "extra_settings": extra,
        "defaults": dislikes.effective(default_cfg),
        "strengths": list(strengths),
        "per_seed": per_seed,
        "summary": summarize(per_seed, strengths),
    }


def summarize(per_seed: list[dict[str, Any]], strengths: tuple[float, ...]) -> dict[str, Any]:
    """Mean and std over seeds: positives-only's figures, and the default's per strength
    with its recall@20 relative to positives-only's (the tuning rule allows -1%)."""
    ref = {k: mean_std([float(s["positives_only"][k]) for s in per_seed]) for k in KEYS}
    rows = []
    for i, strength in enumerate(strengths):
        figs = {k: mean_std([float(s["default"][i][k]) for s in per_seed]) for k in KEYS}
        rel = figs["recall@20"]["mean"] / ref["recall@20"]["mean"] - 1.0
        rows.append({"strength": strength, **figs, "recall_vs_positives_only": rel})
    return {"positives_only": ref, "default": rows}


def markdown(doc: dict[str, Any]) -> str:
    """The sweep's table (docs/RESULTS.md embeds it)."""
    s = doc["summary"]
    seeds = doc["seeds"]

    def cell(x: dict[str, float]) -> str:
        return f"{x['mean']:.4f} ± {x['std']:.4f}" if seeds > 1 else f"{x['mean']:.4f}"

    lines = [
        f"### the dislike move's strength: ml-100k validation ({seeds} seed"
        + ("s, mean ± std)" if seeds > 1 else ")"),
        "",
        "`python -m bench.tune --suite ml100k_dislike_strength`: the default (subtract "
        "pathway) evaluated with its learned move away from the disliked items multiplied "
        "by s (s = 1: as trained; bench/dislike_strength.py). responsiveness@20 < 0 = fewer "
        "items like a just-disliked one in the rest of the list; the target is -0.30 within "
        "1% of positives-only's recall@20.",
        "",
        "| s | " + " | ".join(f"valid {k}" for k in KEYS) + " | recall@20 vs positives-only |",
        "|---|" + "---|" * (len(KEYS) + 1),
        "| positives-only | " + " | ".join(cell(s["positives_only"][k]) for k in KEYS) + " | |",
    ]
    for row in s["default"]:
        lines.append(
            f"| {row['strength']:g} | "
            + " | ".join(cell(row[k]) for k in KEYS)
            + f" | {row['recall_vs_positives_only']:+.1%} |"
        )
    return "\n".join(lines) + "\n"
