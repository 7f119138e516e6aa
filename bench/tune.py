"""The validation sweep behind the default config (tuning reads validation only).

For each setting, train on the source and report the *validation* split's
recall@20, ndcg@20 and dislike_rate@20 (the test split is never looked at
here). The defaults in ``trainer/config.py`` are the settings that keep
validation recall@20 within noise of the best while cutting dislike_rate@20.

Usage:
  python -m bench.tune --suite ml100k
  python -m bench.tune --suite synthetic
  python -m bench.tune --suite gowalla      (3 epochs per setting, temperature only)
  python -m bench.tune --suite gowalla_history   (3 epochs per setting, history width H)
  python -m bench.tune --suite ml100k_dedupe | gowalla_dedupe   (loss.dedupe_candidates)
  python -m bench.tune --suite ml100k_dislikes [--seeds 3] [--quick]
Writes bench/results/tune_<suite>.json and .md.

ml100k_dislikes: the dislike settings (bench/dislikes.py ``tune_arms``): positives
only, the dislike input alone (both pathways), dislike negatives alone (both
pathways), then every pathway (concat, subtract) x dislike negatives (0, 5) x
λ = ``loss.ntr_weight`` (5, 20, 50) x w = ``loss.dislike_weight`` (1, 2); 3
seeds each, interleaved. Reports mean ± std of validation recall@20, ndcg@20,
like_dislike_auc, dislike_share@20, dislike_rate@20 and responsiveness@20, and
picks the default by :func:`bench.dislikes.pick_default`: (1) eligible = mean
recall@20 at least 99% of positives-only's (at most 1% relative loss); (2) of
those, the ones whose mean dislike_share@20 is within 0.01 (absolute) of the
lowest eligible one; (3) the highest mean like_dislike_auc among them (ties:
higher recall@20). Positives-only itself is eligible, so there is always a
pick. ``--quick`` (1 seed, 2 epochs, λ 20 only) is a smoke test written as
tune_ml100k_dislikes_quick.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from typing import Any

from bench.common import RESULTS, SHARED_DATA, write_result

GRIDS: dict[str, tuple[str, list[list[str]]]] = {
    "ml100k": (
        f"movielens:{SHARED_DATA / 'ml-100k' / 'u.data'}",
        [
            ["loss.temperature=0.05", "loss.ntr_weight=0"],
            ["loss.temperature=0.1", "loss.ntr_weight=0"],
            ["loss.temperature=0.2", "loss.ntr_weight=0"],
            ["loss.temperature=0.2", "loss.ntr_weight=5"],
            ["loss.temperature=0.2", "loss.ntr_weight=20"],
            ["loss.temperature=0.2", "loss.ntr_weight=50"],
            ["loss.temperature=0.3", "loss.ntr_weight=20"],
            ["loss.temperature=0.2", "loss.ntr_weight=20", "model.use_dislike_input=false"],
            ["loss.temperature=0.2", "loss.ntr_weight=20", "model.encoder=gru"],
            ["loss.temperature=0.2", "loss.ntr_weight=20", "model.encoder=attention"],
        ],
    ),
    "synthetic": (
        "synthetic:users=2000,items=1000,events_per_user=30,seed=7",
        [
            ["loss.temperature=0.05", "loss.ntr_weight=0.5"],
            ["loss.temperature=0.1", "loss.ntr_weight=5"],
            ["loss.temperature=0.2", "loss.ntr_weight=0"],
            ["loss.temperature=0.2", "loss.ntr_weight=20"],
        ],
    ),
    "gowalla": (
        f"lightgcn:{SHARED_DATA / 'gowalla'}",
        [[f"loss.temperature={t}", "train.epochs=3"] for t in (0.05, 0.1, 0.2)],
    ),
    # loss.dedupe_candidates (one candidate slot per distinct item, q = P(item in C))
    # against LOSSES.md's convention, three seeds each.
    "ml100k_dedupe": (
        f"movielens:{SHARED_DATA / 'ml-100k' / 'u.data'}",
        [
            [f"loss.dedupe_candidates={d}", f"train.seed={seed}"]
            for seed in range(3)
            for d in ("false", "true")
        ],
    ),
    "gowalla_dedupe": (
        f"lightgcn:{SHARED_DATA / 'gowalla'}",
        [
            [f"loss.dedupe_candidates={d}", "train.epochs=3", "train.valid_max_users=100000"]
            for d in ("false", "true")
        ],
    ),
    # Input width H: training samples up to H other items, evaluation feeds all train
    # items up to H (every validation user, not a sample of users).
    "gowalla_history": (
        f"lightgcn:{SHARED_DATA / 'gowalla'}",
        [
            [f"model.history_length={h}", "train.epochs=3", "train.valid_max_users=100000"]
            for h in (50, 100, 200)
        ],
    ),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--suite", choices=sorted([*GRIDS, "ml100k_dislikes"]), required=True)
    p.add_argument("--seeds", type=int, default=3, help="ml100k_dislikes: seeds per arm")
    p.add_argument("--quick", action="store_true", help="ml100k_dislikes: a smoke test")
    args = p.parse_args(argv)
    if args.suite == "ml100k_dislikes":
        return tune_dislikes(1 if args.quick else args.seeds, args.quick)

    from trainer.data.sources import load_source
    from trainer.run import train, trainer_config

    spec, grid = GRIDS[args.suite]
    ds = load_source(spec)
    rows: list[dict[str, Any]] = []
    for sets in grid:
        cfg = trainer_config(spec.split(":", 1)[0], overrides=sets)
        with tempfile.TemporaryDirectory() as art:
            t0 = time.perf_counter()
            out = train(spec, art, cfg, ds=ds, progress=False)
        v = out.training["valid_metrics"]
        row = {
            "settings": sets,
            "valid": {k: v.get(k) for k in ("recall@20", "ndcg@20", "dislike_rate@20")},
            "best_epoch": out.training["best_epoch"],
            "seconds": round(time.perf_counter() - t0, 1),
        }
        rows.append(row)
        print(row, file=sys.stderr)
    write_result(f"tune_{args.suite}", {"data": spec, "rows": rows})
    lines = [
        f"### validation sweep: {args.suite}",
        "",
        "| settings | valid recall@20 | valid ndcg@20 | valid dislike_rate@20 | best epoch |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        v = r["valid"]
        dr = "-" if v["dislike_rate@20"] is None else f"{v['dislike_rate@20']:.4f}"
        lines.append(
            f"| {' '.join(r['settings'])} | {v['recall@20']:.4f} | {v['ndcg@20']:.4f} | {dr} | {r['best_epoch']} |"
        )
    md = "\n".join(lines) + "\n"
    (RESULTS / f"tune_{args.suite}.md").write_text(md)
    print(md)
    return 0


#: Validation figures of the dislike sweep, in table order.
DISLIKE_KEYS = [
    "recall@20",
    "ndcg@20",
    "like_dislike_auc",
    "dislike_share@20",
    "dislike_rate@20",
    "responsiveness@20",
]
RECALL_TOLERANCE = 0.01
SHARE_SLACK = 0.01


def tune_dislikes(seeds: int, quick: bool) -> int:
    """``--suite ml100k_dislikes`` (module docstring); reads validation figures only."""
    from bench import dislikes
    from trainer.data.sources import load_source

    spec = dislikes.ML100K
    arms = dislikes.tune_arms((20,), (1, 2)) if quick else dislikes.tune_arms()
    extra = ["train.epochs=2"] if quick else []
    t0 = time.perf_counter()
    runs = dislikes.run_arms(
        spec, load_source(spec), arms, range(seeds), extra, "tune", show="valid"
    )
    rows: dict[str, Any] = {}
    for name, sets in arms.items():
        rs = [
            {
                "valid": r["valid"],
                "similarity": r["similarity"],
                "best_epoch": r["best_epoch"],
                "epochs_run": r["epochs_run"],
                "seconds": r["seconds"],
            }
            for r in runs[name]
        ]
        rows[name] = {
            "settings": sets,
            "runs": rs,
            "valid": dislikes.summarize(runs[name])["valid"],
        }
    means = {
        name: {k: row["valid"][k]["mean"] for k in DISLIKE_KEYS if k in row["valid"]}
        for name, row in rows.items()
    }
    pick = dislikes.pick_default(means, "positives_only", RECALL_TOLERANCE, SHARE_SLACK)
    name = "tune_ml100k_dislikes" + ("_quick" if quick else "")
    write_result(
        name,
        {
            "data": spec,
            "seeds": seeds,
            "extra_settings": extra,
            "quick": quick,
            "rule": {
                "reference": "positives_only",
                "recall_tolerance": RECALL_TOLERANCE,
                "share_slack": SHARE_SLACK,
                "text": "eligible: mean valid recall@20 >= (1 - recall_tolerance) x "
                "positives-only's; keep those with mean valid dislike_share@20 <= the lowest "
                "eligible + share_slack; pick the highest mean valid like_dislike_auc (ties: "
                "higher recall@20)",
            },
            "pick": pick,
            "arms": rows,
        },
    )
    eligible = set(pick["eligible"])
    lines = [
        "### validation sweep: ml100k_dislikes ("
        + (f"{seeds} seeds, mean ± std)" if seeds > 1 else "1 seed)"),
        "",
        f"Pick (**bold**): at most {RECALL_TOLERANCE:.0%} recall@20 below positives-only "
        f"(>= {pick['recall_floor']:.4f}; eligible = ✓), dislike_share@20 within "
        f"{SHARE_SLACK} of the lowest eligible ({pick['share_floor']:.4f}), then the highest "
        "like_dislike_auc. responsiveness@20 < 0 = moves away from a just-disliked item.",
        "",
        "| arm | settings | " + " | ".join(f"valid {k}" for k in DISLIKE_KEYS) + " | eligible |",
        "|---|---|" + "---|" * (len(DISLIKE_KEYS) + 1),
    ]

    def cell(s: dict[str, Any] | None) -> str:
        if s is None:
            return "-"
        return f"{s['mean']:.4f} ± {s['std']:.4f}" if seeds > 1 else f"{s['mean']:.4f}"

    for arm, row in rows.items():
        label = f"**{arm}**" if arm == pick["best"] else arm
        lines.append(
            f"| {label} | {dislikes.describe(row['settings'])} | "
            + " | ".join(cell(row["valid"].get(k)) for k in DISLIKE_KEYS)
            + f" | {'✓' if arm in eligible else ''} |"
        )
    md = "\n".join(lines) + "\n"
    (RESULTS / f"{name}.md").write_text(md)
    print(md)
    print(f"done in {(time.perf_counter() - t0) / 60:.1f} min", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
