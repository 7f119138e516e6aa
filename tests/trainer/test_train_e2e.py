"""Train -> evaluate -> export -> load round trips on a tiny synthetic data set."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from common import artifacts
from common.artifact_format import read_index
from tests.trainer.tiny import TINY, TINY_SETS, tiny_lightgcn_files
from trainer.data.sources import load_source
from trainer.exported import ExportedModel, evaluate_version
from trainer.run import train, trainer_config

SETS = [*TINY_SETS, "train.checkpoint_every=5"]
SPEC_METRICS = [f"{m}@{k}" for m in ("recall", "ndcg", "hit_rate") for k in (10, 20, 50)] + [
    "coverage@20",
    "dislike_rate@20",
    "like_dislike_auc",
    "dislike_share@20",
    "responsiveness@20",
    "longtail_recall@20",
]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    art = tmp_path_factory.mktemp("art")
    cfg = trainer_config("synthetic", overrides=SETS)
    outcome = train(TINY, art, cfg, progress=False)
    return art, outcome


def test_manifest_contract(trained):
    art, outcome = trained
    assert artifacts.latest_version(art) == outcome.version
    m = artifacts.read_manifest(art)
    for key in (
        "version",
        "created_at",
        "embedding_dim",
        "num_items",
        "similarity",
        "index",
        "metrics",
        "data",
        "config",
    ):
        assert key in m, key
    assert m["similarity"] in ("cosine", "dot")
    assert m["embedding_dim"] == 16 and m["num_items"] == 120
    assert {"type", "params", "recall_at_k_vs_exact"} <= set(m["index"])
    for name in SPEC_METRICS:
        assert name in m["metrics"], name
        assert name in m["baseline_popular"], name
    assert len(m["metrics"]["longtail_recall@20"]) == 10
    for name in SPEC_METRICS[:-2]:
        assert 0.0 <= m["metrics"][name] <= 1.0
    assert m["data"]["counts"]["items"] == 120 and m["data"]["time_range"]["min"] > 0
    assert m["config"]["model"]["embedding_dim"] == 16
    vdir = artifacts.version_dir(art, outcome.version)
    assert (vdir / "user_tower" / "saved_model.pb").is_file()
    assert (vdir / "index.faiss").is_file() and (vdir / "items.npz").is_file()
    # the checkpoint directory of a finished run is cleaned up
    assert not [p for p in Path(art).iterdir() if p.name.startswith(".train-")]


def test_export_round_trip_matches_in_memory_model(trained):
    art, outcome = trained
    model = outcome.model
    exported = ExportedModel(art)
    rng = np.random.default_rng(0)
    hist = rng.integers(0, 121, size=(32, 10)).astype(np.int32)
    disl = rng.integers(0, 121, size=(32, 5)).astype(np.int32)
    mem_users = model.embed_users(hist, disl)
    mem_items = model.embed_items()
    if exported.manifest["similarity"] == "cosine":
        mem_users = mem_users / np.linalg.norm(mem_users, axis=1, keepdims=True)
        mem_items = mem_items / np.linalg.norm(mem_items, axis=1, keepdims=True)
    np.testing.assert_allclose(exported.embed(hist, disl), mem_users, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(exported.item_emb, mem_items, rtol=1e-4, atol=1e-5)
    index = read_index(
        artifacts.version_dir(art, exported.version) / "index.faiss",
        exported.manifest["index"]["params"],
    )
    _, faiss_top = index.search(exported.embed(hist, disl), 10)
    mem_top = np.argsort(-(mem_users @ mem_items.T), axis=1, kind="stable")[:, :10]
    agree = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(faiss_top, mem_top, strict=True)])
    assert agree >= 0.99


def test_evaluate_reproduces_training_metrics(trained):
    """Training evaluates with the exported tower's own function: the same numbers, exactly."""
    art, outcome = trained
    result = evaluate_version(art, None, load_source(TINY))
    assert outcome.metrics["num_users"] >= 100 and outcome.metrics["recall@20"] > 0
    assert result["metrics"] == outcome.metrics  # every metric, responsiveness included
    assert result["baseline_popular"] == outcome.baseline_popular
    assert result["eval"] == artifacts.read_manifest(art)["eval"]
    assert result["eval"]["dislike_metrics"].startswith("measured on ")
    # The dislike holdout's figures too, on the users the manifest says, on both splits.
    judged = outcome.metrics["num_users_judged"]
    assert judged >= 20
    assert result["metrics"]["like_dislike_auc"] == outcome.metrics["like_dislike_auc"]
    assert result["metrics"]["dislike_share@20"] == outcome.metrics["dislike_share@20"]
    protocol = result["eval"]["dislike_protocol"]
    assert protocol["holdout"] == "last_fraction:0.2" and protocol["users"] == judged
    assert result["eval"]["protocols"]["dislike_holdout"]["users"] == judged
    assert outcome.baseline_popular["num_users_judged"] == judged
    valid = artifacts.read_manifest(art)["training"]["valid_metrics"]
    assert valid["num_users_judged"] > 0 and 0.0 <= valid["like_dislike_auc"] <= 1.0


