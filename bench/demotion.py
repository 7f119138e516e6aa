"""Serving's soft demotion, measured on ml-100k: a fresh dislike, and every recent one.

Soft demotion lowers a candidate's score by ``weight * max(0, sim - threshold)``
(times the user's and the item's vector lengths, 1 for a cosine export), ``sim``
its largest cosine with the dislikes demotion reacts to (serving/settings.py
``demote_*``, ``serving.retrieval.Demotion``). The threshold is either absolute or
the served version's own: the cosine above which a ``near`` share of its item
pairs lie (``LoadedModel.near_similarity``). Every table runs the *serving*
retrieval code (``serving.retrieval.run_batch`` on a ``serving.model.LoadedModel``)
for the users of models trained by ``twotower train`` (one per seed), with the
contract's masking (docs/CONTRACT.md); mean ± std over the seeds. Each model is
measured on its validation users, where serving's defaults are chosen
(:func:`choose`), and on its test users, which report them.

1. **A fresh dislike** (``demote_dislikes=fresh``): each user dislikes their
   current top-1 item t now, after the version's data. As serving does then, the
   tower gets t as the newest dislike, t is filtered, and demotion reacts to t
   alone (the user's older dislikes the version has learned from). Reported:
   responsiveness@20 of the served list (the probe of
   :func:`trainer.dislike_metrics.responsiveness`: the relative change in how many
   of t's reference neighbours the top-20 holds, before the dislike = the list
   without t), recall@20 of the held-out item after the dislike, and items demoted
   out of the top-20 per user. Weight 0 is the tower alone.
2. **Real feedback**: each judged user's first held-out dislike becomes the fresh
   one; the rest of their held-out likes and dislikes judge the served list.
3. **Every recent dislike** (``demote_dislikes=recent``): demotion near the
   ``--recent`` latest dislikes of each test user's input, whatever their age:
   recall@20, ndcg@20, dislike_rate@20 of the list as the test split judges it.
   With ``fresh`` these dislikes all precede the version's newest training event,
   so none is demoted and the figures are weight 0's.

Usage: python -m bench.demotion [--epochs 8] [--seeds 5] [--recent 5]
Writes bench/results/demotion.json and .md.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.common import RESULTS, SHARED_DATA, mean_std, write_result
from bench.report import HEADLINE_END
from serving.retrieval import Demotion

#: Off, the earlier absolute threshold, and per-version thresholds (weight x near).
SETTINGS = [
    Demotion(),
    Demotion(0.5, 0.6),
    *(
        Demotion(w, None, near)
        for near in (0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
        for w in (0.25, 0.5, 0.75, 1.0)
    ),
]
K = 20
BATCH = 64  # serving's default micro-batch
SPLITS = ("valid", "test")
FRESH_KEYS = ("responsiveness@20", "recall@20", "demoted_per_user", "threshold_used")
REAL_KEYS = ("like_dislike_auc", "dislike_share@20", "judged_in_top20", "demoted_per_user")
RECENT_KEYS = ("recall@20", "ndcg@20", "dislike_rate@20", "demoted_per_user")
TABLES = (("fresh", FRESH_KEYS), ("real", REAL_KEYS), ("recent", RECENT_KEYS))
#: :func:`choose`'s limits against the tower alone, on validation: recall@20 after the
#: probe's dislike kept to this share (the probe's dislike is made up: a user may like
#: items near it), and real feedback's like_dislike_auc no lower by more than this.
RECALL_KEPT = 0.95
AUC_SLACK = 0.005


def setting_label(d: Demotion) -> dict[str, Any]:
    """A setting as the result's rows name it."""
    if not d.enabled:
        return {"weight": 0.0, "threshold": None, "near": None}
    return {
        "weight": d.weight,
        "threshold": d.threshold,
        "near": None if d.threshold is not None else d.near,
    }


def _label_text(row: dict[str, Any]) -> str:
    if not row["weight"]:
        return "off | "
    if row["threshold"] is not None:
        return f"{row['weight']} | absolute {row['threshold']}"
    return f"{row['weight']} | near {row['near']}"


def _served(queries: list[Any], demotion: Any, width: int) -> tuple[np.ndarray, float]:
    """Top-``width`` rows per query through serving's batches (-1 padded), and items demoted per query."""
    from serving.retrieval import run_batch

    results = []
    for start in range(0, len(queries), BATCH):
        results += run_batch(queries[start : start + BATCH], demotion)
    topk = np.full((len(queries), width), -1, np.int64)
    for r, res in enumerate(results):
        got = res.rows[:width]
        topk[r, : len(got)] = got
    return topk, float(np.mean([res.demoted for res in results]))


