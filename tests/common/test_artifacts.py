import json
import os
import time
from pathlib import Path

import pytest

from common import artifacts


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
    # no temp files left behind (the publish lock file stays: it is reused)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [
        artifacts.PUBLISH_LOCK
    ]
    assert json.loads((tmp_path / "versions" / v2 / "manifest.json").read_text())["version"] == v2


def test_publish_records_the_previous_version(tmp_path):
    assert artifacts.previous_version(tmp_path) is None
    v1 = _write_version(tmp_path)
    assert artifacts.previous_version(tmp_path) is None  # nothing was published before
    v2 = _write_version(tmp_path)
    assert artifacts.previous_version(tmp_path) == v1
    artifacts.publish(tmp_path, v2)  # re-publishing the same version keeps the rollback target
    assert artifacts.previous_version(tmp_path) == v1
    artifacts.publish(tmp_path, v1)
    assert (artifacts.latest_version(tmp_path), artifacts.previous_version(tmp_path)) == (v1, v2)


def test_compare_and_swap_publish(tmp_path):
    v1 = _write_version(tmp_path, publish=False)
    v2 = _write_version(tmp_path, publish=False)
    v3 = _write_version(tmp_path, publish=False)
    with pytest.raises(artifacts.PublishConflict, match="LATEST names nothing"):
        artifacts.publish(tmp_path, v2, expected=v1)
    artifacts.publish(tmp_path, v1, expected=None)  # nothing published: None matches
    with pytest.raises(artifacts.PublishConflict) as err:
        artifacts.publish(tmp_path, v3, expected=None)
    assert (err.value.expected, err.value.found) == (None, v1)
    artifacts.publish(tmp_path, v2, expected=v1)
    assert artifacts.latest_version(tmp_path) == v2
    # Someone else published v3 meanwhile: a job still expecting v2 is refused, LATEST kept.
    artifacts.publish(tmp_path, v3)
    with pytest.raises(artifacts.PublishConflict, match=f"LATEST names {v3}, expected {v2}"):
        artifacts.publish(tmp_path, v1, expected=v2)
    assert artifacts.latest_version(tmp_path) == v3


def _racer(art: str, version: str, expected: str, start: float, out: str) -> None:
    while time.time() < start:  # line the processes up on a wall-clock instant
        pass
    try:
        artifacts.publish(art, version, expected=expected)
        result = "won"
    except artifacts.PublishConflict:
        result = "lost"
    with open(out, "w") as fh:
        fh.write(result)


def test_concurrent_compare_and_swap_has_one_winner(tmp_path):
    import multiprocessing as mp

    base = _write_version(tmp_path)
    contenders = [_write_version(tmp_path, publish=False) for _ in range(6)]
    ctx = mp.get_context("fork")
    start = time.time() + 0.5
    procs = [
        ctx.Process(target=_racer, args=(str(tmp_path), v, base, start, str(tmp_path / f"r{i}")))
        for i, v in enumerate(contenders)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    results = [(tmp_path / f"r{i}").read_text() for i in range(len(procs))]
    assert results.count("won") == 1, results
    winner = contenders[results.index("won")]
    assert artifacts.latest_version(tmp_path) == winner
    assert artifacts.previous_version(tmp_path) == base


def test_prune_keeps_the_previous_version_and_protected_ones(tmp_path):
    versions = [_write_version(tmp_path, publish=False) for _ in range(6)]
    artifacts.publish(tmp_path, versions[1])
    artifacts.publish(tmp_path, versions[0])  # PREVIOUS = versions[1]
    deleted = artifacts.prune_versions(tmp_path, keep=2, protect=[versions[2]])
    assert set(deleted) == {versions[3]}
    assert artifacts.list_versions(tmp_path) == sorted(
        [versions[0], versions[1], versions[2], versions[4], versions[5]]
    )


def test_deletion_killed_midway_never_leaves_a_complete_looking_version(tmp_path, monkeypatch):
    keep = _write_version(tmp_path)
    doomed = _write_version(tmp_path, publish=False)
    real_rmtree = artifacts.shutil.rmtree

    def killed_rmtree(path, ignore_errors=False):
        (Path(path) / "items.npz").unlink()  # got this far, then the process died
        raise SystemExit("killed")

    monkeypatch.setattr(artifacts.shutil, "rmtree", killed_rmtree)
    with pytest.raises(SystemExit):
        artifacts.remove_version(tmp_path, doomed)
    monkeypatch.setattr(artifacts.shutil, "rmtree", real_rmtree)
    # What is left still has its manifest, but under a trash name nobody lists or serves.
    leftovers = [p.name for p in (tmp_path / "versions").iterdir() if p.name != keep]
    assert len(leftovers) == 1 and leftovers[0].startswith(artifacts.TRASH_PREFIX)
    assert (tmp_path / "versions" / leftovers[0] / "manifest.json").is_file()
    assert artifacts.list_versions(tmp_path) == [keep]
    with pytest.raises(artifacts.ArtifactError, match="not found"):
        artifacts.resolve_version(tmp_path, doomed)
    assert artifacts.sweep_leftovers(tmp_path) == leftovers
    assert [p.name for p in (tmp_path / "versions").iterdir()] == [keep]


def test_the_published_version_cannot_be_removed(tmp_path):
    v1 = _write_version(tmp_path)
    with pytest.raises(artifacts.ArtifactError, match="LATEST names it"):
        artifacts.remove_version(tmp_path, v1)
    assert artifacts.list_versions(tmp_path) == [v1]
