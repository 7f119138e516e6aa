"""Model quality, side by side in one run (all-ranking protocol, SPEC metrics).

  * ml-100k: the NTR term on (defaults) vs off (``loss.ntr_weight=0``), several
    seeds, mean and spread: the NTR term should cut ``dislike_rate@20`` at
    similar ``recall@20``.
  * Gowalla (the SSM paper's split): logQ from the streaming estimator vs no
    correction vs exact counts, with the most-popular floor beside them.
  * dislikes (bench/dislikes.py): on ml-100k, every way of learning from
    dislikes (positives only, the dislike input, the NTR term, dislike hard
    negatives, the subtract pathway, and their combinations) with test and
    validation figures, cost, and the NTR weight sweep (λ in 0, 5, 20, 50, 100
    for both pathways, plotted as recall@20 against dislike_share@20); then the
    synthetic ground-truth cases (a popular item a user dislikes; a cold-start
    item against a disliked one with as few events). ``dislike_cases`` runs the
    cases alone.

Usage:
  python -m bench.quality --suite ml100k --seeds 3
  python -m bench.quality --suite gowalla
  python -m bench.quality --suite dislikes [--seeds 5] [--quick]
  python -m bench.quality --suite dislike_cases [--seeds 5] [--quick]
Writes bench/results/quality_<suite>.json and .md; ``dislikes`` writes
quality_dislikes.{json,md} (+ quality_dislikes_lambda.png) and
quality_dislike_cases.{json,md}. ``--quick`` (1 seed, 2 epochs, λ in 0, 20, 100,
a smaller synthetic world) is a smoke test: its files get a ``_quick`` suffix,
which bench.report leaves out.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from typing import Any

from bench.common import RESULTS, SHARED_DATA, write_result

KEYS = [
    "recall@20",
    "ndcg@20",
    "hit_rate@20",
    "dislike_rate@20",
    "coverage@20",
    "responsiveness@20",
]


def _run(spec: str, sets: list[str], ds: Any) -> dict[str, Any]:
    from trainer.run import train, trainer_config

    cfg = trainer_config(spec.split(":", 1)[0], overrides=sets)
    with tempfile.TemporaryDirectory() as art:
        t0 = time.perf_counter()
        out = train(spec, art, cfg, ds=ds, progress=False)
        seconds = time.perf_counter() - t0
    return {
        "metrics": {k: out.metrics[k] for k in [*KEYS, "longtail_recall@20"] if k in out.metrics},
        "baseline_popular": {k: out.baseline_popular[k] for k in KEYS if k in out.baseline_popular},
        "seconds": round(seconds, 1),
        "epochs_run": out.training["epochs_run"],
        "best_epoch": out.training["best_epoch"],
        "examples_per_second": out.training["examples_per_second"],
    }


def _summary(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out = {}
    for k in KEYS:
        vals = [r["metrics"][k] for r in runs if k in r["metrics"]]
        if vals:
            out[k] = {
                "mean": statistics.fmean(vals),
                "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                "values": vals,
            }
    return out


def suite_ml100k(seeds: int, extra: list[str]) -> dict[str, Any]:
    from trainer.data.sources import load_source

    spec = f"movielens:{SHARED_DATA / 'ml-100k' / 'u.data'}"
    ds = load_source(spec)
    arms = {"ntr_on": [], "ntr_off": ["loss.ntr_weight=0"]}
    results: dict[str, Any] = {}
    for arm, sets in arms.items():
        runs = []
        for seed in range(seeds):
            # Arms interleave per seed so machine noise hits both alike.
            runs.append(_run(spec, [*extra, *sets, f"train.seed={seed}"], ds))
            print(f"{arm} seed {seed}: {runs[-1]['metrics']}", file=sys.stderr)
        results[arm] = {"settings": sets, "runs": runs, "summary": _summary(runs)}
    results["baseline_popular"] = results["ntr_on"]["runs"][0]["baseline_popular"]
    return {"data": spec, "seeds": seeds, "extra_settings": extra, "arms": results}


def suite_gowalla(extra: list[str]) -> dict[str, Any]:
    from trainer.data.sources import load_source

    spec = f"lightgcn:{SHARED_DATA / 'gowalla'}"
    ds = load_source(spec)
    arms = {
        "logq_streaming": ["loss.logq=streaming"],
        "logq_none": ["loss.logq=none"],
        "logq_counts": ["loss.logq=counts"],
    }
    results: dict[str, Any] = {}
    for arm, sets in arms.items():
        run = _run(spec, [*extra, *sets], ds)
        print(f"{arm}: {run['metrics']}", file=sys.stderr)
        results[arm] = {"settings": sets, "runs": [run], "summary": _summary([run])}
    results["baseline_popular"] = results["logq_streaming"]["runs"][0]["baseline_popular"]
    return {"data": spec, "extra_settings": extra, "arms": results}


def markdown(name: str, doc: dict[str, Any]) -> str:
    arms = {k: v for k, v in doc["arms"].items() if k != "baseline_popular"}
    lines = [
        f"### {name}: {doc['data'].split('/')[-1] or doc['data']}",
        "",
        "| arm | " + " | ".join(KEYS) + " |",
        "|---|" + "---|" * len(KEYS),
    ]
    for arm, res in arms.items():
        cells = []
        for k in KEYS:
            s = res["summary"].get(k)
            cells.append(
                "-"
                if s is None
                else (
                    f"{s['mean']:.4f} ± {s['std']:.4f}"
                    if len(s["values"]) > 1
                    else f"{s['mean']:.4f}"
                )
            )
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    base = doc["arms"]["baseline_popular"]
    lines.append("| most popular | " + " | ".join(f"{base.get(k, 0):.4f}" for k in KEYS) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--suite", choices=["ml100k", "gowalla", "dislikes", "dislike_cases"], required=True
    )
    p.add_argument("--seeds", type=int, default=None, help="ml100k: 3, dislikes: 5")
    p.add_argument("--quick", action="store_true", help="dislikes: a smoke test (see above)")
    p.add_argument(
        "--set",
        dest="extra",
        action="append",
        default=[],
        help="extra config overrides for every arm",
    )
    args = p.parse_args(argv)
    if args.suite in ("dislikes", "dislike_cases"):
        return dislike_suites(args.suite, args.seeds, args.extra, args.quick)
    doc = (
        suite_ml100k(args.seeds or 3, args.extra)
        if args.suite == "ml100k"
        else suite_gowalla(args.extra)
    )
    path = write_result(
        f"quality_{args.suite}",
        doc,
        packages=("tensorflow", "tensorflow-recommenders", "faiss-gpu"),
    )
    md = markdown(args.suite, doc)
    (RESULTS / f"quality_{args.suite}.md").write_text(md)
    print(md)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def _save(name: str, doc: dict[str, Any], md: str) -> None:
    path = write_result(name, doc, packages=("tensorflow", "tensorflow-recommenders"))
    (RESULTS / f"{name}.md").write_text(md)
    print(md)
    print(f"wrote {path} and {name}.md", file=sys.stderr)


def dislike_suites(suite: str, seeds: int | None, extra: list[str], quick: bool) -> int:
    """``dislikes``: the ml-100k arms and λ sweep, then the cases; ``dislike_cases``: the cases."""
    from bench import dislikes

    suffix = "_quick" if quick else ""
    seeds = seeds or (1 if quick else 5)
    if quick:
        extra = ["train.epochs=2", *extra]
    t0 = time.perf_counter()
    if suite == "dislikes":
        name = f"quality_dislikes{suffix}"
        doc = dislikes.suite_ml100k(seeds, extra, (0, 20, 100) if quick else dislikes.LAMBDAS)
        doc["figures"] = [f"{name}_lambda.png"]
        doc["quick"] = quick
        _save(name, doc, dislikes.markdown_ml100k(doc))
        png = dislikes.plot_lambda(RESULTS / f"{name}.json", RESULTS / f"{name}_lambda.png")
        print(f"wrote {png} ({(time.perf_counter() - t0) / 60:.1f} min)", file=sys.stderr)
    world = dislikes.QUICK_CASE_WORLD if quick else dislikes.CASE_WORLD
    doc = dislikes.suite_cases(seeds, extra, world)
    doc["quick"] = quick
    _save(f"quality_dislike_cases{suffix}", doc, dislikes.markdown_cases(doc))
    print(f"done in {(time.perf_counter() - t0) / 60:.1f} min", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
