"""FAISS search cost of the IVF codecs, side by side on one catalog (not a test).

The trainer's 100k-item synthetic catalog (1 epoch, as ``bench.serving``
trains it) gets two IVF indexes built by ``trainer.index_build`` from the same
item vectors: float32 (``export.ivf_codec=flat``) and 8-bit scalar-quantized
(``sq8``), each tuned to the same recall target. Batches of 32 queries (the
user tower's output for stored-user-like histories: items plus noise, as the
index builder's default queries) are searched at the depth serving asks for,
the sq8 answers re-scored as serving does (``serving.model.rescore``), in
alternating repetitions, with 1 and 2 FAISS threads and
``OMP_WAIT_POLICY=PASSIVE`` (as ``twotower serve`` sets it). Per query: wall
and CPU microseconds; per index: bytes, nprobe, recall.

Usage:
  python -m bench.index_codec [--items 100000] [--depth 60] [--reps 9]
Writes bench/results/index_codec.json and .md.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before faiss loads OpenMP

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import write_report  # noqa: E402

BATCH = 32
CODECS = ("flat", "sq8")


def _time(search: Any, queries: np.ndarray, threads: int) -> tuple[float, float]:
    """Wall and CPU microseconds per query of ``search`` over ``queries`` in batches."""
    faiss.omp_set_num_threads(threads)
    wall, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(queries), BATCH):
        search(queries[start : start + BATCH])
    n = len(queries)
    return (time.perf_counter() - wall) / n * 1e6, (time.process_time() - cpu) / n * 1e6


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench.serving import make_catalog
    from common import artifacts
    from serving.model import rescore
    from trainer.index_build import build_index, default_queries

    with tempfile.TemporaryDirectory(prefix="twotower-codec-") as d:
        art = make_catalog(args.items, 2000, False, Path(d))
        version = artifacts.latest_version(art)
        assert version is not None, f"{art}: training published nothing"
        vdir = artifacts.version_dir(art, version)
        emb = np.load(vdir / artifacts.ITEMS)["embeddings"].astype(np.float32)
    indexes, info = {}, {}
    for codec in CODECS:
        index, meta = build_index(emb, kind="ivf", ivf_codec=codec, seed=42)  # type: ignore[arg-type]
        indexes[codec] = index
        info[codec] = {
            "params": meta["params"],
            "recall_at_100_vs_exact": round(meta["recall_at_k_vs_exact"], 4),
            "index_bytes": int(faiss.serialize_index(index).nbytes),
        }
    queries = default_queries(emb, args.queries, seed=7)

    def searcher(codec: str) -> Any:
        index = indexes[codec]
        if codec == "flat":
            return lambda q: index.search(q, args.depth)
        return lambda q: rescore(emb, q, *index.search(q, args.depth))

    figures: dict[str, Any] = {}
    for threads in (1, 2):
        samples: dict[str, list[tuple[float, float]]] = {c: [] for c in CODECS}
        for rep in range(args.reps):
            for codec in CODECS if rep % 2 == 0 else CODECS[::-1]:
                samples[codec].append(_time(searcher(codec), queries, threads))
        row = {
            c: {
                "wall_us": round(statistics.median(w for w, _ in samples[c]), 1),
                "cpu_us": round(statistics.median(u for _, u in samples[c]), 1),
            }
            for c in CODECS
        }
        row["ratio_sq8_over_flat"] = {
            k: round(row["sq8"][k] / row["flat"][k], 2) for k in ("wall_us", "cpu_us")
        }
        figures[f"threads_{threads}"] = row
    return {
        "settings": {
            "items": args.items,
            "depth": args.depth,
            "batch": BATCH,
            "queries": args.queries,
            "reps": args.reps,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        },
        "indexes": info,
        "search": figures,
    }


def markdown(doc: dict[str, Any]) -> str:
    s, ix = doc["settings"], doc["indexes"]
    lines = [
        "# IVF codecs: search cost per query",
        "",
        f"`{doc['command']}` at {doc['git_revision'][:7]}, {doc['finished_at']}: the "
        f"{s['items']:,}-item synthetic catalog (1 epoch), batches of {s['batch']} queries, "
        f"depth {s['depth']}, median of {s['reps']} alternating repetitions over "
        f"{s['queries']} queries; sq8 answers re-scored exactly as serving does.",
        "",
        "| codec | nprobe (nlist) | recall@100 vs exact | index MB | µs/query 1 thread "
        "(wall / CPU) | µs/query 2 threads (wall / CPU) |",
        "|---|---|---|---|---|---|",
    ]
    for codec in CODECS:
        i = ix[codec]
        t1, t2 = doc["search"]["threads_1"][codec], doc["search"]["threads_2"][codec]
        lines.append(
            f"| {codec} | {i['params']['nprobe']} ({i['params']['nlist']}) | "
            f"{i['recall_at_100_vs_exact']} | {i['index_bytes'] / 1e6:.1f} | "
            f"{t1['wall_us']} / {t1['cpu_us']} | {t2['wall_us']} / {t2['cpu_us']} |"
        )
    r1 = doc["search"]["threads_1"]["ratio_sq8_over_flat"]
    r2 = doc["search"]["threads_2"]["ratio_sq8_over_flat"]
    lines += [
        f"| **sq8 / flat** | | | {ix['sq8']['index_bytes'] / ix['flat']['index_bytes']:.2f} | "
        f"{r1['wall_us']} / {r1['cpu_us']} | {r2['wall_us']} / {r2['cpu_us']} |",
        "",
        "<!-- headline:end -->",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--depth", type=int, default=60, help="FAISS k per query")
    p.add_argument("--queries", type=int, default=1024)
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--out", default="index_codec")
    args = p.parse_args(argv)
    print(write_report(args.out, run(args), markdown, packages=("faiss-gpu", "faiss-cpu", "numpy")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
