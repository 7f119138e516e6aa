"""Versions load only from under the artifact root: a LATEST naming ``../``, an absolute
path, a control character or a symlink out of the root, and a manifest naming another
version, are refused and logged while the current version keeps serving."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from common import artifacts
from common.artifacts import ArtifactError, check_version_id, contained_version_dir
from tests.serving.artifact_factory import make_artifact, read_json


@pytest.mark.parametrize(
    "bad",
    ["..", ".", "../x", "a/b", "/etc", ".staging-x", "a\nb", "a\x00b", "", " v", "x" * 201, "é"],
)
def test_version_ids_are_plain_names(bad: str) -> None:
    with pytest.raises(ArtifactError, match="not a plain directory name"):
        check_version_id(bad)


def test_real_version_ids_pass() -> None:
    for good in (artifacts.new_version_id(), "v1", "2026.1+local", "r00000042-x_y"):
        assert check_version_id(good) == good


@pytest.fixture(scope="module")
def two_roots(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Path, str]:
    """(art, its published version, another artifact dir outside it, that one's version)."""
    base = tmp_path_factory.mktemp("roots")
    art, outside = base / "art", base / "outside"
    good = make_artifact(art, num_items=40, seed=1)
    foreign = make_artifact(outside, num_items=40, seed=2, prefix="x")
    return art, good, outside, foreign


def _publish_raw(art: Path, text: str) -> None:
    artifacts.atomic_write_text(art / artifacts.LATEST, text)


def test_latest_escaping_the_root_is_refused_and_the_current_version_serves_on(
    make_client: Callable[..., TestClient],
    two_roots: tuple[Path, str, Path, str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    src, good, outside, foreign = two_roots
    art = tmp_path / "art"
    shutil.copytree(src, art)
    c = make_client(artifacts=art)
    state = c.app.state.twotower
    assert state.holder.current.version == good
    escape_dir = artifacts.version_dir(outside, foreign)
    # versions/<id> as a symlink to a complete version outside the root.
    (art / artifacts.VERSIONS / foreign).symlink_to(escape_dir, target_is_directory=True)
    attempts = {
        f"../../outside/versions/{foreign}": "not a plain directory name",
        str(escape_dir): "not a plain directory name",
        f"{good}\nx": "not a plain directory name",
        foreign: "outside the artifact root",
    }
    try:
        for latest, why in attempts.items():
            _publish_raw(art, latest + "\n")
            with caplog.at_level(logging.ERROR, logger="serving.reload"):
                assert c.portal.call(state.reloader.check_once) is False, latest
            assert state.holder.current.version == good
            assert why in state.holder.last_error, (latest, state.holder.last_error)
            assert why in caplog.text
            r = c.post("/v1/recommend", json={"history": ["i1"], "k": 3})
            assert r.status_code == 200 and r.json()["model_version"] == good
        # A control character never reaches the log unescaped or the metrics as is.
        assert "\nx" not in caplog.text
        assert 'twotower_model_published_info{version="<invalid>"} 0.0' in c.get("/metrics").text
    finally:
        _publish_raw(art, good + "\n")


def test_symlinked_file_out_of_the_root_and_foreign_manifest_are_refused(
    make_client: Callable[..., TestClient],
    two_roots: tuple[Path, str, Path, str],
    tmp_path: Path,
) -> None:
    src, good, outside, foreign = two_roots
    art = tmp_path / "art"
    shutil.copytree(src, art)
    c = make_client(artifacts=art)
    state = c.app.state.twotower

    # A copy of the good version whose item table is a symlink to another root's.
    bad = "20990101T000000.000000Z-aaaa"
    shutil.copytree(artifacts.version_dir(art, good), artifacts.version_dir(art, bad))
    vdir = artifacts.version_dir(art, bad)
    manifest = read_json(vdir / artifacts.MANIFEST)
    manifest["version"] = bad
    artifacts.write_manifest(vdir, manifest)
    (vdir / artifacts.ITEMS).unlink()
    (vdir / artifacts.ITEMS).symlink_to(artifacts.version_dir(outside, foreign) / artifacts.ITEMS)
    with pytest.raises(ArtifactError, match="symlink to .* outside the artifact root"):
        contained_version_dir(art, bad)
    _publish_raw(art, bad)
    assert c.portal.call(state.reloader.check_once) is False
    assert "outside the artifact root" in state.holder.last_error

    # A manifest that names another version (e.g. "../x") than its directory.
    named = "20990101T000000.000000Z-bbbb"
    shutil.copytree(artifacts.version_dir(art, good), artifacts.version_dir(art, named))
    ndir = artifacts.version_dir(art, named)
    manifest["version"] = "../x"
    artifacts.write_manifest(ndir, manifest)
    _publish_raw(art, named)
    assert c.portal.call(state.reloader.check_once) is False
    assert "names version '../x'" in state.holder.last_error
    assert state.holder.current.version == good

    # A symlink that stays inside the root is fine (e.g. a shared read-only file).
    manifest["version"] = named
    artifacts.write_manifest(ndir, manifest)
    (ndir / artifacts.INDEX).unlink()
    os.symlink(artifacts.version_dir(art, good) / artifacts.INDEX, ndir / artifacts.INDEX)
    assert contained_version_dir(art, named) == ndir.resolve()
    state.reloader.clock = lambda: 1e12  # past the failed version's retry backoff
    assert c.portal.call(state.reloader.check_once) is True
    assert state.holder.current.version == named