def test_topk_out_lets_anyone_recompute_recall(trained, tmp_path):
    art, _ = trained
    out = tmp_path / "topk.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "twotower.cli",
            "evaluate",
            "--artifacts",
            str(art),
            "--data",
            TINY,
            "--topk-out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = json.loads(proc.stdout)
    assert f"evaluating version {printed['version']} on " in proc.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines and all(len(r["items"]) == 50 for r in lines)
    # Recompute recall@20 from the file and the data's splits, independently of the code
    # under test: a user's known items are those of any train/valid event, dislikes included;
    # a test positive among them cannot be ranked and is not a target.
    ds = load_source(TINY)
    known: dict[str, set[str]] = {}
    test_items: dict[str, set[str]] = {}
    for u, i, split, label in zip(ds.users, ds.items, ds.split, ds.labels, strict=True):
        uid, iid = str(ds.user_ids[u]), str(ds.item_ids[i])
        if split in (0, 1):
            known.setdefault(uid, set()).add(iid)
        elif label == 1:
            test_items.setdefault(uid, set()).add(iid)
    targets = {u: t - known.get(u, set()) for u, t in test_items.items()}
    assert ((ds.labels == -1) & (ds.split == 0)).sum() > 100  # train dislikes are in `known`
    assert {r["user_id"] for r in lines} == {u for u, t in targets.items() if t}
    for r in lines:  # nothing the user had or disliked in train/valid is listed
        assert not set(r["items"]) & known.get(r["user_id"], set()), r["user_id"]
    recalls = [
        len(set(r["items"][:20]) & targets[r["user_id"]]) / len(targets[r["user_id"]])
        for r in lines
    ]
    assert np.mean(recalls) == pytest.approx(printed["metrics"]["recall@20"], abs=1e-9)


#: The resume runs draw mixed negatives too: a resumed run must draw the same ones.
RESUME_SETS = [
    *[s for s in SETS if not s.startswith(("train.epochs", "train.checkpoint_every"))],
    "train.checkpoint_every=3",
    "train.early_stopping_patience=0",
    "loss.mixed_negatives=16",
    # Training state beyond the weights and the estimator: a resume must restore it.
    "loss.memory_batches=2",
]


def _train_cmd(art: Path, ckpt: Path | None, epochs: int, extra: Sequence[str] = ()) -> list[str]:
    cmd = [sys.executable, "-m", "twotower.cli", "train", "--data", TINY, "--out", str(art)]
    if ckpt is not None:
        cmd += ["--checkpoint-dir", str(ckpt)]
    for s in [*RESUME_SETS, f"train.epochs={epochs}", *extra]:
        cmd += ["--set", s]
    return cmd


def _await_checkpoint(procs: list[subprocess.Popen], marker: Path) -> None:
    deadline = time.monotonic() + 240
    while not marker.exists():
        for proc in procs:
            assert proc.poll() is None, (
                "training ended before its first checkpoint: "
                f"{proc.stderr.read()[-2000:] if proc.stderr else ''!r}"
            )
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.05)


def _estimator_state(art: Path, version: str) -> dict[str, np.ndarray]:
    import tensorflow as tf

    path = str(artifacts.version_dir(art, version) / artifacts.CHECKPOINT / "model")
    reader = tf.train.load_checkpoint(path)
    return {
        name: reader.get_tensor(name)
        for name, _ in tf.train.list_variables(path)
        if name.startswith("model/estimator/")
    }


