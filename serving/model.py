"""A loaded model version: user tower, item id maps, FAISS index (CPU or GPU).

A :class:`LoadedModel` is immutable once built; hot reload swaps whole objects
(see ``reload.py``), so a request that took a reference finishes on that version.
Nothing here touches the event loop: every method is blocking and runs in the
batcher's worker thread (or at load time in a background thread).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from common import artifacts
from common.artifact_format import FormatError, parse_manifest, read_index, read_items
from common.tf_env import set_tensorflow_environment
from serving.numpy_tower import NumpyTower, from_saved, l2_normalize

set_tensorflow_environment()

log = logging.getLogger(__name__)

#: Largest k a FAISS GPU search accepts; deeper searches fall back to exact scoring.
GPU_MAX_K = 2048
#: Largest IVF nprobe FAISS GPU accepts (its k-selection limit).
GPU_MAX_NPROBE = 2048

#: Manifest keys shown by ``GET /v1/model`` (the config and raw data are left out).
PUBLIC_MANIFEST_KEYS = (
    "version",
    "created_at",
    "embedding_dim",
    "num_items",
    "similarity",
    "history_length",
    "dislike_length",
    "index",
    "metrics",
    "baseline_popular",
    "data",
)


class ModelLoadError(FormatError):
    """A version directory cannot be served (missing file, shape mismatch, bad signature)."""


def choose_device(
    index_type: str, num_gpus: int, use_gpu: str = "auto", params: dict[str, Any] | None = None
) -> tuple[str, str]:
    """Where a FAISS index of ``index_type`` should live, and why.

    Returns:
      (``"gpu"`` or ``"cpu"``, reason). HNSW has no FAISS GPU implementation;
      an IVF index whose manifest ``nprobe`` exceeds :data:`GPU_MAX_NPROBE` stays
      on the CPU rather than being searched with fewer lists than it was
      measured with (its recall in the manifest would no longer hold).
    """
    if use_gpu == "never":
        return "cpu", "use_gpu=never"
    if num_gpus <= 0:
        return "cpu", "no GPU visible to FAISS"
    if index_type == "hnsw":
        return "cpu", "FAISS has no GPU HNSW index"
    nprobe = int((params or {}).get("nprobe", 0))
    if index_type == "ivf" and nprobe > GPU_MAX_NPROBE:
        return "cpu", f"nprobe {nprobe} exceeds the FAISS GPU limit {GPU_MAX_NPROBE}"
    return "gpu", f"{num_gpus} GPU(s) visible"


@dataclass
class PlacedIndex:
    """A FAISS index and where it lives; ``resources`` keeps GPU memory alive."""

    index: Any
    device: str
    resources: Any = None
    #: The index scores from compressed vectors: answers are re-scored exactly (see LoadedModel.search).
    rescore: bool = False

    @functools.cached_property
    def max_k(self) -> int:
        """Deepest search: the index's size on the CPU, FAISS's limit on a GPU (read once:
        a SWIG attribute costs microseconds, and the hot path asks every batch)."""
        return GPU_MAX_K if self.device == "gpu" else int(self.index.ntotal)


def scores_approximately(index: Any) -> bool:
    """True for an IVF index over compressed vectors (scalar or product quantizer).

    Its candidates are those of the recall it was tuned to, but its scores are
    the compressed vectors' and its order theirs.
    """
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:  # not an IVF index: flat and HNSW keep float32 vectors
        return False
    return not isinstance(faiss.downcast_index(ivf), faiss.IndexIVFFlat)


def rescore(
    embeddings: np.ndarray, q: np.ndarray, scores: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A compressed index's answer (scores, rows [B, depth]) with exact scores, best first.

    Padding (row -1) keeps its score and stays last.
    """
    valid = rows >= 0
    if valid.all():  # the common case: the index had depth to spare
        exact = np.matmul(embeddings[rows], q[:, :, None])[..., 0]
    else:
        exact = np.matmul(embeddings[np.where(valid, rows, 0)], q[:, :, None])[..., 0]
        exact = np.where(valid, exact, scores)
    exact = exact.astype(np.float32, copy=False)
    order = np.argsort(-exact, axis=1, kind="stable")
    return np.take_along_axis(exact, order, axis=1), np.take_along_axis(rows, order, axis=1)