def _one_seed(spec: str, ds: Any, epochs: int, seed: int, recent: int) -> dict[str, Any]:
    """Per split, the tables' rows (one per setting) for the model of ``train.seed=seed``."""
    from common import artifacts
    from serving.model import load_model
    from trainer.run import train, trainer_config

    with tempfile.TemporaryDirectory() as art:
        overrides = [f"train.epochs={epochs}", f"train.seed={seed}"]
        train(spec, art, trainer_config("movielens", overrides=overrides), ds=ds, progress=False)
        version = artifacts.latest_version(art)
        assert version is not None, "train published no version"
        model = load_model(art, version)
        return {split: _measure(model, ds, seed, recent, split) for split in SPLITS}


def _measure(model: Any, ds: Any, seed: int, recent: int, split: str) -> dict[str, list[dict]]:
    """The three tables' rows for one loaded version, on its ``split`` users."""
    from trainer.dislike_metrics import close_count, dislike_share, like_dislike_auc
    from trainer.evaluate import version_neighbors
    from trainer.exported import version_test_sets
    from trainer.metrics import ranking_metrics

    ds, test, judged = version_test_sets(model.manifest, ds, np.asarray(model.item_ids), split)
    counts = ds.train_item_counts()[: model.num_items]
    neighbors = version_neighbors(ds, model.num_items)
    masks = [set(test.mask(r).tolist()) for r in range(len(test))]

    # The probe: t = today's top-1, disliked now; "before" = the list without it.
    base, _ = _served(_queries(model, test, test.dislikes, masks, k=K + 1), Demotion(), K + 1)
    t = base[:, 0]
    before = base[:, 1 : K + 1]
    close = neighbors[t]
    n_before = close_count(before, close)
    probe_dislikes = _newest(test.dislikes, t)
    probe_masks = [m | {int(x)} for m, x in zip(masks, t, strict=True)]
    # Real feedback: each judged user's first held-out dislike d is the fresh one; the
    # rest of their held-out answers judge the list (users with another dislike left).
    real, d = _first_dislike_out(judged)
    real_vecs = model.embed(real.history, real.dislikes)
    real_masks = [set(real.mask(r).tolist()) | {int(d[r])} for r in range(len(real))]

    def latest(r: int) -> np.ndarray:
        disl = test.dislikes[r]
        return (disl[disl > 0] - 1)[-recent:].astype(np.int64)

    fresh_rows, real_rows, recent_rows = [], [], []
    for demotion in SETTINGS:
        label = setting_label(demotion)
        after, demoted = _served(
            _queries(model, test, probe_dislikes, probe_masks, lambda r: t[r : r + 1]),
            demotion,
            K,
        )
        fresh_rows.append(
            {
                **label,
                "responsiveness@20": (close_count(after, close) - n_before) / max(n_before, 1),
                "recall@20": ranking_metrics(after, test, counts)["recall@20"],
                "demoted_per_user": demoted,
                "threshold_used": demotion.threshold_for(model) if demotion.enabled else None,
                "users": len(test),
            }
        )
        listed, demoted = _served(
            _queries(model, real, real.dislikes, real_masks, lambda r: d[r : r + 1]), demotion, K
        )
        share, shown, _ = dislike_share(listed, real)
        real_rows.append(
            {
                **label,
                "like_dislike_auc": like_dislike_auc(
                    _demoted_scores(model, real_vecs, d, demotion), real
                ),
                "dislike_share@20": share,
                "judged_in_top20": shown,
                "demoted_per_user": demoted,
                "users": len(real),
            }
        )

        listed, demoted = _served(_queries(model, test, test.dislikes, masks, latest), demotion, K)
        m = ranking_metrics(listed, test, counts)
        recent_rows.append(
            {**label, **{key: m[key] for key in RECENT_KEYS[:-1]}, "demoted_per_user": demoted}
        )
        print(f"seed {seed} {split}", fresh_rows[-1], real_rows[-1], file=sys.stderr)
    return {"fresh": fresh_rows, "real": real_rows, "recent": recent_rows}


def _queries(
    model: Any,
    users: Any,
    dislikes: np.ndarray,
    blocked: list[set[int]],
    demote: Callable[[int], np.ndarray] | None = None,
    k: int = K,
) -> list[Any]:
    """One serving query per user row: its history, ``dislikes`` tokens, ``blocked`` rows."""
    from serving.retrieval import Query

    return [
        Query(
            model=model,
            k=k,
            blocked=blocked[r],
            history=users.history[r],
            dislikes=dislikes[r],
            demote_rows=None if demote is None else np.asarray(demote(r), np.int64),
        )
        for r in range(len(users))
    ]


