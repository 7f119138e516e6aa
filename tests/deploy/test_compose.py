"""docker-compose.yml (and the GPU override): schema, wiring, environment names.

No Docker engine here: the file is validated against the Compose Specification
(a closed subset written from the public schema, ``compose_schema.json``; plus
the full vendored schema of ``check-jsonschema`` and ``docker compose config``
when either is installed) and its wiring is checked the way compose resolves it.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest

from common.config import env_name
from common.urls import STORE_URL_ENV
from serving.settings import Settings, deprecated_env, env_names
from tests.deploy import _deploy as d
from trainer.pipeline.config import PipelineConfig, load_pipeline_config
from trainer.pipeline.schedule import next_run_delay

SCHEMA = json.loads((Path(__file__).parent / "compose_schema.json").read_text())


def _validate(model: dict) -> None:
    jsonschema.Draft7Validator(SCHEMA).validate(model)


@pytest.fixture(scope="module")
def stack() -> dict:
    return d.compose()


def test_compose_file_validates_against_the_compose_schema(stack):
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    _validate(stack)
    _validate(d.compose(path=d.GPU_OVERRIDE))


@pytest.mark.parametrize(
    "mutate, where",
    [
        (lambda m: m["services"]["api"].update(helthcheck={}), "helthcheck"),
        (
            lambda m: m["services"]["api"]["depends_on"]["redis"].update(condition="healthy"),
            "healthy",
        ),
        (lambda m: m["services"]["api"]["healthcheck"].update(interval=10), "10"),
        (lambda m: m.update(service={}), "service"),
        (lambda m: m["services"]["api"]["deploy"]["resources"]["limits"].update(gpu=1), "gpu"),
    ],
)
def test_schema_rejects_what_compose_would_reject(stack, mutate, where):
    """The schema is not vacuous: typos, bad enums and bad types fail."""
    broken = copy.deepcopy(stack)
    mutate(broken)
    with pytest.raises(jsonschema.ValidationError) as err:
        _validate(broken)
    assert where in str(err.value)


def test_full_vendored_compose_spec_when_installed(stack):
    """The complete Compose Specification schema, if check-jsonschema ships it here."""
    package = importlib.util.find_spec(
        "check_jsonschema"
    )  # locate only: its imports are not needed
    if package is None or package.origin is None:
        pytest.skip(
            "check-jsonschema not installed (pip install check-jsonschema runs the full Compose schema too)"
        )
    full = json.loads(
        (Path(package.origin).parent / "builtin_schemas/vendor/compose-spec.json").read_text()
    )
    jsonschema.Draft7Validator(full).validate(stack)
    jsonschema.Draft7Validator(full).validate(d.compose(path=d.GPU_OVERRIDE))


def test_docker_compose_config_when_the_client_is_installed(tmp_path):
    """`docker compose config -q` parses without an engine, where the plugin exists."""
    for argv in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(argv[0]) is None:
            continue
        probe = subprocess.run([*argv, "version"], capture_output=True, text=True)
        if probe.returncode != 0:
            continue
        out = subprocess.run(
            [*argv, "-f", str(d.COMPOSE_FILE), "-f", str(d.GPU_OVERRIDE), "config", "-q"],
            capture_output=True,
            text=True,
            cwd=d.REPO,
        )
        assert out.returncode == 0, out.stderr
        return
    pytest.skip("no docker compose client here; the schema tests above stand in for it")


def test_every_named_volume_is_declared_and_used(stack):
    declared = set(stack["volumes"])
    used = set()
    for name, svc in stack["services"].items():
        for vol in svc.get("volumes", []):
            source = vol.split(":", 1)[0] if isinstance(vol, str) else vol.get("source", "")
            if source.startswith((".", "/")):
                pytest.fail(
                    f"service {name}: bind mount {source}; the stack uses named volumes only"
                )
            assert source in declared, f"service {name}: volume {source!r} is not declared"
            used.add(source)
    assert used == declared, f"declared but unused volumes: {declared - used}"


def test_artifacts_volume_is_read_only_for_the_api_and_writable_for_the_jobs(stack):
    mounts = {
        name: {v.split(":")[0]: v.split(":")[2:] for v in svc.get("volumes", [])}
        for name, svc in stack["services"].items()
    }
    assert mounts["api"]["artifacts"] == ["ro"]
    assert mounts["trainer"]["artifacts"] == []
    assert mounts["seed"]["artifacts"] == []
    assert "redis-data" in mounts["redis"]


def test_depends_on_targets_exist_with_the_right_conditions(stack):
    services = stack["services"]
    for name, svc in services.items():
        for target, spec in svc.get("depends_on", {}).items():
            assert target in services, f"{name} depends on unknown service {target}"
            condition = spec["condition"]
            if condition == "service_healthy":
                hc = services[target].get("healthcheck", {})
                assert hc.get("test") and not hc.get("disable"), (
                    f"{name} waits for {target} healthy, but it has no healthcheck"
                )
            if condition == "service_completed_successfully":
                assert services[target].get("restart") == "no", (
                    f"{target} is awaited to complete but restarts"
                )
    assert services["api"]["depends_on"] == {
        "redis": {"condition": "service_healthy"},
        "seed": {"condition": "service_completed_successfully"},
    }
    assert services["trainer"]["depends_on"]["redis"] == {"condition": "service_healthy"}
    assert services["seed"]["depends_on"]["redis"] == {"condition": "service_healthy"}


def test_healthchecks(stack):
    services = stack["services"]
    assert services["redis"]["healthcheck"]["test"][0] == "CMD-SHELL"
    assert "redis-cli ping" in services["redis"]["healthcheck"]["test"][1]
    # redis-cli authenticates through REDISCLI_AUTH, set to the password redis-server gets.
    redis_env = d.env_dict(services["redis"]["environment"])
    assert redis_env["REDISCLI_AUTH"] == redis_env["REDIS_PASSWORD"]
    assert services["api"]["healthcheck"]["test"] == ["CMD", "twotower-healthcheck", "/readyz"]
    # One-shot / server-less services must not inherit the image's HTTP healthcheck.
    assert services["seed"]["healthcheck"] == {"disable": True}
    assert services["trainer"]["healthcheck"] == {"disable": True}


def _redis_script(model: dict) -> str:
    svc = model["services"]["redis"]
    assert d.as_argv(svc["entrypoint"]) == ["/bin/sh", "-c"]
    (script,) = d.as_argv(svc["command"])
    return script


def _flag(script: str, name: str) -> str:
    match = re.search(rf"{name}\s+\"?([^\s\"\\]+)", script)
    assert match, f"redis: no {name}"
    return match.group(1)


def _bytes(size: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kmg]?)b?", size.lower()).groups()
    return int(number) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit]


def test_redis_persistence_memory_and_password(stack):
    redis = stack["services"]["redis"]
    script = _redis_script(stack)
    assert redis["image"].startswith("redis:7")
    assert _flag(script, "--appendonly") == "yes"
    assert _flag(script, "--appendfsync") in ("always", "everysec")
    assert _flag(script, "--maxmemory-policy") == "noeviction"
    # noeviction only acts with a maxmemory; below the container limit, or the kernel
    # OOM-kills Redis before it can refuse a write.
    limit = _bytes(redis["deploy"]["resources"]["limits"]["memory"])
    assert 0 < _bytes(_flag(script, "--maxmemory")) <= 0.8 * limit
    # The password goes in on stdin (config "-"), read from the container environment.
    assert "redis-server - " in script and 'requirepass "${REDIS_PASSWORD}"' in script
    assert "--requirepass" not in script
    assert "redis-data:/data" in redis["volumes"]
    assert "ports" not in redis, "Redis must not be published on the host"
    # The password reaches every store URL: the same value everywhere, by default and when set.
    for env in ({}, {"TWOTOWER_REDIS_PASSWORD": "s3cr3t-abcdefghijklmnop"}):
        model = d.compose(env)
        password = d.env_dict(model["services"]["redis"]["environment"])["REDIS_PASSWORD"]
        if env:
            assert password == env["TWOTOWER_REDIS_PASSWORD"]
        api_env = d.env_dict(model["services"]["api"]["environment"])
        seed_env = d.env_dict(model["services"]["seed"]["environment"])
        trainer_env = d.env_dict(model["services"]["trainer"]["environment"])
        for url in (api_env[STORE_URL_ENV], seed_env[STORE_URL_ENV], trainer_env[STORE_URL_ENV]):
            assert url == f"redis://:{password}@redis:6379/0"


def test_restart_policies_and_resource_limits(stack):
    services = stack["services"]
    assert services["seed"]["restart"] == "no"
    for name in ("redis", "api", "trainer"):
        assert services[name]["restart"] in ("unless-stopped", "always", "on-failure")
    for name, svc in services.items():
        limits = svc["deploy"]["resources"]["limits"]
        assert float(limits["cpus"]) > 0 and limits["memory"][-1] in "gm", name


def test_api_is_published_on_loopback_by_default(stack):
    assert stack["services"]["api"]["ports"] == ["127.0.0.1:8000:8000"]
    assert d.compose({"TWOTOWER_API_BIND": "0.0.0.0", "TWOTOWER_API_PORT": "9000"})["services"][
        "api"
    ]["ports"] == ["0.0.0.0:9000:8000"]


def test_twotower_services_share_one_image_and_are_hardened(stack):
    twotower = {n: s for n, s in stack["services"].items() if n != "redis"}
    assert {s["image"] for s in twotower.values()} == {"twotower:local"}
    for name, svc in twotower.items():
        assert svc["build"] == {"context": ".", "dockerfile": "deploy/Dockerfile"}, name
        assert (d.REPO / svc["build"]["dockerfile"]).is_file()
        assert svc["cap_drop"] == ["ALL"] and svc["init"] is True, name
        assert d.as_argv(svc["entrypoint"])[0] == d.PREFLIGHT, (
            f"{name} must start through the preflight"
        )
    assert stack["services"]["api"]["read_only"] is True


def test_every_program_variable_is_a_real_setting_of_the_one_scheme(stack):
    """Each service's TWOTOWER_* names: TWOTOWER_<SECTION>__<KEY>, never an old name, and a
    setting of the program that reads it (a typo would be refused at start-up: catch it here)."""
    preflight, seed = d.load_script("preflight"), d.load_script("seed")
    owners = {
        "serve": set(env_names()),
        "store": {STORE_URL_ENV},
        "deploy": {env_name("deploy", key) for key in preflight.DEPLOY_KEYS},
        "seed": {env_name("seed", key) for key in seed.SEED_KEYS},
    }
    old = {*deprecated_env(), *preflight.OLD_DEPLOY_ENV, *seed.DEPRECATED}
    for name, svc in stack["services"].items():
        for var in d.env_dict(svc.get("environment")):
            if not var.startswith("TWOTOWER_"):
                continue
            assert var not in old and "__" in var, f"service {name}: {var} is an old name"
            section = var.removeprefix("TWOTOWER_").split("__")[0].lower()
            if section in owners:
                assert var in owners[section], f"service {name}: {var} is not a {section} setting"
            else:
                assert section in PipelineConfig.model_fields, f"service {name}: {var}"


def test_api_environment_builds_valid_serving_settings(stack, monkeypatch, tmp_path):
    production = {
        "TWOTOWER_ENV": "production",
        "TWOTOWER_REDIS_PASSWORD": "a" * 32,
        "TWOTOWER_API_KEYS": "b" * 32,
    }
    for env in ({}, production):
        api_env = d.env_dict(d.compose(env)["services"]["api"]["environment"])
        for var, value in api_env.items():
            if var in env_names():
                monkeypatch.setenv(var, value)
        settings = Settings(artifacts=tmp_path)
        assert settings.store_url.startswith("redis://")
        assert settings.environment == env.get("TWOTOWER_ENV", "development")
        # Keys only when given (development default: none, the API open on loopback).
        assert settings.auth_mode == ("writes" if env else "none")
    monkeypatch.setenv("TWOTOWER_SERVE__API_KEYS", "")
    with pytest.raises(ValueError, match="TWOTOWER_SERVE__API_KEYS"):
        Settings(artifacts=tmp_path)  # production without keys


def test_trainer_config_environment_and_file_load(stack):
    """TWOTOWER_<SECTION>__<KEY> variables and the mounted config are real pipeline keys."""
    trainer = stack["services"]["trainer"]
    env = {k: v for k, v in d.env_dict(trainer["environment"]).items() if "__" in k}
    assert env, "expected at least one config key set through the environment"
    config_target = trainer["configs"][0]["target"]
    cmd = d.as_argv(trainer["command"])
    assert cmd[cmd.index("--config") + 1] == config_target
    source = stack["configs"][trainer["configs"][0]["source"]]["file"]
    assert (d.REPO / source).resolve() == d.PIPELINE_CONFIG
    config = load_pipeline_config(file=d.PIPELINE_CONFIG, environ=env)
    assert config.pipeline.min_new_events == int(env["TWOTOWER_PIPELINE__MIN_NEW_EVENTS"])


@pytest.mark.parametrize("schedule", [None, "900", "0 */6 * * *", "*/15 * * * *"])
def test_schedule_default_and_examples_are_valid(schedule):
    env = {} if schedule is None else {"TWOTOWER_SCHEDULE": schedule}
    cmd = d.compose(env)["services"]["trainer"]["command"]
    every = cmd[cmd.index("--every") + 1]
    assert every == (schedule or "3600")
    assert next_run_delay(every, now=0.0) > 0


def test_env_example_documents_exactly_the_variables_compose_reads():
    documented = {}
    for line in d.ENV_EXAMPLE.read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            documented[key] = value.strip('"')
    referenced = d.referenced_variables(d.COMPOSE_FILE) | d.referenced_variables(d.GPU_OVERRIDE)
    assert set(documented) == referenced
    # The documented values are the defaults: interpolating with them changes nothing.
    assert d.compose(documented) == d.compose({})


def test_gpu_override_targets_existing_services_with_the_gpu_image(stack):
    gpu = d.compose(path=d.GPU_OVERRIDE)
    assert set(gpu["services"]) <= set(stack["services"])
    for name, svc in gpu["services"].items():
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile.gpu", name
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"], name


def test_the_compose_redis_command_runs_with_its_settings(stack_redis):
    """The script itself starts Redis: password from stdin, AOF always, noeviction, maxmemory."""
    client = stack_redis.client()
    config = client.config_get("*")
    assert config["appendonly"] == "yes" and config["appendfsync"] == "always"
    assert config["maxmemory-policy"] == "noeviction"
    assert int(config["maxmemory"]) == 768 * 1024**2
    assert config["requirepass"] == stack_redis.password
    import redis as redis_py

    anonymous = redis_py.Redis(host="127.0.0.1", port=stack_redis.port)
    with pytest.raises(redis_py.AuthenticationError):
        anonymous.ping()
