"""Damaged input files for every data reader: truncated, wrong column counts, bad encodings,
empty. Each is a DataError naming the file and line (or row), or with ``skip_bad_lines`` a
counted skip; never a model silently trained on something else. (The well-formed formats
and their per-field errors are in test_data_readers.py.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trainer.data.errors import DataError
from trainer.data.sources import load_source

UDATA = "1\t10\t5\t100\n1\t11\t3\t101\n1\t12\t1\t102\n2\t10\t4\t50\n2\t13\t2\t60\n"
CSV_HEADER = "userId,movieId,rating,timestamp\n"
CSV = CSV_HEADER + "1,7,4.5,100\n1,8,1,101\n2,7,5,102\n"


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)
    return path


@pytest.mark.parametrize(
    ("data", "line", "why"),
    [
        (UDATA + "3\t1", 6, "expected 4 fields .* found 2"),  # cut mid-line
        (UDATA.replace("\t", ","), 1, "found 1"),  # wrong separator: one field
        (UDATA + "3\t14\t5\t70\tx\n", 6, "found 5"),
        (UDATA.encode() + "\xe9\t1\t5\t1\n".encode("latin-1"), 6, "not a non-negative integer"),
        (UDATA.encode("utf-16"), 1, "not a non-negative integer"),
        (UDATA.encode() + b"\x00\x00\x00\n", 6, "found 1"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), 1, ""),
    ],
    ids=["truncated", "commas", "five-columns", "latin-1", "utf-16", "nul-bytes", "binary"],
)
def test_udata_damage_names_file_and_line(
    tmp_path: Path, data: str | bytes, line: int, why: str
) -> None:
    path = write(tmp_path / "u.data", data)
    with pytest.raises(DataError, match=rf"{path}:{line}: .*{why}") as err:
        load_source(f"movielens:{path}")
    assert err.value.line == line


def test_udata_damaged_lines_are_skipped_and_counted_on_request(tmp_path: Path) -> None:
    bad = ["3\t1", "\xe9\t1\t5\t1", "1,2,3,4", "\x00\x00"]
    path = write(tmp_path / "u.data", UDATA + "\n".join(bad) + "\n2\t14\t5\t70\n")
    ds = load_source(f"movielens:{path}", skip_bad_lines=True)
    assert ds.skipped_lines == len(bad) and len(ds.users) == 5


@pytest.mark.parametrize("data", ["", "\n\n   \n", "\r\n"], ids=["empty", "blank", "crlf"])
def test_empty_udata_is_an_error_naming_the_file(tmp_path: Path, data: str) -> None:
    path = write(tmp_path / "u.data", data)
    with pytest.raises(DataError, match="nothing to train on") as err:
        load_source(f"movielens:{path}")
    assert err.value.path == str(path)


def test_a_utf8_byte_order_mark_is_not_data(tmp_path: Path) -> None:
    udata = write(tmp_path / "a" / "u.data", b"\xef\xbb\xbf" + UDATA.encode())
    ratings = write(tmp_path / "b" / "ratings.csv", b"\xef\xbb\xbf" + CSV.encode())
    assert len(load_source(f"movielens:{udata}").users) == 4
    assert len(load_source(f"movielens:{ratings}").users) == 3
    root = tmp_path / "g"
    write(root / "train.txt", b"\xef\xbb\xbf0 1 2\n1 2\n")
    write(root / "test.txt", b"\xef\xbb\xbf0 3\n")
    assert len(load_source(f"lightgcn:{root}").users) == 4


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ("", r"ratings\.csv: empty file; expected the header"),
        (CSV_HEADER, "nothing to train on"),
        (CSV_HEADER + "1,7,4.5,100,9\n", r"ratings\.csv:2: expected 4 fields .* found 5"),
        (CSV_HEADER + "1,7,4.5\n", r"ratings\.csv:2: expected 4 fields .* found 3"),
        (CSV + "3,9,4", r"ratings\.csv:5: expected 4 fields .* found 3"),  # truncated
        (CSV_HEADER + '"1","7",4.5,100\n', r"ratings\.csv:2: .*not a non-negative integer"),
        ("userId,movieId,rating\n1,7,4\n", r"ratings\.csv:1: header"),
        (CSV_HEADER.replace(",", ";") + "1;7;4.5;100\n", r"ratings\.csv:1: header"),
        (CSV.encode("utf-16"), r"ratings\.csv:1: header"),
    ],
    ids=[
        "empty",
        "header-only",
        "extra-column",
        "missing-column",
        "truncated",
        "quoted",
        "three-column-header",
        "semicolons",
        "utf-16",
    ],
)
def test_ratings_csv_damage_names_file_and_line(
    tmp_path: Path, data: str | bytes, match: str
) -> None:
    path = write(tmp_path / "ratings.csv", data)
    with pytest.raises(DataError, match=match):
        load_source(f"movielens:{path}")


def lightgcn(root: Path, train: str | bytes, test: str | bytes = "0 4\n1 0\n") -> Path:
    write(root / "train.txt", train)
    write(root / "test.txt", test)
    return root


@pytest.mark.parametrize(
    ("train", "test", "file"),
    [
        ("", "0 4\n", "train.txt"),
        ("\n\n", "0 4\n", "train.txt"),
        ("0\n1\n", "0 4\n", "train.txt"),  # users listed without any item
        ("0 1 2\n", "", "test.txt"),
        ("0 1 2\n", "0\n", "test.txt"),
    ],
    ids=["empty-train", "blank-train", "itemless-train", "empty-test", "itemless-test"],
)
def test_lightgcn_split_without_pairs_is_an_error(
    tmp_path: Path, train: str, test: str, file: str
) -> None:
    """Training on no train pair or scoring on no test pair would be a meaningless model."""
    root = lightgcn(tmp_path / "g", train, test)
    with pytest.raises(DataError, match=rf"{file}: no \(user, item\) pair") as err:
        load_source(f"lightgcn:{root}")
    assert err.value.path == str(root / file)


@pytest.mark.parametrize(
    ("train", "line", "why"),
    [
        ("0 1 2\n1 2 \xe9\n".encode("latin-1"), 2, "not a non-negative integer"),
        ("0 1 2\n".encode("utf-16"), 1, "not a non-negative integer"),
        ("0,1,2\n", 1, "'0,1,2' is not a non-negative integer"),
        ("0 1 2\n1 2\x003\n", 2, "not a non-negative integer"),
    ],
    ids=["latin-1", "utf-16", "commas", "nul"],
)
def test_lightgcn_bad_encodings_name_file_and_line(
    tmp_path: Path, train: str | bytes, line: int, why: str
) -> None:
    root = lightgcn(tmp_path / "g", train)
    with pytest.raises(DataError, match=rf"train\.txt:{line}: .*{why}"):
        load_source(f"lightgcn:{root}")
    if line > 1:  # the lines before it are good: skipping counts the bad one
        assert load_source(f"lightgcn:{root}", skip_bad_lines=True).skipped_lines == 1


def test_synthetic_key_given_twice_is_refused() -> None:
    with pytest.raises(DataError, match="users is given twice"):
        load_source("synthetic:users=10,users=20")


# --- the event log export (Parquet) -----------------------------------------------------


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real export directory of a small SQLite store's log."""
    from feature_store import open_store, run_sync
    from feature_store.archive import compact
    from feature_store.events import Event

    base = tmp_path_factory.mktemp("export")
    url = f"sqlite:///{base / 'store.sqlite'}"
    t0 = 1.7e9
    events = [Event(f"e{k}", "u", f"i{k}", "like", t0 + k, t0 + k + 1) for k in range(6)]
    events.append(Event("e9", "w", "i1", "dislike", t0 + 3, t0 + 4))

    async def put() -> None:
        async with open_store(url) as store:
            await store.append_events(events)

    run_sync(put())
    out = base / "export"
    assert compact(url, out, consumer="test").new_events == len(events)
    return out


