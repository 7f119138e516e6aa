import pytest

from trainer.config import TrainerConfig
from twotower.config import ConfigError, load_config


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
