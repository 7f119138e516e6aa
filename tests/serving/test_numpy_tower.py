"""Serving evaluates an exported ``mean`` user tower in NumPy, equal to its SavedModel.

Real trainings (tiny), real exports, real ``load_model``: every variant of the
mean tower (dislike pathway, with and without the dislike input, dot and
cosine) must serve through NumPy and give the SavedModel's vectors; a version
exported without plain weights, another encoder, or a NumPy tower that does
not match keeps the SavedModel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common import artifacts
from serving.model import load_model
from serving.numpy_tower import TOLERANCE, from_saved, probe_tokens
from tests.trainer.tiny import TINY, TINY_SETS

EXPORTED = Path(__file__).parents[1] / "common" / "exported_version"

VARIANTS = {
    "concat_dot": ["model.dislike_pathway=concat", "export.similarity=dot"],
    "concat_cosine": ["model.dislike_pathway=concat", "export.similarity=cosine"],
    "concat_no_input": ["model.use_dislike_input=false", "export.similarity=dot"],
    "subtract_cosine": ["model.dislike_pathway=subtract", "export.similarity=cosine"],
    "subtract_dot_no_hidden": [
        "model.dislike_pathway=subtract",
        "model.hidden_units=0",
        "export.similarity=dot",
    ],
}


def _train(root: Path, sets: list[str]) -> tuple[Path, str]:
    from trainer.run import train, trainer_config

    cfg = trainer_config("synthetic", overrides=[*TINY_SETS, "train.epochs=1", *sets])
    train(TINY, root, cfg, progress=False)
    return root, artifacts.latest_version(root)


def _random_users(num_items: int, H: int, D: int, rows: int = 200) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(7)
    history = rng.integers(0, num_items + 1, size=(rows, H)).astype(np.int32)
    dislikes = rng.integers(0, num_items + 1, size=(rows, D)).astype(np.int32)
    dislikes[: rows // 2, : D // 2] = 0  # some padding
    history[0], dislikes[1] = 0, 0  # an empty history, no dislikes
    history[2, 0], dislikes[3, -1] = num_items + 5, -3  # out of range = padding
    return history, dislikes


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_mean_tower_serves_in_numpy_with_the_saved_models_vectors(
    variant: str, tmp_path: Path
) -> None:
    art, version = _train(tmp_path / "art", VARIANTS[variant])
    model = load_model(art, version)
    assert model._numpy_tower is not None, model.tower_note
    assert model.tower_note.startswith("NumPy")
    assert model.public_manifest()["serving"]["user_tower"] == model.tower_note
    history, dislikes = _random_users(model.num_items, model.history_length, model.dislike_length)
    got = model.embed(history, dislikes)
    want = model.saved_embed(history, dislikes)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE)
    # The dislikes matter where the tower reads them (so the check above is not vacuous).
    moved = model.embed(history, np.roll(dislikes, 1, axis=0))
    reads_dislikes = "model.use_dislike_input=false" not in VARIANTS[variant]
    assert (np.abs(moved - got).max() > 1e-4) == reads_dislikes
    if "cosine" in variant:
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_the_factorys_mean_tower_serves_in_numpy_and_computes_its_definition(
    tmp_path: Path,
) -> None:
    """The test factory's trainer-form tower (bench.serving's 1M catalog) is served as a
    trained ``mean`` tower is: in NumPy, equal to its SavedModel and to its closed form."""
    from tests.serving.artifact_factory import make_artifact

    version = make_artifact(tmp_path, num_items=120, dim=8, H=6, D=3, tower="mean")
    model = load_model(tmp_path, version)
    assert model._numpy_tower is not None and model.tower_note.startswith("NumPy"), model.tower_note
    history, dislikes = _random_users(model.num_items, model.history_length, model.dislike_length)
    got = model.embed(history, dislikes)
    np.testing.assert_allclose(got, model.saved_embed(history, dislikes), rtol=0, atol=TOLERANCE)

    def normalised_sum(tokens: np.ndarray) -> np.ndarray:
        out = np.zeros((len(tokens), model.dim))
        for r, row in enumerate(tokens):
            rows = [t - 1 for t in row if 0 < t <= model.num_items]
            if rows:
                out[r] = model.embeddings[rows].sum(axis=0) / np.sqrt(len(rows))
        return out

    u = normalised_sum(history) - 0.5 * normalised_sum(dislikes)
    norm = np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-6)
    np.testing.assert_allclose(got, u / norm, atol=1e-5)
    assert np.abs(model.embed(history, np.roll(dislikes, 1, axis=0)) - got).max() > 1e-3


def test_a_tower_that_disagrees_with_the_saved_model_is_not_used(tmp_path: Path) -> None:
    art, version = _train(tmp_path / "art", VARIANTS["concat_dot"])
    model = load_model(art, version)

    def off_by_a_little(h: np.ndarray, d: np.ndarray) -> np.ndarray:
        return model.saved_embed(h, d) + 10 * TOLERANCE

    tower, note = from_saved(model._saved, model.manifest, model.embeddings, off_by_a_little)
    assert tower is None and "differs from the SavedModel" in note
    other = {**model.manifest, "config": {"model": {"encoder": "gru"}}}
    tower, note = from_saved(model._saved, other, model.embeddings, model.saved_embed)
    assert tower is None and "gru" in note


def test_a_version_exported_without_plain_weights_keeps_the_saved_model() -> None:
    art = EXPORTED
    model = load_model(art, artifacts.latest_version(art))
    assert model._numpy_tower is None
    assert "older version" in model.tower_note
    h, d = probe_tokens(model.num_items, model.history_length, model.dislike_length, rows=8)
    np.testing.assert_array_equal(model.embed(h, d), model.saved_embed(h, d))


def test_probe_tokens_cover_every_length_and_stay_in_range() -> None:
    h, d = probe_tokens(30, 6, 3)
    assert sorted(set((h > 0).sum(axis=1).tolist())) == list(range(7))
    assert sorted(set((d > 0).sum(axis=1).tolist())) == list(range(4))
    assert h.min() >= 0 and h.max() <= 30 and d.max() <= 30
    # Right-aligned: no token after padding's end.
    assert all((row[row > 0] == row[len(row) - (row > 0).sum() :]).all() for row in h)
