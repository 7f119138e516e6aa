"""Learning from dislikes, measured: ml-100k arms, the NTR weight sweep, ground-truth cases.

Run through ``python -m bench.quality --suite dislikes | dislike_cases`` (training
and tables) and ``python -m bench.tune --suite ml100k_dislikes`` (the validation
sweep behind the defaults). ``python -m bench.dislikes --plot`` redraws the λ
figure from the saved JSON, without training.

Arms
----
Every arm pins the four dislike knobs, so a later change of the defaults does not
silently change what an arm means (the arm equal to the current defaults is
marked ``default`` in the tables):

==================================  =====  ========  ==========  =====================
arm                                 input  pathway   λ (NTR)     N (dislike negatives)
==================================  =====  ========  ==========  =====================
positives_only                      off    -         0           0
ntr_no_input                        off    -         20          0
input_only                          on     concat    0           0
ntr                                 on     concat    20          0
dislike_negatives                   on     concat    0           5
dislike_negatives_ntr               on     concat    20          5
subtract_ntr                        on     subtract  20          0
subtract_dislike_negatives_ntr      on     subtract  20          5
==================================  =====  ========  ==========  =====================

``ntr_no_input`` separates the NTR term from the dislike input (the loss alone).
The λ sweep adds ``loss.ntr_weight`` in 0, 5, 20, 50, 100 for both pathways (a run
whose settings equal a main arm's is that arm's run, not repeated).

The test table is followed by each arm against positives-only paired by seed
(:func:`paired_changes`) beside the targets (``TARGETS``): recall@20 within 1%,
like_dislike_auc +0.03, dislike_share@20 -20%, responsiveness@20 <= -0.30.

Ground-truth cases (synthetic, ``quality_dislike_cases``)
---------------------------------------------------------
Data: ``synthetic:users=2000,items=1000,aversions=1,late_items=0.1,seed=<s + 1>``
for seed s (see :mod:`trainer.data.synthetic`): every user is averse to one latent
item cluster, 10% of the items are added late with 1..5 events. The default
dislike holdout is applied as training applies it, and every count below is of
TRAIN events (what the model trained on).

Scoring is the model's exported scoring: the user tower (with the similarity the
run exported) on each test user's serving-time input (:func:`build_eval_set`'s
``"test"`` rows: every positive and dislike before their last positive), against
the item embeddings, over the whole catalogue with the user's known items masked
(score descending, then item index: the evaluation's order). ``rank(u, i)`` is
item i's 0-based position in user u's list. A pair (u, i) is *eligible* when u
has not interacted with i (i is not masked: a consumed or disliked item is never
shown again, so "who still gets it" is only asked of the others) and u is in i's
*audience*: at least ``AUDIENCE_MIN`` = 2 of u's input positives are in i's
category (the only users the item is a candidate for at all; the aversions are
independent of the category, so averse and non-averse audiences are alike).
*Averse* = the ground truth says u is averse to i's cluster.

(a) Popular disliked items (:func:`popular_disliked_items`: at least users/20
    train likes and at least 5 train dislikes by averse users). Over all
    eligible (item, user) pairs pooled, the share with ``rank < 20``, for averse
    users (should be low: pushed out) and for non-averse users (should stay
    high: the item is kept for those who like it; its own likers have it
    masked, so the non-averse audience who have not seen it stands in for
    them). ``ratio`` = averse share / non-averse share (1 = no difference).
    ``separation`` = per item, P(rank of a random averse user > rank of a
    random non-averse user), ties 1/2, averaged over items with both groups:
    0.5 = the model places it alike for both, 1 = always lower for the averse.
    Read the arms against each other and against the most-popular row, not
    against 0.5: a non-averse user near the category who has not taken a
    popular item yet is a selected user (less drawn to it than its likers),
    while an averse one has simply not been exposed, so even a popularity
    ranking shows it a little more to the averse. The selection is the same
    for every arm.
(b) Cold against disliked (:func:`cold_and_disliked_items`, n = 1..5 train
    events): *cold* items are late items with exactly n train events, all likes;
    *disliked* items have exactly n train events, all dislikes by users averse
    to them. For each kind, the share of eligible non-averse pairs with
    ``rank < 100`` (reachable; for cold items it should stay high), and of
    eligible averse pairs (for disliked items it should drop), with the mean
    rank; per n and pooled over n. The most-popular ranking (train popularity)
    is given as the floor a count-only model would give.

Per seed, shares are pooled over pairs; the tables give the mean ± std of the
per-seed figures (the per-n table pools the seeds, its counts are small).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS, SHARED_DATA, mean_std

ML100K = f"movielens:{SHARED_DATA / 'ml-100k' / 'u.data'}"
CASE_WORLD = "users=2000,items=1000,aversions=1,late_items=0.1"
QUICK_CASE_WORLD = "users=1000,items=500,aversions=1,late_items=0.1"

#: The figures of the tables; which way is better.
KEYS = [
    "recall@20",
    "ndcg@20",
    "like_dislike_auc",
    "dislike_share@20",
    "dislike_rate@20",
    "responsiveness@20",
]
BETTER = {
    "recall@20": "↑",
    "ndcg@20": "↑",
    "like_dislike_auc": "↑",
    "dislike_share@20": "↓",
    "dislike_rate@20": "↓",
    "responsiveness@20": "↓",
}
#: Counts kept beside the metrics (how many users each figure covers).
COUNT_KEYS = [
    "num_users",
    "num_users_with_dislikes",
    "num_users_judged",
    "num_judged_in_top20",
    "num_users_judged_in_top20",
]

LAMBDAS = (0, 5, 20, 50, 100)
PATHWAYS = ("concat", "subtract")
NEGATIVES = 5
#: Bins of the item dislike-ratio feature in the sweep's arms that use it.
RATIO_BUCKETS = 10
DEFAULT_NTR = 20
AUDIENCE_MIN = 2
TOP_A, TOP_B = 20, 100


def arm(
    *,
    dislike_input: bool = True,
    pathway: str = "concat",
    ntr: float = 0,
    negatives: int = 0,
    weight: float | None = None,
    state: str | None = None,
    ratio: int = 0,
) -> list[str]:
    """The ``--set`` overrides of an arm, every dislike knob pinned (w, the NTR
    rows' state ``loss.ntr_state`` and the item tower's dislike-ratio feature
    ``model.item_dislike_ratio_buckets`` only when given)."""
    sets = [
        f"model.use_dislike_input={'true' if dislike_input else 'false'}",
        f"model.dislike_pathway={pathway}",
        f"loss.ntr_weight={ntr:g}",
        f"loss.dislike_negatives={negatives}",
    ]
    if weight is not None:
        sets.append(f"loss.dislike_weight={weight:g}")
    if state is not None:
        sets.append(f"loss.ntr_state={state}")
    if ratio:
        sets.append(f"model.item_dislike_ratio_buckets={ratio}")
    return sets


ARMS: dict[str, list[str]] = {
    "positives_only": arm(dislike_input=False),
    "ntr_no_input": arm(dislike_input=False, ntr=DEFAULT_NTR),
    "input_only": arm(),
    "ntr": arm(ntr=DEFAULT_NTR),
    "dislike_negatives": arm(negatives=NEGATIVES),
    "dislike_negatives_ntr": arm(ntr=DEFAULT_NTR, negatives=NEGATIVES),
    "subtract_ntr": arm(pathway="subtract", ntr=DEFAULT_NTR),
    "subtract_dislike_negatives_ntr": arm(pathway="subtract", ntr=DEFAULT_NTR, negatives=NEGATIVES),
    # The movielens default (the validation rule's pick, tune_ml100k_dislikes.md).
    "subtract_dislike_negatives_ntr5": arm(pathway="subtract", ntr=5, negatives=NEGATIVES),
}


def data_name(spec: str) -> str:
    """``movielens:/x/ml-100k/u.data`` -> ``ml-100k/u.data`` (a spec without a path: itself)."""
    kind, _, arg = spec.partition(":")
    parts = Path(arg).parts if "/" in arg else ()
    return "/".join(parts[-2:]) if parts else spec


def describe(sets: list[str]) -> str:
    """A short reading of an arm's settings: ``input concat, λ 20, N 5``."""
    kv = dict(s.split("=", 1) for s in sets)
    parts = [
        "no input"
        if kv.get("model.use_dislike_input") == "false"
        else f"input {kv.get('model.dislike_pathway', 'concat')}",
        f"λ {kv.get('loss.ntr_weight', '?')}",
        f"N {kv.get('loss.dislike_negatives', '?')}",
    ]
    if "loss.dislike_weight" in kv:
        parts.append(f"w {kv['loss.dislike_weight']}")
    if "loss.ntr_state" in kv:
        parts.append(f"NTR state {kv['loss.ntr_state']}")
    if "model.item_dislike_ratio_buckets" in kv:
        parts.append(f"item dislike ratio {kv['model.item_dislike_ratio_buckets']} bins")
    return ", ".join(parts)


