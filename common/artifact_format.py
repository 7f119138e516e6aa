"""The files of one version, read and written in one place (layout: ``docs/CONTRACT.md``).

``manifest.json`` (:class:`Manifest`), ``items.npz`` (:func:`read_items` /
:func:`write_items`) and ``index.faiss`` (:func:`read_index` /
:func:`write_index`) are produced by the trainer, read by serving, warm starts,
the pipeline, evaluation and the deploy scripts; each reader goes through the
functions here, so the checks (no pickles, ids unique, shapes agreeing with the
manifest, the index matching the item table) are the same everywhere.

Every refusal is a :class:`FormatError` naming the file and what is wrong.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from common.artifacts import ArtifactError
from common.files import atomic_path

#: Manifest fields serving needs; a version without one of them cannot be served.
REQUIRED_MANIFEST_FIELDS = ("embedding_dim", "history_length", "dislike_length", "index")


class FormatError(ArtifactError, ValueError):
    """A file of a version is missing, unreadable or disagrees with the rest of the version."""


class IndexMismatchError(FormatError):
    """A serialized index does not match the export it belongs to."""


class Manifest(BaseModel):
    """``manifest.json``: what serving needs typed; every other field kept as written.

    Attributes:
      embedding_dim: dimension of the user and item vectors.
      history_length: H, positions of the tower's ``history`` input.
      dislike_length: D, positions of the tower's ``dislikes`` input.
      index: ``{"type": "flat"|"ivf"|"hnsw", "params": {...}, "recall_at_k_vs_exact": ...}``.
      version: the version id (a manifest names its own version).
      num_items: N, rows of ``items.npz`` and vectors of the index.
      similarity: ``cosine`` or ``dot``, baked into the tower and the item vectors.
      popular_items: item ids, most popular first (the cold-start answer).
    """

    model_config = ConfigDict(extra="allow")

    embedding_dim: int
    history_length: int
    dislike_length: int
    index: dict[str, Any]
    version: str | None = None
    num_items: int | None = None
    similarity: str | None = None
    popular_items: list[Any] = []

    def as_dict(self) -> dict[str, Any]:
        """The JSON object, with exactly the fields that were given (nothing added)."""
        return self.model_dump(exclude_unset=True)


def parse_manifest(path: str | os.PathLike[str], version: str | None = None) -> Manifest:
    """Read and check ``manifest.json``; with ``version``, it must name that version.

    Raises:
      FormatError: missing file, not JSON, not an object, a required field missing
        or of the wrong type, or naming another version.
    """
    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path}: manifest is missing")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise FormatError(f"{path}: not a JSON object")
    for key in REQUIRED_MANIFEST_FIELDS:
        if key not in data:
            raise FormatError(f"{path}: field {key!r} is missing")
    if version is not None and data.get("version", version) != version:
        raise FormatError(
            f"{path}: names version {str(data['version'])[:80]!r}, but it is the "
            f"manifest of {version!r}"
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise FormatError(f"{path}: {problems}") from None


@dataclass(frozen=True)
class Items:
    """``items.npz``: row ``i`` is item index ``i`` (FAISS id ``i``, tower token ``i + 1``).

    Attributes:
      ids: str [N] item ids in index order, unique.
      embeddings: float32 [N, dim], C-contiguous.
    """

    ids: np.ndarray
    embeddings: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def __len__(self) -> int:
        return len(self.ids)


def write_items(path: str | os.PathLike[str], ids: Any, embeddings: np.ndarray) -> None:
    """Write ``items.npz`` (ids as str, embeddings as float32), atomically.

    Raises:
      FormatError: ids and embeddings disagree in length, or embeddings are not 2-D.
    """
    ids_arr = np.asarray(ids).astype(str)
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or ids_arr.ndim != 1 or len(ids_arr) != len(emb):
        raise FormatError(
            f"{path}: {ids_arr.shape} ids for embeddings of shape {emb.shape} "
            "(need [N] ids and [N, dim] embeddings)"
        )
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, ids=ids_arr, embeddings=emb)


def read_item_ids(path: str | os.PathLike[str]) -> np.ndarray:
    """str [N]: the ids of ``items.npz`` alone (no pickles; see :func:`read_items`)."""
    return read_items(path).ids


def read_items(path: str | os.PathLike[str], *, dim: int | None = None) -> Items:
    """Read and check ``items.npz``.

    Args:
      dim: the manifest's ``embedding_dim``, checked when given.
    Raises:
      FormatError: missing or unreadable file, an object array (serialized Python objects, never
        loaded), a missing array, shapes that disagree, ids not unique or a ``dim``
        other than the manifest's.
    """
    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path}: item table is missing")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = {"ids", "embeddings"} - set(npz.files)
            if missing:
                raise FormatError(f"{path}: no {', '.join(sorted(missing))} array")
            ids = np.asarray(npz["ids"]).astype(str)
            embeddings = np.ascontiguousarray(npz["embeddings"], dtype=np.float32)
    except FormatError:
        raise
    except (ValueError, OSError, EOFError) as exc:  # numpy: "allow_pickle=False", bad zip
        raise FormatError(f"{path}: not a readable item table ({exc})") from exc
    if embeddings.ndim != 2 or ids.ndim != 1:
        raise FormatError(f"{path}: ids {ids.shape}, embeddings {embeddings.shape}")
    n, d = embeddings.shape
    if len(ids) != n:
        raise FormatError(f"{path}: {len(ids)} ids but {n} embeddings")
    if dim is not None and d != dim:
        raise FormatError(f"{path}: dim {d} != manifest embedding_dim {dim}")
    if len(set(ids.tolist())) != n:
        raise FormatError(f"{path}: item ids are not unique")
    return Items(ids=ids, embeddings=embeddings)


def write_index(index: Any, path: str | os.PathLike[str]) -> None:
    """Serialize a CPU copy of ``index`` to ``path`` atomically (temp, fsync, rename, fsync dir)."""
    if hasattr(faiss, "index_gpu_to_cpu") and faiss.get_num_gpus() > 0:
        with contextlib.suppress(Exception):  # already a CPU index: nothing to convert
            index = faiss.index_gpu_to_cpu(index)
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))


def set_search_param(index: Any, name: str, value: int) -> None:
    """Set FAISS search parameter ``nprobe`` (IVF) or ``efSearch`` (HNSW) on ``index``."""
    if name == "nprobe":
        faiss.extract_index_ivf(index).nprobe = int(value)
    elif name == "efSearch":
        hnsw: Any = faiss.downcast_index(index)
        hnsw.hnsw.efSearch = int(value)
    else:
        raise ValueError(f"unknown FAISS search parameter {name!r} (known: nprobe, efSearch)")


def read_index(
    path: str | os.PathLike[str],
    params: dict[str, Any] | None = None,
    *,
    ntotal: int | None = None,
    dim: int | None = None,
) -> Any:
    """Load a CPU index, check it against the export, and apply its search parameters.

    Args:
      path: the ``index.faiss`` file.
      params: the manifest's ``index.params`` (or the whole ``index`` entry);
        ``nprobe`` / ``efSearch`` found there are set on the loaded index.
      ntotal: expected number of vectors (the manifest's ``num_items``).
      dim: expected dimension (the manifest's ``embedding_dim``).
    Raises:
      FileNotFoundError: no file at ``path``.
      IndexMismatchError: unreadable file, size/dimension differ from expected, or a
        search parameter the index type does not have.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FAISS index not found: {path}")
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise IndexMismatchError(f"{path}: not a readable FAISS index ({first})") from e
    if ntotal is not None and index.ntotal != ntotal:
        raise IndexMismatchError(
            f"{path}: index holds {index.ntotal} vectors, the manifest expects {ntotal}"
        )
    if dim is not None and index.d != dim:
        raise IndexMismatchError(
            f"{path}: index dimension is {index.d}, the manifest expects {dim}"
        )
    p = dict(params or {})
    if isinstance(p.get("params"), dict):
        p = dict(p["params"])
    for name in ("nprobe", "efSearch"):
        if name in p:
            try:
                set_search_param(index, name, int(p[name]))
            except (RuntimeError, AttributeError) as e:
                raise IndexMismatchError(
                    f"{path}: cannot set {name}={p[name]} on a {type(index).__name__}"
                ) from e
    return index
