"""A per-item term (popularity, or quality from dislikes) added to the retrieval score, on
validation (not a test).

``python -m bench.tune --suite ml100k_dislike_prior|ml100k_dislike_quality|gowalla_prior
[--seeds 3] [--quick]``

Under cosine similarity every item vector has norm 1, so the trained score
cannot carry a per-item term (an item's general appeal); the most-popular
ranking, which has nothing else, scores like_dislike_auc and
dislike_share@20 close to the trained models'. This sweep asks what such a
term is worth beside each way of learning: for each seed it trains
positives-only and the movielens default and evaluates both on **validation**
with score(u, i) = u . v_i + beta * spread * z_i, where z_i is the item's
log(1 + train positives) standardised over the catalogue and spread the
standard deviation of u . v over validation users and items (so beta is in
units of the model's own score spread). It is exactly one more coordinate:
items [v_i, beta * spread * z_i], users [u, 1], so an exported index could
serve it unchanged. beta = 0 is the trained model. Validation figures only;
the test split is not read.

``--suite ml100k_dislike_quality`` puts an item-quality term in the same place:
z_i is minus the item's smoothed train dislike ratio, (d_i + a m) / (d_i + l_i
+ a) with l_i, d_i its train positives and dislikes, m the catalogue's dislike
share and a = ``QUALITY_SMOOTHING`` events, standardised: what everyone's
dislikes say about an item, which a cosine item tower cannot express as a
score offset (its vectors have norm 1).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench import dislikes
from bench.common import SHARED_DATA, mean_std

BETAS = (0.0, 0.25, 0.5, 1.0)
QUICK_BETAS = (0.0, 0.5)
#: ``--suite ml100k_dislike_quality``: finer steps (the term moves recall faster than popularity).
QUALITY_BETAS = (0.0, 0.1, 0.2, 0.3, 0.5, 1.0)
#: ``--suite gowalla_prior``: the `lightgcn:` default alone (no dislikes in that format),
#: without the final refit (validation must stay held out), at smaller betas.
GOWALLA = f"lightgcn:{SHARED_DATA / 'gowalla'}"
GOWALLA_BETAS = (0.0, 0.1, 0.25, 0.5)
GOWALLA_SETTINGS = ["train.refit=false"]
KEYS = ["recall@20", "ndcg@20", "like_dislike_auc", "dislike_share@20", "responsiveness@20"]
ARMS = ("positives_only", "default")
#: The quality term's prior strength: the catalogue's dislike share counts as this many events.
QUALITY_SMOOTHING = 5.0
#: The per-item terms a sweep can add (``sweep(term=...)``).
TERMS = ("popularity", "quality")
TITLES = {"popularity": "an item-popularity prior", "quality": "an item-quality term"}
Z_OF = {
    "popularity": "log(1 + train positives)",
    "quality": f"-(train dislikes + {QUALITY_SMOOTHING:g} m) / (train events + {QUALITY_SMOOTHING:g})",
}
#: ``bench.tune`` suites of this module: the sweep's arguments beyond seeds (``extra`` is
#: added to the settings given on the command line).
SUITES: dict[str, dict[str, Any]] = {
    "ml100k_dislike_prior": {"betas": BETAS},
    "ml100k_dislike_quality": {"betas": QUALITY_BETAS, "term": "quality"},
    "gowalla_prior": {
        "betas": GOWALLA_BETAS,
        "spec": GOWALLA,
        "arms": ("default",),
        "extra": GOWALLA_SETTINGS,
    },
}

Embed = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _standardised(x: np.ndarray) -> np.ndarray:
    std = float(x.std())
    return ((x - x.mean()) / std if std > 0 else np.zeros_like(x)).astype(np.float32)


def popularity_z(train_counts: np.ndarray) -> np.ndarray:
    """float32 [N]: log(1 + train positives), standardised (zeros for a constant catalogue)."""
    return _standardised(np.log1p(np.asarray(train_counts, dtype=np.float64)))


def quality_z(
    likes: np.ndarray, dislikes_: np.ndarray, smoothing: float = QUALITY_SMOOTHING
) -> np.ndarray:
    """float32 [N]: minus each item's smoothed dislike ratio, standardised (module docstring)."""
    likes = np.asarray(likes, dtype=np.float64)
    bad = np.asarray(dislikes_, dtype=np.float64)
    total = float(likes.sum() + bad.sum())
    share = float(bad.sum()) / total if total else 0.0
    return _standardised(-(bad + smoothing * share) / (likes + bad + smoothing))