def sweep_arms(
    lambdas: Iterable[float] = LAMBDAS, known: dict[str, list[str]] | None = None
) -> tuple[dict[str, list[str]], dict[str, list[dict[str, Any]]]]:
    """The λ sweep: (arms to run, pathway -> [{"lambda", "arm"}]).

    A sweep point whose settings equal an arm of ``known`` names that arm (its
    runs are shared); the others are new arms ``<pathway>_ntr<λ>``.
    """
    by_settings = {tuple(s): name for name, s in (known or {}).items()}
    arms: dict[str, list[str]] = {}
    points: dict[str, list[dict[str, Any]]] = {}
    for pathway in PATHWAYS:
        points[pathway] = []
        for lam in lambdas:
            sets = arm(pathway=pathway, ntr=lam)
            name = by_settings.get(tuple(sets), f"{pathway}_ntr{lam:g}")
            if tuple(sets) not in by_settings:
                arms[name] = sets
            points[pathway].append({"lambda": float(lam), "arm": name})
    return arms, points


def tune_arms(
    lambdas: Iterable[float] = (5, 20, 50), weights: Iterable[float] = (1, 2)
) -> dict[str, list[str]]:
    """``bench.tune --suite ml100k_dislikes``: the arms without NTR, then every
    pathway x dislike negatives x λ x w (w only matters with λ > 0)."""
    arms: dict[str, list[str]] = {
        "positives_only": arm(dislike_input=False),
        "input_only": arm(),
        "subtract_input_only": arm(pathway="subtract"),
        "dislike_negatives": arm(negatives=NEGATIVES),
        "subtract_dislike_negatives": arm(pathway="subtract", negatives=NEGATIVES),
    }
    for pathway in PATHWAYS:
        for negatives in (0, NEGATIVES):
            for lam in lambdas:
                for w in weights:
                    name = f"{pathway}{'_dn' if negatives else ''}_ntr{lam:g}_w{w:g}"
                    arms[name] = arm(pathway=pathway, ntr=lam, negatives=negatives, weight=w)
    # NTR rows scored from the state right after the dislike (loss.ntr_state=after).
    for pathway in PATHWAYS:
        for lam in lambdas:
            for w in weights:
                name = f"{pathway}_after_ntr{lam:g}_w{w:g}"
                arms[name] = arm(pathway=pathway, ntr=lam, weight=w, state="after")
    # Dislikes on the item side: the item tower's train-split dislike ratio
    # (model.item_dislike_ratio_buckets), alone and under the per-user ways.
    arms["ntr_no_input"] = ARMS["ntr_no_input"]
    with_ratio = {
        "positives_only": {"dislike_input": False},
        "ntr_no_input": {"dislike_input": False, "ntr": DEFAULT_NTR},
        "subtract_input_only": {"pathway": "subtract"},
        "subtract_ntr20_w1": {"pathway": "subtract", "ntr": 20, "weight": 1},
        "subtract_dn_ntr5_w1": {
            "pathway": "subtract",
            "ntr": 5,
            "negatives": NEGATIVES,
            "weight": 1,
        },
        "subtract_dn_ntr20_w1": {
            "pathway": "subtract",
            "ntr": 20,
            "negatives": NEGATIVES,
            "weight": 1,
        },
    }
    for name, knobs in with_ratio.items():
        arms[f"{name}_ratio{RATIO_BUCKETS}"] = arm(**knobs, ratio=RATIO_BUCKETS)
    return arms


