"""Every command line the deployment starts is a real ``twotower`` command.

Effective argv per container is computed the way compose / the kubelet build
it (entrypoint or command + command or args, variables interpolated, the
preflight wrapper stripped) and parsed with ``twotower.cli.build_parser()``;
argparse exits on an unknown flag or subcommand, which fails the test.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.deploy import _deploy as d
from twotower.cli import build_parser

SUBCOMMANDS = {"demo", "train", "evaluate", "serve", "ingest", "pipeline"}
# Example values for $(VAR) expansion in Kubernetes args.
K8S_ENV = {
    "TWOTOWER_STORE__URL": "rediss://:0123456789abcdef0123@redis.internal:6380/0",
    "TWOTOWER_DEPLOY__REDIS_PASSWORD": "0123456789abcdef0123",
    "TWOTOWER_SNAPSHOT": "r00000042-20261122T051500.123456Z-3f2a",
}


def _parse(args: list[str], where: str):
    try:
        ns = build_parser().parse_args(args)
    except SystemExit as exc:  # argparse's way of refusing
        pytest.fail(f"{where}: `twotower {' '.join(args)}` does not parse (exit {exc.code})")
    assert ns.command in SUBCOMMANDS, where
    return ns


def _dockerfile_exec_form(path, instruction: str) -> list[str]:
    for line in path.read_text().splitlines():
        if line.startswith(instruction + " "):
            return json.loads(line[len(instruction) :].strip())
    raise AssertionError(f"{path.name}: no {instruction}")


def compose_commands(env=None) -> dict[str, list[str]]:
    """Effective argv of every service that runs the twotower image."""
    out = {}
    entry = _dockerfile_exec_form(d.DOCKERFILES[0], "ENTRYPOINT")
    cmd = _dockerfile_exec_form(d.DOCKERFILES[0], "CMD")
    for name, svc in d.compose(env)["services"].items():
        if name == "redis":
            continue
        if "entrypoint" in svc:  # compose drops the image's CMD when entrypoint is overridden
            argv = d.as_argv(svc["entrypoint"]) + d.as_argv(svc.get("command"))
        else:
            argv = entry + (d.as_argv(svc["command"]) if "command" in svc else cmd)
        out[name] = argv
    return out


def test_compose_commands_parse_with_the_cli():
    commands = compose_commands()
    api = _parse(d.twotower_args(commands["api"]), "compose api")
    assert (api.command, api.artifacts, api.host) == ("serve", "/artifacts", "0.0.0.0")
    assert api.store is None, "the API's store URL comes from TWOTOWER_STORE__URL, not argv"
    trainer = _parse(d.twotower_args(commands["trainer"]), "compose trainer")
    assert trainer.command == "pipeline" and trainer.artifacts == "/artifacts"
    assert trainer.every == "3600"
    # The store URL (and its password) comes from the environment, not argv.
    assert trainer.store is None
    env = d.env_dict(d.compose()["services"]["trainer"]["environment"])
    assert env["TWOTOWER_STORE__URL"].startswith("redis://")
    assert (
        d.env_dict(d.compose()["services"]["api"]["environment"])["TWOTOWER_STORE__URL"]
        == (env["TWOTOWER_STORE__URL"])
    )  # one name, one value for every command
    assert commands["seed"] == [d.PREFLIGHT, "--", "twotower-seed"]


def test_no_secret_on_any_command_line():
    """Passwords in argv show in `ps` and `docker inspect`: none in compose or Kubernetes."""
    password = "s3cr3t0123456789abcdef"
    model = d.compose({"TWOTOWER_REDIS_PASSWORD": password, "TWOTOWER_ENV": "production"})
    for name, svc in model["services"].items():
        argv = d.as_argv(svc.get("entrypoint")) + d.as_argv(svc.get("command"))
        assert password not in " ".join(argv), f"compose {name}: the password is on its argv"
        assert not any("--requirepass" in a for a in argv), name
    seed = d.load_script("seed")
    env = d.env_dict(model["services"]["seed"]["environment"])
    for step in seed.plan({**env, "TWOTOWER_SEED__ARTIFACTS": "/nonexistent"}):
        assert password not in " ".join(step), f"seed step {step[0]}"
    secret_vars = {"TWOTOWER_STORE__URL", "TWOTOWER_DEPLOY__REDIS_PASSWORD"}
    for path, doc in d.k8s_objects():
        for where, _pod, c in d.containers(doc):
            refs = " ".join(c.get("command", []) + c.get("args", []))
            for var in secret_vars:
                assert f"$({var})" not in refs, f"{path.name} {where}: $({var}) on the command line"


def test_seed_plan_commands_parse_with_the_cli(tmp_path):
    seed = d.load_script("seed")
    env = d.env_dict(d.compose()["services"]["seed"]["environment"])
    env["TWOTOWER_SEED__ARTIFACTS"] = str(tmp_path)  # nothing published there yet
    steps = seed.plan(env)
    parsed = [_parse(step, "seed") for step in steps]
    assert [p.command for p in parsed] == ["ingest", "pipeline"]
    ingest, pipeline = parsed
    assert ingest.store is None and pipeline.store is None  # both read TWOTOWER_STORE__URL
    assert pipeline.artifacts == str(tmp_path) and pipeline.every is None
    assert pipeline.config == env["TWOTOWER_SEED__CONFIG"]
    assert pipeline.overrides == env["TWOTOWER_SEED__SETTINGS"].split()


def test_image_default_command_is_the_cli_help():
    for path in d.DOCKERFILES:
        entry = _dockerfile_exec_form(path, "ENTRYPOINT")
        assert entry == ["twotower"], path.name
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args(_dockerfile_exec_form(path, "CMD"))
        assert exc.value.code == 0, f"{path.name}: CMD is not a valid twotower invocation"


def test_kubernetes_commands_parse_with_the_cli():
    seen = set()
    for path, doc in d.k8s_objects():
        for where, _pod, c in d.containers(doc):
            argv = d.expand_k8s(c.get("command", []) + c.get("args", []), K8S_ENV)
            assert not re.search(r"\$\([A-Z_]+\)", " ".join(argv)), (
                f"{path.name} {where}: unexpanded {argv}"
            )
            args = d.twotower_args(argv)
            assert args is not None, f"{path.name} {where}: does not run twotower: {argv}"
            ns = _parse(args, f"{path.name} {where}")
            seen.add(ns.command)
            if doc["kind"] == "TFJob":
                assert ns.command == "pipeline" and ns.strategy == "multiworker", where
                assert ns.snapshot == f"/artifacts/snapshots/{K8S_ENV['TWOTOWER_SNAPSHOT']}"
            if ns.command == "pipeline":
                assert ns.every is None, "Kubernetes schedules the CronJob: no --every"
                assert ns.store is None, "the store URL comes from TWOTOWER_STORE__URL"
            if ns.command == "serve":
                assert ns.store is None and ns.artifacts == "/artifacts" and ns.host == "0.0.0.0"
    assert seen == {"serve", "pipeline"}


def test_k8s_variable_references_are_defined_in_the_container_env():
    """$(VAR) stays literal when VAR is not in the container's env: the command would get '$(VAR)'."""
    for path, doc in d.k8s_objects():
        for where, _pod, c in d.containers(doc):
            refs = set(
                re.findall(
                    r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                    " ".join(c.get("command", []) + c.get("args", [])),
                )
            )
            missing = refs - d.container_env_names(c)
            assert not missing, f"{path.name} {where}: $({', '.join(sorted(missing))}) not in env"


def test_helper_executables_are_installed_by_both_images():
    """Every twotower-* program the deployment starts exists in the images."""
    used = set()
    for argv in compose_commands().values():
        used |= {a for a in argv if a.startswith("twotower-")}
    for _name, svc in d.compose()["services"].items():
        test = svc.get("healthcheck", {}).get("test") or []
        used |= {a for a in test if a.startswith("twotower-")}
    for _path, doc in d.k8s_objects():
        for _where, _pod, c in d.containers(doc):
            used |= {a for a in c.get("command", []) if a.startswith("twotower-")}
    assert used == {"twotower-preflight", "twotower-seed", "twotower-healthcheck"}
    for path in d.DOCKERFILES:
        text = path.read_text()
        installed = dict(
            re.findall(r"^COPY --chmod=0755 (deploy/\S+\.py) /usr/local/bin/(\S+)$", text, re.M)
        )
        assert set(installed.values()) >= used, path.name
        for source in installed:
            assert (d.REPO / source).is_file(), f"{path.name}: {source} missing"
            assert (d.REPO / source).read_text().startswith("#!/usr/bin/env python3\n"), source
        assert "twotower-healthcheck" in re.search(r"HEALTHCHECK[^\n]*\n[^\n]*", text).group(0)