def place_index(
    cpu_index: Any,
    index_type: str,
    *,
    params: dict[str, Any] | None = None,
    num_gpus: int | None = None,
    use_gpu: str = "auto",
    faiss_module: Any = faiss,
    gpu_device: int = 0,
) -> PlacedIndex:
    """Move ``cpu_index`` to GPU ``gpu_device`` when :func:`choose_device` says so, else keep it.

    A failed copy (GPU out of memory, driver error) keeps the index on the CPU
    and logs why: a slower answer beats a version that never loads.

    Args:
      cpu_index: a CPU FAISS index with its search parameters already set.
      index_type: manifest ``index.type`` (``flat``, ``ivf``, ``hnsw``).
      params: manifest ``index.params`` (``nprobe`` decides IVF placement).
      num_gpus: GPU count; ``faiss_module.get_num_gpus()`` when None (injectable for tests).
      faiss_module: the faiss module (injectable for tests).
    """
    n = faiss_module.get_num_gpus() if num_gpus is None else num_gpus
    device, why = choose_device(index_type, n, use_gpu, params)
    if device == "cpu":
        if n > 0 and use_gpu != "never":
            log.warning("FAISS %s index stays on the CPU: %s", index_type, why)
        return PlacedIndex(cpu_index, "cpu")
    try:
        resources = faiss_module.StandardGpuResources()
        gpu_index = faiss_module.index_cpu_to_gpu(resources, gpu_device, cpu_index)
    except Exception as exc:  # faiss raises RuntimeError for CUDA errors, incl. out of memory
        log.warning(
            "copying the FAISS %s index to GPU %d failed (%s): serving it from the CPU",
            index_type,
            gpu_device,
            exc,
        )
        return PlacedIndex(cpu_index, "cpu")
    return PlacedIndex(gpu_index, "gpu", resources)


def _import_tf() -> Any:
    import tensorflow as tf

    return tf


#: Queries per FAISS thread: a smaller batch is searched by fewer threads (OpenMP's
#: start-up and barriers cost more than a few queries' scan).
QUERIES_PER_FAISS_THREAD = 8

_faiss_threads = 0  # configure_threads(): most FAISS threads per search, 0 = OpenMP's default


