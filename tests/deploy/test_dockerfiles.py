"""The images: multi-stage, non-root, health-checked, no secrets, a context
that holds what the Dockerfiles copy and nothing of what .dockerignore keeps
out; and the per-variant requirements derived from pyproject.toml.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest

from tests.deploy import _deploy as d

requirements = d.load_script("requirements")
DOCKERIGNORE = d.REPO / ".dockerignore"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        buf += " " + line.rstrip("\\").strip() if buf else line.rstrip("\\").strip()
        if line.endswith("\\"):
            continue
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


# --- .dockerignore, with the builder's matching rules ----------------------------------------


def _glob_regex(pattern: str) -> re.Pattern[str]:
    pattern = pattern.strip().lstrip("/").rstrip("/")
    out, i = "", 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif ch == "*":
            out, i = out + "[^/]*", i + 1
        elif ch == "?":
            out, i = out + "[^/]", i + 1
        elif ch == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(ch), i + 1
    return re.compile(out)


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            rules.append((negate, _glob_regex(line.lstrip("!"))))
    return rules


def is_ignored(path: str) -> bool:
    """The last matching rule wins; a rule matching a parent directory covers its contents."""
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for negate, rx in dockerignore_rules():
        if any(rx.fullmatch(c) for c in candidates):
            ignored = not negate
    return ignored


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        ".env",
        ".env.production",
        "artifacts/LATEST",
        "twotower-demo/artifacts/versions/v1/index.faiss",
        "twotower-demo/store.sqlite",
        "store.sqlite-wal",
        "data/u.data",
        "tests/deploy/test_compose.py",
        "serving/__pycache__/app.cpython-311.pyc",
        "twotower.egg-info/PKG-INFO",
        ".pytest_cache/v/cache/lastfailed",
        ".mypy_cache/3.11/x.json",
        ".ruff_cache/x",
        "bench/results/run.json",
        "deploy/k8s/api-deployment.yaml",
        "some/dir/events.parquet",
    ],
)
def test_dockerignore_keeps_out(path):
    assert is_ignored(path), path


@pytest.mark.parametrize(
    "path",
    [
        "pyproject.toml",
        "README.md",
        "constraints.txt",
        "twotower/cli.py",
        "common/artifacts.py",
        "twotower/py.typed",
        "trainer/data/sources.py",
        "serving/app.py",
        "feature_store/redis/store.py",
        "deploy/requirements.py",
        "deploy/preflight.py",
    ],
)
def test_dockerignore_keeps_in(path):
    assert not is_ignored(path), path


@pytest.mark.parametrize("dockerfile", d.DOCKERFILES, ids=lambda p: p.name)
def test_every_copied_source_exists_and_is_in_the_context(dockerfile):
    copies = 0
    for word, args in instructions(dockerfile):
        if word != "COPY" or "--from=" in args:
            continue
        tokens = [t for t in shlex.split(args) if not t.startswith("--")]
        for src in tokens[:-1]:
            copies += 1
            path = d.REPO / src
            assert path.exists(), f"{dockerfile.name}: COPY {src}: no such file"
            files = [path] if path.is_file() else [p for p in path.rglob("*.py")]
            for f in files:
                rel = f.relative_to(d.REPO).as_posix()
                assert not is_ignored(rel), (
                    f"{dockerfile.name}: COPY {src}, but .dockerignore drops {rel}"
                )
    assert copies >= 8


@pytest.mark.parametrize("dockerfile", d.DOCKERFILES, ids=lambda p: p.name)
def test_multi_stage_non_root_healthcheck_entrypoint(dockerfile):
    ins = instructions(dockerfile)
    froms = [args for word, args in ins if word == "FROM"]
    assert len(froms) >= 2 and froms[0].endswith(" AS build") and froms[-1].endswith(" AS runtime")
    runtime = ins[max(i for i, (w, _a) in enumerate(ins) if w == "FROM") :]
    assert any(w == "COPY" and "--from=build" in a for w, a in runtime), (
        "runtime takes only the build output"
    )
    assert not any(w == "COPY" and a.split()[-1] in (".", "./") for w, a in runtime), (
        "no source tree in runtime"
    )
    users = [a for w, a in runtime if w == "USER"]
    assert users, "no USER in the runtime stage"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, (
        f"USER {users[-1]}: must be a numeric non-root uid (runAsNonRoot)"
    )
    # Nothing runs as root after the switch, and the final instructions keep that user.
    after_user = ins[max(i for i, (w, _a) in enumerate(ins) if w == "USER") :]
    assert not any(w == "RUN" for w, _a in after_user)
    health = [a for w, a in runtime if w == "HEALTHCHECK"]
    assert len(health) == 1 and "twotower-healthcheck" in health[0] and "/healthz" in health[0]
    assert ("ENTRYPOINT", '["twotower"]') in runtime
    assert any(w == "RUN" and "chown 10001:10001 /artifacts" in a for w, a in runtime)
    assert any(w == "EXPOSE" and a == "8000" for w, a in runtime)


SECRET_NAME = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|API_KEY|PRIVATE_KEY|CREDENTIAL)", re.I)


@pytest.mark.parametrize("dockerfile", d.DOCKERFILES, ids=lambda p: p.name)
def test_no_secrets_baked_in(dockerfile):
    for word, args in instructions(dockerfile):
        if word in ("ENV", "ARG", "LABEL"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_.]*)=", args) or [args.split()[0]]
            for name in names:
                assert not SECRET_NAME.search(name), (
                    f"{dockerfile.name}: {word} {name} bakes a secret in"
                )
        assert not re.search(r"rediss?://[^\s@]*:[^\s@]+@", args), (
            f"{dockerfile.name}: credentials in {word}"
        )
        if word in ("COPY", "ADD"):
            assert ".env" not in args and "secret" not in args.lower(), (
                f"{dockerfile.name}: {word} {args}"
            )
    text = dockerfile.read_text()
    assert "twotower-local-only" not in text


def test_variants_install_the_right_requirements():
    cpu_ins = instructions(d.DOCKERFILES[0])
    gpu_ins = instructions(d.DOCKERFILES[1])
    cpu_req = next(a for _w, a in cpu_ins if "requirements.py --variant cpu" in a)
    gpu_req = next(a for _w, a in gpu_ins if "requirements.py --variant gpu" in a)
    # The project wheel is built from the variant's dependency list, the alias wheel is
    # installed with the requirements, and the build proves the set consistent.
    assert "--write-pyproject" in cpu_req and "--write-pyproject" in gpu_req
    assert "--alias-dir /tmp/alias" in cpu_req and "/tmp/alias/tensorflow-*.whl" in cpu_req
    for ins in (cpu_ins, gpu_ins):
        runs = [a for w, a in ins if w == "RUN"]
        wheel = next(i for i, a in enumerate(runs) if "pip wheel --no-deps" in a)
        assert "pip check" in runs[wheel], "pip check after the project wheel is installed"
    assert "python:3.11-slim" in d.DOCKERFILES[0].read_text()
    assert re.search(
        r"^ARG CUDA_IMAGE=nvidia/cuda:12\.[\d.]+-\w+-ubuntu", d.DOCKERFILES[1].read_text(), re.M
    )


# --- deploy/requirements.py --------------------------------------------------------------------


def _pyproject_deps() -> dict[str, str]:
    deps = tomllib.loads((d.REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return {re.split(r"[\[=<>;~! ]", dep, maxsplit=1)[0].lower(): dep for dep in deps}


def _names(lines: list[str]) -> list[str]:
    return [re.split(r"[\[=<>~!]", line, maxsplit=1)[0] for line in lines]


def test_cpu_requirements_swap_in_the_cpu_builds():
    lines = requirements.runtime_requirements(d.REPO / "pyproject.toml", "cpu")
    names = _names(lines)
    assert len(names) == len(set(names))
    assert "faiss-gpu" not in names and "faiss-cpu" in names
    assert "tensorflow" not in names and "tensorflow-cpu" in names
    deps = _pyproject_deps()
    gpu_version = deps["faiss-gpu"].split(";")[0].replace("faiss-gpu", "")
    assert f"faiss-cpu{gpu_version.strip()}" in lines
    assert deps["tensorflow"].replace("tensorflow", "tensorflow-cpu", 1) in lines, "pin carried"
    assert set(names) == (set(deps) - {"faiss-gpu", "tensorflow"}) | {"faiss-cpu", "tensorflow-cpu"}
    assert not any(";" in line for line in lines)


def test_the_rewritten_pyproject_declares_the_variant_and_nothing_else_changes(tmp_path):
    original = (d.REPO / "pyproject.toml").read_text()
    target = tmp_path / "pyproject.toml"
    target.write_text(original)
    assert requirements.main(["--variant", "cpu", "--write-pyproject", str(target)]) == 0
    rewritten = tomllib.loads(target.read_text())
    lines = requirements.runtime_requirements(d.REPO / "pyproject.toml", "cpu")
    assert rewritten["project"]["dependencies"] == lines
    before = tomllib.loads(original)
    for table in (before, rewritten):
        table["project"].pop("dependencies")
    assert rewritten == before


def test_the_tensorflow_alias_wheel_installs_as_tensorflow_requiring_tensorflow_cpu(tmp_path):
    import importlib.metadata
    import subprocess
    import sys

    version = requirements.pinned_version(
        requirements.runtime_requirements(d.REPO / "pyproject.toml", "cpu"), "tensorflow-cpu"
    )
    wheel = requirements.write_alias_wheel(tmp_path / "alias", version)
    assert wheel.name == f"tensorflow-{version}-py3-none-any.whl"
    target = tmp_path / "site"
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target",
         str(target), str(wheel)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (dist,) = importlib.metadata.distributions(path=[str(target)])
    assert (dist.metadata["Name"], dist.version) == ("tensorflow", version)
    assert dist.requires == [f"tensorflow-cpu=={version}"]
    # Metadata only: the module itself comes from tensorflow-cpu.
    assert [p.name for p in target.iterdir()] == [f"tensorflow-{version}.dist-info"]


def test_gpu_requirements_add_cuda_tensorflow_and_keep_faiss_gpu():
    lines = requirements.runtime_requirements(d.REPO / "pyproject.toml", "gpu")
    names = _names(lines)
    assert "faiss-cpu" not in names
    tf = next(line for line in lines if line.startswith("tensorflow["))
    assert tf == _pyproject_deps()["tensorflow"].replace("tensorflow", "tensorflow[and-cuda]", 1)
    assert any(line.startswith("faiss-gpu==") for line in lines)


def test_requirements_errors_are_clear(tmp_path, capsys):
    with pytest.raises(requirements.RequirementsError, match="variant"):
        requirements.runtime_requirements(d.REPO / "pyproject.toml", "tpu")
    bad = tmp_path / "pyproject.toml"
    bad.write_text('[project]\nname = "x"\ndependencies = ["numpy>=1"]\n')
    with pytest.raises(requirements.RequirementsError, match="faiss-gpu"):
        requirements.runtime_requirements(bad, "cpu")
    assert requirements.main(["--variant", "cpu", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml" in capsys.readouterr().err