def select_arms(
    arms: dict[str, list[str]], names: Iterable[str], reference: str
) -> dict[str, list[str]]:
    """The arms of ``arms`` named in ``names`` (grid order), always with ``reference``.

    Raises:
      ValueError: a name that is not an arm of ``arms``, with the known names.
    """
    wanted = {n.strip() for n in names if n.strip()} | {reference}
    unknown = sorted(wanted - set(arms))
    if unknown:
        raise ValueError(f"unknown arm(s) {', '.join(unknown)}; known: {', '.join(arms)}")
    return {name: sets for name, sets in arms.items() if name in wanted}


# ---------------------------------------------------------------- pure figures


def item_ranks(scores: np.ndarray, mask_ptr: np.ndarray, mask_items: np.ndarray) -> np.ndarray:
    """int64 [u, N]: each item's 0-based position in each user's list, -1 where masked.

    The list is the evaluation's: score descending, ties by item index
    ascending, the user's masked items (CSR ``mask_ptr``, ``mask_items``) removed.

    Args:
      scores: float [u, N] (a user's score of every item).
    """
    u, n = scores.shape
    neg = -np.asarray(scores, dtype=np.float64)
    rows = np.repeat(np.arange(u), np.diff(mask_ptr))
    neg[rows, mask_items] = np.inf  # masked items sort last, after every real score
    order = np.argsort(neg, axis=1, kind="stable")
    ranks = np.empty((u, n), dtype=np.int64)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(n), (u, n)), axis=1)
    ranks[rows, mask_items] = -1
    return ranks


def audience(history: np.ndarray, item_category: np.ndarray, min_count: int) -> np.ndarray:
    """bool [u, N]: at least ``min_count`` of the user's input positives share the item's category.

    Args:
      history: int [u, H] tokens (item index + 1, 0 = padding).
      item_category: int [N] category per item (0 = unknown: nobody's audience).
    """
    cats = np.concatenate([[0], np.asarray(item_category, dtype=np.int64)])[history]
    k = int(cats.max(initial=0)) + 1
    u = len(history)
    counts = np.bincount((np.arange(u)[:, None] * k + cats).ravel(), minlength=u * k).reshape(u, k)
    counts[:, 0] = 0
    return counts[:, np.asarray(item_category, dtype=np.int64)] >= min_count


def rank_separation(higher: np.ndarray, lower: np.ndarray) -> float:
    """P(a random entry of ``higher`` > a random entry of ``lower``), ties counting 1/2."""
    if len(higher) == 0 or len(lower) == 0:
        return float("nan")
    y = np.sort(lower)
    below = np.searchsorted(y, higher, side="left")
    tied = np.searchsorted(y, higher, side="right") - below
    return float((below + 0.5 * tied).sum() / (len(higher) * len(lower)))


def reach_sums(
    ranks: np.ndarray,
    averse: np.ndarray,
    eligible: np.ndarray,
    items: np.ndarray,
    k: int,
) -> dict[str, float]:
    """Sums behind the case figures over ``items`` (pooled over pairs; :func:`finish_reach`).

    Args:
      ranks: int [u, N] from :func:`item_ranks` (-1 = masked).
      averse: bool [u, N], the user is averse to the item's cluster.
      eligible: bool [u, N], the pair counts at all (the item's audience).
      items: int item indices.
      k: the cut-off ("in the top k" = rank < k).
    Returns:
      for the averse (``a_``) and other (``o_``) groups: pairs, hits (rank < k)
      and rank sums; ``sep_sum`` / ``sep_items``: :func:`rank_separation` of the
      averse ranks over the others', summed over items with both groups.
    """
    out = dict.fromkeys(
        ["items", "a_pairs", "a_hits", "a_rank", "o_pairs", "o_hits", "o_rank", "sep_sum"], 0.0
    )
    out["sep_items"] = 0.0
    for i in np.asarray(items, dtype=np.int64):
        r = ranks[:, i]
        ok = (r >= 0) & eligible[:, i]
        ra, ro = r[ok & averse[:, i]], r[ok & ~averse[:, i]]
        out["items"] += 1
        out["a_pairs"] += len(ra)
        out["a_hits"] += int((ra < k).sum())
        out["a_rank"] += float(ra.sum())
        out["o_pairs"] += len(ro)
        out["o_hits"] += int((ro < k).sum())
        out["o_rank"] += float(ro.sum())
        if len(ra) and len(ro):
            out["sep_sum"] += rank_separation(ra, ro)
            out["sep_items"] += 1
    return out