def faiss_threads_for(batch: int) -> int:
    """FAISS threads for a search of ``batch`` queries (0: leave OpenMP's default)."""
    if _faiss_threads <= 0:
        return 0
    return max(1, min(_faiss_threads, -(-batch // QUERIES_PER_FAISS_THREAD)))


def configure_threads(tf_threads: int, faiss_threads: int) -> None:
    """Pin TF and FAISS thread pools; TF only accepts this before its runtime starts.

    OpenMP keeps its thread count per calling thread, and FAISS searches run in
    the batcher's worker thread, not here: :meth:`LoadedModel.search` applies the
    count in the searching thread, sized for the batch (:func:`faiss_threads_for`).
    """
    global _faiss_threads
    _faiss_threads = faiss_threads
    if faiss_threads > 0:
        faiss.omp_set_num_threads(faiss_threads)
    if tf_threads > 0:
        tf = _import_tf()
        try:
            tf.config.threading.set_intra_op_parallelism_threads(tf_threads)
            tf.config.threading.set_inter_op_parallelism_threads(tf_threads)
        except RuntimeError:
            # Already initialised (a second app in the same process): keep what is set.
            log.debug("TF threads already configured")


def configure_tf_gpus(mode: str, tf: Any = None) -> str:
    """Keep TensorFlow from taking the whole GPU before the first model loads.

    TF reserves nearly all GPU memory when its runtime starts, and the FAISS
    index copied to the GPU at a (re)load would then run out of memory.
    ``hidden``: TF sees no GPU (the user tower is a few small matmuls; the GPU is
    left to FAISS). ``memory_growth``: TF may use GPUs but allocates as needed.

    Args:
      mode: ``"hidden"`` or ``"memory_growth"``.
      tf: the tensorflow module (injectable for tests; imported when None).
    Returns:
      What was done (for the log).
    """
    tf = _import_tf() if tf is None else tf
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "no GPU visible to TensorFlow"
    try:
        if mode == "hidden":
            tf.config.set_visible_devices([], "GPU")
            return f"{len(gpus)} GPU(s) hidden from TensorFlow (left to FAISS)"
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)
        return f"memory growth on {len(gpus)} GPU(s)"
    except RuntimeError as exc:
        # The runtime already started (a second app in one process): too late to change.
        log.warning("TensorFlow GPU setting %s not applied: %s", mode, exc)
        return f"not applied ({exc})"


def json_safe(value: Any) -> Any:
    """``value`` with NaN/inf floats replaced by None, recursively (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


@dataclass
class LoadedModel:
    """One servable version.

    Attributes:
      version: version id (the directory name under ``ART/versions``).
      manifest: the parsed manifest.json.
      item_ids: str array [N], index order (row i = FAISS id i = tower token i + 1).
      id_list: the same ids as a list (answers index it: no NumPy scalar per item).
      id_to_index: item id -> row.
      embeddings: float32 [N, dim] item embeddings (for similar items, exact fallback, demotion).
      index: the placed FAISS index (inner product).
      popular: row indices, most popular first (cold-start fallback).
      trained_through: the newest event time (epoch seconds) in the data the version
        was trained from (manifest ``data.time_range.max``); None when the version
        does not say (a source without times).
      demote_threshold: the cosine above which soft demotion lowers an item for
        this version, as the server resolved it at load (None: demotion is off).
    """

    version: str
    manifest: dict[str, Any]
    item_ids: np.ndarray
    id_list: list[str]
    id_to_index: dict[str, int]
    embeddings: np.ndarray
    index: PlacedIndex
    popular: np.ndarray
    history_length: int
    dislike_length: int
    trained_through: float | None = None
    loaded_at: float = field(default_factory=time.time)
    tower_note: str = "SavedModel"
    demote_threshold: float | None = None
    _tower: Any = None
    _saved: Any = None
    _numpy_tower: NumpyTower | None = None
    _near: dict[float, float] = field(default_factory=dict)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def embed(self, history: np.ndarray, dislikes: np.ndarray) -> np.ndarray:
        """User embeddings from the exported tower.

        Args:
          history: int32 [B, H] tokens (row + 1, 0 = padding, right-aligned).
          dislikes: int32 [B, D] tokens, same convention.
        Returns:
          float32 [B, dim].
        """
        if self._numpy_tower is not None:
            return self._numpy_tower(history, dislikes)
        return self.saved_embed(history, dislikes)

    def saved_embed(self, history: np.ndarray, dislikes: np.ndarray) -> np.ndarray:
        """:meth:`embed` through the SavedModel's signature, whatever serves requests."""
        out = self._tower(history=history, dislikes=dislikes)["embedding"]
        return np.ascontiguousarray(out.numpy(), dtype=np.float32)

    def search(self, queries: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS top-``depth`` by inner product: (scores float32 [B, depth], rows int64 [B, depth]; -1 = none)."""
        threads = faiss_threads_for(len(queries))
        if threads:
            faiss.omp_set_num_threads(threads)  # this thread's count (OpenMP: per thread)
        q = np.ascontiguousarray(queries, dtype=np.float32)
        scores, rows = self.index.index.search(q, depth)
        if self.index.rescore:
            scores, rows = rescore(self.embeddings, q, scores, rows)
        return scores, rows

    @functools.cached_property
    def item_norms(self) -> np.ndarray:
        """float32 [N] item vector lengths (1 for a zero vector, whose cosines are 0)."""
        norms = np.linalg.norm(self.embeddings, axis=1).astype(np.float32)
        norms[norms == 0] = 1.0
        return norms

    @functools.cached_property
    def unit_length(self) -> bool:
        """Every item vector is unit length (a cosine export): inner products are cosines."""
        return bool(np.all(np.abs(self.item_norms - 1.0) < 1e-4))

    def near_similarity(self, share: float) -> float:
        """The item-item cosine above which ``share`` of the version's item pairs lie.

        Estimated once per ``share`` (then cached) from a seeded sample of pairs
        (:func:`pair_similarity_quantile`); +inf for a catalogue of fewer than two items.
        """
        got = self._near.get(share)
        if got is None:
            got = self._near[share] = pair_similarity_quantile(self.embeddings, 1.0 - share)
        return got

    def exact_scores(self, query: np.ndarray) -> np.ndarray:
        """Inner products of one query [dim] with every item: float32 [N]."""
        return self.embeddings @ query

    def public_manifest(self) -> dict[str, Any]:
        """The manifest subset ``GET /v1/model`` shows (non-finite figures become None)."""
        out = {k: self.manifest[k] for k in PUBLIC_MANIFEST_KEYS if k in self.manifest}
        out["version"] = self.version
        out["serving"] = {
            "device": self.index.device,
            "loaded_at": self.loaded_at,
            "user_tower": self.tower_note,
            "demote_threshold": self.demote_threshold,
        }
        return json_safe(out)

    def tokens(self, item_ids: list[str], length: int) -> np.ndarray:
        """Right-aligned int32 [length] tokens of the last ``length`` known ids (unknown ids dropped)."""
        index = self.id_to_index
        return self.row_tokens([index[x] for x in item_ids if x in index], length)

    @staticmethod
    def row_tokens(rows: list[int], length: int) -> np.ndarray:
        """Right-aligned int32 [length] tokens (row + 1) of the last ``length`` of ``rows``."""
        last = rows[-length:] if length > 0 else []
        out = np.zeros(length, dtype=np.int32)
        out[length - len(last) :] = np.asarray(last, dtype=np.int32) + 1
        return out

    def warm(self) -> None:
        """One tower call and one search, so the first real request pays no tracing/allocation."""
        h = np.zeros((1, self.history_length), np.int32)
        d = np.zeros((1, self.dislike_length), np.int32)
        if self.num_items:
            h[0, -1] = 1
        q = self.embed(h, d)
        self.search(q, min(10, self.num_items))


#: Pairs :func:`pair_similarity_quantile` samples: anchors x others (4M cosines, about
#: 0.05 s at 64 dimensions, once per version; a smaller sample is within 3% of every
#: pair's quantile in tests/serving/test_demotion_threshold.py).
PAIR_ANCHORS, PAIR_OTHERS = 256, 16384


def pair_similarity_quantile(
    embeddings: np.ndarray,
    q: float,
    anchors: int = PAIR_ANCHORS,
    others: int = PAIR_OTHERS,
    seed: int = 0,
) -> float:
    """The ``q`` quantile of the cosine between two distinct items.

    Over every pair of a catalogue of at most ``anchors`` items, else over a seeded
    sample of ``anchors`` items against ``others`` (the same catalogue always gives
    the same value); an item's pair with itself is left out. +inf for fewer than
    two items (nothing is near).
    """
    n = len(embeddings)
    if n < 2:
        return math.inf
    rng = np.random.default_rng(seed)
    a = np.sort(rng.choice(n, min(anchors, n), replace=False))
    o = np.sort(rng.choice(n, min(others, n), replace=False))
    sims = l2_normalize(embeddings[a]) @ l2_normalize(embeddings[o]).T
    return float(np.quantile(sims[a[:, None] != o[None, :]], q))


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise ModelLoadError(f"{path}: {what} is missing")
    return path


def trained_through(manifest: dict[str, Any]) -> float | None:
    """Manifest ``data.time_range.max`` as a float, or None when absent or not a finite number."""
    data = manifest.get("data")
    span = data.get("time_range") if isinstance(data, dict) else None
    newest = span.get("max") if isinstance(span, dict) else None
    if isinstance(newest, bool) or not isinstance(newest, int | float):
        return None
    return float(newest) if math.isfinite(newest) else None


def load_model(art: str | os.PathLike[str], version: str, *, use_gpu: str = "auto") -> LoadedModel:
    """Load, check and warm one version of ``art``. Blocking (seconds); call off the event loop.

    Raises:
      ModelLoadError: naming the file and what is wrong with it.
    """
    try:
        # Only under the artifact root: no "../", absolute path or escaping symlink.
        vdir = artifacts.contained_version_dir(art, version)
    except artifacts.ArtifactError as exc:
        raise ModelLoadError(str(exc)) from None
    try:
        manifest = parse_manifest(vdir / artifacts.MANIFEST, version).as_dict()
        items = read_items(vdir / artifacts.ITEMS, dim=int(manifest["embedding_dim"]))
        item_ids, embeddings = items.ids, items.embeddings
        n, dim = embeddings.shape
        # The manifest's search parameters (nprobe / efSearch) are set by the reader.
        cpu_index = read_index(
            _require(vdir / artifacts.INDEX, "FAISS index"),
            params=manifest["index"],
            ntotal=n,
            dim=dim,
        )
    except FormatError as exc:
        raise ModelLoadError(str(exc)) from exc
    id_list = item_ids.tolist()  # the same str objects as the map's keys: one copy of the ids
    id_to_index = {x: i for i, x in enumerate(id_list)}
    index_info = manifest["index"]
    index_type = str(index_info.get("type", "flat"))
    params = dict(index_info.get("params") or {})
    placed = place_index(cpu_index, index_type, params=params, use_gpu=use_gpu)
    placed.rescore = scores_approximately(cpu_index)

    tf = _import_tf()
    saved = tf.saved_model.load(str(_require(vdir / artifacts.USER_TOWER, "user tower SavedModel")))
    if "serving_default" not in saved.signatures:
        raise ModelLoadError(f"{vdir / artifacts.USER_TOWER}: no serving_default signature")
    tower = saved.signatures["serving_default"]

    popular_ids = manifest.get("popular_items") or []
    popular = np.asarray(
        [id_to_index[x] for x in map(str, popular_ids) if x in id_to_index], dtype=np.int64
    )

    model = LoadedModel(
        version=version,
        manifest=manifest,
        item_ids=item_ids,
        id_list=id_list,
        id_to_index=id_to_index,
        embeddings=embeddings,
        index=placed,
        popular=popular,
        history_length=int(manifest["history_length"]),
        dislike_length=int(manifest["dislike_length"]),
        trained_through=trained_through(manifest),
        _tower=tower,
        _saved=saved,
    )
    # A mean tower runs in NumPy from its own weights once it matches the SavedModel.
    model._numpy_tower, model.tower_note = from_saved(
        saved, manifest, embeddings, model.saved_embed
    )
    model.warm()
    out = model.embed(
        np.zeros((1, model.history_length), np.int32), np.zeros((1, model.dislike_length), np.int32)
    )
    if out.shape != (1, dim):
        raise ModelLoadError(
            f"{vdir / artifacts.USER_TOWER}: embedding shape {out.shape}, expected (1, {dim})"
        )
    log.info(
        "loaded version %s: %d items, dim %d, %s index on %s",
        version,
        n,
        dim,
        index_type,
        placed.device,
    )
    return model
