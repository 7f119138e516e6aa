import pytest

from common.config import (
    PROGRAM_SECTIONS,
    ConfigError,
    check_section_env,
    env_name,
    load_config,
    rename_deprecated,
)
from common.urls import STORE_URL_ENV
from trainer.config import TrainerConfig


def test_layers_apply_in_order(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("loss:\n  ntr_weight: 0.25\n  temperature: 0.2\nmodel:\n  encoder: gru\n")
    env = {"TWOTOWER_LOSS__TEMPERATURE": "0.1", "TWOTOWER_MODEL__EMBEDDING_DIM": "32", "OTHER": "x"}
    cfg = load_config(
        TrainerConfig,
        file=f,
        overrides=["model.encoder=attention", "train.epochs=3"],
        base={"loss": {"ntr_weight": 9.0, "logq": "none"}},
        environ=env,
    )
    assert cfg.loss.ntr_weight == 0.25  # file beats base
    assert cfg.loss.logq == "none"  # base kept where nothing overrides
    assert cfg.loss.temperature == 0.1  # env beats file
    assert cfg.model.embedding_dim == 32
    assert cfg.model.encoder == "attention"  # --set beats everything
    assert cfg.train.epochs == 3


@pytest.mark.parametrize(
    "override, needle",
    [
        ("model.encoder=lstm", "model.encoder"),
        ("loss.temperature=-1", "loss.temperature"),
        ("loss.nope=1", "loss.nope"),
        ("train.epochs", "key=value"),
    ],
)
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(TrainerConfig, overrides=[override], environ={})


def test_bad_file_is_reported(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(TrainerConfig, file=f, environ={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(TrainerConfig, file=tmp_path / "missing.yaml", environ={})


@pytest.mark.parametrize(
    "override, wanted",
    [
        (
            "model.encodr=gru",
            "--set model.encodr=gru: unknown key model.encodr; did you mean model.encoder? "
            "valid model keys: encoder, embedding_dim,",
        ),
        (
            "modle.encoder=gru",
            "--set modle.encoder=gru: unknown section modle; did you mean model.encoder? "
            "valid sections: model, loss, frequency, train, split, export",
        ),
        ("loss.xyzzy=1", "unknown key loss.xyzzy; valid loss keys: temperature, logq,"),
    ],
)
def test_an_unknown_set_key_names_the_nearest_and_the_section_keys(override, wanted):
    with pytest.raises(ConfigError) as err:
        load_config(TrainerConfig, overrides=[override], environ={})
    assert wanted in str(err.value)
    assert "Extra inputs" not in str(err.value)


def test_an_unknown_file_key_names_the_file_and_the_nearest(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("loss:\n  tempreature: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(TrainerConfig, file=f, environ={})
    assert f"config file {f}: unknown key loss.tempreature; did you mean loss.temperature?" in str(
        err.value
    )
    assert "ntr_weight" in str(err.value)  # the section's keys are listed
    f.write_text('{"trian": {"epochs": 2}}')
    with pytest.raises(ConfigError, match="unknown section trian; did you mean train.epochs?"):
        load_config(TrainerConfig, file=f, environ={})


@pytest.mark.parametrize(
    "variable, wanted",
    [
        (
            "TWOTOWER_MODEL__ENCODR",
            "environment TWOTOWER_MODEL__ENCODR: unknown key model.encodr; "
            "did you mean TWOTOWER_MODEL__ENCODER? valid model keys: encoder,",
        ),
        (
            "TWOTOWER_MODLE__ENCODER",
            "environment TWOTOWER_MODLE__ENCODER: unknown section modle; "
            "did you mean TWOTOWER_MODEL__ENCODER? valid sections: model,",
        ),
    ],
)
def test_an_unknown_environment_key_names_the_variable_and_the_nearest(variable, wanted):
    with pytest.raises(ConfigError) as err:
        load_config(TrainerConfig, environ={variable: "gru"})
    assert wanted in str(err.value)


def test_pipeline_variables_are_the_pipelines_not_the_trainers_typos():
    from trainer.pipeline.config import PipelineConfig

    env = {"TWOTOWER_PIPELINE__MIN_NEW_EVENTS": "7", "TWOTOWER_SERVE__PORT": "9000"}
    assert load_config(TrainerConfig, environ=env).train.epochs == 20  # ignored, not refused
    assert load_config(PipelineConfig, environ=env).pipeline.min_new_events == 7
    with pytest.raises(ConfigError, match="did you mean TWOTOWER_PIPELINE__MIN_NEW_EVENTS"):
        load_config(PipelineConfig, environ={"TWOTOWER_PIPELINE__MIN_NEW_EVENT": "7"})


def test_the_program_sections_are_left_to_their_programs():
    """One scheme for every program: serve's, the store's, the deploy scripts' variables are
    not config keys, and no config file has those sections."""
    assert env_name("store", "url") == STORE_URL_ENV
    env = {
        STORE_URL_ENV: "redis://r:6379/0",
        "TWOTOWER_SERVE__BATCH_MAX_SIZE": "8",
        "TWOTOWER_DEPLOY__ENVIRONMENT": "production",
        "TWOTOWER_SEED__DATA": "synthetic",
        "TWOTOWER_MODEL__EMBEDDING_DIM": "16",
    }
    assert load_config(TrainerConfig, environ=env).model.embedding_dim == 16
    assert not set(PROGRAM_SECTIONS) & set(TrainerConfig.model_fields)


def test_a_program_section_refuses_its_unknown_names():
    check_section_env({STORE_URL_ENV: "x", "TWOTOWER_SERVE__PORT": "1"}, "store", ["url"])
    with pytest.raises(ConfigError) as err:
        check_section_env({"TWOTOWER_STORE__URI": "x"}, "store", ["url"])
    assert str(err.value) == (
        "environment TWOTOWER_STORE__URI: unknown store setting; "
        "did you mean TWOTOWER_STORE__URL? valid names: TWOTOWER_STORE__URL"
    )


RENAMES = {"TWOTOWER_OLD": "TWOTOWER_NEW__KEY", "TWOTOWER_OLDER": "TWOTOWER_NEW__KEY"}


def test_an_old_name_is_moved_to_its_new_name_with_one_warning():
    env = {"TWOTOWER_OLD": "1", "OTHER": "x"}
    (warning,) = rename_deprecated(env, RENAMES)
    assert env == {"TWOTOWER_NEW__KEY": "1", "OTHER": "x"}
    assert warning == (
        "environment TWOTOWER_OLD is deprecated: use TWOTOWER_NEW__KEY (read as TWOTOWER_NEW__KEY for now)"
    )
    assert rename_deprecated(env, RENAMES) == []  # once: nothing left to rename
    same = {"TWOTOWER_OLD": "1", "twotower_older": "1", "TWOTOWER_NEW__KEY": "1"}
    assert len(rename_deprecated(same, RENAMES)) == 2 and same == {"TWOTOWER_NEW__KEY": "1"}


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"TWOTOWER_OLD": "1", "TWOTOWER_NEW__KEY": "2"}, "TWOTOWER_NEW__KEY and TWOTOWER_OLD"),
        ({"TWOTOWER_OLD": "1", "TWOTOWER_OLDER": "2"}, "TWOTOWER_OLD and TWOTOWER_OLDER"),
    ],
)
def test_an_old_and_a_new_name_that_disagree_are_refused_naming_both(env, names):
    before = dict(env)
    with pytest.raises(ConfigError) as err:
        rename_deprecated(env, RENAMES)
    assert f"environment {names} are set to different values" in str(err.value)
    assert "set TWOTOWER_NEW__KEY only" in str(err.value) and "2" not in str(err.value)
    assert env == before  # nothing renamed


def test_an_override_never_leaks_into_the_base_or_the_next_call():
    base = {"model": {"embedding_dim": 32}, "loss": {"temperature": 0.1}}
    first = load_config(TrainerConfig, overrides=["model.embedding_dim=8"], base=base, environ={})
    second = load_config(TrainerConfig, base=base, environ={})
    assert first.model.embedding_dim == 8
    assert second.model.embedding_dim == 32
    assert base == {"model": {"embedding_dim": 32}, "loss": {"temperature": 0.1}}
