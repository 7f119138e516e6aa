"""The command line's contract: --help everywhere, exit 2 with a clear message for bad input."""

import argparse
import json
import os
import socket
import subprocess
import sys

import pytest

from common.urls import DEFAULT_STORE_URL, STORE_URL_ENV
from twotower.cli import build_parser, main

COMMANDS = ["demo", "train", "evaluate", "serve", "ingest", "pipeline", "archive", "migrate-redis"]


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


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_every_subcommand_has_a_description_and_every_option_a_help():
    missing = []
    for name, p in _subcommands().items():
        if not (p.description or "").strip():
            missing.append(f"{name}: no description")
        for action in p._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if not (action.help or "").strip():
                flag = "/".join(action.option_strings) or action.dest
                missing.append(f"{name} {flag}: no help")
    assert not missing
    assert set(_subcommands()) >= {*COMMANDS, "forget"}


def test_option_help_says_the_data_forms_and_the_store_default():
    for name, p in _subcommands().items():
        helps = {o: a.help for a in p._actions for o in a.option_strings}
        if "--data" in helps:
            assert "events:DIR" in helps["--data"] and "ART/events" in helps["--data"], name
        if "--store" in helps:
            assert f"${STORE_URL_ENV}" in helps["--store"], name
            assert DEFAULT_STORE_URL in helps["--store"], name


# A CLI run in a fresh interpreter: its exit code and whether it imported TensorFlow.
PROBE = """
import json, sys
from twotower.cli import main
code = main(json.loads(sys.argv[1]))
print(json.dumps({"code": code, "tensorflow": "tensorflow" in sys.modules}))
"""


def _probe(argv: list[str], cwd, extra_env: dict[str, str] | None = None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWOTOWER_")}
    env.update(extra_env or {})
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argv)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
    )
    assert out.stdout.strip(), out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["code"], result["tensorflow"], out.stderr


def _published_art(tmp_path):
    """An artifact directory whose LATEST names a version with a manifest (never loaded)."""
    art = tmp_path / "published"
    (art / "versions" / "v1").mkdir(parents=True)
    (art / "versions" / "v1" / "manifest.json").write_text("{}")
    (art / "LATEST").write_text("v1\n")
    return art


@pytest.mark.parametrize(
    "argv, env, message",
    [
        (
            ["train", "--data", "synthetic", "--out", "{tmp}/art", "--set", "model.encodr=gru"],
            {},
            "unknown key model.encodr; did you mean model.encoder?",
        ),
        (
            ["train", "--data", "synthetic", "--out", "{tmp}/art"],
            {"TWOTOWER_MODEL__ENCODR": "gru"},
            "did you mean TWOTOWER_MODEL__ENCODER?",
        ),
        (
            ["train", "--data", "synthetic", "--out", "{tmp}/art", "--config", "{tmp}/no.yaml"],
            {},
            "cannot read config file",
        ),
        (
            ["train", "--data", "synthetic", "--out", "{tmp}/art", "--config", "{tmp}/bad.yaml"],
            {},
            "not valid YAML",
        ),
        (
            ["train", "--data", "movielens:{tmp}/nope/u.data", "--out", "{tmp}/art"],
            {},
            "{tmp}/nope/u.data: no such file or directory",
        ),
        (["train", "--data", "lightgcn:{tmp}", "--out", "{tmp}/art"], {}, "missing train.txt"),
        (
            ["train", "--data", "synthetic:userz=5", "--out", "{tmp}/art"],
            {},
            "unknown key 'userz'",
        ),
        (
            ["train", "--data", "synthetic", "--out", "{tmp}/art", "--warm-start"],
            {},
            "--out {tmp}/art: no such directory",
        ),
        (
            ["evaluate", "--artifacts", "nope", "--data", "synthetic"],
            {},
            "--artifacts nope: no such directory",
        ),
        (["evaluate", "--artifacts", "{tmp}", "--data", "synthetic"], {}, "nothing published"),
        (
            ["evaluate", "--artifacts", "{pub}", "--version", "v9", "--data", "synthetic"],
            {},
            "version 'v9' not found (have: v1)",
        ),
        (
            ["evaluate", "--artifacts", "{pub}", "--data", "movielens:{tmp}/nope"],
            {},
            "no such file or directory",
        ),
        (
            ["evaluate", "--artifacts", "{pub}", "--data", "synthetic", "--topk-out", "/no/f"],
            {},
            "--topk-out /no/f: no such directory",
        ),
        (["serve", "--artifacts", "{tmp}/nope"], {}, "no such directory"),
        (
            ["serve", "--artifacts", "{tmp}", "--store", "mysql://db/x"],
            {},
            "unknown scheme 'mysql'",
        ),
        (
            ["ingest", "--data", "events:sqlite:///{tmp}/none.sqlite"],
            {},
            "no such store file {tmp}/none.sqlite",
        ),
        (["ingest", "--data", "synthetic", "--store", "redis://h:x/0"], {}, "port"),
    ],
)
def test_input_errors_exit_2_before_tensorflow_or_data(tmp_path, argv, env, message):
    (tmp_path / "bad.yaml").write_text("model: [\n")
    pub = _published_art(tmp_path)
    fill = {"{tmp}": str(tmp_path), "{pub}": str(pub)}
    for key, value in fill.items():
        argv = [a.replace(key, value) for a in argv]
        message = message.replace(key, value)
    code, tensorflow, err = _probe(argv, tmp_path, env)
    assert code == 2, err[-3000:]
    assert message in err, err[-3000:]
    assert not tensorflow, "TensorFlow was imported before the input was checked"
    assert "Traceback" not in err
    assert not (tmp_path / "art").exists()  # nothing was written


