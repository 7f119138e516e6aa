"""No untrusted deserialization: nothing a file or a request reaches is unpickled or
loaded as arbitrary YAML/code. Requests are JSON; configs go through ``yaml.safe_load``;
``.npz`` files are read with pickles refused."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("twotower", "trainer", "serving", "feature_store", "common", "deploy", "bench")
UNSAFE = {
    "pickle": re.compile(r"\b(c?pickle|dill|cloudpickle|joblib|shelve|marshal)\b"),
    "allow_pickle=True": re.compile(r"allow_pickle\s*=\s*True"),
    "yaml.load": re.compile(r"\byaml\.(load|unsafe_load|full_load|load_all)\("),
    "eval/exec": re.compile(r"(?<![\w.])(eval|exec)\("),
    "pandas pickle": re.compile(r"read_pickle|to_pickle"),
}


def _sources() -> list[Path]:
    out: list[Path] = []
    for package in PACKAGES:
        out += [p for p in (REPO / package).rglob("*.py") if "results" not in p.parts]
    return out


def test_no_unsafe_deserialization_in_the_code() -> None:
    found = []
    for path in _sources():
        for no, line in enumerate(path.read_text().splitlines(), start=1):
            code = line.split("#", 1)[0]
            for what, pattern in UNSAFE.items():
                if pattern.search(code):
                    found.append(f"{path.relative_to(REPO)}:{no}: {what}: {line.strip()}")
    assert found == []


def test_np_load_refuses_pickled_arrays_by_default(tmp_path: Path) -> None:
    """Every ``np.load`` of an artifact relies on numpy's default (or says allow_pickle=False):
    an items.npz holding an object array (a pickle) is refused, not executed."""
    path = tmp_path / "items.npz"
    np.savez(path, ids=np.array([{"a": 1}, None], dtype=object), embeddings=np.zeros((2, 2)))
    with np.load(path) as npz, pytest.raises(ValueError, match="allow_pickle"):
        npz["ids"]  # noqa: B018 - the load is the test


def test_serving_refuses_a_version_whose_item_table_is_a_pickle(tmp_path: Path) -> None:
    from common import artifacts
    from serving.model import load_model
    from tests.serving.artifact_factory import make_artifact

    version = make_artifact(tmp_path, num_items=20, seed=3)
    items = artifacts.version_dir(tmp_path, version) / artifacts.ITEMS
    ids = np.array([f"i{i}" for i in range(20)], dtype=object)
    np.savez(items, ids=ids, embeddings=np.zeros((20, 16), np.float32))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_model(tmp_path, version, use_gpu="never")