def item_term(dsh: Any, term: str) -> np.ndarray:
    """The ``term`` values of the held-out data set's items, from its TRAIN events only."""
    from trainer.data.dataset import DISLIKE, TRAIN

    if term == "popularity":
        return popularity_z(dsh.train_item_counts())
    if term == "quality":
        sel = (dsh.split == TRAIN) & (dsh.labels == DISLIKE)
        bad = np.bincount(dsh.items[sel], minlength=dsh.num_items)
        return quality_z(dsh.train_item_counts(), bad)
    raise ValueError(f"unknown term {term!r}: one of {', '.join(TERMS)}")


def with_prior(
    embed: Embed, items: np.ndarray, z: np.ndarray, weight: float
) -> tuple[Embed, np.ndarray]:
    """(embed, items) scoring ``u . v_i + weight * z_i``: one more coordinate on each side."""
    if len(z) != len(items):
        raise ValueError(f"{len(z)} prior values for {len(items)} items")
    items_out = np.concatenate([items, (weight * z)[:, None]], axis=1).astype(np.float32)

    def embed_out(history: np.ndarray, dislikes_: np.ndarray) -> np.ndarray:
        u = np.asarray(embed(history, dislikes_), dtype=np.float32)
        return np.concatenate([u, np.ones((len(u), 1), np.float32)], axis=1)

    return embed_out, items_out


def score_spread(embed: Embed, items: np.ndarray, valid: Any, users: int = 200) -> float:
    """Standard deviation of u . v over (the first ``users`` validation users) x items."""
    u = np.asarray(embed(valid.history[:users], valid.dislikes[:users]), dtype=np.float32)
    return float(np.std(u @ items.T))


def prior_figures(
    out: Any, ds: Any, cfg: Any, betas: tuple[float, ...], term: str = "popularity"
) -> list[dict[str, Any]]:
    """Validation figures of a trained model (``out`` kept its model) with ``term`` at each beta."""
    from trainer.evaluate import evaluate, reference_neighbors
    from trainer.export import item_embeddings, serving_embed

    dsh, valid, judged = dislikes.valid_sets(ds, cfg)
    neighbors, counts = reference_neighbors(dsh, dsh.num_items), dsh.train_item_counts()
    sim = dislikes._similarity(out)
    embed, items = serving_embed(out.model, sim), item_embeddings(out.model, sim)
    z, spread = item_term(dsh, term), score_spread(embed, items, valid)
    rows = []
    for beta in betas:
        e, i = with_prior(embed, items, z, beta * spread)
        metrics = evaluate(e, i, valid, counts, neighbors, judged).metrics
        rows.append({"beta": beta, **{k: float(metrics[k]) for k in KEYS}})
    return rows


def sweep(
    seeds: int,
    extra: list[str],
    betas: tuple[float, ...] = BETAS,
    spec: str = dislikes.ML100K,
    arms: tuple[str, ...] = ARMS,
    term: str = "popularity",
) -> dict[str, Any]:
    """Per seed: each arm's validation figures (positives-only, the default) at each beta."""
    from trainer.data.dataset import DISLIKE
    from trainer.data.sources import load_source
    from trainer.run import trainer_config

    kind = spec.split(":", 1)[0]
    ds = load_source(spec)
    settings = {"positives_only": dislikes.arm(dislike_input=False), "default": []}
    per_seed = []
    t0 = time.perf_counter()
    for seed in range(seeds):
        row: dict[str, Any] = {"seed": seed}
        for name in arms:
            sets = [*extra, *settings[name], f"train.seed={seed}"]
            run = dislikes.run_arm(spec, ds, sets, keep_model=True)
            cfg = trainer_config(kind, overrides=sets)
            row[name] = prior_figures(run.pop("outcome"), ds, cfg, betas, term)
        per_seed.append(row)
        print(
            f"[prior seed {seed + 1}/{seeds}, {(time.perf_counter() - t0) / 60:.1f} min] "
            + ", ".join(
                f"b={r['beta']:g}: recall {r['recall@20']:.4f} share {r['dislike_share@20']:.3f}"
                for r in row["default"]
            ),
            flush=True,
        )
    return {
        "data": spec,
        "seeds": seeds,
        "extra_settings": extra,
        "defaults": dislikes.effective(trainer_config(kind, overrides=extra)),
        "betas": list(betas),
        "term": term,
        "arms": list(arms),
        # Without dislikes (lightgcn:) the dislike figures are constants: not shown.
        "keys": KEYS if bool((ds.labels == DISLIKE).any()) else KEYS[:2],
        "per_seed": per_seed,
        "summary": summarize(per_seed, betas, arms),
    }