def test_a_busy_port_is_refused_before_any_work(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for argv in (
            ["serve", "--artifacts", str(tmp_path), "--port", str(port)],
            ["demo", "--dir", str(tmp_path / "demo"), "--port", str(port)],
        ):
            code, tensorflow, err = _probe(argv, tmp_path)
            assert code == 2, err[-3000:]
            assert f"port {port} is in use; pass --port" in err
            assert not tensorflow
    # The demo neither trained nor published anything (into a running demo's artifacts).
    assert not (tmp_path / "demo").exists()


def test_the_port_check_explains_an_address_that_cannot_be_bound():
    from serving.main import PortUnavailable, check_port

    check_port("127.0.0.1", 0)  # any free port: nothing to check
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(PortUnavailable, match=f"port {port} is in use; pass --port"):
            check_port("127.0.0.1", port)
        with pytest.raises(PortUnavailable, match=f"port {port} is in use"):
            check_port("0.0.0.0", port)  # the wildcard overlaps the loopback listener
    with pytest.raises(PortUnavailable, match="not an address of this machine"):
        check_port("192.0.2.1", 8000)  # TEST-NET-1: never local


@pytest.mark.slow
def test_a_server_that_does_not_start_exits_1_not_uvicorns_3(tmp_path):
    art = tmp_path / "art"
    (art / "LATEST").mkdir(parents=True)  # unreadable: the app's start-up fails
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "twotower.cli",
            "serve",
            "--artifacts",
            str(art),
            "--port",
            "0",
            "--store",
            f"sqlite:///{tmp_path / 's.sqlite'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert out.returncode == 1, out.stderr[-3000:]
    assert "the API did not start" in out.stderr


@pytest.mark.slow
def test_a_second_demo_on_the_same_dir_is_refused_before_training(tmp_path):
    import fcntl

    work = tmp_path / "demo"
    work.mkdir()
    with (work / ".demo.lock").open("a+b") as running:  # what a running demo holds
        fcntl.flock(running, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            port = free.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "twotower.cli", "demo", "--dir", str(work), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
    assert out.returncode == 2, out.stderr[-3000:]
    assert "is used by another running demo; stop it or pass another --dir" in out.stderr
    assert "[2/4] training" not in out.stderr
    assert not (work / "artifacts").exists()