def _newest(dislikes: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Dislike tokens [u, D] with ``rows`` [u] appended as each user's newest (oldest dropped)."""
    return np.concatenate([dislikes[:, 1:], (rows + 1)[:, None].astype(dislikes.dtype)], axis=1)


def _first_dislike_out(judged: Any) -> tuple[Any, np.ndarray]:
    """The judged users with >= 2 held-out dislikes, the first of them moved to the input.

    Returns (users, d): ``d`` [u] the moved dislike's row (the newest dislike token,
    filtered); the remaining held-out dislikes and every held-out positive stay answers.
    """
    n_dis = np.diff(judged.dislike_ptr)
    users = judged.subset(np.flatnonzero(n_dis >= 2))
    starts = users.dislike_ptr[:-1]
    d = users.dislike_items[starts].astype(np.int64)
    keep = np.ones(len(users.dislike_items), bool)
    keep[starts] = False
    ptr = users.dislike_ptr - np.arange(len(users.dislike_ptr))
    return (
        dataclasses.replace(
            users,
            dislikes=_newest(users.dislikes, d),
            dislike_ptr=ptr,
            dislike_items=users.dislike_items[keep],
        ),
        d,
    )


def _demoted_scores(
    model: Any, vecs: np.ndarray, d: np.ndarray, demotion: Any
) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """scores_of for :func:`like_dislike_auc`: the served score, demotion near ``d`` included."""
    emb = model.embeddings

    def scores_of(rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        score = np.einsum("ij,ij->i", vecs[rows], emb[items])
        if demotion.enabled:  # serving.retrieval.demotion_penalty, pair by pair
            norms, near = model.item_norms, d[rows]
            cos = np.einsum("ij,ij->i", emb[near], emb[items]) / (norms[near] * norms[items])
            over = np.maximum(0.0, cos - demotion.threshold_for(model))
            lengths = np.linalg.norm(vecs[rows], axis=1) * norms[items]
            score = score - demotion.weight * lengths * over
        return score

    return scores_of


def summarize(per_seed: list[dict[str, list[dict]]]) -> dict[str, list[dict]]:
    """Per table and setting: mean and std over the seeds of every figure (one split's runs)."""
    out: dict[str, list[dict]] = {}
    for table, keys in TABLES:
        out[table] = [
            {
                **{k: per_seed[0][table][i][k] for k in ("weight", "threshold", "near")},
                **{
                    key: mean_std([run[table][i][key] for run in per_seed])
                    for key in keys
                    if per_seed[0][table][i].get(key) is not None
                },
            }
            for i in range(len(per_seed[0][table]))
        ]
    return out


def choose(summary: dict[str, list[dict]]) -> int:
    """The setting serving defaults to: its index in the rows of a validation ``summary``.

    The lowest mean responsiveness@20 among the settings that keep recall@20 after
    the probe's dislike to :data:`RECALL_KEPT` of the tower alone's (the first row)
    and real feedback's like_dislike_auc within :data:`AUC_SLACK` of it; the tower
    alone (0) when none does.
    """
    fresh, real = summary["fresh"], summary["real"]
    recall0 = fresh[0]["recall@20"]["mean"]
    auc0 = real[0]["like_dislike_auc"]["mean"]
    best = 0
    for i, (f, r) in enumerate(zip(fresh, real, strict=True)):
        if (
            f["recall@20"]["mean"] >= RECALL_KEPT * recall0
            and r["like_dislike_auc"]["mean"] >= auc0 - AUC_SLACK
            and f["responsiveness@20"]["mean"] < fresh[best]["responsiveness@20"]["mean"]
        ):
            best = i
    return best


def markdown(doc: dict[str, Any]) -> str:
    """The result's tables: validation's probe (the choice), then test's three tables."""

    def cell(v: dict[str, float] | None, fmt: str) -> str:
        return "" if v is None else f"{v['mean']:{fmt}} ± {v['std']:{fmt}}"

    n = len(doc["seeds"])
    chosen = doc["chosen"]
    valid, test = doc["valid"], doc["test"]

    def probe(rows: list[dict], mark: bool) -> list[str]:
        out = [
            "| demote weight | threshold | responsiveness@20 ↓ | recall@20 after the dislike | "
            "items demoted out of top-20 per user | cosine threshold used |",
            "|---|---|---|---|---|---|",
        ]
        for i, r in enumerate(rows):
            star = " **(default)**" if mark and i == chosen else ""
            out.append(
                f"| {_label_text(r)}{star} | {cell(r['responsiveness@20'], '.3f')} | "
                f"{cell(r['recall@20'], '.4f')} | {cell(r['demoted_per_user'], '.2f')} | "
                f"{cell(r.get('threshold_used'), '.3f')} |"
            )
        return out

    def real(rows: list[dict], users: int) -> list[str]:
        out = [
            f"The {users} judged users with two or more held-out dislikes: the first becomes "
            "a fresh dislike (the tower's newest dislike, filtered, demoted near); the rest of "
            "their held-out likes and dislikes judge the served list.",
            "",
            "| demote weight | threshold | like_dislike_auc ↑ | dislike_share@20 ↓ | "
            "judged items in the top-20 | items demoted out of top-20 per user |",
            "|---|---|---|---|---|---|",
        ]
        for r in rows:
            out.append(
                f"| {_label_text(r)} | {cell(r['like_dislike_auc'], '.4f')} | "
                f"{cell(r['dislike_share@20'], '.4f')} | {cell(r['judged_in_top20'], '.0f')} | "
                f"{cell(r['demoted_per_user'], '.2f')} |"
            )
        return out

    users = {
        split: (
            doc["per_seed"][0][split]["fresh"][0]["users"],
            doc["per_seed"][0][split]["real"][0]["users"],
        )
        for split in SPLITS
    }
    lines = [
        f"##### a fresh dislike, the responsiveness probe: ml-100k **validation**, {n} seeds, "
        "mean ± std",
        "",
        f"Each of the {users['valid'][0]} validation users dislikes their current top-1 item "
        "now. responsiveness@20 < 0 = fewer items like it in the served top-20; recall@20 = "
        "the held-out item, after the dislike (the probe's dislike is made up: the user may "
        "well like items near it). `near s` = the version's own threshold, the cosine "
        f"that a share s of its item pairs exceed. The default is `bench.demotion.choose`'s "
        f"pick: the most responsive setting that keeps {RECALL_KEPT:.0%} of the tower "
        f"alone's recall@20 here and real feedback's like_dislike_auc within {AUC_SLACK} of "
        "it (table below).",
        "",
        *probe(valid["fresh"], True),
        "",
        f"##### the same probe: ml-100k test, {users['test'][0]} users, {n} seeds",
        "",
        *probe(test["fresh"], False),
        "",
        "##### a fresh dislike, real feedback (`demote_dislikes=fresh`): ml-100k test",
        "",
        *real(test["real"], users["test"][1]),
        "",
        HEADLINE_END,
        "",
        "##### real feedback: ml-100k validation",
        "",
        *real(valid["real"], users["valid"][1]),
        "",
        f"##### every recent dislike (`demote_dislikes=recent`, the {doc['recent_dislikes']} "
        f"latest): ml-100k test, {n} seeds, mean ± std",
        "",
        "Under `fresh` none of these dislikes is demoted (all precede the version's data): "
        "its figures are weight 0's.",
        "",
        "| demote weight | threshold | recall@20 | ndcg@20 | dislike_rate@20 | "
        "items demoted out of top-20 per user |",
        "|---|---|---|---|---|---|",
    ]
    for r in test["recent"]:
        lines.append(
            f"| {_label_text(r)} | {cell(r['recall@20'], '.4f')} | "
            f"{cell(r['ndcg@20'], '.4f')} | {cell(r['dislike_rate@20'], '.4f')} | "
            f"{cell(r['demoted_per_user'], '.2f')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--recent", type=int, default=5, help="recent dislikes the second table demotes")
    args = p.parse_args(argv)

    from trainer.data.sources import load_source

    spec = f"movielens:{SHARED_DATA / 'ml-100k' / 'u.data'}"
    ds = load_source(spec)
    seeds = list(range(args.seeds))
    per_seed = [_one_seed(spec, ds, args.epochs, s, args.recent) for s in seeds]
    summaries = {split: summarize([run[split] for run in per_seed]) for split in SPLITS}
    chosen = choose(summaries["valid"])
    doc = {
        "data": spec,
        "epochs": args.epochs,
        "seeds": seeds,
        "recent_dislikes": args.recent,
        "rule": {"recall_kept": RECALL_KEPT, "auc_slack": AUC_SLACK},
        "chosen": chosen,
        "chosen_setting": setting_label(SETTINGS[chosen]),
        **summaries,
        "per_seed": per_seed,
    }
    write_result("demotion", doc)
    md = markdown(doc)
    (RESULTS / "demotion.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
