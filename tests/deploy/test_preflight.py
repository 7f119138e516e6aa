"""deploy/preflight.py: production mode refuses unsafe values and accepts safe
ones; the wrapper execs the command only when the verdict is ok.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.deploy import _deploy as d

preflight = d.load_script("preflight")
STRONG = "3f1c0e9a7b5d4e2f8a6c1b0d9e7f5a3c"  # 32 hex chars, as `openssl rand -hex 32` would give (shorter)
SERVE = ["twotower", "serve", "--artifacts", "/artifacts", "--host", "0.0.0.0"]


def prod(**extra: str) -> dict[str, str]:
    """A safe production environment of the API; tests break one thing at a time."""
    env = {
        "TWOTOWER_DEPLOY__ENVIRONMENT": "production",
        "TWOTOWER_DEPLOY__REDIS_PASSWORD": STRONG,
        "TWOTOWER_SERVE__ENVIRONMENT": "production",
        "TWOTOWER_STORE__URL": f"rediss://:{STRONG}@redis.internal:6380/0",
        "TWOTOWER_SERVE__API_KEYS_FILE": "/var/run/secrets/twotower/api-keys",
    }
    env.update(extra)
    return env


def test_safe_production_values_are_accepted():
    verdict = preflight.check(prod(), SERVE)
    assert verdict.ok, verdict.problems
    assert verdict.mode == "production"
    trainer = [
        "twotower",
        "pipeline",
        "--store",
        f"redis://:{STRONG}@redis:6379/0",
        "--artifacts",
        "/a",
    ]
    env = prod()
    del env["TWOTOWER_STORE__URL"]
    del env["TWOTOWER_SERVE__ENVIRONMENT"]
    verdict = preflight.check(env, trainer)
    assert verdict.ok, verdict.problems
    assert any("plain redis://" in w for w in verdict.warnings), (
        "plaintext to a remote host is worth a warning"
    )


def test_compose_defaults_run_in_development_with_a_warning_only():
    for name in ("api", "trainer", "seed"):
        svc = d.compose()["services"][name]
        env = d.env_dict(svc["environment"])
        argv = d.strip_preflight(d.as_argv(svc["entrypoint"]) + d.as_argv(svc.get("command")))
        verdict = preflight.check(env, argv)
        assert verdict.ok, (name, verdict.problems)
        assert any("default" in w for w in verdict.warnings), name


@pytest.mark.parametrize("name", ["api", "trainer", "seed"])
def test_compose_in_production_mode_refuses_the_default_password_and_accepts_a_real_one(name):
    def verdict_for(env):
        svc = d.compose(env)["services"][name]
        argv = d.strip_preflight(d.as_argv(svc["entrypoint"]) + d.as_argv(svc.get("command")))
        return preflight.check(d.env_dict(svc["environment"]), argv)

    refused = verdict_for({"TWOTOWER_ENV": "production"})
    assert not refused.ok
    assert any("local-stack default" in p for p in refused.problems)
    real = {"TWOTOWER_ENV": "production", "TWOTOWER_REDIS_PASSWORD": STRONG}
    if name == "api":  # the API also needs its keys
        no_keys = verdict_for(real)
        assert any("TWOTOWER_SERVE__API_KEYS" in p for p in no_keys.problems), no_keys.problems
        real["TWOTOWER_API_KEYS"] = "a" * 32
    accepted = verdict_for(real)
    assert accepted.ok, accepted.problems


@pytest.mark.parametrize(
    "env, argv, needle",
    [
        (prod(TWOTOWER_DEPLOY__REDIS_PASSWORD="twotower-local-only"), SERVE, "local-stack default"),
        (
            prod(TWOTOWER_DEPLOY__REDIS_PASSWORD="CHANGE-ME-openssl-rand-hex-32"),
            SERVE,
            "placeholder",
        ),
        (prod(TWOTOWER_DEPLOY__REDIS_PASSWORD="short"), SERVE, "shorter than 16"),
        (
            prod(TWOTOWER_STORE__URL="redis://:twotower-local-only@redis:6379/0"),
            SERVE,
            "local-stack default",
        ),
        (prod(TWOTOWER_STORE__URL="rediss://:abc@redis:6379/0"), SERVE, "shorter than 16"),
        (prod(TWOTOWER_STORE__URL="redis://redis.internal:6379/0"), SERVE, "password"),
        (prod(TWOTOWER_STORE__URL="sqlite:///store.sqlite"), SERVE, "sqlite"),
        (
            prod(TWOTOWER_STORE__URL=f"rediss://:{STRONG}@r:6380/0?ssl_cert_reqs=none"),
            SERVE,
            "ssl_cert_reqs",
        ),
        (prod(TWOTOWER_SERVE__ENVIRONMENT="development"), SERVE, "TWOTOWER_SERVE__ENVIRONMENT"),
        (prod(TWOTOWER_SERVE__FLOOR_ROUTE="true"), SERVE, "/_floor"),
        (prod(TWOTOWER_SERVE__API_KEYS_FILE=""), SERVE, "TWOTOWER_SERVE__API_KEYS"),
        (
            prod(TWOTOWER_SERVE__API_KEYS="CHANGE-ME-openssl-rand-hex-32"),
            SERVE,
            "TWOTOWER_SERVE__API_KEYS: still holds a placeholder",
        ),
        (prod(TWOTOWER_SEED__DATA="movielens:/data/CHANGE-ME"), SERVE, "TWOTOWER_SEED__DATA"),
        (prod(TWOTOWER_DEPLOY__ENVIRONMENT="prod"), SERVE, "expected one of"),
        (
            prod(),
            ["twotower", "pipeline", "--store", "sqlite:///x.sqlite", "--artifacts", "/a"],
            "--store",
        ),
        (
            prod(),
            ["twotower", "train", "--data", "events:redis://other:6379/0", "--out", "/a"],
            "--data",
        ),
        (
            prod(),
            ["twotower", "pipeline", "--store=redis://:short@r:6379/0", "--artifacts", "/a"],
            "--store",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_unsafe_production_values_are_refused(env, argv, needle):
    verdict = preflight.check(env, argv)
    assert not verdict.ok
    assert any(needle in p for p in verdict.problems), verdict.problems


def test_unknown_mode_fails_closed():
    """A typo in the mode must not switch the production checks off."""
    verdict = preflight.check(
        prod(
            TWOTOWER_DEPLOY__ENVIRONMENT="prod",
            TWOTOWER_DEPLOY__REDIS_PASSWORD="twotower-local-only",
        ),
        SERVE,
    )
    assert any("local-stack default" in p for p in verdict.problems)


def test_password_that_is_not_url_safe_is_refused_in_any_mode():
    for mode in ("development", "production"):
        verdict = preflight.check(
            prod(TWOTOWER_DEPLOY__ENVIRONMENT=mode, TWOTOWER_DEPLOY__REDIS_PASSWORD=STRONG + "@/#"),
            SERVE,
        )
        assert any("URL-safe" in p for p in verdict.problems), mode
    # A percent-encoded password in a URL is fine.
    verdict = preflight.check(prod(TWOTOWER_STORE__URL=f"rediss://:{STRONG}%40x@r:6380/0"), SERVE)
    assert verdict.ok, verdict.problems


def test_development_accepts_local_defaults():
    env = {
        "TWOTOWER_DEPLOY__REDIS_PASSWORD": "twotower-local-only",
        "TWOTOWER_STORE__URL": "sqlite:///s.sqlite",
    }
    verdict = preflight.check(env, SERVE)
    assert verdict.ok and verdict.mode == "development"


def test_problems_never_print_the_secret():
    env = prod(
        TWOTOWER_STORE__URL="sqlite:///x", TWOTOWER_DEPLOY__REDIS_PASSWORD="CHANGE-ME-" + STRONG
    )
    verdict = preflight.check(env, [*SERVE, "--store", "redis://:tooshortpw@redis.internal:6379/0"])
    text = "\n".join(verdict.problems + verdict.warnings)
    assert len(verdict.problems) >= 3
    assert STRONG not in text and "tooshortpw" not in text


# --- the names before the scheme -------------------------------------------------------------

OLD = {
    "TWOTOWER_ENV": "production",
    "TWOTOWER_REDIS_PASSWORD": STRONG,
    "TWOTOWER_SERVE_ENVIRONMENT": "production",
    "TWOTOWER_SERVE_STORE_URL": f"rediss://:{STRONG}@redis.internal:6380/0",
    "TWOTOWER_SERVE_API_KEYS_FILE": "/var/run/secrets/twotower/api-keys",
}


def test_old_names_are_judged_under_their_new_ones_with_a_warning_each():
    verdict = preflight.check(OLD, SERVE)
    assert verdict.ok and verdict.mode == "production", verdict.problems
    deprecated = [w for w in verdict.warnings if "is deprecated: use" in w]
    assert len(deprecated) == len(OLD), verdict.warnings
    assert any(
        "TWOTOWER_ENV is deprecated: use TWOTOWER_DEPLOY__ENVIRONMENT" in w for w in deprecated
    )
    # The old production switch still switches the checks on (it must never fail open).
    refused = preflight.check({**OLD, "TWOTOWER_REDIS_PASSWORD": "twotower-local-only"}, SERVE)
    assert any(
        p.startswith("TWOTOWER_DEPLOY__REDIS_PASSWORD: is the local-stack default")
        for p in refused.problems
    ), refused.problems


@pytest.mark.parametrize(
    "env, needle",
    [
        (
            {**OLD, "TWOTOWER_DEPLOY__ENVIRONMENT": "development"},
            "TWOTOWER_DEPLOY__ENVIRONMENT and TWOTOWER_ENV are set to different values",
        ),
        (
            prod(TWOTOWER_STORE_URL="redis://:other@r:6379/0"),
            "TWOTOWER_STORE__URL and TWOTOWER_STORE_URL are set to different values",
        ),
        (
            prod(TWOTOWER_DEPLOY__ENVIRONEMNT="production"),
            "did you mean TWOTOWER_DEPLOY__ENVIRONMENT?",
        ),
    ],
    ids=["old-and-new-mode", "old-and-new-store", "unknown-deploy-name"],
)
def test_names_that_disagree_or_do_not_exist_are_refused(env, needle):
    verdict = preflight.check(env, SERVE)
    assert not verdict.ok and any(needle in p for p in verdict.problems), verdict.problems
    assert "other" not in "\n".join(verdict.problems)  # names, not values


# --- the wrapper, as a real process ------------------------------------------------------------


def _run(env: dict[str, str], *cmd: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TWOTOWER_")}
    return subprocess.run(
        [sys.executable, str(d.REPO / "deploy" / "preflight.py"), "--", *cmd],
        # The images install the package; here the checkout is the package.
        env={**base, "PYTHONPATH": str(d.REPO), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_wrapper_execs_the_command_when_ok():
    out = _run(prod(), sys.executable, "-c", "import os; print('ran', os.getpid())")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ran ")


def test_wrapper_refuses_with_exit_2_and_does_not_run_the_command():
    out = _run(
        prod(TWOTOWER_DEPLOY__REDIS_PASSWORD="twotower-local-only"),
        sys.executable,
        "-c",
        "print('ran')",
    )
    assert out.returncode == 2
    assert "ran" not in out.stdout
    assert "refusing to start" in out.stderr and "TWOTOWER_DEPLOY__REDIS_PASSWORD" in out.stderr


def test_wrapper_passes_the_exit_code_through_and_reports_a_missing_program():
    assert _run(prod(), sys.executable, "-c", "raise SystemExit(7)").returncode == 7
    missing = _run(prod(), "no-such-program-twotower")
    assert missing.returncode == 127 and "no-such-program-twotower" in missing.stderr


def test_wrapper_warns_once_and_hands_the_command_the_new_names():
    show = (
        "import json, os; print(json.dumps([k for k in os.environ if k.startswith('TWOTOWER_')]))"
    )
    out = _run(OLD, sys.executable, "-c", show)
    assert out.returncode == 0, out.stderr
    assert sorted(json.loads(out.stdout)) == sorted(
        ["TWOTOWER_DEPLOY__ENVIRONMENT", "TWOTOWER_DEPLOY__REDIS_PASSWORD",
         "TWOTOWER_SERVE__ENVIRONMENT", "TWOTOWER_STORE__URL", "TWOTOWER_SERVE__API_KEYS_FILE"]
    )  # fmt: skip
    assert out.stderr.count("is deprecated: use") == len(OLD), out.stderr
    conflict = _run({**OLD, "TWOTOWER_SERVE__ENVIRONMENT": "development"}, sys.executable, "-c", "")
    assert conflict.returncode == 2 and "TWOTOWER_SERVE_ENVIRONMENT" in conflict.stderr
