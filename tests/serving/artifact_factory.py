"""Build small but genuine artifacts (SavedModel tower, items.npz, FAISS index, manifest).

The user tower is a tiny ``tf.Module`` exported with the exact ``serving_default``
signature of the trainer's export, one of two kinds (``make_artifact(tower=...)``):

* ``fixture``: user = normalise(mean(history item vectors) - dislike_weight *
  mean(dislike item vectors)), a SavedModel only;
* ``mean``: the trainer's ``mean`` encoder in its exported form (``concat``
  pathway, a ReLU hidden layer of 2 x dim, ``plain_weights`` tracked by name),
  so serving evaluates it in NumPy as it does a trained one. Its weights make it
  compute user = normalise(s_h - dislike_weight * s_d), s = sum of the item
  vectors / sqrt(count), through the hidden layer: relu(x) - relu(-x) = x.

Item ids are ``f"{prefix}{i}"`` so two versions can be told apart by their ids.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from common import artifacts
from common.artifact_format import write_index, write_items
from tests.recall import tie_aware_recall

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def item_vectors(num_items: int, dim: int, seed: int, clusters: int = 0) -> np.ndarray:
    """Unit-norm float32 [num_items, dim] item vectors, reproducible from ``seed``.

    ``clusters > 0`` draws items around that many topic centres (like trained
    embeddings, and unlike isotropic noise, on which no IVF index does well).
    """
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((num_items, dim)).astype(np.float32)
    if clusters > 0:
        centres = rng.standard_normal((clusters, dim)).astype(np.float32)
        v = centres[rng.integers(0, clusters, num_items)] + 0.7 * v
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def save_tower(
    path: Path, vectors: np.ndarray, H: int, D: int, dislike_weight: float = 0.5
) -> None:
    """Save the mean-of-history tower over ``vectors`` [N, dim] as a SavedModel at ``path``."""
    import tensorflow as tf

    table = np.concatenate([np.zeros((1, vectors.shape[1]), np.float32), vectors], axis=0)

    class Tower(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = tf.Variable(table, trainable=False, name="item_table")
            self.dislike_weight = tf.Variable(
                dislike_weight, trainable=False, name="dislike_weight"
            )

        def _mean(self, tokens: tf.Tensor) -> tf.Tensor:
            mask = tf.cast(tokens > 0, tf.float32)[..., None]
            vecs = tf.gather(self.table, tokens) * mask
            return tf.reduce_sum(vecs, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, H], tf.int32, name="history"),
                tf.TensorSpec([None, D], tf.int32, name="dislikes"),
            ]
        )
        def serve(self, history: tf.Tensor, dislikes: tf.Tensor) -> dict[str, tf.Tensor]:
            u = self._mean(history) - self.dislike_weight * self._mean(dislikes)
            return {"embedding": tf.math.l2_normalize(u, axis=1)}

    tower = Tower()
    tf.saved_model.save(tower, str(path), signatures={"serving_default": tower.serve})


def mean_tower_weights(vectors: np.ndarray, dislike_weight: float = 0.5) -> dict[str, np.ndarray]:
    """``plain_weights`` of a ``mean`` tower (concat pathway) computing
    ``s_h + MLP([s_h, P s_d]) = s_h - dislike_weight * s_d``.

    P = I; hidden = relu([P s_d, -P s_d]) (the history half of the input unused),
    out = hidden @ [-w I; w I] = -w (relu(P s_d) - relu(-P s_d)) = -w P s_d.
    """
    dim = vectors.shape[1]
    eye, zero = np.eye(dim, dtype=np.float32), np.zeros((dim, dim), np.float32)
    w = np.float32(dislike_weight)
    return {
        "item_embedding": np.concatenate([np.zeros((1, dim), np.float32), vectors]),
        "dislike_projection": eye,
        "mlp_hidden_kernel": np.block([[zero, zero], [eye, -eye]]),
        "mlp_hidden_bias": np.zeros(2 * dim, np.float32),
        "mlp_out_kernel": np.concatenate([-w * eye, w * eye]),
        "mlp_out_bias": np.zeros(dim, np.float32),
    }


def save_mean_tower(
    path: Path, vectors: np.ndarray, H: int, D: int, dislike_weight: float = 0.5
) -> None:
    """Save the trainer-form ``mean`` tower of :func:`mean_tower_weights` as a SavedModel."""
    import tensorflow as tf

    class Tower(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.plain_weights = {
                name: tf.Variable(value, trainable=False, name=name)
                for name, value in mean_tower_weights(vectors, dislike_weight).items()
            }

        def _sum(self, tokens: tf.Tensor) -> tf.Tensor:
            table = self.plain_weights["item_embedding"]
            tokens = tf.where((tokens < 0) | (tokens >= tf.shape(table)[0]), 0, tokens)
            mask = tf.cast(tokens > 0, tf.float32)
            total = tf.reduce_sum(tf.gather(table, tokens) * mask[..., None], axis=1)
            return total / tf.sqrt(tf.maximum(tf.reduce_sum(mask, axis=1, keepdims=True), 1.0))

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, H], tf.int32, name="history"),
                tf.TensorSpec([None, D], tf.int32, name="dislikes"),
            ]
        )
        def serve(self, history: tf.Tensor, dislikes: tf.Tensor) -> dict[str, tf.Tensor]:
            w = self.plain_weights
            s = self._sum(history)
            x = tf.concat([s, tf.matmul(self._sum(dislikes), w["dislike_projection"])], axis=1)
            hidden = tf.nn.relu(tf.matmul(x, w["mlp_hidden_kernel"]) + w["mlp_hidden_bias"])
            u = s + tf.matmul(hidden, w["mlp_out_kernel"]) + w["mlp_out_bias"]
            return {"embedding": tf.math.l2_normalize(u, axis=1)}

    tower = Tower()
    tf.saved_model.save(tower, str(path), signatures={"serving_default": tower.serve})


#: The manifest's ``config`` of each factory tower kind.
TOWER_CONFIG: dict[str, dict[str, Any]] = {
    "fixture": {"factory": True},
    "mean": {
        "factory": True,
        "model": {
            "encoder": "mean",
            "dislike_pathway": "concat",
            "use_dislike_input": True,
        },
    },
}


def build_index(
    vectors: np.ndarray, index_type: str, seed: int, params: dict[str, Any] | None = None
) -> tuple[Any, dict[str, Any]]:
    """A CPU inner-product FAISS index of ``index_type`` over ``vectors`` and its params.

    ``params`` may set ``nlist``/``nprobe`` (IVF; trained on at most 64 points per list);
    ``ivf_sq8`` is an IVF over 8-bit scalar-quantized vectors (manifest type ``ivf``).
    """
    n, dim = vectors.shape
    params = dict(params or {})
    if index_type == "flat":
        return faiss.IndexFlatIP(dim), {}
    if index_type in ("ivf", "ivf_sq8"):
        nlist = int(params.get("nlist", max(1, min(64, n // 40))))
        nprobe = int(params.get("nprobe", max(1, nlist // 4)))
        quantizer, ip = faiss.IndexFlatIP(dim), faiss.METRIC_INNER_PRODUCT
        if index_type == "ivf_sq8":
            index = faiss.IndexIVFScalarQuantizer(
                quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit, ip
            )
        else:
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, ip)
        index.cp.seed = seed
        sample = vectors
        if n > 64 * nlist:
            sample = vectors[np.random.default_rng(seed).choice(n, 64 * nlist, replace=False)]
        index.train(sample)
        codec = "sq8" if index_type == "ivf_sq8" else "flat"
        return index, {"nlist": nlist, "nprobe": nprobe, "codec": codec}
    if index_type == "hnsw":
        return faiss.IndexHNSWFlat(dim, 16, faiss.METRIC_INNER_PRODUCT), {"M": 16, "efSearch": 64}
    raise ValueError(f"index_type {index_type!r}")


def index_recall(
    index: Any, vectors: np.ndarray, k: int = 100, num_queries: int = 200, seed: int = 0
) -> float:
    """Tie-aware recall@k of ``index`` against exact search on random item-derived queries."""
    rng = np.random.default_rng(seed)
    q = vectors[rng.choice(len(vectors), size=min(num_queries, len(vectors)), replace=False)]
    q = q + 0.1 * rng.standard_normal(q.shape).astype(np.float32)
    k = min(k, len(vectors))
    _, approx = index.search(np.ascontiguousarray(q), k)
    return tie_aware_recall(approx, q, vectors, k)


def make_artifact(
    art_dir: str | os.PathLike[str],
    *,
    num_items: int = 300,
    dim: int = 16,
    H: int = 8,
    D: int = 4,
    seed: int = 0,
    publish: bool = True,
    index_type: str = "flat",
    prefix: str = "i",
    num_popular: int | None = None,
    index_params: dict[str, Any] | None = None,
    ids: list[str] | None = None,
    clusters: int = 0,
    tower: str = "fixture",
    trained_through: float | None = None,
) -> str:
    """Write one complete version under ``art_dir`` (published unless ``publish=False``); return its id.

    ``tower`` is ``fixture`` or ``mean`` (module docstring). ``trained_through``: the
    manifest's ``data.time_range.max`` (the newest training event), absent when None. The popular list is a seeded permutation of the catalog (first ``num_popular``
    items, default min(100, num_items)).
    """
    if tower not in TOWER_CONFIG:
        raise ValueError(f"tower {tower!r}: one of {sorted(TOWER_CONFIG)}")
    vectors = item_vectors(num_items, dim, seed, clusters)
    ids_arr = np.array(ids if ids is not None else [f"{prefix}{i}" for i in range(num_items)])
    if len(ids_arr) != num_items:
        raise ValueError(f"{len(ids_arr)} ids for num_items={num_items}")
    rng = np.random.default_rng(seed + 1)
    top = num_popular if num_popular is not None else min(100, num_items)
    popular = ids_arr[rng.permutation(num_items)[:top]]
    index, params = build_index(vectors, index_type, seed, index_params)
    index.add(vectors)
    if index_type in ("ivf", "ivf_sq8"):
        index.nprobe = params["nprobe"]
    elif index_type == "hnsw":
        index.hnsw.efSearch = params["efSearch"]
    recall = index_recall(index, vectors, seed=seed)
    with artifacts.staging_version(art_dir) as (version, vdir):
        save = save_mean_tower if tower == "mean" else save_tower
        save(vdir / artifacts.USER_TOWER, vectors, H, D)
        write_items(vdir / artifacts.ITEMS, ids_arr, vectors)
        write_index(index, vdir / artifacts.INDEX)
        manifest = {
            "version": version,
            "created_at": 0.0,
            "embedding_dim": dim,
            "num_items": num_items,
            "similarity": "cosine",
            "history_length": H,
            "dislike_length": D,
            "index": {
                "type": "ivf" if index_type == "ivf_sq8" else index_type,
                "metric": "inner_product",
                "params": params,
                "recall_at_k_vs_exact": recall,
                "k": 100,
                "num_queries": 200,
            },
            "popular_items": popular.tolist(),
            "metrics": {"recall@20": 0.0},
            "baseline_popular": {"recall@20": 0.0},
            "data": {
                "source": "artifact_factory",
                "seed": seed,
                **(
                    {"time_range": {"min": 0.0, "max": trained_through}}
                    if trained_through is not None
                    else {}
                ),
            },
            "config": TOWER_CONFIG[tower],
        }
        artifacts.write_manifest(vdir, manifest)
    if publish:
        artifacts.publish(art_dir, version)
    return version


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