def _column(table: pa.Table, name: str, values: list, type_: pa.DataType | None = None) -> pa.Table:
    i = table.schema.get_field_index(name)
    return table.set_column(i, name, pa.array(values, type_ or table.schema.field(name).type))


def _damaged(export: Path, tmp_path: Path, damage) -> tuple[Path, Path]:
    out = tmp_path / "export"
    shutil.copytree(export, out)
    (part,) = sorted(out.rglob("*.parquet"))
    damage(part)
    return out, part


def _rows(part: Path) -> int:
    return pq.read_metadata(part).num_rows


PARQUET_DAMAGE = {
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "unreadable"),
    "empty": (lambda p: p.write_bytes(b""), "unreadable"),
    "not-parquet": (lambda p: p.write_bytes(b"user,item\n1,2\n"), "unreadable"),
    "deleted": (lambda p: p.unlink(), "unreadable"),
    "missing-column": (
        lambda p: pq.write_table(pq.read_table(p).drop(["item_id"]), p),
        "column 'item_id' is missing",
    ),
    "null-user": (
        lambda p: pq.write_table(
            _column(pq.read_table(p), "user_id", ["u"] + [None] * (_rows(p) - 1)), p
        ),
        "row 1: user_id is null",
    ),
    "nan-ts": (
        lambda p: pq.write_table(
            _column(
                pq.read_table(p), "ts", [1.7e9, 1.7e9, float("nan")] + [1.7e9] * (_rows(p) - 3)
            ),
            p,
        ),
        "row 2: ts=nan is not a finite number",
    ),
    "unknown-type": (
        lambda p: pq.write_table(_column(pq.read_table(p), "type", ["zap"] * _rows(p)), p),
        "row 0: unknown event type 'zap'",
    ),
    "empty-id": (
        lambda p: pq.write_table(_column(pq.read_table(p), "item_id", [""] * _rows(p)), p),
        "row 0: item_id is empty",
    ),
    "ts-as-text": (
        lambda p: pq.write_table(_column(pq.read_table(p), "ts", ["x"] * _rows(p), pa.string()), p),
        "unreadable",
    ),
}


@pytest.mark.parametrize("case", sorted(PARQUET_DAMAGE))
def test_damaged_export_file_is_an_error_naming_file_and_row(
    export: Path, tmp_path: Path, case: str
) -> None:
    damage, why = PARQUET_DAMAGE[case]
    out, part = _damaged(export, tmp_path, damage)
    with pytest.raises(DataError, match="cannot read the export") as err:
        load_source(f"events:{out}")
    assert str(part) in str(err.value) and why in str(err.value), str(err.value)


def test_clean_export_reads_every_event(export: Path) -> None:
    assert len(load_source(f"events:{export}").users) == 7


def test_damaged_export_exits_2_through_the_cli(
    export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from twotower.cli import main

    out, part = _damaged(export, tmp_path, PARQUET_DAMAGE["null-user"][0])
    code = main(["train", "--data", f"events:{out}", "--out", str(tmp_path / "art")])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert f"{part}: row 1: user_id is null" in err and "Traceback" not in err