def add_sums(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {key: a.get(key, 0.0) + b.get(key, 0.0) for key in {*a, *b}}


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def finish_reach(s: dict[str, float]) -> dict[str, Any]:
    """Shares, mean ranks and separation from :func:`reach_sums` (None where no pair)."""
    averse = _ratio(s["a_hits"], s["a_pairs"])
    other = _ratio(s["o_hits"], s["o_pairs"])
    return {
        "items": int(s["items"]),
        "averse_pairs": int(s["a_pairs"]),
        "other_pairs": int(s["o_pairs"]),
        "averse_in_top": averse,
        "other_in_top": other,
        "ratio": None if averse is None or not other else averse / other,
        "averse_mean_rank": _ratio(s["a_rank"], s["a_pairs"]),
        "other_mean_rank": _ratio(s["o_rank"], s["o_pairs"]),
        "separation": _ratio(s["sep_sum"], s["sep_items"]),
    }


def pick_default(
    summary: dict[str, dict[str, float]],
    reference: str = "positives_only",
    recall_tolerance: float = 0.01,
    share_slack: float = 0.01,
) -> dict[str, Any]:
    """The tuning rule (``bench.tune --suite ml100k_dislikes``), on mean validation figures.

    1. eligible: mean recall@20 >= (1 - ``recall_tolerance``) x the reference
       arm's (at most 1% relative recall loss against positives-only);
    2. among them, keep those whose mean dislike_share@20 is at most the lowest
       eligible dislike_share@20 + ``share_slack`` (absolute);
    3. pick the highest mean like_dislike_auc; ties: higher recall@20, then name.

    Args:
      summary: arm -> {"recall@20", "like_dislike_auc", "dislike_share@20"} means.
    Returns:
      {"best", "eligible" (names), "share_floor", "recall_floor"}.
    """
    floor = (1.0 - recall_tolerance) * summary[reference]["recall@20"]
    eligible = [name for name, m in summary.items() if m["recall@20"] >= floor]
    best_share = min(summary[n]["dislike_share@20"] for n in eligible)
    close = [n for n in eligible if summary[n]["dislike_share@20"] <= best_share + share_slack]
    best = min(
        close,
        key=lambda n: (-summary[n]["like_dislike_auc"], -summary[n]["recall@20"], n),
    )
    return {
        "best": best,
        "eligible": eligible,
        "recall_floor": floor,
        "share_floor": best_share,
        "share_ceiling": best_share + share_slack,
    }


# ---------------------------------------------------------------- training runs


def _pick(metrics: dict[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    return {k: metrics[k] for k in keys if k in metrics}


def _similarity(out: Any) -> str:
    other = out.manifest_extra.get("metrics_other_similarity", {}).get("similarity", "dot")
    return "dot" if other == "cosine" else "cosine"


def held_out(ds: Any, cfg: Any) -> Any:
    """``ds`` with the config's dislike holdout applied, as training applies it."""
    from trainer.data.split import apply_dislike_holdout

    s = cfg.split
    return apply_dislike_holdout(
        ds, s.dislike_holdout, s.dislike_valid_share, s.dislike_holdout_users
    )


def valid_responsiveness(out: Any, ds: Any, cfg: Any) -> float:
    """responsiveness@20 on the validation users training evaluates (training computes it on test only)."""
    from trainer.dislike_metrics import responsiveness
    from trainer.evaluate import reference_neighbors, restrict_to_catalog
    from trainer.export import item_embeddings, serving_embed
    from trainer.metrics import topk_all_ranking

    dsh, valid, _ = valid_sets(ds, cfg)
    if not len(valid) or out.model is None:
        return 0.0
    sim = _similarity(out)
    embed = serving_embed(out.model, sim)
    items = item_embeddings(out.model, sim)
    valid = restrict_to_catalog(valid, items.shape[0])
    topk = topk_all_ranking(embed(valid.history, valid.dislikes), items, valid, k=50)
    return responsiveness(embed, items, valid, topk, reference_neighbors(dsh, dsh.num_items))


def valid_sets(ds: Any, cfg: Any) -> tuple[Any, Any, Any]:
    """(held-out data, valid users, judged valid users): the validation sets training
    evaluates, built as training builds them."""
    from trainer.data.examples import build_eval_set, build_judged_set
    from trainer.evaluate import sample_rows

    dsh = held_out(ds, cfg)
    m, t = cfg.model, cfg.train
    valid = sample_rows(
        build_eval_set(dsh, "valid", m.history_length, m.dislike_length), t.valid_max_users, t.seed
    )
    judged = sample_rows(
        build_judged_set(dsh, "valid", m.history_length, m.dislike_length),
        t.valid_max_users,
        t.seed,
    )
    return dsh, valid, judged


def valid_popular(ds: Any, cfg: Any) -> dict[str, Any]:
    """The most-popular ranking's validation figures (training reports it on test only)."""
    from trainer.evaluate import popular_baseline

    dsh, valid, judged = valid_sets(ds, cfg)
    return _pick(popular_baseline(valid, dsh.train_item_counts(), judged), [*KEYS, *COUNT_KEYS])


def effective(cfg: Any) -> dict[str, Any]:
    """The dislike knobs of a config, as run."""
    return {
        "model.use_dislike_input": cfg.model.use_dislike_input,
        "model.dislike_pathway": cfg.model.dislike_pathway,
        "loss.ntr_weight": cfg.loss.ntr_weight,
        "loss.dislike_negatives": cfg.loss.dislike_negatives,
        "loss.dislike_weight": cfg.loss.dislike_weight,
        "loss.ntr_state": cfg.loss.ntr_state,
    }


def is_default(cfg: Any, default_cfg: Any) -> bool:
    """Whether the arm's dislike knobs are the defaults' (without dislike input the
    pathway is irrelevant, so a positives-only arm is never "the default")."""
    return effective(cfg) == effective(default_cfg)


def run_arm(spec: str, ds: Any, sets: list[str], *, keep_model: bool = False) -> dict[str, Any]:
    """Train one arm; test and validation figures, cost, counts (``"outcome"`` with keep_model)."""
    from trainer.run import train, trainer_config

    cfg = trainer_config(spec.split(":", 1)[0], overrides=sets)
    with tempfile.TemporaryDirectory() as art:
        t0 = time.perf_counter()
        out = train(spec, art, cfg, ds=ds, progress=False)
        seconds = time.perf_counter() - t0
    valid = dict(out.training.get("valid_metrics") or {})
    if valid:
        valid["responsiveness@20"] = valid_responsiveness(out, ds, cfg)
    protocols = out.manifest_extra.get("eval", {}).get("protocols", {})
    run = {
        "settings": sets,
        "test": _pick(out.metrics, [*KEYS, *COUNT_KEYS]),
        "valid": _pick(valid, [*KEYS, *COUNT_KEYS]),
        "baseline_popular": _pick(out.baseline_popular, [*KEYS, *COUNT_KEYS]),
        "similarity": _similarity(out),
        "eval_protocols": {
            k: {kk: vv for kk, vv in v.items() if kk != "metrics"} for k, v in protocols.items()
        },
        "seconds": round(seconds, 1),
        "train_seconds": out.training.get("seconds"),
        "examples_per_second": out.training.get("examples_per_second"),
        "epochs_run": out.training.get("epochs_run"),
        "best_epoch": out.training.get("best_epoch"),
    }
    if keep_model:
        run["outcome"] = out
    return run


def _stats(vals: list[float]) -> dict[str, Any]:
    return {**mean_std(vals), "values": vals}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, std and values over seeds: test and valid metrics, seconds, examples/s."""
    out: dict[str, Any] = {}
    for part in ("test", "valid"):
        out[part] = {
            k: _stats([float(r[part][k]) for r in runs])
            for k in KEYS
            if runs and all(k in r[part] for r in runs)
        }
    for k in ("seconds", "train_seconds", "examples_per_second", "epochs_run"):
        vals = [float(r[k]) for r in runs if r.get(k) is not None]
        if vals:
            out[k] = _stats(vals)
    return out


def run_arms(
    spec: str,
    ds: Any,
    arms: dict[str, list[str]],
    seeds: Iterable[int],
    extra: list[str],
    label: str,
    on_run: Any = None,
    show: str = "test",
) -> dict[str, list[dict[str, Any]]]:
    """Every arm for each ``train.seed`` of ``seeds``, interleaved per seed (machine
    noise hits all arms alike).

    ``on_run(name, seed, run)`` sees each run (with its ``"outcome"``) before it
    is stored without it. Progress lines on stderr show the ``show`` figures
    (``"valid"`` for tuning, which never reads test).
    """
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in arms}
    seeds = list(seeds)
    total, done, t0 = len(seeds) * len(arms), 0, time.perf_counter()
    for seed in seeds:
        for name, sets in arms.items():
            run = run_arm(spec, ds, [*extra, *sets, f"train.seed={seed}"], keep_model=bool(on_run))
            if on_run:
                on_run(name, seed, run)
            run.pop("outcome", None)
            runs[name].append(run)
            done += 1
            elapsed = time.perf_counter() - t0
            t = run[show]
            print(
                f"[{label} {done}/{total}, {elapsed / 60:.1f} min, "
                f"~{elapsed / done * (total - done) / 60:.1f} min left] {name} seed {seed} {show}: "
                + ", ".join(f"{k} {t[k]:.4f}" for k in KEYS if k in t)
                + f" ({run['seconds']} s)",
                file=sys.stderr,
                flush=True,
            )
    return runs


# ---------------------------------------------------------------- suites


def suite_ml100k(
    seeds: int, extra: list[str], lambdas: Iterable[float] = LAMBDAS, spec: str = ML100K
) -> dict[str, Any]:
    """The main arms and the λ sweep on ``spec`` (ml-100k), test and validation figures."""
    from trainer.data.sources import load_source
    from trainer.run import trainer_config

    kind = spec.split(":", 1)[0]
    ds = load_source(spec)
    extra_arms, points = sweep_arms(lambdas, ARMS)
    arms = {**ARMS, **extra_arms}
    runs = run_arms(spec, ds, arms, range(seeds), extra, "ml-100k")
    default_cfg = trainer_config(kind, overrides=extra)
    doc_arms: dict[str, Any] = {}
    for name, sets in arms.items():
        cfg = trainer_config(kind, overrides=[*extra, *sets])
        doc_arms[name] = {
            "settings": sets,
            "effective": effective(cfg),
            "default": is_default(cfg, default_cfg),
            "main": name in ARMS,
            "runs": runs[name],
            "summary": summarize(runs[name]),
        }
    first = next(iter(runs.values()))[0]
    return {
        "data": spec,
        "seeds": seeds,
        "extra_settings": extra,
        "defaults": effective(default_cfg),
        "arms": doc_arms,
        "sweep": {"lambdas": [float(x) for x in lambdas], "pathways": points},
        "baseline_popular": {
            "test": first["baseline_popular"],
            "valid": valid_popular(ds, default_cfg),
        },
        "eval_protocols": first["eval_protocols"],
        "figures": ["quality_dislikes_lambda.png"],
    }


def case_figures(
    out: Any, ds_h: Any, cases: dict[str, Any], popular: bool = False
) -> dict[str, Any]:
    """Case (a) and (b) sums of one trained model (or of the most-popular ranking)."""
    evalset = cases["evalset"]
    if popular:
        counts = ds_h.train_item_counts().astype(np.float64)
        scores = np.broadcast_to(counts, (len(evalset), len(counts)))
    else:
        from trainer.export import item_embeddings, serving_embed

        sim = _similarity(out)
        users = serving_embed(out.model, sim)(evalset.history, evalset.dislikes)
        scores = users @ item_embeddings(out.model, sim).T
    ranks = item_ranks(scores, evalset.mask_ptr, evalset.mask_items)
    averse, eligible = cases["averse"], cases["eligible"]
    result: dict[str, Any] = {
        "a": reach_sums(ranks, averse, eligible, cases["popular"], TOP_A),
        "b": {},
    }
    for n, (cold, disliked) in cases["cold_disliked"].items():
        result["b"][str(n)] = {
            "cold": reach_sums(ranks, averse, eligible, cold, TOP_B),
            "disliked": reach_sums(ranks, averse, eligible, disliked, TOP_B),
        }
    return result


def case_world(
    arg: str, seed: int, extra: list[str] | None = None
) -> tuple[str, Any, Any, dict[str, Any]]:
    """(spec, Dataset, GroundTruth, the cases' items and user groups) of one seed's world."""
    from trainer.data.examples import build_eval_set
    from trainer.data.synthetic import generate_with_truth
    from trainer.data.synthetic_params import parse_params
    from trainer.data.synthetic_truth import cold_and_disliked_items, popular_disliked_items
    from trainer.run import trainer_config

    full = f"{arg},seed={seed + 1}"
    spec = f"synthetic:{full}"
    params = parse_params(full)
    ds, truth = generate_with_truth(params, source=spec)
    cfg = trainer_config("synthetic", overrides=extra)
    ds_h = held_out(ds, cfg)
    evalset = build_eval_set(ds_h, "test", cfg.model.history_length, cfg.model.dislike_length)
    users = evalset.users.astype(np.int64)
    cases = {
        "evalset": evalset,
        "averse": truth.averse_matrix()[users][:, truth.item_cluster],
        "eligible": audience(evalset.history, ds_h.item_features["category"], AUDIENCE_MIN),
        "popular": popular_disliked_items(ds_h, truth, min_likes=max(10, params.users // 20)),
        "cold_disliked": cold_and_disliked_items(ds_h, truth, max_events=5),
    }
    return spec, ds, truth, cases


def _case_table(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-seed finished figures, their mean ± std, and the seeds pooled per n."""
    a = [finish_reach(s["a"]) for s in per_seed]
    b_all: list[dict[str, dict[str, Any] | None]] = []
    pooled_n: dict[str, dict[str, dict[str, float]]] = {}
    for s in per_seed:
        cold: dict[str, float] = {}
        dis: dict[str, float] = {}
        for n, kinds in s["b"].items():
            cold, dis = add_sums(cold, kinds["cold"]), add_sums(dis, kinds["disliked"])
            p = pooled_n.setdefault(n, {"cold": {}, "disliked": {}})
            p["cold"] = add_sums(p["cold"], kinds["cold"])
            p["disliked"] = add_sums(p["disliked"], kinds["disliked"])
        b_all.append(
            {
                "cold": finish_reach(cold) if cold else None,
                "disliked": finish_reach(dis) if dis else None,
            }
        )

    def stats(rows: Sequence[dict[str, Any] | None], key: str) -> dict[str, Any] | None:
        vals = [float(r[key]) for r in rows if r is not None and r.get(key) is not None]
        return _stats(vals) if vals else None

    return {
        "a": {k: stats(a, k) for k in ("averse_in_top", "other_in_top", "ratio", "separation")}
        | {"items": [r["items"] for r in a], "per_seed": a},
        "b": {
            kind: {
                k: stats([r[kind] for r in b_all], k)
                for k in ("other_in_top", "averse_in_top", "other_mean_rank", "averse_mean_rank")
            }
            | {"items": [(r[kind] or {}).get("items", 0) for r in b_all]}
            for kind in ("cold", "disliked")
        }
        | {"per_seed": b_all},
        "b_by_n": {
            n: {kind: finish_reach(p[kind]) for kind in ("cold", "disliked")}
            for n, p in sorted(pooled_n.items(), key=lambda kv: int(kv[0]))
        },
    }


def suite_cases(seeds: int, extra: list[str], world: str = CASE_WORLD) -> dict[str, Any]:
    """Cases (a) and (b) on the synthetic ground truth, every main arm, ``seeds`` worlds."""
    from trainer.run import trainer_config

    sums: dict[str, list[dict[str, Any]]] = {name: [] for name in ["most_popular", *ARMS]}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in ARMS}
    t0 = time.perf_counter()
    for seed in range(seeds):
        spec, ds, _truth, cases = case_world(world, seed, extra)
        ds_h = held_out(ds, trainer_config("synthetic", overrides=extra))
        sums["most_popular"].append(case_figures(None, ds_h, cases, popular=True))

        def on_run(
            name: str, _seed: int, run: dict[str, Any], ds_h: Any = ds_h, cases: Any = cases
        ) -> None:
            sums[name].append(case_figures(run["outcome"], ds_h, cases))

        one = run_arms(spec, ds, ARMS, [seed], extra, f"cases world {seed}", on_run)
        for name in ARMS:
            runs[name] += one[name]
        print(
            f"cases: world {seed} done, {(time.perf_counter() - t0) / 60:.1f} min", file=sys.stderr
        )
    return {
        "data": f"synthetic:{world},seed=<seed + 1>",
        "seeds": seeds,
        "extra_settings": extra,
        "audience_min": AUDIENCE_MIN,
        "top_a": TOP_A,
        "top_b": TOP_B,
        "arms": {
            name: {
                "settings": ARMS.get(name, []),
                "runs": runs.get(name, []),
                "summary": summarize(runs[name]) if name in runs else {},
                "cases": _case_table(sums[name]),
            }
            for name in sums
        },
    }


# ---------------------------------------------------------------- tables and figure


def _cell(s: dict[str, Any] | None, fmt: str = ".4f") -> str:
    if s is None:
        return "-"
    if len(s.get("values", [])) > 1:
        return f"{s['mean']:{fmt}} ± {s['std']:{fmt}}"
    return f"{s['mean']:{fmt}}"


def _metric_table(doc: dict[str, Any], part: str, names: list[str]) -> list[str]:
    lines = [
        "| arm | settings | " + " | ".join(f"{k} {BETTER[k]}" for k in KEYS) + " |",
        "|---|---|" + "---|" * len(KEYS),
    ]
    for name in names:
        a = doc["arms"][name]
        label = f"**{name}** (default)" if a.get("default") else name
        cells = [_cell(a["summary"][part].get(k)) for k in KEYS]
        lines.append(f"| {label} | {describe(a['settings'])} | " + " | ".join(cells) + " |")
    base = doc["baseline_popular"].get(part) or {}
    lines.append(
        "| most popular | train popularity | "
        + " | ".join(f"{base[k]:.4f}" if k in base else "-" for k in KEYS)
        + " |"
    )
    return lines


#: The learning-from-dislikes targets on ml-100k, each arm against positives-only:
#: (metric, how the paired difference is taken, the bound, the bound's direction).
TARGETS = [
    ("recall@20", "relative", -0.01, ">="),
    ("like_dislike_auc", "absolute", 0.03, ">="),
    ("dislike_share@20", "relative", -0.20, "<="),
    ("responsiveness@20", "value", -0.30, "<="),
]
REFERENCE = "positives_only"


def _seed(run: dict[str, Any]) -> int:
    """A run's ``train.seed`` (from its settings)."""
    return next(int(x.split("=", 1)[1]) for x in run["settings"] if x.startswith("train.seed="))


def paired_changes(doc: dict[str, Any], name: str, part: str = "test") -> dict[str, Any]:
    """Arm ``name`` against positives-only, paired by seed: for each TARGETS metric the
    per-seed change (relative, absolute, or the arm's own value) as mean/std/values."""
    ref = {_seed(r): r[part] for r in doc["arms"][REFERENCE]["runs"]}
    runs = [r for r in doc["arms"][name]["runs"] if _seed(r) in ref]
    out: dict[str, Any] = {}
    for key, how, _bound, _direction in TARGETS:
        vals = []
        for r in runs:
            value, base = r[part].get(key), ref[_seed(r)].get(key)
            if value is None:
                continue
            if how == "value":
                vals.append(value)
            elif base is None:
                continue
            elif how == "absolute":
                vals.append(value - base)
            else:  # relative
                vals.append(value / base - 1.0 if base else float("nan"))
        if vals:
            out[key] = _stats(vals)
    return out


def _targets_table(doc: dict[str, Any], part: str, names: list[str]) -> list[str]:
    """Each arm against positives-only, paired by seed, beside the targets (met: ✓)."""
    head = []
    for key, how, bound, direction in TARGETS:
        shown = f"{bound:+.0%}" if how == "relative" else f"{bound:+.2f}"
        what = key if how == "value" else f"{key} change"
        head.append(f"{what} (target {direction} {shown})")
    lines = ["| arm | " + " | ".join(head) + " | targets met |", "|---|" + "---|" * (len(head) + 1)]
    for name in names:
        if name == REFERENCE:
            continue
        changes, cells, met = paired_changes(doc, name, part), [], 0
        for key, how, bound, direction in TARGETS:
            c = changes.get(key)
            if c is None:
                cells.append("-")
                continue
            ok = c["mean"] >= bound if direction == ">=" else c["mean"] <= bound
            met += ok
            fmt = "+.1%" if how == "relative" else "+.4f"
            spread = f" ± {c['std']:{fmt[1:]}}" if len(c["values"]) > 1 else ""
            cells.append(f"{c['mean']:{fmt}}{spread} {'✓' if ok else '✗'}")
        label = f"**{name}** (default)" if doc["arms"][name].get("default") else name
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {met}/{len(TARGETS)} |")
    return lines


def _users_note(doc: dict[str, Any], part: str) -> str:
    name = next(iter(doc["arms"]))
    run = doc["arms"][name]["runs"][0][part]
    return (
        f"{part}: recall/ndcg on {run.get('num_users', '?')} users (leave-last-out), "
        f"dislike_rate on {run.get('num_users_with_dislikes', '?')} users with a held-out dislike; "
        f"like_dislike_auc and dislike_share@20 on {run.get('num_users_judged', '?')} users of the "
        f"dislike holdout ({run.get('num_judged_in_top20', '?')} judged items in the top-20 of "
        f"{run.get('num_users_judged_in_top20', '?')} of them for `{name}`, seed 0)."
    )


HEADLINE_END = "<!-- headline:end -->"


def markdown_ml100k(doc: dict[str, Any]) -> str:
    main = [n for n, a in doc["arms"].items() if a.get("main")]
    seeds = doc["seeds"]
    lines = [
        f"### dislikes: {data_name(doc['data'])}, test, {seeds} seed{'s' * (seeds > 1)} (mean ± std)",
        "",
        *_metric_table(doc, "test", main),
        "",
        _users_note(doc, "test") + " ↑/↓: higher/lower is better; responsiveness@20 < 0 = "
        "the list moves away from a just-disliked item.",
        "",
        "#### against positives-only, paired by seed (test): the targets",
        "",
        *_targets_table(doc, "test", main),
        "",
        "Each seed's arm against positives-only trained with the same seed, then mean ± std "
        "over the seeds: recall@20 and dislike_share@20 as relative changes, "
        "like_dislike_auc as a difference, responsiveness@20 as the arm's own value "
        "(positives-only's is 0: it has no dislike input).",
        "",
        HEADLINE_END,
        "",
        "#### validation (what the defaults are chosen on)",
        "",
        *_metric_table(doc, "valid", main),
        "",
        _users_note(doc, "valid"),
        "",
        "#### training cost",
        "",
        "| arm | training seconds | examples/s | epochs run | seconds with evaluation |",
        "|---|---|---|---|---|",
    ]
    for name, a in doc["arms"].items():
        s = a["summary"]
        lines.append(
            f"| {name} | {_cell(s.get('train_seconds'), '.1f')} | "
            f"{_cell(s.get('examples_per_second'), ',.0f')} | {_cell(s.get('epochs_run'), '.1f')} | "
            f"{_cell(s.get('seconds'), '.1f')} |"
        )
    lines += [
        "",
        "#### NTR weight λ (test)",
        "",
        "| pathway | λ | arm | recall@20 ↑ | dislike_share@20 ↓ | like_dislike_auc ↑ | dislike_rate@20 ↓ |",
        "|---|---|---|---|---|---|---|",
    ]
    for pathway, points in doc["sweep"]["pathways"].items():
        for p in points:
            s = doc["arms"][p["arm"]]["summary"]["test"]
            lines.append(
                f"| {pathway} | {p['lambda']:g} | {p['arm']} | "
                + " | ".join(
                    _cell(s.get(k))
                    for k in (
                        "recall@20",
                        "dislike_share@20",
                        "like_dislike_auc",
                        "dislike_rate@20",
                    )
                )
                + " |"
            )
    return "\n".join(lines) + "\n"


def _share(s: dict[str, Any] | None, key: str, fmt: str = ".3f") -> str:
    return _cell(s.get(key) if s else None, fmt)


def markdown_cases(doc: dict[str, Any]) -> str:
    seeds = doc["seeds"]
    lines = [
        f"### dislike cases: synthetic ground truth ({doc['data']}), {seeds} world{'s' * (seeds > 1)}",
        "",
        f"(a) popular items that averse users dislike: share of eligible users (not interacted, "
        f">= {doc['audience_min']} input positives in the item's category) with the item in their "
        f"top-{doc['top_a']}; ratio = averse / non-averse; separation = P(the item ranks lower for "
        "an averse user than for a non-averse one), 0.5 = no difference. Compare the arms "
        "with each other and with most_popular (the selection of who has not seen a popular "
        "item yet favours the averse for every ranking). Definitions: `bench/dislikes.py`.",
        "",
        "| arm | items | averse in top-20 ↓ | non-averse in top-20 ↑ | ratio ↓ | separation ↑ | test recall@20 | test like_dislike_auc |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, a in doc["arms"].items():
        c = a["cases"]["a"]
        t = a["summary"].get("test", {})
        lines.append(
            f"| {name} | {sum(c['items'])} | {_share(c, 'averse_in_top')} | {_share(c, 'other_in_top')} | "
            f"{_share(c, 'ratio', '.2f')} | {_share(c, 'separation')} | "
            f"{_cell(t.get('recall@20'))} | {_cell(t.get('like_dislike_auc'))} |"
        )
    lines += [
        "",
        f"(b) cold-start items (late, n train events, all likes) against disliked items (n train "
        f"events, all dislikes by averse users), n = 1..5 pooled: share of eligible users with the "
        f"item in their top-{doc['top_b']}, and its mean rank (0-based) for them.",
        "",
        "| arm | cold items | cold → non-averse top-100 ↑ | cold mean rank | disliked items | "
        "disliked → averse top-100 ↓ | disliked mean rank (averse) | disliked → non-averse top-100 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, a in doc["arms"].items():
        cold, dis = a["cases"]["b"]["cold"], a["cases"]["b"]["disliked"]
        lines.append(
            f"| {name} | {sum(cold['items'])} | {_share(cold, 'other_in_top')} | "
            f"{_share(cold, 'other_mean_rank', '.0f')} | {sum(dis['items'])} | "
            f"{_share(dis, 'averse_in_top')} | {_share(dis, 'averse_mean_rank', '.0f')} | "
            f"{_share(dis, 'other_in_top')} |"
        )
    ns = sorted({n for a in doc["arms"].values() for n in a["cases"]["b_by_n"]}, key=int)
    lines += [
        "",
        "By n (worlds pooled): cold → non-averse top-100 / disliked → averse top-100 "
        "(items cold/disliked).",
        "",
        "| arm | " + " | ".join(f"n={n}" for n in ns) + " |",
        "|---|" + "---|" * len(ns),
    ]
    for name, a in doc["arms"].items():
        cells = []
        for n in ns:
            p = a["cases"]["b_by_n"].get(n)
            if not p:
                cells.append("-")
                continue
            c, d = p["cold"], p["disliked"]
            f = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
            cells.append(
                f"{f(c['other_in_top'])} / {f(d['averse_in_top'])} ({c['items']}/{d['items']})"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_lambda(doc_path: str | Path, png_path: str | Path) -> Path:
    """recall@20 against dislike_share@20 (test means ± std), one point per λ, one line per
    pathway, positives-only as a reference, from a saved ``quality_dislikes`` JSON."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    doc = json.loads(Path(doc_path).read_text())
    fig, ax = plt.subplots(figsize=(7, 4.5))

    def point(name: str) -> tuple[float, float, float, float]:
        s = doc["arms"][name]["summary"]["test"]
        x, y = s["dislike_share@20"], s["recall@20"]
        return x["mean"], y["mean"], x["std"], y["std"]

    for pathway, points in doc["sweep"]["pathways"].items():
        xy = [point(p["arm"]) for p in points]
        ax.errorbar(
            [p[0] for p in xy],
            [p[1] for p in xy],
            xerr=[p[2] for p in xy],
            yerr=[p[3] for p in xy],
            marker="o",
            capsize=2,
            label=f"{pathway} pathway",
        )
        for p, (x, y, _, _) in zip(points, xy, strict=True):
            ax.annotate(
                f"λ={p['lambda']:g}", (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8
            )
    if "positives_only" in doc["arms"]:
        x, y, dx, dy = point("positives_only")
        ax.errorbar(
            [x],
            [y],
            xerr=[dx],
            yerr=[dy],
            marker="*",
            markersize=12,
            linestyle="none",
            color="black",
            label="positives only",
        )
    ax.set_xlabel("dislike_share@20 (test; lower is better)")
    ax.set_ylabel("recall@20 (test; higher is better)")
    seeds = doc.get("seeds", 0)
    ax.set_title(
        f"{data_name(doc['data'])}: NTR weight λ, mean ± std over {seeds} seed{'s' * (seeds != 1)}"
    )
    ax.margins(0.1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return png_path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--plot", action="store_true", help="redraw the λ figure from the saved JSON")
    p.add_argument(
        "--name", default="quality_dislikes", help="results name (quality_dislikes_quick)"
    )
    args = p.parse_args(argv)
    if not args.plot:
        p.error("nothing to do: use --plot (training runs through bench.quality / bench.tune)")
    doc_path = RESULTS / f"{args.name}.json"
    png = plot_lambda(doc_path, RESULTS / f"{args.name}_lambda.png")
    print(f"wrote {png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
