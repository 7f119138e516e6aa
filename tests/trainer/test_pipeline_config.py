"""The pipeline's settings: the store-events defaults, then what it follows of the version
it warm-starts from, then the file, the environment and --set."""

from __future__ import annotations

import json

import pytest

from common.config import ConfigError, load_config
from trainer.config import SOURCE_DEFAULTS, TrainerConfig, architecture_changes
from trainer.pipeline.config import (
    followed_settings,
    load_pipeline_config,
    published_config,
)


def _trained(kind: str, *sets: str) -> dict:
    """A version's manifest config, as `twotower train --data KIND:...` records it."""
    cfg = load_config(TrainerConfig, overrides=sets, base=SOURCE_DEFAULTS[kind], environ={})
    return json.loads(cfg.model_dump_json())


def test_without_a_published_version_the_store_events_defaults_apply():
    cfg = load_pipeline_config(environ={})
    assert cfg.model.dislike_pathway == "concat"
    assert cfg.loss.ntr_weight == 20 and cfg.loss.dislike_negatives == 0


def test_a_movielens_version_is_continued_with_its_architecture_and_dislike_settings():
    published = _trained("movielens", "model.embedding_dim=32")
    cfg = load_pipeline_config(environ={}, published=published)
    assert cfg.model.dislike_pathway == "subtract" and cfg.model.embedding_dim == 32
    assert cfg.loss.ntr_weight == 5 and cfg.loss.dislike_negatives == 5
    assert architecture_changes(TrainerConfig.model_validate(published), cfg.trainer()) == []
    # Training settings are the pipeline's own, not followed.
    assert cfg.train.epochs == TrainerConfig().train.epochs


def test_the_file_environment_and_set_win_over_the_published_version(tmp_path):
    published = _trained("movielens")
    cfg = load_pipeline_config(
        environ={"TWOTOWER_LOSS__NTR_WEIGHT": "7"},
        overrides=["model.dislike_pathway=concat"],
        published=published,
    )
    assert cfg.model.dislike_pathway == "concat" and cfg.loss.ntr_weight == 7
    assert cfg.loss.dislike_negatives == 5  # not set: followed


def test_only_what_warm_starting_needs_and_the_dislike_settings_are_followed():
    published = _trained("movielens", "train.epochs=2", "loss.temperature=0.5")
    followed = followed_settings(published)
    assert set(followed) == {"model", "loss", "frequency"}
    assert "temperature" not in followed["loss"] and "history_length" not in followed["model"]


def test_a_published_config_this_release_cannot_load_is_not_followed(caplog):
    published = _trained("movielens")
    published["model"]["dislike_pathway"] = "sideways"
    cfg = load_pipeline_config(environ={}, published=published)
    assert cfg.model.dislike_pathway == "concat"
    assert "not following the published version's settings" in caplog.text


def test_bad_user_settings_are_still_an_error_with_a_published_version():
    with pytest.raises(ConfigError, match="ntr_weight"):
        load_pipeline_config(
            environ={}, overrides=["loss.ntr_weight=-1"], published=_trained("movielens")
        )


def test_published_config_reads_the_latest_version_and_none_without_one(tmp_path):
    from common import artifacts

    assert published_config(tmp_path / "missing") is None
    assert published_config(tmp_path) is None
    vdir = artifacts.version_dir(tmp_path, "v1")
    vdir.mkdir(parents=True)
    (vdir / artifacts.MANIFEST).write_text(json.dumps({"version": "v1", "config": {"a": 1}}))
    artifacts.publish(tmp_path, "v1")
    assert published_config(tmp_path) == {"a": 1}