def summarize(
    per_seed: list[dict[str, Any]], betas: tuple[float, ...], arms: tuple[str, ...] = ARMS
) -> dict[str, Any]:
    """Mean and std over seeds per arm and beta, each arm's recall@20 against its own at
    beta 0, and (both arms run) the default against positives-only at the same beta (the
    targets' comparison) and against positives-only as trained (beta 0)."""
    both = not set(ARMS) - set(arms)
    # Each arm as trained (beta 0): its recall@20, and positives-only's figures.
    recall0 = {
        arm: statistics.fmean(float(s[arm][0]["recall@20"]) for s in per_seed) for arm in arms
    }
    ref0 = (
        {k: statistics.fmean(float(s["positives_only"][0][k]) for s in per_seed) for k in KEYS}
        if both
        else {}
    )
    rows = []
    for i, beta in enumerate(betas):
        figs = {
            arm: {k: mean_std([float(s[arm][i][k]) for s in per_seed]) for k in KEYS}
            for arm in arms
        }
        row: dict[str, Any] = {
            "beta": beta,
            **figs,
            "recall_vs_beta0": {
                arm: float(figs[arm]["recall@20"]["mean"] / recall0[arm] - 1.0) for arm in arms
            },
        }
        if not both:
            rows.append(row)
            continue

        def rel(key: str, ref: dict[str, float], figs: dict[str, Any] = figs) -> float:
            return float(figs["default"][key]["mean"] / ref[key] - 1.0)

        same = {k: figs["positives_only"][k]["mean"] for k in KEYS}
        rows.append(
            {
                **row,
                "default_vs_positives_only": {
                    "recall@20": rel("recall@20", same),
                    "dislike_share@20": rel("dislike_share@20", same),
                    "like_dislike_auc": figs["default"]["like_dislike_auc"]["mean"]
                    - same["like_dislike_auc"],
                },
                "default_vs_positives_only_as_trained": {
                    "recall@20": rel("recall@20", ref0),
                    "dislike_share@20": rel("dislike_share@20", ref0),
                    "like_dislike_auc": figs["default"]["like_dislike_auc"]["mean"]
                    - ref0["like_dislike_auc"],
                },
            }
        )
    return {"rows": rows}


def markdown(doc: dict[str, Any]) -> str:
    """The sweep's tables."""
    seeds = doc["seeds"]
    arms = tuple(doc.get("arms", ARMS))
    keys = doc.get("keys", KEYS)
    both = not set(ARMS) - set(arms)

    def cell(x: dict[str, float]) -> str:
        return f"{x['mean']:.4f} ± {x['std']:.4f}" if seeds > 1 else f"{x['mean']:.4f}"

    path = Path(str(doc.get("data", dislikes.ML100K)).split(":", 1)[-1])
    name = path.parent.name if path.suffix else path.name  # ml-100k/u.data, gowalla/
    term = doc.get("term", "popularity")
    how = f"`python -m bench.tune --suite {doc.get('suite', 'ml100k_dislike_prior')}` " + (
        "(bench/dislike_prior.py): positives-only and the default"
        if both
        else "(bench/dislike_prior.py): "
        + " and ".join(arms)
        + (f" ({', '.join(doc['extra_settings'])})" if doc.get("extra_settings") else "")
    )
    lines = [
        f"### {TITLES[term]} in the score: {name} validation ({seeds} seed"
        + ("s, mean ± std)" if seeds > 1 else ")"),
        "",
        how + f" evaluated with score u . v + beta x spread x z({Z_OF[term]}); "
        "beta = 0: as trained."
        + (
            " Targets (default against positives-only): like_dislike_auc +0.03, "
            "dislike_share@20 -20%, recall@20 within 1%."
            if both
            else ""
        ),
        "",
        "| beta | arm | " + " | ".join(f"valid {k}" for k in keys) + " | recall@20 vs beta 0 |",
        "|---|---|" + "---|" * (len(keys) + 1),
    ]
    for row in doc["summary"]["rows"]:
        for arm in arms:
            change = row.get("recall_vs_beta0", {}).get(arm)
            lines.append(
                f"| {row['beta']:g} | {arm} | "
                + " | ".join(cell(row[arm][k]) for k in keys)
                + (f" | {change:+.1%} |" if change is not None else " | |")
            )
    if not both:
        return "\n".join(lines) + "\n"
    lines += [
        "",
        "| beta | default vs positives-only, same beta: recall@20 / dislike_share@20 / AUC "
        "| default vs positives-only as trained (beta 0) |",
        "|---|---|---|",
    ]
    for row in doc["summary"]["rows"]:
        a, b = row["default_vs_positives_only"], row["default_vs_positives_only_as_trained"]
        lines.append(
            f"| {row['beta']:g} | {a['recall@20']:+.1%} / {a['dislike_share@20']:+.1%} / "
            f"{a['like_dislike_auc']:+.4f} | {b['recall@20']:+.1%} / "
            f"{b['dislike_share@20']:+.1%} / {b['like_dislike_auc']:+.4f} |"
        )
    return "\n".join(lines) + "\n"