@pytest.mark.slow
def test_kill_mid_run_then_resume_is_the_uninterrupted_run(tmp_path):
    art, ckpt = tmp_path / "art", tmp_path / "ckpt"
    cmd = _train_cmd(art, ckpt, epochs=4)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    _await_checkpoint([proc], ckpt / "latest" / "checkpoint")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert artifacts.latest_version(art) is None  # nothing published by the killed run
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    resumed = result["training"]["resumed_from"]
    assert resumed is not None and 3 <= resumed["global_step"] < result["training"]["steps"]

    # The same run, never interrupted.
    cfg = trainer_config("synthetic", overrides=[*RESUME_SETS, "train.epochs=4"])
    ref = train(TINY, tmp_path / "ref", cfg, progress=False)
    got = artifacts.read_manifest(art)
    assert result["training"]["steps"] == ref.training["steps"]
    assert result["training"]["epochs_run"] == ref.training["epochs_run"] == 4
    history, ref_history = got["training"]["history"], ref.training["history"]
    assert [sorted(r) for r in history] == [sorted(r) for r in ref_history]
    for mine, theirs in zip(history, ref_history, strict=True):
        for key in mine:
            assert mine[key] == pytest.approx(theirs[key], rel=1e-6, abs=1e-9), (key, mine)
    with (
        np.load(artifacts.version_dir(art, got["version"]) / artifacts.ITEMS) as a,
        np.load(artifacts.version_dir(tmp_path / "ref", ref.version) / artifacts.ITEMS) as b,
    ):
        np.testing.assert_allclose(a["embeddings"], b["embeddings"], rtol=1e-5, atol=1e-6)
    state, ref_state = (
        _estimator_state(art, got["version"]),
        _estimator_state(tmp_path / "ref", ref.version),
    )
    assert set(state) == set(ref_state) and len(state) == 5
    for name in state:
        np.testing.assert_allclose(state[name], ref_state[name], rtol=1e-6, err_msg=name)
    _assert_same_metrics(got["metrics"], ref.metrics)
    assert artifacts.latest_version(art) == result["version"]


def _assert_same_metrics(got: dict, ref: dict) -> None:
    """Every metric equal up to float rounding; lists (longtail_recall@20) item by item."""
    assert set(got) == set(ref)
    for name, value in ref.items():
        if isinstance(value, list):
            assert isinstance(got[name], list) and len(got[name]) == len(value), name
            for mine, theirs in zip(got[name], value, strict=True):
                assert mine == pytest.approx(theirs), name
        else:
            assert got[name] == pytest.approx(value), name


RESUME_MESSAGE = (
    "twotower: interrupted; run the same command again to resume from the last checkpoint"
)


def _assert_interrupted(proc: subprocess.Popen, err: str, message: str = RESUME_MESSAGE) -> None:
    assert proc.returncode == 1, err[-3000:]
    assert message in err.splitlines(), err[-3000:]
    assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]


def _interrupt_at(cmd: list[str], marker: str, delay: float = 0.0) -> tuple[subprocess.Popen, str]:
    """Run ``cmd``, press Ctrl-C ``delay`` s after a stderr line contains ``marker``."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
    )
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if marker in line:
            break
    assert proc.poll() is None, "".join(seen)[-3000:]
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=120)
    return proc, "".join(seen) + err


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.15, 0.4])
def test_ctrl_c_after_reading_the_data_stops_the_run(tmp_path, delay):
    """Right after ``reading synthetic``: data generation, the towers' build (where
    tf_keras swallowed the KeyboardInterrupt), tracing and the first steps, by delay."""
    proc, err = _interrupt_at(
        _train_cmd(tmp_path / "art", None, epochs=200), "reading synthetic", delay
    )
    _assert_interrupted(proc, err)
    assert artifacts.latest_version(tmp_path / "art") is None


def _run_with_tty_stderr(cmd: list[str]) -> tuple[int, str, str]:
    """Run ``cmd`` with stderr on a pseudo-terminal (as in an interactive shell)."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    # 24 rows, 100 columns (a new pty has 0 columns: tqdm would draw empty bars)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, cwd=REPO
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    proc.wait(timeout=60)
    return proc.returncode, out, b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_ctrl_c_mid_training_then_the_same_command_resumes(tmp_path):
    art, ckpt = tmp_path / "art", tmp_path / "ckpt"
    cmd = _train_cmd(art, ckpt, epochs=30)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
    )
    _await_checkpoint([proc], ckpt / "latest" / "checkpoint")
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=120)
    _assert_interrupted(proc, err)
    assert artifacts.latest_version(art) is None
    assert (ckpt / "latest" / "checkpoint").is_file()

    # The same command, this time in a terminal: tqdm bars redraw in place on stderr,
    # stdout still carries only the JSON.
    code, out, tty = _run_with_tty_stderr(cmd)
    assert code == 0, tty[-3000:]
    result = json.loads(out)
    resumed = result["training"]["resumed_from"]
    assert resumed is not None and resumed["global_step"] >= 3
    assert result["training"]["epochs_run"] == 30 and result["published"]
    assert "%|" in tty and "step/s" in tty  # the bars
    assert "epoch 30/30: loss " in tty
    assert f"twotower train: published version {result['version']}: recall@20 " in tty


