"""``check_source``: what can be refused about a SRC without reading its data."""

from __future__ import annotations

import pytest

from feature_store.options import StoreURLError
from trainer.data.errors import DataError
from trainer.data.sources import check_source, load_source


def test_a_readable_looking_source_passes_without_being_read(tmp_path):
    bad = tmp_path / "u.data"
    bad.write_text("not\ta\trating\n")
    check_source(f"movielens:{bad}")  # only reading finds the malformed line
    with pytest.raises(DataError, match="u.data:1"):
        load_source(f"movielens:{bad}")
    for name in ("train.txt", "test.txt"):
        (tmp_path / name).write_text("")
    check_source(f"lightgcn:{tmp_path}")  # valid.txt is optional
    check_source(f"events:{tmp_path}")
    check_source("synthetic:users=10,items=20")
    check_source("synthetic")
    store = tmp_path / "s.sqlite"
    store.write_bytes(b"")
    check_source(f"events:sqlite:///{store}")
    check_source("events:redis://127.0.0.1:1/0")  # reachability is the reader's business


@pytest.mark.parametrize(
    "spec, error, message",
    [
        ("", DataError, "empty"),
        ("nosuch:x", DataError, "unknown source kind 'nosuch'"),
        ("movielens", DataError, "movielens needs a path after the colon"),
        ("events:", DataError, "events needs a URL after the colon"),
        ("synthetic:userz=3", DataError, "unknown key 'userz'"),
        ("movielens:{tmp}/nope", DataError, "no such file or directory"),
        ("movielens:{tmp}", DataError, "neither u.data nor ratings.csv"),
        ("lightgcn:{tmp}/nope", DataError, "not a directory"),
        ("lightgcn:{tmp}", DataError, "missing train.txt"),
        ("events:{tmp}/nope", DataError, "no such directory"),
        ("events:sqlite:///{tmp}/none.sqlite", DataError, "no such store file"),
        ("events:mysql://db/x", StoreURLError, "unknown scheme 'mysql'"),
    ],
)
def test_what_cannot_be_read_is_refused_before_reading(tmp_path, spec, error, message):
    spec = spec.replace("{tmp}", str(tmp_path))
    with pytest.raises(error, match=message):
        check_source(spec)
    if error is DataError:  # the reader says the same
        with pytest.raises(DataError):
            load_source(spec)
    assert not (tmp_path / "none.sqlite").exists()  # checking created nothing
