"""Model quality, side by side in one run (all-ranking protocol, the metrics of docs/CONTRACT.md).

  * ml-100k: the NTR term on (defaults) vs off (``loss.ntr_weight=0``), several
    seeds, mean and spread: the NTR term should cut ``dislike_rate@20`` at
    similar ``recall@20``.
  * Gowalla (the SSM paper's split): the defaults (logQ from the streaming
    estimator) and the plain in-batch softmax (no logQ), each with
    ``train.refit`` so that one run gives the test figures with and without the
    refit; the most-popular floor and the published rows beside them (quoted,
    labelled as such), and recall@20 by 10 item-popularity groups as a PNG
    (``quality_gowalla_longtail.png``). ``--manifests A [B]`` reads the arms (in
    order) from exported versions' manifests instead of training them.
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
  python -m bench.quality --suite gowalla [--manifests ARM1/manifest.json ARM2/manifest.json]
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
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS, SHARED_DATA, mean_std, write_result

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
    return _record(out.metrics, out.baseline_popular, out.training, seconds)


def _summary(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out = {}
    for k in KEYS:
        vals = [r["metrics"][k] for r in runs if k in r["metrics"]]
        if vals:
            out[k] = {**mean_std(vals), "values": vals}
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


#: Gowalla arms: the defaults (logQ from the streaming estimator) and the plain in-batch
#: softmax (no logQ: TFRS's Retrieval loss, ``tests/trainer/test_losses.py``), each with
#: ``train.refit``, so one run gives the test figures with and without the refit.
GOWALLA_ARMS = {
    "logq_streaming": ["train.refit=true"],
    "in_batch_no_logq": ["loss.logq=none", "train.refit=true"],
}

#: Published figures on the same users, items and test interactions (recall@20, ndcg@20),
#: as quoted; not measured here. SSM paper: Wu et al., "On the Effectiveness of Sampled
#: Softmax Loss for Item Recommendation", Table 3 (trained on the 7:1 train split).
#: Its MF-BPR, MF-SSM and LightGCN-BPR rows are left out: their figures are not at hand
#: here, and a row is only printed with its published numbers.
PUBLISHED_GOWALLA = [
    ("SVD++-SSM (SSM paper, Table 3)", 0.1669, 0.1376),
    ("LightGCN-SSM (SSM paper, Table 3)", 0.1869, 0.1571),
    ("SimpleX (published; trained on train + valid)", 0.1872, 0.1557),
    ("MF + BSL loss (published; trained on train + valid)", 0.1882, 0.1584),
]


def _from_manifest(path: str) -> dict[str, Any]:
    """A run's record from an exported version's manifest (same fields as :func:`_run`)."""
    m = json.loads(Path(path).read_text())
    t = m["training"]
    return _record(m["metrics"], m["baseline_popular"], t, float(t["seconds"]))


def _record(
    metrics: dict[str, Any], baseline: dict[str, Any], t: dict[str, Any], seconds: float
) -> dict[str, Any]:
    refit = t.get("refit") or {}
    keep = [*KEYS, "longtail_recall@20"]
    out = {
        "metrics": {k: metrics[k] for k in keep if k in metrics},
        "baseline_popular": {k: baseline[k] for k in KEYS if k in baseline},
        "seconds": round(seconds, 1),
        "fit_seconds": t["seconds"],
        "epochs_run": t["epochs_run"],
        "best_epoch": t["best_epoch"],
        "examples_per_second": t["examples_per_second"],
        "valid_recall@20": t.get("valid_metrics", {}).get("recall@20"),
        "refit": bool(refit.get("done")),
    }
    if refit.get("done"):
        before = refit["test_metrics_without_refit"]
        out["metrics_without_refit"] = {k: before[k] for k in keep if k in before}
        out["refit_seconds"] = refit.get("seconds")
        out["refit_examples_per_second"] = refit.get("examples_per_second")
    return out


def suite_gowalla(extra: list[str], manifests: list[str] | None = None) -> dict[str, Any]:
    """Train the arms (or read them from ``manifests``, one per arm in GOWALLA_ARMS order)."""
    from trainer.data.sources import load_source

    spec = f"lightgcn:{SHARED_DATA / 'gowalla'}"
    if manifests is not None and not 0 < len(manifests) <= len(GOWALLA_ARMS):
        raise SystemExit(f"--manifests takes 1 to {len(GOWALLA_ARMS)}: {list(GOWALLA_ARMS)}")
    arms = list(GOWALLA_ARMS.items())[: len(manifests) if manifests else None]
    ds = None if manifests else load_source(spec)
    results: dict[str, Any] = {}
    for i, (arm, sets) in enumerate(arms):
        run = _from_manifest(manifests[i]) if manifests else _run(spec, [*extra, *sets], ds)
        print(f"{arm}: {run['metrics']}", file=sys.stderr)
        results[arm] = {"settings": sets, "runs": [run], "summary": _summary([run])}
    results["baseline_popular"] = next(iter(results.values()))["runs"][0]["baseline_popular"]
    return {
        "data": spec,
        "extra_settings": extra,
        "arms": results,
        "from_manifests": manifests is not None,
        "arms_not_run": [arm for arm in GOWALLA_ARMS if arm not in results],
        "published": [
            {"model": name, "recall@20": r, "ndcg@20": n} for name, r, n in PUBLISHED_GOWALLA
        ],
        "figures": ["quality_gowalla_longtail.png"],
    }


def markdown_gowalla(doc: dict[str, Any]) -> str:
    """Our arms (with and without the refit) beside the published rows."""
    how = (
        "read from the manifests of `twotower train --data lightgcn:../shared/data/gowalla` "
        "with each arm's settings"
        if doc.get("from_manifests")
        else "`python -m bench.quality --suite gowalla`"
    )
    lines = [
        "### gowalla: test split, all-ranking (the SSM paper's users, items and test set)",
        "",
        f"Ours: {how}; served as exported (user tower + index at the exported similarity). "
        "`refit` = the same run's model retrained on train + valid for the epochs early "
        "stopping chose (`train.refit`). Published rows are quoted, not measured here.",
        "",
        "| model | recall@20 | ndcg@20 | hit_rate@20 | coverage@20 | train time | examples/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, res in doc["arms"].items():
        if arm == "baseline_popular":
            continue
        run = res["runs"][0]
        fit = run["fit_seconds"]
        eps = f"{run['examples_per_second']:,.0f}"
        if run.get("metrics_without_refit"):
            m = run["metrics_without_refit"]
            lines.append(
                f"| ours: {arm} | {m['recall@20']:.4f} | {m['ndcg@20']:.4f} | "
                f"{m['hit_rate@20']:.4f} | {m['coverage@20']:.4f} | {fit / 60:.1f} min | {eps} |"
            )
        m = run["metrics"]
        label = f"ours: {arm}, refit" if run.get("refit") else f"ours: {arm}"
        secs = (
            f"{fit / 60:.1f} + {run['refit_seconds'] / 60:.1f} min"
            if run.get("refit")
            else f"{fit / 60:.1f} min"
        )
        lines.append(
            f"| {label} | {m['recall@20']:.4f} | {m['ndcg@20']:.4f} | {m['hit_rate@20']:.4f} "
            f"| {m['coverage@20']:.4f} | {secs} | {eps} |"
        )
    base = doc["arms"]["baseline_popular"]
    lines.append(
        f"| most popular | {base['recall@20']:.4f} | {base['ndcg@20']:.4f} | "
        f"{base['hit_rate@20']:.4f} | {base['coverage@20']:.4f} | - | - |"
    )
    for p in doc.get("published", []):
        lines.append(
            f"| published: {p['model']} | {p['recall@20']:.4f} | {p['ndcg@20']:.4f} | - | - | - | - |"
        )
    if doc.get("arms_not_run"):
        lines += ["", f"Not run this time: {', '.join(doc['arms_not_run'])}."]
    return "\n".join(lines) + "\n"


def plot_longtail(doc: dict[str, Any], png: Path) -> Path:
    """recall@20 by 10 item-popularity groups (least popular first), one line per arm and
    refit state: the shape of the SSM paper's Fig. 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups = list(range(1, 11))
    arms = [a for a in doc["arms"] if a != "baseline_popular"]
    for i, arm in enumerate(arms):
        run = doc["arms"][arm]["runs"][0]
        color = f"C{i}"
        if run.get("metrics_without_refit", {}).get("longtail_recall@20"):
            curve = run["metrics_without_refit"]["longtail_recall@20"]
            ax.plot(groups, curve, "--o", color=color, alpha=0.6, label=arm)
        if run["metrics"].get("longtail_recall@20"):
            label = f"{arm}, refit" if run.get("refit") else arm
            ax.plot(groups, run["metrics"]["longtail_recall@20"], "-o", color=color, label=label)
    ax.set_xlabel("item popularity group (1 = least popular tenth of items by train count)")
    ax.set_ylabel("recall@20 of the group's test items")
    ax.set_title("Gowalla: recall@20 by popularity group")
    ax.set_xticks(groups)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png


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
        "--manifests",
        nargs="+",
        default=None,
        help="gowalla: the arms' exported manifest.json files (in arm order) instead of training",
    )
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
        else suite_gowalla(args.extra, args.manifests)
    )
    path = write_result(
        f"quality_{args.suite}",
        doc,
        packages=("tensorflow", "tensorflow-recommenders", "faiss-gpu"),
    )
    if args.suite == "gowalla":
        md = markdown_gowalla(doc)
        plot_longtail(doc, RESULTS / "quality_gowalla_longtail.png")
    else:
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