@pytest.mark.slow
@pytest.mark.parametrize(
    "marker", ["evaluating on 150 test users", "building the FAISS index over 120 items"]
)
def test_ctrl_c_during_evaluation_or_export_publishes_nothing_and_the_rerun_exports(
    tmp_path, marker
):
    art = tmp_path / "art"
    cmd = _train_cmd(art, None, epochs=3)
    proc, err = _interrupt_at(cmd, marker)
    _assert_interrupted(proc, err)
    assert artifacts.latest_version(art) is None
    versions = artifacts.versions_dir(art)
    assert not versions.exists() or not list(versions.iterdir())  # no staging left behind
    # Not a terminal: one plain line per epoch, no carriage-return bars.
    assert "\r" not in err and "%|" not in err
    lines = [ln for ln in err.splitlines() if " INFO trainer.train: epoch " in ln]
    assert len(lines) == 3, err[-3000:]
    for n, line in enumerate(lines, 1):
        assert f"epoch {n}/3: loss " in line and ", valid recall@20 0." in line, line
        assert " examples/s, elapsed " in line, line

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["training"]["resumed_from"]["epoch"] == 3  # nothing left to train
    assert " INFO trainer.train: epoch " not in done.stderr
    for progress in (
        "evaluating on 150 validation users",
        "evaluating on 150 test users",
        "building the FAISS index over 120 items...",
        f"exported version {result['version']}",
    ):
        assert progress in done.stderr, progress
    summary = done.stderr.strip().splitlines()[-1]
    m, b = result["metrics"], result["baseline_popular"]
    assert summary.startswith(f"twotower train: published version {result['version']}: ")
    assert f"recall@20 {m['recall@20']:.4f} (most popular {b['recall@20']:.4f})" in summary
    assert f"ndcg@20 {m['ndcg@20']:.4f} (most popular {b['ndcg@20']:.4f})" in summary
    assert artifacts.latest_version(art) == result["version"]


@pytest.mark.slow
def test_ctrl_c_twice_exits_at_once(tmp_path):
    art, ckpt = tmp_path / "art", tmp_path / "ckpt"
    proc = subprocess.Popen(
        _train_cmd(art, ckpt, epochs=200),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    _await_checkpoint([proc], ckpt / "latest" / "checkpoint")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=120)
    # Exit 1, from the first (the command ended, the second met Python shutting down,
    # where a Ctrl-C ends the process: by SIGINT, 130 in a shell) or from the second.
    assert proc.returncode in (1, -signal.SIGINT), err[-3000:]
    assert "twotower: interrupted" in err and "Traceback" not in err, err[-3000:]
    assert artifacts.latest_version(art) is None
    assert (ckpt / "latest" / "checkpoint").is_file()


@pytest.mark.slow
def test_ctrl_c_during_evaluate_says_interrupted(trained):
    art, _ = trained
    cmd = [sys.executable, "-m", "twotower.cli", "evaluate", "--artifacts", str(art)]
    proc, err = _interrupt_at([*cmd, "--data", TINY], "reading synthetic")
    _assert_interrupted(proc, err, "twotower: interrupted")


