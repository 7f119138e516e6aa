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
Writes bench/results/tune_<suite>.json and .md.
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
    p.add_argument("--suite", choices=sorted(GRIDS), required=True)
    args = p.parse_args(argv)

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


if __name__ == "__main__":
    sys.exit(main())
