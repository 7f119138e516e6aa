"""The two towers.

Item tower: item-id embedding (+ metadata embeddings) -> residual MLP.
User tower: a sequence encoder over the positive history (``mean``, ``gru`` or
``attention``) plus an encoder of the dislike history, combined by a residual
MLP. History and dislike items share the item tower's id embedding table, so
an item seen as history and as a candidate lives in one space.

Inputs are *tokens* (item index + 1, 0 = padding), histories right-aligned
(most recent last). Outputs are raw (not normalised); the loss normalises for
training and the export bakes in the chosen similarity.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from trainer._tf import keras, tf
from trainer.config import ModelConfig
from trainer.data.item_quality import DISLIKE_RATIO


def _mlp(hidden: int, dim: int, dropout: float, name: str) -> keras.Sequential:
    layers: list[keras.layers.Layer] = []
    if hidden > 0:
        layers.append(keras.layers.Dense(hidden, activation="relu", name=f"{name}_hidden"))
        if dropout > 0:
            layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(dim, name=f"{name}_out"))
    return keras.Sequential(layers, name=name)


def _graph_tokens(graph: np.ndarray | None, num_items: int, k: int) -> tf.Tensor | None:
    """int32 [N + 1, k] neighbour tokens by item token (row 0 and ``-1`` entries: 0), or None."""
    if graph is None or k <= 0:
        return None
    graph = np.asarray(graph)
    if graph.ndim != 2 or graph.shape[0] != num_items or graph.shape[1] < k:
        raise ValueError(f"item_graph must be int [{num_items}, >= {k}], got {graph.shape}")
    if graph.size and (graph.max() >= num_items or graph.min() < -1):
        raise ValueError(f"item_graph entries must lie in [-1, {num_items})")
    tokens = np.zeros((num_items + 1, k), dtype=np.int32)
    tokens[1:] = graph[:, :k] + 1  # -1 (none) -> token 0 (padding)
    return tf.constant(tokens)


class ItemTower(keras.Model):
    """tokens int [...] -> item embeddings float32 [..., dim].

    Args:
      num_items: N; the id table has N + 1 rows (row 0 = padding).
      config: model section of the trainer config.
      item_features: name -> int array [N] of categorical values per item
        (0 = unknown); looked up by token inside the graph. Item metadata is used
        with ``config.use_item_features``; the derived ``dislike_ratio`` feature
        (:mod:`trainer.data.item_quality`) with ``config.item_dislike_ratio_buckets`` > 0.
      feature_sizes: name -> number of values of that feature (incl. 0).
      item_graph: int [N, >= K] each item's co-occurrence neighbours (item indices,
        most similar first, ``-1`` padded; :func:`trainer.evaluate.reference_neighbors`),
        used with ``config.item_graph_neighbors`` = K > 0: the id embedding becomes
        ``e_i + w * mean_{j in first K neighbours of i} e_j`` (w =
        ``config.item_graph_weight``; no neighbours: ``e_i``). None = no smoothing
        (a tower built only to hold variables, e.g. a warm start's old model).
    """

    def __init__(
        self,
        num_items: int,
        config: ModelConfig,
        item_features: Mapping[str, np.ndarray] | None = None,
        feature_sizes: Mapping[str, int] | None = None,
        name: str = "item_tower",
        item_graph: np.ndarray | None = None,
    ):
        super().__init__(name=name)
        dim = config.embedding_dim
        reg = keras.regularizers.l2(config.l2) if config.l2 > 0 else None
        self.id_embedding = keras.layers.Embedding(
            num_items + 1,
            dim,
            embeddings_initializer=keras.initializers.TruncatedNormal(stddev=0.05),
            embeddings_regularizer=reg,
            name="item_id_embedding",
        )
        self._feature_tables: dict[str, tf.Tensor] = {}
        self._feature_embeddings: dict[str, keras.layers.Embedding] = {}
        for fname, values in sorted((item_features or {}).items()):
            # Metadata with model.use_item_features; the derived train-split dislike
            # ratio (trainer/data/item_quality.py) with model.item_dislike_ratio_buckets.
            if fname == DISLIKE_RATIO:
                if config.item_dislike_ratio_buckets <= 0:
                    continue
            elif not config.use_item_features:
                continue
            # Token 0 (padding) maps to feature value 0 (unknown).
            table = np.concatenate([[0], np.asarray(values, dtype=np.int32)])
            self._feature_tables[fname] = tf.constant(table, dtype=tf.int32)
            size = int((feature_sizes or {}).get(fname, int(table.max()) + 1))
            self._feature_embeddings[fname] = keras.layers.Embedding(
                size, dim, name=f"item_{fname}_embedding"
            )
        self._graph = _graph_tokens(item_graph, num_items, config.item_graph_neighbors)
        self._graph_weight = float(config.item_graph_weight)
        self.mlp = _mlp(config.hidden_units, dim, config.dropout, "item_mlp")

    def call(self, tokens: tf.Tensor, training: bool = False) -> tf.Tensor:
        tokens = tf.cast(tokens, tf.int32)
        x = self.id_embedding(tokens)
        if self._graph is not None:
            neighbours = tf.gather(self._graph, tokens)  # [..., K] tokens, 0 = none
            mask = tf.cast(neighbours > 0, tf.float32)[..., None]
            total = tf.reduce_sum(self.id_embedding(neighbours) * mask, axis=-2)
            x = x + self._graph_weight * total / tf.maximum(tf.reduce_sum(mask, axis=-2), 1.0)
        for fname, emb in self._feature_embeddings.items():
            x = x + emb(tf.gather(self._feature_tables[fname], tokens))
        return x + self.mlp(x, training=training)


class UserTower(keras.Model):
    """(history int [B, H], dislikes int [B, D]) -> user embeddings float32 [B, dim].

    Encoders of the positive history:
      * ``mean``: SVD++-style normalised sum, sum(e_i) / sqrt(n).
      * ``gru``: a GRU over the history in time order (padding masked).
      * ``attention``: SASRec-style self-attention with learned positional
        embeddings (position counted from the most recent item); the output at
        the most recent position.
    The dislike history (``model.use_dislike_input``) takes one of two
    pathways (``model.dislike_pathway``):

    * ``concat``: a normalised sum of the same item embeddings, projected,
      enters the combining MLP beside the history's encoding:
      ``u = s + MLP([s, P sum_d e_d / sqrt(n)])`` (s = history encoding);
    * ``subtract``: the MLP sees the history only, and the dislikes move the
      result away from the disliked items' directions::

          h = s + MLP(s)
          u = h - g(n) * W sum_d a_d * v_d / |v_d|
          g(n) = softplus(b + c * log(1 + n)),  a_d = 2 * sigmoid(beta * rank_d)

      v_d is the *item tower's output* for disliked item d (the vector items
      are ranked by), n the number of dislikes (padding masked), rank_d = 0
      for the most recent, 1 for the one before... W = M M^T is positive
      semi-definite by construction (M learned, starting as the identity),
      g > 0 and a_d > 0: whatever the weights, the new dislike's own term
      moves u by -g a W v_t/|v_t|, whose inner product with v_t is <= 0 --
      the tower cannot learn to move *towards* what the user rejected (an
      unconstrained W did, on ml-100k: eigenvalues down to -0.9). c and beta
      start at 0 (a_d = 1) and b at -1 (g = 0.31), so at initialisation
      adding a dislike of t moves u by exactly -g v_t/|v_t|: its cosine with
      v_t decreases, and u's inner product with every item on t's side too.
      Training learns how far to move (g, by count), how much older dislikes
      weigh (beta) and which directions go with t (W).
    """

    def __init__(
        self,
        item_embedding: keras.layers.Embedding,
        config: ModelConfig,
        item_tower: ItemTower | None = None,
        name: str = "user_tower",
    ):
        super().__init__(name=name)
        self.config = config
        dim = config.embedding_dim
        self.item_embedding = item_embedding
        if config.encoder == "gru":
            self.gru = keras.layers.GRU(dim, name="history_gru")
        elif config.encoder == "attention":
            self.position_embedding = keras.layers.Embedding(
                config.history_length, dim, name="history_positions"
            )
            self.attention_blocks = [
                (
                    keras.layers.MultiHeadAttention(
                        config.attention_heads,
                        max(dim // config.attention_heads, 4),
                        name=f"mha_{i}",
                    ),
                    keras.layers.LayerNormalization(name=f"mha_norm_{i}"),
                    keras.layers.Dense(dim, activation="relu", name=f"ffn_{i}"),
                    keras.layers.LayerNormalization(name=f"ffn_norm_{i}"),
                )
                for i in range(config.attention_layers)
            ]
        if config.dislike_pathway == "concat":
            self.dislike_projection = keras.layers.Dense(
                dim, use_bias=False, name="dislike_projection"
            )
        elif config.use_dislike_input:  # subtract
            if item_tower is None:
                raise ValueError("model.dislike_pathway='subtract' needs the item tower")
            self.item_tower = item_tower
            # M of W = M M^T (positive semi-definite), M starts as the identity.
            self.dislike_direction = self.add_weight(
                name="dislike_direction",
                shape=(dim, dim),
                initializer=keras.initializers.Identity(),
            )
            # (b, c) of g(n), then beta of a_d.
            self.dislike_gate = self.add_weight(
                name="dislike_gate",
                shape=(2,),
                initializer=keras.initializers.Constant([-1.0, 0.0]),
            )
            self.dislike_recency = self.add_weight(
                name="dislike_recency", shape=(), initializer="zeros"
            )
        self.mlp = _mlp(config.hidden_units, dim, config.dropout, "user_mlp")

    @staticmethod
    def _normalised_sum(emb: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        count = tf.reduce_sum(mask, axis=1, keepdims=True)
        return tf.reduce_sum(emb * mask[..., None], axis=1) / tf.sqrt(tf.maximum(count, 1.0))

    def _encode_history(self, history: tf.Tensor, training: bool) -> tf.Tensor:
        mask = tf.cast(history > 0, tf.float32)
        emb = self.item_embedding(history)
        encoder = self.config.encoder
        if encoder == "mean":
            return self._normalised_sum(emb, mask)
        if encoder == "gru":
            return self.gru(emb, mask=history > 0, training=training)
        # attention: positions counted from the right (most recent = 0).
        length = tf.shape(history)[1]
        positions = tf.range(length - 1, -1, -1)
        x = emb + self.position_embedding(positions)[None, :, :]
        x = x * mask[..., None]
        attn_mask = tf.cast(mask[:, None, :], tf.bool)
        for mha, norm1, ffn, norm2 in self.attention_blocks:
            x = norm1(x + mha(x, x, attention_mask=attn_mask, training=training))
            x = norm2(x + ffn(x))
            x = x * mask[..., None]
        # Most recent item sits in the last column; an empty history gives zeros.
        return x[:, -1, :]

    def _move_away(self, dislikes: tf.Tensor, training: bool) -> tf.Tensor:
        """float32 [B, dim]: g(n) * W sum_d a_d v_d / |v_d| (the ``subtract`` pathway)."""
        mask = tf.cast(dislikes > 0, tf.float32)  # [B, D], right-aligned
        v = tf.math.l2_normalize(self.item_tower(dislikes, training=training), axis=-1)
        # rank 0 = the most recent (last column), counted over columns: padding sits left.
        width = tf.shape(dislikes)[1]
        rank = tf.cast(tf.range(width - 1, -1, -1), tf.float32)
        a = 2.0 * tf.sigmoid(self.dislike_recency * rank)[None, :] * mask  # [B, D]
        n = tf.reduce_sum(mask, axis=1, keepdims=True)
        gate = tf.nn.softplus(self.dislike_gate[0] + self.dislike_gate[1] * tf.math.log1p(n))
        m = tf.reduce_sum(a[..., None] * v, axis=1)  # [B, dim]
        # m W with W = M M^T (symmetric): m M M^T.
        moved = tf.matmul(
            tf.matmul(m, self.dislike_direction), self.dislike_direction, transpose_b=True
        )
        return gate * moved

    def plain_weights(self) -> dict[str, tf.Variable] | None:
        """The variables of a ``mean`` tower by plain name, or None for another encoder.

        The exported SavedModel tracks them under these names, so serving can
        evaluate the same function in NumPy (``serving/numpy_tower.py``):
        ``item_embedding`` [N + 1, dim]; ``mlp_hidden_kernel``/``mlp_hidden_bias``
        (when ``hidden_units`` > 0), ``mlp_out_kernel``/``mlp_out_bias``; with the
        dislike input, ``dislike_projection`` [dim, dim] (``concat``) or
        ``dislike_direction`` [dim, dim], ``dislike_gate`` [2] and
        ``dislike_recency`` [] (``subtract``, whose item vectors are the exported ones).
        """
        if self.config.encoder != "mean":
            return None
        out: dict[str, tf.Variable] = {"item_embedding": self.item_embedding.embeddings}
        for layer in self.mlp.layers:
            if isinstance(layer, keras.layers.Dense):
                part = "hidden" if layer.name.endswith("_hidden") else "out"
                out[f"mlp_{part}_kernel"] = layer.kernel
                out[f"mlp_{part}_bias"] = layer.bias
        if self.config.use_dislike_input:
            if self.config.dislike_pathway == "concat":
                out["dislike_projection"] = self.dislike_projection.kernel
            else:
                out["dislike_direction"] = self.dislike_direction
                out["dislike_gate"] = self.dislike_gate
                out["dislike_recency"] = self.dislike_recency
        return out

    def call(self, inputs: tuple[tf.Tensor, tf.Tensor], training: bool = False) -> tf.Tensor:
        history, dislikes = inputs
        history = tf.cast(history, tf.int32)
        seq = self._encode_history(history, training)
        if self.config.dislike_pathway == "subtract":
            h = seq + self.mlp(seq, training=training)
            if not self.config.use_dislike_input:
                return h
            return h - self._move_away(tf.cast(dislikes, tf.int32), training)
        if self.config.use_dislike_input:
            dislikes = tf.cast(dislikes, tf.int32)
            dmask = tf.cast(dislikes > 0, tf.float32)
            neg = self.dislike_projection(
                self._normalised_sum(self.item_embedding(dislikes), dmask)
            )
            x = tf.concat([seq, neg], axis=-1)
        else:
            x = tf.concat([seq, tf.zeros_like(seq)], axis=-1)
        return seq + self.mlp(x, training=training)