MIRRORED_SCRIPT = r"""
import json, os, sys
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from trainer.run import train, trainer_config
sets = json.loads(sys.argv[2])
out = {}
for strategy in ("default", "mirrored"):
    cfg = trainer_config("synthetic", overrides=sets + [f"train.strategy={strategy}"])
    res = train(sys.argv[1], os.path.join(sys.argv[3], strategy), cfg, progress=False)
    out[strategy] = [h["loss"] for h in res.training["history"]]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_mirrored_two_devices_matches_one_device(tmp_path):
    # Mixed negatives: M per global batch whatever the replica count, the same draw on both.
    sets = [*SETS, "train.epochs=3", "train.early_stopping_patience=0", "loss.mixed_negatives=16"]
    proc = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT, TINY, json.dumps(sets), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    curves = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(curves["default"]) == len(curves["mirrored"]) == 3
    np.testing.assert_allclose(curves["mirrored"], curves["default"], rtol=2e-3)
    assert curves["default"][-1] < curves["default"][0]  # it learns


def test_same_seed_same_training(tmp_path):
    """Seeded determinism: two runs with one seed give the same loss curve and the same vectors."""
    runs = []
    for name in ("a", "b"):
        cfg = trainer_config("synthetic", overrides=[*SETS, "train.epochs=1"])
        runs.append(train(TINY, tmp_path / name, cfg, progress=False))
    assert runs[0].training["history"][0]["loss"] == runs[1].training["history"][0]["loss"]
    np.testing.assert_array_equal(runs[0].model.embed_items(), runs[1].model.embed_items())
    other = train(
        TINY,
        tmp_path / "c",
        trainer_config("synthetic", overrides=[*SETS, "train.epochs=1", "train.seed=7"]),
        progress=False,
    )
    assert other.training["history"][0]["loss"] != runs[0].training["history"][0]["loss"]


@pytest.mark.parametrize(
    "cluster, task_type, task_id, expected",
    [
        ({"chief": ["a:1"], "worker": ["b:1", "c:1"]}, "chief", 0, True),
        ({"chief": ["a:1"], "worker": ["b:1", "c:1"]}, "worker", 0, False),
        ({"worker": ["b:1", "c:1"]}, "worker", 0, True),
        ({"worker": ["b:1", "c:1"]}, "worker", 1, False),
    ],
)
def test_only_the_chief_exports_in_multiworker_runs(cluster, task_type, task_id, expected):
    import types

    import tensorflow as tf

    from trainer.checkpoints import is_chief

    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster), task_type=task_type, task_id=task_id
    )
    assert is_chief(types.SimpleNamespace(cluster_resolver=resolver)) is expected
    assert is_chief(tf.distribute.get_strategy()) is True  # one process: always exports


def test_lightgcn_source_has_no_dislike_branch_and_says_so(tmp_path):
    """Positives-only split files: the dislike input is off by default, the dislike metrics
    stay numeric (0.0) and the manifest says they are not applicable."""
    spec = tiny_lightgcn_files(tmp_path / "g")
    ds = load_source(TINY)
    pos = ds.labels == 1
    cfg = trainer_config("lightgcn", overrides=[*TINY_SETS, "train.epochs=1"])
    assert cfg.model.use_dislike_input is False
    # The item-graph smoothing is on for this format (tuned on its validation splits).
    assert (cfg.model.item_graph_neighbors, cfg.model.item_graph_weight) == (20, 2.0)
    out = train(spec, tmp_path / "art", cfg, progress=False)
    m = artifacts.read_manifest(tmp_path / "art")
    assert m["eval"]["dislike_metrics"] == "not applicable: the source has no dislikes"
    assert m["metrics"]["dislike_rate@20"] == 0.0 and m["metrics"]["num_users_with_dislikes"] == 0
    # The tower ignores its dislike input: disliking the top item moves nothing.
    assert m["metrics"]["responsiveness@20"] == 0.0
    assert out.baseline_popular["dislike_rate@20"] == 0.0
    # No time order, no dislikes: no dislike holdout, its figures marked not applicable.
    assert m["eval"]["dislike_protocol"] == {
        "holdout": "none",
        "users": 0,
        "status": "not applicable: the source has no time order",
    }
    assert m["metrics"]["like_dislike_auc"] == 0.5 and m["metrics"]["num_users_judged"] == 0
    assert m["data"]["counts"]["holdout"] == 0
    # train.refit (on for lightgcn:): the test input is the train + valid items.
    known = np.isin(ds.split, (0, 1)) if cfg.train.refit else ds.split == 0
    train_counts = np.bincount(ds.users[pos & known], minlength=ds.num_users)
    test_users = {int(u) for u in ds.users[pos & (ds.split == 2)]}
    capped = sum(1 for u in test_users if train_counts[u] > 10)
    assert capped > 0 and m["eval"]["input"] == {
        "history_length": 10,
        "history": "every train item of the user, up to H (a seeded sample above H)",
        "users_capped": capped,
    }
