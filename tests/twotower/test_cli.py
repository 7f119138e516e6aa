"""The command line's contract: --help everywhere, exit 2 with a clear message for bad input."""

import subprocess
import sys

import pytest

from twotower.cli import build_parser, main

COMMANDS = ["demo", "train", "evaluate", "serve", "ingest", "pipeline"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_everywhere(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert command in capsys.readouterr().out


def test_missing_required_flag_is_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--data", "synthetic"])
    assert exc.value.code == 2
    assert "--out" in capsys.readouterr().err


def test_bad_source_exits_2_and_says_what(tmp_path, capsys):
    code = main(["train", "--data", "nosuchkind:whatever", "--out", str(tmp_path / "art")])
    assert code == 2
    err = capsys.readouterr().err
    assert "nosuchkind" in err


def test_bad_config_exits_2(tmp_path, capsys):
    code = main(
        ["train", "--data", "synthetic", "--out", str(tmp_path), "--set", "model.encoder=lstm"]
    )
    assert code == 2
    assert "model.encoder" in capsys.readouterr().err


def test_evaluate_without_published_version_exits_2(tmp_path, capsys):
    code = main(["evaluate", "--artifacts", str(tmp_path), "--data", "synthetic:users=50,items=40"])
    assert code == 2
    assert "nothing published" in capsys.readouterr().err


def test_console_script_help_is_fast_and_works():
    out = subprocess.run(
        [sys.executable, "-m", "twotower.cli", "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0
    for command in COMMANDS:
        assert command in out.stdout
    # --help must not import TensorFlow
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, twotower.cli as c; c.build_parser(); print('tensorflow' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.stdout.strip() == "False"


def test_parser_accepts_spec_forms():
    args = build_parser().parse_args(
        [
            "train",
            "--data",
            "movielens:u.data",
            "--out",
            "a",
            "--epochs",
            "3",
            "--set",
            "loss.ntr_weight=0",
        ]
    )
    assert args.epochs == 3 and args.overrides == ["loss.ntr_weight=0"]
