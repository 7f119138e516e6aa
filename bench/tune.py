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
  python -m bench.tune --suite ml100k_dislikes [--seeds 3] [--quick] [--arms A,B,... [--out NAME]]
  python -m bench.tune --suite ml100k_dislike_strength [--seeds 3] [--quick]
  python -m bench.tune --suite gowalla_logq_label   (loss.logq_label, early stopping)
  python -m bench.tune --suite ml100k_lightgcn_logq_label   (the same on ml-100k's
      positives written as LightGCN train/valid/test files into a temporary
      directory, 3 seeds; a second data set of the ``lightgcn:`` kind)
  python -m bench.tune --suite gowalla_refit_on_valid | ml100k_lightgcn_refit_on_valid
      (train.refit judged on validation: the train file split 7:1 into an inner
      train/valid, the real validation split held out as the run's "test")
  python -m bench.tune --suite ml100k_lightgcn_item_graph | gowalla_item_graph
      (model.item_graph_neighbors / item_graph_weight; ml-100k as LightGCN files,
      3 seeds; Gowalla 3 epochs, every validation user)
  python -m bench.tune --suite gowalla_levers
      (on the lightgcn defaults: item graph K/w widened, temperature, batch size,
      mixed negatives; Gowalla 3 epochs, every validation user)
  python -m bench.tune --suite gowalla_early_stopping
      (one level down, like gowalla_refit_on_valid: early stopping on every inner
      validation user with patience 5 against the defaults; held-out = real valid)
  python -m bench.tune --suite gowalla_lr_decay
      (one level down: the learning rate halved after each epoch without a better
      validation recall@20 against the constant rate; held-out = real valid)
  python -m bench.tune --suite gowalla_memory   (loss.memory_batches: cross-batch memory)
  python -m bench.tune --suite gowalla_regularisation
      (on the lightgcn defaults: hidden layer width, dropout, L2; Gowalla 3 epochs)
  python -m bench.tune --suite gowalla_capacity | ml100k_lightgcn_capacity
      (on the lightgcn defaults: the towers' output size, model.embedding_dim 64 /
      128, the hidden layer widened with it; Gowalla 3 epochs; ml-100k as
      LightGCN files, 3 seeds)
  python -m bench.tune --suite S --manifests V1/manifest.json ...   (the rows from
      the manifests of versions ``twotower train --data SRC [--set ...]`` exported,
      instead of training them here: settings = the manifest config's differences
      from that source kind's defaults)
Writes bench/results/tune_<suite>.json and .md. Every row records the training
time and examples/s, and validation recall@20 under both similarities (the
export keeps the better: ``export.similarity=auto``).

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

ml100k_dislike_strength: the default's learned dislike move scaled by s at
evaluation, against positives-only, on validation (bench/dislike_strength.py):
what a more responsive tower costs in recall.

ml100k_dislike_prior: positives-only and the default evaluated with an
item-popularity term added to the score, on validation (bench/dislike_prior.py).
ml100k_dislike_quality: the same with an item-quality term (minus each item's
smoothed train dislike ratio) in place of popularity.
gowalla_prior: the popularity term beside the `lightgcn:` default on Gowalla (no refit:
validation stays held out), to see whether it generalises.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import dislike_prior
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


GRIDS["gowalla_logq_label"] = (
    f"lightgcn:{SHARED_DATA / 'gowalla'}",
    [[f"loss.logq_label={v}"] for v in ("corrected", "exact")],
)
#: Written by :func:`write_ml100k_lightgcn` into a temporary directory per run.
ML100K_LIGHTGCN = "lightgcn:<ml-100k positives as LightGCN files>"
GRIDS["ml100k_lightgcn_logq_label"] = (
    ML100K_LIGHTGCN,
    [
        [f"loss.logq_label={v}", f"train.seed={seed}"]
        for seed in range(3)
        for v in ("corrected", "exact")
    ],
)


def write_ml100k_lightgcn(root: Path, seed: int = 0) -> str:
    """ml-100k's positives (rating >= 4) as LightGCN ``train/valid/test.txt`` under ``root``.

    Each user's items are split 7:1:2 at random (seeded; a user with fewer than 3
    goes to train only). Returns the ``lightgcn:`` spec. The files are the
    reference data's, so they live in a temporary directory, never in the repository.
    """
    import numpy as np

    d = np.loadtxt(SHARED_DATA / "ml-100k" / "u.data", dtype=np.int64)
    d = d[d[:, 2] >= 4]
    rng = np.random.default_rng(seed)
    lines: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    for user in np.unique(d[:, 0]):
        items = rng.permutation(d[d[:, 0] == user, 1])
        n = len(items)
        n_test = max(1, round(0.2 * n)) if n >= 3 else 0
        n_valid = max(1, round(0.1 * n)) if n >= 3 else 0
        parts = {
            "test": items[:n_test],
            "valid": items[n_test : n_test + n_valid],
            "train": items[n_test + n_valid :],
        }
        for name, part in parts.items():
            if len(part):
                lines[name].append(" ".join(map(str, [user, *sorted(part.tolist())])))
    root.mkdir(parents=True, exist_ok=True)
    for name, rows in lines.items():
        (root / f"{name}.txt").write_text("\n".join(rows) + "\n")
    return f"lightgcn:{root}"


def write_nested_lightgcn(src: Path, root: Path, seed: int = 0) -> str:
    """A LightGCN split one level down, so that ``train.refit`` is judged on validation.

    ``train.txt`` of ``src`` is split per user 7:1 at random (seeded) into the new
    train and valid files; ``src``'s ``valid.txt`` becomes the new ``test.txt`` (a
    user whose train items would all leave keeps them). ``src``'s test split is
    never read. Returns the ``lightgcn:`` spec of ``root``.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    train, valid = [], []
    for line in (src / "train.txt").read_text().splitlines():
        user, *items = line.split()
        if not items:
            continue
        order = rng.permutation(len(items))
        n_valid = round(len(items) / 8) if len(items) >= 4 else 0
        held = sorted(order[:n_valid].tolist())
        kept = sorted(order[n_valid:].tolist())
        train.append(" ".join([user, *(items[i] for i in kept)]))
        if held:
            valid.append(" ".join([user, *(items[i] for i in held)]))
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.txt").write_text("\n".join(train) + "\n")
    (root / "valid.txt").write_text("\n".join(valid) + "\n")
    (root / "test.txt").write_text((src / "valid.txt").read_text())
    return f"lightgcn:{root}"


#: Gowalla one level down (:func:`write_nested_lightgcn`): the run's "test" figures are
#: the real validation split's, with and without ``train.refit``.
GOWALLA_NESTED = "lightgcn:<gowalla train split 7:1 into train/valid; valid as test>"
GRIDS["gowalla_refit_on_valid"] = (GOWALLA_NESTED, [["train.refit=true"]])
#: Early stopping judged on every (inner) validation user instead of a 5,000-user
#: sample, with more patience, against the defaults; judged on the real validation split.
GRIDS["gowalla_early_stopping"] = (
    GOWALLA_NESTED,
    [
        ["train.refit=true"],
        ["train.refit=true", "train.valid_max_users=100000", "train.early_stopping_patience=5"],
    ],
)
#: The learning rate halved after each epoch without a better validation recall@20
#: (``train.lr_decay``), against the defaults' constant rate; one level down as above.
GRIDS["gowalla_lr_decay"] = (
    GOWALLA_NESTED,
    [["train.refit=true"], ["train.refit=true", "train.lr_decay=0.5"]],
)
#: The same for ml-100k's positives as LightGCN files (:func:`write_ml100k_lightgcn`).
ML100K_NESTED = "lightgcn:<ml-100k positives as LightGCN files, one level down>"
GRIDS["ml100k_lightgcn_refit_on_valid"] = (
    ML100K_NESTED,
    [["train.refit=true", f"train.seed={seed}"] for seed in range(3)],
)

#: The item tower's co-occurrence smoothing (model.item_graph_neighbors K, weight w):
#: off, then K 10 and 20 at w 1 and 2; validation only, so no refit.
ITEM_GRAPH = [
    [],
    ["model.item_graph_neighbors=10"],
    ["model.item_graph_neighbors=10", "model.item_graph_weight=2"],
    ["model.item_graph_neighbors=20", "model.item_graph_weight=2"],
]
GRIDS["ml100k_lightgcn_item_graph"] = (
    ML100K_LIGHTGCN,
    [[*g, "train.refit=false", f"train.seed={seed}"] for seed in range(3) for g in ITEM_GRAPH],
)


def gowalla_3_epochs(grid: list[list[str]]) -> tuple[str, list[list[str]]]:
    """Gowalla, each setting of ``grid`` for 3 epochs judged on every validation user, no refit."""
    fixed = ["train.refit=false", "train.epochs=3", "train.valid_max_users=100000"]
    return f"lightgcn:{SHARED_DATA / 'gowalla'}", [[*g, *fixed] for g in grid]


GRIDS["gowalla_item_graph"] = gowalla_3_epochs(ITEM_GRAPH)

#: On top of the lightgcn defaults (item graph K 20, w 2 among them): the graph grid's
#: corner widened (K 40; w 4), then temperature around 0.1, more in-batch negatives
#: (batch 2048, with the learning rate doubled to keep the step per example) and
#: uniformly sampled extra negatives. 3 epochs, every validation user, no refit.
GRIDS["gowalla_levers"] = gowalla_3_epochs(
    [
        [],
        ["model.item_graph_neighbors=40"],
        ["model.item_graph_weight=4"],
        ["loss.temperature=0.07"],
        ["loss.temperature=0.13"],
        ["train.batch_size=2048", "train.learning_rate=0.006"],
        ["loss.mixed_negatives=1024"],
    ]
)

#: A cross-batch memory of the last K global batches' labels as extra negatives
#: (loss.memory_batches; off, 1, 4): more negatives from the label distribution without
#: a larger batch. 3 epochs, every validation user, no refit.
GRIDS["gowalla_memory"] = gowalla_3_epochs(
    [[], ["loss.memory_batches=1"], ["loss.memory_batches=4"]]
)

#: The towers' shape and regularisation on top of the lightgcn defaults: no hidden layer
#: (a linear projection, closest to MF), a wider one, dropout, an L2 penalty on the
#: embedding tables. 3 epochs, every validation user, no refit.
GRIDS["gowalla_regularisation"] = gowalla_3_epochs(
    [
        [],
        ["model.hidden_units=0"],
        ["model.hidden_units=256"],
        ["model.dropout=0.1"],
        ["model.l2=1e-6"],
    ]
)

#: The towers' output size (the id tables and the exported vectors) on top of the
#: lightgcn defaults: 64 (the published models' size) and 128, alone and with the
#: hidden layer (128 wide by default) widened with it. Gowalla: 3 epochs, every
#: validation user, no refit; the table's train time is the cost (256 with a
#: 256-wide hidden layer was stopped after 33 minutes without finishing its 3
#: epochs: a full training would far exceed the 30 minutes a default may take).
#: ml-100k as LightGCN files (the second data set of the kind): 3 seeds, no refit.
CAPACITY = [
    [],
    ["model.embedding_dim=128"],
    ["model.embedding_dim=128", "model.hidden_units=256"],
]
GRIDS["gowalla_capacity"] = gowalla_3_epochs(CAPACITY)
GRIDS["ml100k_lightgcn_capacity"] = (
    ML100K_LIGHTGCN,
    [[*g, "train.refit=false", f"train.seed={seed}"] for seed in range(3) for g in CAPACITY],
)


def _row(
    sets: list[str],
    training: dict[str, Any],
    seconds: float,
    heldout: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One table row from a run's ``training`` record (validation figures only).

    ``heldout``: the run's test metrics, kept only for the nested suites, where
    the "test" split is the real validation split.
    """
    v = training["valid_metrics"]
    refit = training.get("refit") or {}
    extra: dict[str, Any] = {}
    if heldout is not None and refit.get("done"):
        before = refit["test_metrics_without_refit"]
        extra["outer_valid"] = {
            "without_refit": {k: before[k] for k in ("recall@20", "ndcg@20")},
            "with_refit": {k: heldout[k] for k in ("recall@20", "ndcg@20")},
        }
    return {
        **extra,
        "settings": sets,
        "valid": {k: v.get(k) for k in ("recall@20", "ndcg@20", "dislike_rate@20")},
        "valid_recall@20_by_similarity": training.get("valid_recall@20_by_similarity", {}),
        "best_epoch": training["best_epoch"],
        "epochs_run": training["epochs_run"],
        "train_seconds": training["seconds"],
        "examples_per_second": training["examples_per_second"],
        "refit_seconds": refit.get("seconds"),
        "seconds": round(seconds, 1),
    }


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def rows_from_manifests(paths: list[str], nested: bool = False) -> tuple[str, list[dict[str, Any]]]:
    """(source, rows) of exported versions, settings = config minus the kind's defaults."""
    import json

    from trainer.run import trainer_config

    rows, sources = [], set()
    for path in paths:
        m = json.loads(Path(path).read_text())
        sources.add(m["data"]["source"])
        default = _flat(trainer_config(m["data"]["kind"]).as_dict())
        given = _flat(m["config"])
        sets = [
            f"{k}={str(v).lower() if isinstance(v, bool) else v}"
            for k, v in given.items()
            if default.get(k) != v
        ]
        heldout = m["metrics"] if nested else None
        rows.append(_row(sets, m["training"], float(m["training"]["seconds"]), heldout))
    return " + ".join(sorted(sources)), rows


def grid_markdown(suite: str, doc: dict[str, Any]) -> str:
    """The table of a grid suite's result (``rows`` and ``how`` of its JSON)."""
    how, rows = doc["how"], doc["rows"]
    lines = [
        f"### validation sweep: {suite}",
        "",
        f"{how}; valid figures at the exported similarity; train time and examples/s "
        "of the fit (plus the refit's time where one was done).",
        "",
        "| settings | valid recall@20 | valid ndcg@20 | valid dislike_rate@20 "
        "| valid recall@20 cosine / dot | best epoch | train time | examples/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        v = r["valid"]
        dr = "-" if v["dislike_rate@20"] is None else f"{v['dislike_rate@20']:.4f}"
        by = r.get("valid_recall@20_by_similarity") or {}
        sims = " / ".join(f"{by[s]:.4f}" if s in by else "-" for s in ("cosine", "dot"))
        secs = f"{r['train_seconds'] / 60:.1f} min" if r.get("train_seconds") else "-"
        if r.get("refit_seconds"):
            secs += f" + refit {r['refit_seconds'] / 60:.1f} min"
        eps = f"{r['examples_per_second']:,.0f}" if r.get("examples_per_second") else "-"
        lines.append(
            f"| {' '.join(r['settings']) or '(defaults)'} | {v['recall@20']:.4f} | "
            f"{v['ndcg@20']:.4f} | {dr} | {sims} | {r['best_epoch']} | {secs} | {eps} |"
        )
    nested_rows = [r for r in rows if "outer_valid" in r]
    if nested_rows:
        lines += [
            "",
            "The run's held-out split is the real validation split (the test split is not "
            "read): its figures with and without the refit.",
            "",
            "| settings | held-out (real valid) recall@20 / ndcg@20 without refit | with refit |",
            "|---|---|---|",
        ]
        for r in nested_rows:
            a, b = r["outer_valid"]["without_refit"], r["outer_valid"]["with_refit"]
            lines.append(
                f"| {' '.join(r['settings'])} | {a['recall@20']:.4f} / {a['ndcg@20']:.4f} | "
                f"{b['recall@20']:.4f} / {b['ndcg@20']:.4f} |"
            )
    if doc.get("note"):
        lines += ["", f"Note: {doc['note']}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--suite",
        choices=sorted([*GRIDS, "ml100k_dislikes", *EVALUATION_SWEEPS]),
        required=True,
    )
    p.add_argument("--seeds", type=int, default=3, help="ml100k_dislikes: seeds per arm")
    p.add_argument("--quick", action="store_true", help="ml100k_dislikes: a smoke test")
    p.add_argument(
        "--arms",
        default=None,
        help="ml100k_dislikes: only these arms (comma-separated names of "
        "bench.dislikes.tune_arms; positives_only, the reference, is always run)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="ml100k_dislikes: the result's name in bench/results (default tune_ml100k_dislikes; "
        "give another with --arms so the whole grid's result stays)",
    )
    p.add_argument(
        "--manifests",
        nargs="+",
        default=None,
        help="build the rows from these exported versions' manifest.json instead of training",
    )
    args = p.parse_args(argv)
    if args.suite == "ml100k_dislikes":
        only = args.arms.split(",") if args.arms else None
        return tune_dislikes(1 if args.quick else args.seeds, args.quick, only, args.out)
    if args.suite in EVALUATION_SWEEPS:
        return tune_evaluation_sweep(args.suite, 1 if args.quick else args.seeds, args.quick)

    if args.manifests:
        nested = GRIDS.get(args.suite, ("", []))[0] in (GOWALLA_NESTED, ML100K_NESTED)
        spec, rows = rows_from_manifests(args.manifests, nested)
        how = "rows read from the manifests of `twotower train --data SRC [--set settings]`"
    else:
        spec, rows = _train_rows(*GRIDS[args.suite])
        how = f"`python -m bench.tune --suite {args.suite}`"
    doc = {"data": spec, "rows": rows, "how": how}
    write_result(f"tune_{args.suite}", doc)
    md = grid_markdown(args.suite, doc)
    (RESULTS / f"tune_{args.suite}.md").write_text(md)
    print(md)
    return 0


def _train_rows(spec: str, grid: list[list[str]]) -> tuple[str, list[dict[str, Any]]]:
    """Train every setting of ``grid`` on ``spec``; one row each (validation only)."""
    from trainer.data.sources import load_source
    from trainer.run import train, trainer_config

    with tempfile.TemporaryDirectory() as tmp:
        real = spec
        if spec == ML100K_LIGHTGCN:
            real = write_ml100k_lightgcn(Path(tmp) / "data")
        elif spec == GOWALLA_NESTED:
            real = write_nested_lightgcn(SHARED_DATA / "gowalla", Path(tmp) / "data")
        elif spec == ML100K_NESTED:
            write_ml100k_lightgcn(Path(tmp) / "ml")
            real = write_nested_lightgcn(Path(tmp) / "ml", Path(tmp) / "data")
        ds = load_source(real)
        rows: list[dict[str, Any]] = []
        for sets in grid:
            cfg = trainer_config(real.split(":", 1)[0], overrides=sets)
            with tempfile.TemporaryDirectory() as art:
                t0 = time.perf_counter()
                out = train(real, art, cfg, ds=ds, progress=False)
            heldout = out.metrics if spec in (GOWALLA_NESTED, ML100K_NESTED) else None
            rows.append(_row(sets, out.training, time.perf_counter() - t0, heldout))
            print(rows[-1], file=sys.stderr)
    return spec, rows


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


def tune_dislikes(
    seeds: int, quick: bool, only: list[str] | None = None, out: str | None = None
) -> int:
    """``--suite ml100k_dislikes`` (module docstring); reads validation figures only.

    ``only``: run these arms of the grid (and always positives-only, the rule's
    reference); an unknown name is an error that lists the known ones. ``out``:
    the result's name (default ``tune_ml100k_dislikes``, ``_quick`` added with ``quick``).
    """
    from bench import dislikes
    from trainer.data.sources import load_source

    spec = dislikes.ML100K
    arms = dislikes.tune_arms((20,), (1, 2)) if quick else dislikes.tune_arms()
    if only is not None:
        arms = dislikes.select_arms(arms, only, "positives_only")
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
    name = (out or "tune_ml100k_dislikes") + ("_quick" if quick else "")
    write_result(
        name,
        {
            "data": spec,
            "seeds": seeds,
            "extra_settings": extra,
            "quick": quick,
            "arms_run": list(arms) if only is not None else "all",
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
        f"### validation sweep: {name.removeprefix('tune_')} ("
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


#: Suites that train models and evaluate each at several points of an evaluation-time knob.
EVALUATION_SWEEPS = ("ml100k_dislike_strength", *dislike_prior.SUITES)


def tune_evaluation_sweep(suite: str, seeds: int, quick: bool) -> int:
    """``--suite ml100k_dislike_strength`` (bench/dislike_strength.py) or one of
    ``bench.dislike_prior.SUITES``: trained models evaluated at each point of an
    evaluation-time knob; validation only."""
    from bench import dislike_strength

    t0 = time.perf_counter()
    extra = ["train.epochs=2"] if quick else []
    if suite == "ml100k_dislike_strength":
        module: Any = dislike_strength
        points = dislike_strength.QUICK_STRENGTHS if quick else dislike_strength.STRENGTHS
        doc = module.sweep(seeds, extra, points)
    else:
        module = dislike_prior
        args = dict(dislike_prior.SUITES[suite])
        extra += args.pop("extra", [])
        full = args.pop("betas")
        doc = module.sweep(seeds, extra, dislike_prior.QUICK_BETAS if quick else full, **args)
        doc["suite"] = suite
    doc["quick"] = quick
    name = f"tune_{suite}" + ("_quick" if quick else "")
    write_result(name, doc)
    md = module.markdown(doc)
    (RESULTS / f"{name}.md").write_text(md)
    print(md)
    print(f"done in {(time.perf_counter() - t0) / 60:.1f} min", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
