import json
import os
import time

import pytest

from twotower import artifacts


def _write_version(art, payload="x", publish=True):
    with artifacts.staging_version(art) as (version, vdir):
        (vdir / "items.npz").write_text(payload)
        artifacts.write_manifest(vdir, {"version": version})
    if publish:
        artifacts.publish(art, version)
    return version


def test_publish_and_read(tmp_path):
    assert artifacts.latest_version(tmp_path) is None
    v1 = _write_version(tmp_path)
    assert artifacts.latest_version(tmp_path) == v1
    assert artifacts.read_manifest(tmp_path)["version"] == v1
    v2 = _write_version(tmp_path, publish=False)
    assert artifacts.latest_version(tmp_path) == v1  # exported, not published
    assert artifacts.list_versions(tmp_path) == sorted([v1, v2])


def test_failed_export_leaves_nothing(tmp_path):
    v1 = _write_version(tmp_path)
    with pytest.raises(RuntimeError), artifacts.staging_version(tmp_path) as (_v, vdir):
        (vdir / "half").write_text("half written")
        raise RuntimeError("killed mid-export")
    assert artifacts.list_versions(tmp_path) == [v1]
    assert [p.name for p in (tmp_path / "versions").iterdir()] == [v1]


def test_cannot_publish_incomplete(tmp_path):
    (tmp_path / "versions" / "v0").mkdir(parents=True)
    with pytest.raises(artifacts.ArtifactError, match="manifest.json is missing"):
        artifacts.publish(tmp_path, "v0")
    with pytest.raises(artifacts.ArtifactError, match="nothing published"):
        artifacts.resolve_version(tmp_path)
    with pytest.raises(artifacts.ArtifactError, match="not found"):
        artifacts.resolve_version(tmp_path, "nope")


def test_prune_keeps_published_and_recent(tmp_path):
    versions = [_write_version(tmp_path, publish=False) for _ in range(4)]
    artifacts.publish(tmp_path, versions[0])
    stale = tmp_path / "versions" / ".staging-old"
    stale.mkdir()
    old = time.time() - 7 * 3600
    os.utime(stale, (old, old))
    young = tmp_path / "versions" / ".staging-live"
    young.mkdir()
    deleted = artifacts.prune_versions(tmp_path, keep=2)
    assert set(deleted) == {versions[1]}
    assert artifacts.list_versions(tmp_path) == sorted([versions[0], versions[2], versions[3]])
    assert not stale.exists() and young.exists()


def test_latest_is_replaced_atomically(tmp_path):
    v1 = _write_version(tmp_path)
    v2 = _write_version(tmp_path)
    assert (tmp_path / "LATEST").read_text().strip() == v2 != v1
    # no temp files left behind
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert json.loads((tmp_path / "versions" / v2 / "manifest.json").read_text())["version"] == v2
