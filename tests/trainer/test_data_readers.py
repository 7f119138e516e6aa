"""File readers (MovieLens, LightGCN), SRC parsing and the event-log source, on handwritten data."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from feature_store.events import Event
from trainer.data.dataset import DISLIKE, POSITIVE, TEST, TRAIN, VALID
from trainer.data.errors import DataError
from trainer.data.sources import dataset_from_events, load_source

UDATA = "1\t10\t5\t100\n1\t11\t3\t101\n1\t12\t1\t102\n2\t10\t4\t50\n2\t13\t2\t60\n"


def events_of(ds):
    """{(user id, item id, label, ts)} of a Dataset, for order-free comparisons."""
    return {
        (ds.user_ids[u], ds.item_ids[i], int(lab), float(t))
        for u, i, lab, t in zip(ds.users, ds.items, ds.labels, ds.ts, strict=True)
    }


def test_udata_labels_neutral_and_timestamps(tmp_path):
    (tmp_path / "u.data").write_text(UDATA)
    ds = load_source(f"movielens:{tmp_path / 'u.data'}")
    assert ds.kind == "movielens" and ds.timestamped
    assert events_of(ds) == {
        ("1", "10", POSITIVE, 100.0),
        ("1", "12", DISLIKE, 102.0),
        ("2", "10", POSITIVE, 50.0),
        ("2", "13", DISLIKE, 60.0),
    }
    assert ds.neutral == 1 and ds.skipped_lines == 0
    # The item rated only 3 is still in the catalog.
    assert sorted(ds.item_ids.tolist(), key=int) == ["10", "11", "12", "13"]
    assert ds.summary()["counts"]["neutral"] == 1


def test_udata_numeric_id_order_crlf_blank_lines_and_no_final_newline(tmp_path):
    text = "9\t2\t5\t1\r\n\r\n10\t100\t4\t2\r\n10\t20\t5\t3"
    (tmp_path / "u.data").write_text(text, newline="")
    ds = load_source(f"movielens:{tmp_path}")  # a directory holding u.data
    assert ds.user_ids.tolist() == ["9", "10"]
    assert ds.item_ids.tolist() == ["2", "20", "100"]
    assert len(ds.users) == 3


def test_udata_genres_from_u_item(tmp_path):
    (tmp_path / "u.data").write_text(UDATA)
    flags = {10: [0, 0, 1, 1], 11: [0, 0, 0, 0], 12: [1, 0, 0, 0]}
    lines = [
        f"{i}|Title {i} (1995)|01-Jan-1995||http://x|" + "|".join(map(str, f))
        for i, f in flags.items()
    ]
    (tmp_path / "u.item").write_bytes(
        ("\n".join(lines) + "\n").replace("Title 10", "Caf\xe9").encode("iso-8859-1")
    )
    ds = load_source(f"movielens:{tmp_path / 'u.data'}")
    genre = dict(zip(ds.item_ids.tolist(), ds.item_features["genre"].tolist(), strict=True))
    assert genre == {"10": 3, "11": 0, "12": 1, "13": 0}  # first flag + 1; 13 is not in u.item
    assert ds.item_feature_sizes["genre"] == 5


def test_ratings_csv_any_column_order_and_half_stars(tmp_path):
    text = "timestamp,rating,movieId,userId\n100,4.5,7,1\n101,2.5,8,1\n102,2.0,9,1\n103,3.5,7,2\n"
    (tmp_path / "ratings.csv").write_text(text)
    (tmp_path / "movies.csv").write_text(
        'movieId,title,genres\n7,"Heat, the movie (1995)",Drama|Action\n8,X,Action\n9,Y,(no genres listed)\n'
    )
    ds = load_source(f"movielens:{tmp_path}")
    assert events_of(ds) == {("1", "7", POSITIVE, 100.0), ("1", "9", DISLIKE, 102.0)}
    assert ds.neutral == 2
    genre = dict(zip(ds.item_ids.tolist(), ds.item_features["genre"].tolist(), strict=True))
    assert genre == {"7": 2, "8": 1, "9": 0}  # Action = 1, Drama = 2 (sorted names)


def test_ratings_csv_needs_its_header(tmp_path):
    (tmp_path / "ratings.csv").write_text("1,7,4.0,100\n")
    with pytest.raises(DataError, match=r"ratings\.csv:1: .*userId,movieId,rating,timestamp"):
        load_source(f"movielens:{tmp_path / 'ratings.csv'}")


BAD_UDATA_LINES = [
    ("1\t10\t5\n", "expected 4 fields"),
    ("1\t10\t5\t100\t7\n", "expected 4 fields"),
    ("1\tabc\t5\t100\n", "non-negative integers"),
    ("1\t10\tfive\t100\n", "not a number"),
    ("1\t10\t6\t100\n", "outside"),
    ("1\t10\t0\t100\n", "outside"),
    ("1\t10\t5\t-3\n", "non-negative integer"),
    ("1\t10\t5\tnan\n", "non-negative integer"),
]


@pytest.mark.parametrize(("line", "why"), BAD_UDATA_LINES)
def test_udata_malformed_line_names_file_and_line(tmp_path, line, why):
    path = tmp_path / "u.data"
    path.write_text(
        UDATA[:-1] + "\n\n" + line + "2\t14\t5\t70\n"
    )  # the bad line is line 7 (blank line 6)
    with pytest.raises(DataError, match=rf"{path}:7: .*{why}") as err:
        load_source(f"movielens:{path}")
    assert err.value.line == 7 and err.value.path == str(path)


def test_skip_bad_lines_counts_and_logs(tmp_path, caplog):
    path = tmp_path / "u.data"
    path.write_text(UDATA + "".join(line for line, _ in BAD_UDATA_LINES) + "2\t14\t5\t70\n")
    with caplog.at_level(logging.WARNING):
        ds = load_source(f"movielens:{path}", skip_bad_lines=True)
    assert ds.skipped_lines == len(BAD_UDATA_LINES)
    assert ds.summary()["counts"]["skipped_lines"] == len(BAD_UDATA_LINES)
    assert ("2", "14", POSITIVE, 70.0) in events_of(ds) and len(ds.users) == 5
    assert f"skipped {len(BAD_UDATA_LINES)} malformed line(s); first at line 6" in caplog.text


def test_movielens_path_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_source(f"movielens:{tmp_path / 'nope.data'}")
    with pytest.raises(DataError, match="neither u.data nor ratings.csv"):
        load_source(f"movielens:{tmp_path}")
    (tmp_path / "u.data").write_text("1\t10\t3\t100\n")
    with pytest.raises(DataError, match="nothing to train on"):
        load_source(f"movielens:{tmp_path}")


def write_lightgcn(root, valid=True, train="0 1 2 3\n1 2\n2\n", test="0 4\n1 0 1\n"):
    root.mkdir(exist_ok=True)
    (root / "train.txt").write_text(train)
    if valid:
        (root / "valid.txt").write_text("0 5\n1\n")
    (root / "test.txt").write_text(test)
    return root


def test_lightgcn_given_split_positives_only_no_time(tmp_path):
    ds = load_source(f"lightgcn:{write_lightgcn(tmp_path / 'g')}")
    assert ds.kind == "lightgcn" and not ds.timestamped and np.isnan(ds.ts).all()
    assert (ds.labels == POSITIVE).all()
    got = {
        (ds.user_ids[u], ds.item_ids[i], int(s))
        for u, i, s in zip(ds.users, ds.items, ds.split, strict=True)
    }
    assert got == {
        ("0", "1", TRAIN), ("0", "2", TRAIN), ("0", "3", TRAIN), ("1", "2", TRAIN),
        ("0", "5", VALID),
        ("0", "4", TEST), ("1", "0", TEST), ("1", "1", TEST),
    }  # fmt: skip
    # User 2 lists no item anywhere: no event, not a user.
    assert ds.user_ids.tolist() == ["0", "1"]
    assert ds.item_ids.tolist() == ["0", "1", "2", "3", "4", "5"]
    assert len(ds.users) == 8


def test_lightgcn_valid_is_optional_train_and_test_are_not(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        ds = load_source(f"lightgcn:{write_lightgcn(tmp_path / 'a', valid=False)}")
    assert not (ds.split == VALID).any() and "no validation split" in caplog.text
    root = write_lightgcn(tmp_path / "b")
    (root / "test.txt").unlink()
    with pytest.raises(DataError, match="missing test.txt"):
        load_source(f"lightgcn:{root}")
    with pytest.raises(DataError, match="not a directory"):
        load_source(f"lightgcn:{tmp_path / 'missing'}")


@pytest.mark.parametrize("bad", ["0 1 x\n", "0 -1\n", "0 1.5\n", "u 1\n"])
def test_lightgcn_malformed_line(tmp_path, bad):
    root = write_lightgcn(tmp_path / "g", train="0 1 2 3\n\n" + bad + "2 1\n")
    with pytest.raises(DataError, match=r"train\.txt:3: .*not a non-negative integer"):
        load_source(f"lightgcn:{root}")
    ds = load_source(f"lightgcn:{root}", skip_bad_lines=True)
    assert ds.skipped_lines == 1
    assert len(ds.users) == 3 + 1 + 1 + 3  # train 0:{1,2,3} + 2:{1}, valid, test


OVERLONG = "99999999999999999999"  # 20 digits: above int64's 9223372036854775807


@pytest.mark.parametrize(
    ("token", "why"),
    [
        (
            "\u00b2",
            r"'\u00b2' is not a non-negative integer id \(ASCII digits",
        ),  # '²'.isdigit() is True
        ("\u0663", r"'\u0663' is not a non-negative integer id"),  # int() reads it as 3
        (OVERLONG, rf"id {OVERLONG} is out of range"),
    ],
)
def test_lightgcn_non_ascii_digits_and_overlong_ids_name_file_and_line(tmp_path, token, why):
    root = write_lightgcn(tmp_path / "g", train=f"0 1 2 3\n1 {token}\n2 1\n")
    with pytest.raises(DataError, match=rf"train\.txt:2: {why}") as err:
        load_source(f"lightgcn:{root}")
    assert err.value.line == 2
    ds = load_source(f"lightgcn:{root}", skip_bad_lines=True)
    assert ds.skipped_lines == 1 and "1" in ds.user_ids.tolist()  # user 1 still has test items


def test_lightgcn_largest_int64_id_is_read_exactly(tmp_path):
    big = str((1 << 63) - 1)
    root = write_lightgcn(tmp_path / "g", train=f"0 1 {big}\n1 2\n")
    ds = load_source(f"lightgcn:{root}")
    assert big in ds.item_ids.tolist()


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("\u00b2\t10\t5\t100\n", r"'\u00b2' is not a non-negative integer id"),
        ("1\t\u00b2\t5\t100\n", r"'\u00b2' is not a non-negative integer id"),
        (f"{OVERLONG}\t10\t5\t100\n", rf"id {OVERLONG} is out of range"),
        (f"1\t{OVERLONG}\t5\t100\n", rf"id {OVERLONG} is out of range"),
        ("1\t10\t\u0664\t100\n", r"rating '\u0664' is not a number"),  # float() reads 4
        ("1\t10\t5\t1e9\n", "non-negative integer"),
    ],
)
def test_udata_non_ascii_digits_and_overlong_ids_name_file_and_line(tmp_path, line, why):
    path = tmp_path / "u.data"
    path.write_text(UDATA + line)
    with pytest.raises(DataError, match=rf"{path}:6: .*{why}"):
        load_source(f"movielens:{path}")


def test_movielens_ids_above_float_precision_stay_distinct(tmp_path):
    # 2^53 + 1 and 2^53 are one float64; ids must never pass through floats.
    a, b = str((1 << 53) + 1), str(1 << 53)
    path = tmp_path / "u.data"
    path.write_text(f"1\t{a}\t5\t100\n1\t{b}\t5\t101\n1\t7\t5\t102\n")
    ds = load_source(f"movielens:{path}")
    assert sorted(ds.item_ids.tolist()) == sorted([a, b, "7"])


def test_movielens_metadata_with_bad_ids_is_an_input_error(tmp_path):
    (tmp_path / "u.data").write_text(UDATA)
    (tmp_path / "u.item").write_text("\u00b2|Title|01-Jan-1995||http://x|0|1\n")
    with pytest.raises(DataError, match=r"u\.item:1: "):
        load_source(f"movielens:{tmp_path / 'u.data'}")


def test_bad_ids_exit_2_through_the_cli(tmp_path, capsys):
    from twotower.cli import main

    root = write_lightgcn(tmp_path / "g", train=f"0 1 2\n1 {OVERLONG}\n")
    code = main(["train", "--data", f"lightgcn:{root}", "--out", str(tmp_path / "art")])
    assert code == 2
    err = capsys.readouterr().err
    assert "train.txt:2" in err and "out of range" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("", "empty"),
        ("csv:foo", "unknown source kind"),
        ("movielens", "needs a path"),
        ("movielens:", "needs a path"),
        ("lightgcn:", "needs a path"),
        ("events:", "needs a URL"),
    ],
)
def test_bad_specs_list_accepted_forms(spec, why):
    with pytest.raises(DataError, match=why) as err:
        load_source(spec)
    for form in ("synthetic[:key=value,...]", "movielens:PATH", "lightgcn:DIR", "events:STORE_URL"):
        assert form in str(err.value)


def test_synthetic_spec_and_its_errors():
    ds = load_source("synthetic:users=30,items=40,events_per_user=10,categories=4")
    assert ds.kind == "synthetic" and ds.num_users == 30 and ds.num_items == 40
    assert ds.source == "synthetic:users=30,items=40,events_per_user=10,categories=4"
    with pytest.raises(DataError, match="unknown key 'colour'.*users, items"):
        load_source("synthetic:colour=blue")
    with pytest.raises(DataError, match="users='many' is not a non-negative integer"):
        load_source("synthetic:users=many")
    with pytest.raises(DataError, match="users='\u0663' is not a non-negative integer"):
        load_source("synthetic:users=\u0663")
    with pytest.raises(DataError, match="is not a non-negative integer"):
        load_source(f"synthetic:seed={OVERLONG}")
    with pytest.raises(DataError, match="users must be in 1..2147483647"):
        load_source("synthetic:users=3000000000")
    with pytest.raises(DataError, match="span_days='inf' is not a finite number"):
        load_source("synthetic:span_days=inf")
    with pytest.raises(DataError, match="not key=value"):
        load_source("synthetic:users")
    with pytest.raises(DataError, match="dislike_rate must be in"):
        load_source("synthetic:dislike_rate=1.5")


def ev(i, user, item, etype, ts):
    return Event(
        event_id=f"e{i}", user_id=user, item_id=item, type=etype, ts=ts, received_at=ts + 1
    )


def test_dataset_from_events_roles_order_and_duplicates():
    t0 = 1.7e9
    events = [
        ev(1, "alice", "a", "view", t0 + 3),
        ev(2, "alice", "b", "click", t0 + 1),
        ev(3, "alice", "c", "impression", t0 + 2),
        ev(4, "alice", "d", "dislike", t0 + 2),
        ev(5, "alice", "e", "like", t0 + 4),
        ev(6, "alice", "f", "purchase", t0 + 5),
        ev(1, "alice", "a", "view", t0 + 3),  # the same event delivered twice
        ev(7, "bob", "a", "like", t0),
    ]
    ds = dataset_from_events(events, source="events:sqlite:///x.db")
    assert ds.kind == "events" and ds.timestamped and ds.neutral == 1
    alice = ds.users == np.flatnonzero(ds.user_ids == "alice")[0]
    assert ds.item_ids[ds.items[alice]].tolist() == ["b", "d", "a", "e", "f"]  # time order
    assert ds.labels[alice].tolist() == [POSITIVE, DISLIKE, POSITIVE, POSITIVE, POSITIVE]
    assert ds.split[alice].tolist() == [TRAIN, TRAIN, TRAIN, VALID, TEST]
    assert ds.ts[alice].tolist() == [t0 + 1, t0 + 2, t0 + 3, t0 + 4, t0 + 5]
    assert ds.summary()["counts"]["events"] == 6


def test_dataset_from_events_with_nothing_to_learn():
    with pytest.raises(DataError, match="no positive or dislike events"):
        dataset_from_events([ev(1, "u", "i", "impression", 1.7e9)], source="events:x")


def test_events_source_reads_a_real_sqlite_store(tmp_path):
    from feature_store import open_store, run_sync

    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    t0 = 1.7e9
    events = [ev(k, "u", f"i{k}", "like", t0 + k) for k in range(5)] + [
        ev(9, "u", "bad", "dislike", t0 + 2.5)
    ]

    async def put() -> None:
        async with open_store(url) as store:
            await store.append_events(events)

    run_sync(put())
    ds = load_source(f"events:{url}")
    assert ds.kind == "events" and ds.source == f"events:{url}"
    assert ds.item_ids[ds.items].tolist() == ["i0", "i1", "i2", "bad", "i3", "i4"]
    assert ds.split.tolist() == [TRAIN, TRAIN, TRAIN, TRAIN, VALID, TEST]


def test_events_source_reads_a_log_export_directory(tmp_path):
    from feature_store import open_store, run_sync
    from feature_store.archive import compact

    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    t0 = 1.7e9
    events = [ev(k, "u", f"i{k}", "like", t0 + k) for k in range(5)] + [
        ev(9, "u", "bad", "dislike", t0 + 2.5),
        ev(10, "w", "i1", "view", t0 + 1),
    ]

    async def put() -> None:
        async with open_store(url) as store:
            await store.append_events(events)

    run_sync(put())
    export = tmp_path / "export"
    assert compact(url, export, consumer="test").new_events == len(events)
    from_store, from_export = load_source(f"events:{url}"), load_source(f"events:{export}")
    assert from_export.source == f"events:{export}"
    assert events_of(from_export) == events_of(from_store)
    assert from_export.split.tolist() == from_store.split.tolist()

    with pytest.raises(DataError, match="no such directory"):
        load_source(f"events:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no committed events"):
        load_source(f"events:{tmp_path / 'empty'}")
