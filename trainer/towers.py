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


def _mlp(hidden: int, dim: int, dropout: float, name: str) -> keras.Sequential:
    layers: list[keras.layers.Layer] = []
    if hidden > 0:
        layers.append(keras.layers.Dense(hidden, activation="relu", name=f"{name}_hidden"))
        if dropout > 0:
            layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(dim, name=f"{name}_out"))
    return keras.Sequential(layers, name=name)


class ItemTower(keras.Model):
    """tokens int [...] -> item embeddings float32 [..., dim].

    Args:
      num_items: N; the id table has N + 1 rows (row 0 = padding).
      config: model section of the trainer config.
      item_features: name -> int array [N] of categorical values per item
        (0 = unknown); looked up by token inside the graph.
      feature_sizes: name -> number of values of that feature (incl. 0).
    """

    def __init__(
        self,
        num_items: int,
        config: ModelConfig,
        item_features: Mapping[str, np.ndarray] | None = None,
        feature_sizes: Mapping[str, int] | None = None,
        name: str = "item_tower",
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
        if config.use_item_features and item_features:
            for fname, values in sorted(item_features.items()):
                # Token 0 (padding) maps to feature value 0 (unknown).
                table = np.concatenate([[0], np.asarray(values, dtype=np.int32)])
                self._feature_tables[fname] = tf.constant(table, dtype=tf.int32)
                size = int((feature_sizes or {}).get(fname, int(table.max()) + 1))
                self._feature_embeddings[fname] = keras.layers.Embedding(
                    size, dim, name=f"item_{fname}_embedding"
                )
        self.mlp = _mlp(config.hidden_units, dim, config.dropout, "item_mlp")

    def call(self, tokens: tf.Tensor, training: bool = False) -> tf.Tensor:
        tokens = tf.cast(tokens, tf.int32)
        x = self.id_embedding(tokens)
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
    The dislike history is encoded as a normalised sum of the same item
    embeddings and enters the combining MLP as a separate input, so the tower
    can learn to move away from what the user rejected.
    """

    def __init__(
        self,
        item_embedding: keras.layers.Embedding,
        config: ModelConfig,
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
        self.dislike_projection = keras.layers.Dense(dim, use_bias=False, name="dislike_projection")
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

    def call(self, inputs: tuple[tf.Tensor, tf.Tensor], training: bool = False) -> tf.Tensor:
        history, dislikes = inputs
        history = tf.cast(history, tf.int32)
        seq = self._encode_history(history, training)
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
