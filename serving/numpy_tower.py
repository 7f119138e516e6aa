"""The exported ``mean`` user tower, evaluated in NumPy from its own weights.

A ``mean`` tower is a few small matrix products over an embedding lookup, so a
TensorFlow call costs far more than its arithmetic on the small batches serving
sends. The exported SavedModel tracks the tower's variables by plain name
(``plain_weights``, see ``trainer/towers.py``); this module computes the same
function from them:

* history encoding ``s = sum_i e_i / sqrt(n)`` over the non-padding tokens;
* ``concat``: ``u = s + MLP([s, P sum_d e_d / sqrt(n_d)])`` (zeros in place of the
  dislike part without the dislike input);
* ``subtract``: ``h = s + MLP(s)``, ``u = h - g(n) (sum_d a_d v_d/|v_d|) M M^T``
  with ``g(n) = softplus(b + c log(1 + n))`` and ``a_d = 2 sigmoid(beta rank_d)``;
  ``v_d`` is the item's exported vector (the item tower's output, or its unit
  vector under cosine: the same direction);
* L2-normalised at the end when the export's similarity is cosine.

Out-of-range tokens count as padding, as in the SavedModel. :func:`from_saved`
builds the tower only when a probe batch agrees with the SavedModel to 1e-5;
otherwise serving keeps the SavedModel.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: Largest difference from the SavedModel a NumPy tower may show on the probe batch.
TOLERANCE = 1e-5
PROBE_ROWS = 64


def _normalised_sum(emb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``sum_i mask_i emb_i / sqrt(n)`` over axis 1 (emb [B, L, dim], mask [B, L])."""
    count = mask.sum(axis=1, keepdims=True)
    # One batched product [B, 1, L] @ [B, L, dim] in place of a masked copy and its sum.
    return np.matmul(mask[:, None, :], emb)[:, 0] / np.sqrt(np.maximum(count, 1.0))


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows as tf.math.l2_normalize makes them: x * rsqrt(max(sum x^2, 1e-12)) (0 stays 0)."""
    return x / np.sqrt(np.maximum((x * x).sum(axis=-1, keepdims=True), 1e-12))


@dataclass(frozen=True)
class NumpyTower:
    """The tower function; ``weights`` as :meth:`trainer.towers.UserTower.plain_weights` names them.

    Attributes:
      weights: name -> float32 array.
      pathway: ``concat`` or ``subtract``.
      use_dislike_input: whether the tower reads the dislike tokens.
      normalize: L2-normalise the output (cosine similarity).
      item_vectors: float32 [N, dim] exported item vectors (``subtract`` only).
    """

    weights: dict[str, np.ndarray]
    pathway: str
    use_dislike_input: bool
    normalize: bool
    item_vectors: np.ndarray

    @property
    def num_items(self) -> int:
        return int(self.weights["item_embedding"].shape[0]) - 1

    def _clean(self, tokens: np.ndarray) -> np.ndarray:
        tokens = np.asarray(tokens)
        if tokens.dtype == np.int32 and (
            not tokens.size or tokens.view(np.uint32).max() <= self.num_items
        ):
            return tokens  # serving's tokens: all in range (a negative one is > 2**31 as uint32)
        tokens = tokens.astype(np.int64)
        return np.where((tokens < 0) | (tokens > self.num_items), 0, tokens)

    def _mlp(self, x: np.ndarray) -> np.ndarray:
        w = self.weights
        if "mlp_hidden_kernel" in w:
            x = np.maximum(x @ w["mlp_hidden_kernel"] + w["mlp_hidden_bias"], 0.0)
        return x @ w["mlp_out_kernel"] + w["mlp_out_bias"]

    def _move_away(self, dislikes: np.ndarray) -> np.ndarray:
        w = self.weights
        mask = (dislikes > 0).astype(np.float32)
        v = l2_normalize(self.item_vectors[np.maximum(dislikes - 1, 0)])
        width = dislikes.shape[1]
        rank = np.arange(width - 1, -1, -1, dtype=np.float32)
        a = 2.0 / (1.0 + np.exp(-w["dislike_recency"] * rank))[None, :] * mask
        n = mask.sum(axis=1, keepdims=True)
        b, c = w["dislike_gate"]
        gate = np.logaddexp(0.0, b + c * np.log1p(n))  # softplus
        m = (a[..., None] * v).sum(axis=1)
        direction = w["dislike_direction"]
        return gate * ((m @ direction) @ direction.T)

    def __call__(self, history: np.ndarray, dislikes: np.ndarray) -> np.ndarray:
        """float32 [B, dim] from int tokens [B, H] and [B, D] (0 = padding)."""
        emb = self.weights["item_embedding"]
        h = self._clean(history)
        s = _normalised_sum(emb[h], (h > 0).astype(np.float32))
        if self.pathway == "subtract":
            u = s + self._mlp(s)
            if self.use_dislike_input:
                u = u - self._move_away(self._clean(dislikes))
        else:
            if self.use_dislike_input:
                d = self._clean(dislikes)
                neg = _normalised_sum(emb[d], (d > 0).astype(np.float32))
                neg = neg @ self.weights["dislike_projection"]
            else:
                neg = np.zeros_like(s)
            u = s + self._mlp(np.concatenate([s, neg], axis=1))
        if self.normalize:
            u = l2_normalize(u)
        return np.ascontiguousarray(u, dtype=np.float32)


def probe_tokens(num_items: int, H: int, D: int, rows: int = PROBE_ROWS) -> tuple[np.ndarray, ...]:
    """A fixed probe batch: right-aligned random tokens of every length 0..H (and 0..D)."""
    rng = np.random.default_rng(0)

    def tokens(width: int) -> np.ndarray:
        out = np.zeros((rows, width), np.int32)
        if num_items == 0:
            return out
        lengths = np.arange(rows) % (width + 1)
        for r, n in enumerate(lengths):
            if n:
                out[r, width - n :] = rng.integers(1, num_items + 1, size=n)
        return out

    return tokens(H), tokens(D)


def from_saved(
    saved: Any,
    manifest: dict[str, Any],
    item_vectors: np.ndarray,
    reference: Any,
) -> tuple[NumpyTower | None, str]:
    """A NumPy tower of the loaded SavedModel ``saved``, or None and why not.

    Args:
      saved: ``tf.saved_model.load`` of the version's user tower.
      manifest: the version's manifest (its ``config.model`` and ``similarity``).
      item_vectors: float32 [N, dim] the version's exported item vectors.
      reference: (history, dislikes) -> float32 [B, dim], the SavedModel's signature.
    Returns:
      (tower or None, a short reason for the log and ``GET /v1/model``).
    """
    model_cfg = (manifest.get("config") or {}).get("model") or {}
    if model_cfg.get("encoder") != "mean":
        return None, f"encoder {model_cfg.get('encoder')!r} (NumPy covers mean only)"
    plain = getattr(saved, "plain_weights", None)
    if plain is None:
        return None, "exported without plain weights (an older version)"
    tower = NumpyTower(
        weights={str(k): np.asarray(v.numpy(), dtype=np.float32) for k, v in plain.items()},
        pathway=str(model_cfg.get("dislike_pathway", "concat")),
        use_dislike_input=bool(model_cfg.get("use_dislike_input", True)),
        normalize=manifest.get("similarity") == "cosine",
        item_vectors=item_vectors,
    )
    H, D = int(manifest["history_length"]), int(manifest["dislike_length"])
    history, dislikes = probe_tokens(len(item_vectors), H, D)
    try:
        got = tower(history, dislikes)
    except (KeyError, ValueError, IndexError) as exc:
        return None, f"NumPy tower failed on the probe batch: {exc!r}"
    want = np.asarray(reference(history, dislikes), dtype=np.float32)
    diff = float(np.max(np.abs(got - want))) if got.size else 0.0
    if got.shape != want.shape or not diff <= TOLERANCE:
        log.warning(
            "NumPy user tower differs from the SavedModel by %.3g (> %g): serving the SavedModel",
            diff,
            TOLERANCE,
        )
        return None, f"differs from the SavedModel by {diff:.3g} on the probe batch"
    return tower, f"NumPy, equal to the SavedModel within {diff:.2g} on the probe batch"
