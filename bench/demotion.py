"""Serving's optional soft demotion, measured (off by default).

Soft demotion lowers a candidate's score by ``weight * max(0, sim - threshold)``
where ``sim`` is its largest inner product with the user's recent dislikes.
This runs the *serving* retrieval code (``serving.retrieval.run_batch`` on a
``serving.model.LoadedModel``) for every ml-100k test user of a model trained
by ``twotower train``, with the contract's masking (docs/CONTRACT.md), and reports recall@20 and
dislike_rate@20 per setting, side by side in one run.

Usage: python -m bench.demotion [--epochs 8]
Writes bench/results/demotion.json and .md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from typing import Any

import numpy as np

from bench.common import RESULTS, SHARED_DATA, write_result

SETTINGS = [(0.0, 0.8), (0.5, 0.6), (1.0, 0.6), (2.0, 0.6), (1.0, 0.4), (2.0, 0.4)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--recent", type=int, default=5, help="recent dislikes used for demotion")
    args = p.parse_args(argv)

    from common import artifacts
    from serving.model import load_model
    from serving.retrieval import Demotion, Query, run_batch
    from trainer.data.examples import build_eval_set
    from trainer.data.sources import load_source
    from trainer.data.vocab import align_items
    from trainer.metrics import ranking_metrics
    from trainer.run import train, trainer_config

    spec = f"movielens:{SHARED_DATA / 'ml-100k' / 'u.data'}"
    ds = load_source(spec)
    rows_out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as art:
        train(
            spec,
            art,
            trainer_config("movielens", overrides=[f"train.epochs={args.epochs}"]),
            ds=ds,
            progress=False,
        )
        model = load_model(art, artifacts.latest_version(art))
        ds = align_items(ds, np.asarray(model.item_ids))
        test = build_eval_set(ds, "test", model.history_length, model.dislike_length)
        counts = ds.train_item_counts()[: model.num_items]
        for weight, threshold in SETTINGS:
            queries = []
            for r in range(len(test)):
                disl = test.dislikes[r]
                recent = (disl[disl > 0] - 1)[-args.recent :]
                queries.append(
                    Query(
                        model=model,
                        k=20,
                        blocked=set(test.mask(r).tolist()),
                        history=test.history[r],
                        dislikes=disl,
                        demote_rows=recent.astype(np.int64),
                    )
                )
            results = []
            for start in range(0, len(queries), 64):  # serving's default batch size
                results += run_batch(queries[start : start + 64], Demotion(weight, threshold))
            topk = np.full((len(test), 20), -1, np.int64)
            for r, res in enumerate(results):
                topk[r, : len(res.rows)] = res.rows[:20]
            m = ranking_metrics(topk, test, counts)
            row = {
                "weight": weight,
                "threshold": threshold,
                "recall@20": m["recall@20"],
                "ndcg@20": m["ndcg@20"],
                "dislike_rate@20": m["dislike_rate@20"],
                "demoted_per_user": float(np.mean([res.demoted for res in results])),
            }
            rows_out.append(row)
            print(row, file=sys.stderr)
    write_result(
        "demotion",
        {"data": spec, "epochs": args.epochs, "recent_dislikes": args.recent, "rows": rows_out},
    )
    lines = [
        "| demote weight | threshold | recall@20 | ndcg@20 | dislike_rate@20 | items demoted out of top-20 per user |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows_out:
        lines.append(
            f"| {r['weight']} | {r['threshold']} | {r['recall@20']:.4f} | {r['ndcg@20']:.4f} | "
            f"{r['dislike_rate@20']:.4f} | {r['demoted_per_user']:.2f} |"
        )
    md = "\n".join(lines) + "\n"
    (RESULTS / "demotion.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
