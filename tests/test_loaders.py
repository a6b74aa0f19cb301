"""Tests for shared.loaders: golden files, every error class, fuzzing and the real MovieLens files."""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.errors import DataError
from shared.loaders import MAX_TIMESTAMP, ColumnMapping, load_interactions
from shared.movielens import (
    load_item_genres,
    load_item_tags,
    load_item_titles,
    load_ncf_split,
    period_tags,
    release_year,
)
from shared.schema import COLUMNS, DuplicatePolicy
from tests.support import need

NA = pd.NA


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def frame(rows: list[tuple]) -> pd.DataFrame:
    """The expected schema frame of (user, item, value, timestamp, line) rows."""
    cols = list(zip(*rows, strict=True)) if rows else [[]] * 5
    return pd.DataFrame(
        {
            "user": pd.Series(cols[0], dtype=object),
            "item": pd.Series(cols[1], dtype=object),
            "value": pd.Series(cols[2], dtype="float64"),
            "timestamp": pd.Series(cols[3], dtype="Int64"),
            "line": pd.Series(cols[4], dtype="int64"),
        }
    )


def check_schema(df: pd.DataFrame) -> None:
    """Everything the raw interaction frame promises."""
    assert tuple(df.columns) == COLUMNS
    assert [str(t) for t in df.dtypes] == ["object", "object", "float64", "Int64", "int64"]
    assert len(df) > 0
    assert all(isinstance(v, str) and v for v in df["user"]) and all(isinstance(v, str) and v for v in df["item"])
    assert np.isfinite(df["value"].to_numpy()).all()
    ts = df["timestamp"].dropna()
    assert ((ts >= 0) & (ts <= MAX_TIMESTAMP)).all()
    lines = df["line"].to_numpy()
    assert lines[0] >= 1 and (np.diff(lines) > 0).all()
    assert not df.duplicated(["user", "item"]).any()
    assert isinstance(df.index, pd.RangeIndex) and df.index.start == 0


# ---------------------------------------------------------------- golden files


def test_ml100k_golden(tmp_path: Path) -> None:
    path = write(tmp_path, "u.data", "196\t242\t3\t881250949\n\n0186\t0302\t5\t0\n")
    assert_frame = pd.testing.assert_frame_equal
    assert_frame(load_interactions(path), frame([("196", "242", 3.0, 881250949, 1), ("186", "302", 5.0, 0, 3)]))


def test_ml1m_golden_with_timestamps_and_crlf(tmp_path: Path) -> None:
    path = write(tmp_path, "ratings.dat", "1::1193::5::978300760\r\n1::661::3::978302109\r\n")
    expected = frame([("1", "1193", 5.0, 978300760, 1), ("1", "661", 3.0, 978302109, 2)])
    pd.testing.assert_frame_equal(load_interactions(path), expected)


def test_ml1m_golden_gzip_detected_by_magic(tmp_path: Path) -> None:
    # gzip content under a plain name: detected by its magic bytes, not by the name
    path = write(tmp_path, "ratings.dat", gzip.compress(b"1::1::5\n1::48::5\n2::7::1"))
    expected = frame([("1", "1", 5.0, NA, 1), ("1", "48", 5.0, NA, 2), ("2", "7", 1.0, NA, 3)])
    pd.testing.assert_frame_equal(load_interactions(path), expected)
    gz = write(tmp_path, "my_ratings.dat.gz", gzip.compress(b"3::4::2\n"))
    pd.testing.assert_frame_equal(load_interactions(gz), frame([("3", "4", 2.0, NA, 1)]))


def test_csv_golden_mapping_iso_and_bom(tmp_path: Path) -> None:
    text = (
        "\ufeffuserId,movieId,rating,ts\n"
        "1, 10 ,4.5,2000-01-01T00:00:00Z\n"
        "2,0011,-1e0,\n"
        "\n"
        "3,12,0,1970-01-02\n"
        "4,13,2,978300760\n"
    )
    path = write(tmp_path, "r.csv", text)
    got = load_interactions(path, columns=ColumnMapping.parse("user=userId,item=movieId,value=rating,timestamp=ts"))
    expected = frame(
        [
            ("1", "10", 4.5, 946684800, 2),
            ("2", "11", -1.0, NA, 3),
            ("3", "12", 0.0, 86400, 5),
            ("4", "13", 2.0, 978300760, 6),
        ]
    )
    pd.testing.assert_frame_equal(got, expected)


@pytest.mark.parametrize("sep", [",", "\t", ";", "|"])
def test_csv_delimiter_sniffed(tmp_path: Path, sep: str) -> None:
    path = write(tmp_path, "r.tsv", sep.join(["user", "item"]) + "\n" + sep.join(["a7", "b"]) + "\n")
    got = load_interactions(path, string_ids=True)
    pd.testing.assert_frame_equal(got, frame([("a7", "b", 1.0, NA, 2)]))


def test_csv_optional_columns_and_explicit_delimiter(tmp_path: Path) -> None:
    path = write(tmp_path, "r.csv", "user;item;value\n1;2;3\n")
    pd.testing.assert_frame_equal(load_interactions(path, delimiter=";"), frame([("1", "2", 3.0, NA, 2)]))
    mapping = ColumnMapping.parse("value=")
    pd.testing.assert_frame_equal(load_interactions(path, columns=mapping), frame([("1", "2", 1.0, NA, 2)]))


def test_csv_quoted_fields_keep_line_numbers(tmp_path: Path) -> None:
    text = 'user,item,value\n"a,1",x,2\n"multi\nline",y,3\n"q""z",z,4\n'
    got = load_interactions(write(tmp_path, "q.csv", text), string_ids=True)
    pd.testing.assert_frame_equal(
        got, frame([("a,1", "x", 2.0, NA, 2), ("multi\nline", "y", 3.0, NA, 3), ('q"z', "z", 4.0, NA, 5)])
    )


def test_parquet_golden(tmp_path: Path) -> None:
    path = tmp_path / "r.parquet"
    pd.DataFrame(
        {
            "u": pd.array([1, 2, 3], dtype="int64"),
            "i": ["007", "8", "9"],
            "r": [1.5, 2.0, 3.0],
            "t": pd.array([10, None, 20], dtype="Int64"),
        }
    ).to_parquet(path)
    got = load_interactions(path, columns=ColumnMapping(user="u", item="i", value="r", timestamp="t"))
    pd.testing.assert_frame_equal(got, frame([("1", "7", 1.5, 10, 1), ("2", "8", 2.0, NA, 2), ("3", "9", 3.0, 20, 3)]))


def test_parquet_datetime_and_float_ids(tmp_path: Path) -> None:
    path = tmp_path / "r.parquet"
    pd.DataFrame(
        {
            "user": [1.0, 2.0],
            "item": ["a", "b"],
            "timestamp": pd.to_datetime(["1970-01-01 00:01:00", "2001-09-09 01:46:40"]),
        }
    ).to_parquet(path)
    got = load_interactions(path, string_ids=True)
    pd.testing.assert_frame_equal(got, frame([("1", "a", 1.0, 60, 1), ("2", "b", 1.0, 1000000000, 2)]))


def test_string_ids_kept_as_written(tmp_path: Path) -> None:
    path = write(tmp_path, "u.data", "0042\tx-1\t3\t5\n")
    pd.testing.assert_frame_equal(load_interactions(path, string_ids=True), frame([("0042", "x-1", 3.0, 5, 1)]))


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("u.data", "ml-100k"),
        ("ratings.dat", "ml-1m"),
        ("ml_ratings.dat.gz", "ml-1m"),
        ("x.parquet", "parquet"),
        ("x.csv", "csv"),
        ("x.tsv.gz", "csv"),
    ],
)
def test_auto_format(tmp_path: Path, name: str, fmt: str) -> None:
    explicit = {"ml-100k": "1\t2\t3\t4\n", "ml-1m": "1::2::3::4\n", "csv": "user,item\n1,2\n"}
    path = tmp_path / name
    if fmt == "parquet":
        pd.DataFrame({"user": [1], "item": [2]}).to_parquet(path)
    else:
        path.write_bytes(gzip.compress(explicit[fmt].encode()) if name.endswith(".gz") else explicit[fmt].encode())
    pd.testing.assert_frame_equal(load_interactions(path), load_interactions(path, fmt=fmt))


# ---------------------------------------------------------------- duplicates

DUPS = "user,item,value,timestamp\n1,7,3,100\n2,7,1,5\n1,7,5,50\n1,07,4,\n1,7,5,200\n"


@pytest.mark.parametrize(
    ("policy", "kept"), [(DuplicatePolicy.FIRST, 5), (DuplicatePolicy.LAST, 6), (DuplicatePolicy.MAX, 4)]
)
def test_duplicate_policies(tmp_path: Path, policy: DuplicatePolicy, kept: int) -> None:
    got = load_interactions(write(tmp_path, "d.csv", DUPS), duplicates=policy)
    # FIRST: the <NA> timestamp of line 5 counts as earliest; MAX: 5.0 on lines 4 and 6, earliest wins
    assert got["line"].tolist() == sorted([3, kept])
    check_schema(got)


def test_duplicate_error_names_both_lines(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        load_interactions(write(tmp_path, "d.csv", DUPS))
    assert (e.value.line, e.value.field, e.value.source) == (4, "item", str(tmp_path / "d.csv"))
    assert "duplicate interaction (user 1, item 7) also on line 2" in str(e.value)


def test_duplicates_accept_string_policy(tmp_path: Path) -> None:
    assert len(load_interactions(write(tmp_path, "d.csv", DUPS), duplicates="max")) == 2


# ---------------------------------------------------------------- errors

ML100K_OK = "1\t2\t3\t4\n"

ERRORS = [
    # (file name, content, line, field, message part)
    ("u.data", "", None, None, "empty"),
    ("u.data", "\n \n\n", None, None, "empty"),
    ("u.data", ML100K_OK + "1\t3\t3\n", 2, None, "expected 4 fields"),
    ("u.data", ML100K_OK + "1\t3\t3\t4\t5\n", 2, None, "found 5"),
    ("u.data", ML100K_OK + "5\t6\t3\t4\n1\t\xff\t3\t4\n", 3, "item", "undecodable"),
    ("u.data", ML100K_OK + "\t3\t3\t4\n", 2, "user", "empty user id"),
    ("u.data", ML100K_OK + "1\tx7\t3\t4\n", 2, "item", "non-numeric item id 'x7'"),
    ("u.data", ML100K_OK + "1\t\u0663\t3\t4\n", 2, "item", "non-numeric item id"),
    ("u.data", ML100K_OK + "1\t3\tfive\t4\n", 2, "rating", "non-numeric value"),
    ("u.data", ML100K_OK + "1\t3\tnan\t4\n", 2, "rating", "non-numeric value"),
    ("u.data", ML100K_OK + "1\t3\t1e999\t4\n", 2, "rating", "non-finite"),
    ("u.data", ML100K_OK + "1\t3\t6\t4\n", 2, "rating", "not an integer 1..5"),
    ("u.data", ML100K_OK + "1\t3\t0\t4\n", 2, "rating", "1..5"),
    ("u.data", ML100K_OK + "1\t3\t3.5\t4\n", 2, "rating", "1..5"),
    ("u.data", ML100K_OK + "1\t3\t3\t\n", 2, "timestamp", "missing timestamp"),
    ("u.data", ML100K_OK + "1\t3\t3\t-5\n", 2, "timestamp", "negative"),
    ("u.data", ML100K_OK + "1\t3\t3\t253402300800\n", 2, "timestamp", "beyond the year 9999"),
    ("u.data", ML100K_OK + "1\t3\t3\t" + "9" * 40 + "\n", 2, "timestamp", "beyond the year 9999"),
    ("u.data", ML100K_OK + "1\t3\t3\t2000-01-01\n", 2, "timestamp", "expected unix seconds"),
    ("u.data", ML100K_OK + "1\t3\t3\t4.0\n", 2, "timestamp", "bad timestamp"),
    (
        "u.data",
        ML100K_OK + "1\t2\t3\t4\n",
        2,
        "item",
        "duplicate interaction (user 1, item 2) also on line 1",
    ),
    # the first offending line wins, whatever the kind of error
    ("u.data", ML100K_OK + "1\t3\t9\t4\n1\t3\n\xff", 2, "rating", "1..5"),
    ("u.data", ML100K_OK + "1\t3\n1\t4\t9\t4\n", 2, None, "expected 4 fields"),
    ("u.data", "1\t3\t3\t4\n1\t3\t3\t4\n1\t5\t9\t4\n", 2, "item", "duplicate"),
    ("u.data", "1\t3\t3\t4\n1\tx\t3\t4\n1\t3\t3\t4\n", 2, "item", "non-numeric"),
    ("u.data", "1\t3\t3\tx\n1\ty\t3\t4\n", 1, "timestamp", "bad timestamp"),
    ("ratings.dat", "1::2::3::4\n1::3::3\n", 2, None, "expected 4 fields"),
    ("ratings.dat", "1::2::3\n1::3::3::4\n", 2, None, "expected 3 fields"),
    ("ratings.dat", "1::2::3::4::5\n", 1, None, "expected 3 or 4 fields"),
    ("ratings.dat", "1::2:::3::4\n", 1, "rating", "non-numeric value ':3'"),
    ("ratings.dat", "1::2\t::3\n", 1, "item", "non-numeric item id '2\\t'"),
    ("ratings.dat", "1::2::3\n1::5::\xc3(\n", 2, "rating", "undecodable"),
    ("r.csv", "", None, None, "empty"),
    ("r.csv", "user,item\n", None, None, "no data rows"),
    ("r.csv", "user\n1\n", 1, None, "delimiter"),
    ("r.csv", "user,movie\n1,2\n", 1, "item", "no column 'item'; the columns are ['user', 'movie']"),
    ("r.csv", "user,item\n1,2\n1,2,3\n", 3, None, "expected 2 fields"),
    ("r.csv", "user,item,value\n1,2,\n", 2, "value", "non-numeric value ''"),
    ("r.csv", "user,item,value\n1,2,inf\n", 2, "value", "non-numeric value 'inf'"),
    ("r.csv", "user,item,timestamp\n1,2,yesterday\n", 2, "timestamp", "ISO-8601"),
    ("r.csv", "user,item,timestamp\n1,2,1969-12-31T23:59:59\n", 2, "timestamp", "outside 1970..9999"),
    ("r.csv", "user,item,timestamp\n1,2,9999-12-31T23:59:59-01:00\n", 2, "timestamp", "outside 1970..9999"),
    ("r.csv", "user,item\n1,2\n\n,3\n", 4, "user", "empty user id"),
    ("r.csv", 'user,item\n1,2\n"3,4\n', 3, None, "malformed CSV"),
    ("r.csv", 'user,item\n1,2\n"3"x,4\n', 3, None, "malformed CSV"),
    ("r.csv", "user,item\n1,2\n1,\xff\n", 3, "item", "undecodable"),
    ("r.tsv", "user\titem\n1\t2\n3\t4\r5\n", 3, "item", "non-numeric item id '4\\r5'"),
    ("r.xlsx", "user,item\n1,2\n", None, None, "--format"),
    ("r.parquet", "user,item\n1,2\n", None, None, "Parquet"),
]


@pytest.mark.parametrize(("name", "content", "line", "field", "message"), ERRORS)
def test_errors(tmp_path: Path, name: str, content: str, line: int | None, field: str | None, message: str) -> None:
    raw = content.encode("latin-1") if any(c in content for c in "\xff\xc3") else content.encode()
    path = write(tmp_path, name, raw)
    with pytest.raises(DataError) as e:
        load_interactions(path)
    assert (e.value.line, e.value.field, e.value.source) == (line, field, str(path)), str(e.value)
    assert message in str(e.value)


def test_missing_file_and_corrupt_gzip(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read file") as e:
        load_interactions(tmp_path / "u.data")
    assert e.value.source == str(tmp_path / "u.data")
    with pytest.raises(DataError, match="cannot read file"):
        load_interactions(tmp_path, fmt="ml-100k")
    path = write(tmp_path, "ratings.dat.gz", gzip.compress(b"1::2::3\n" * 50)[:-9])
    with pytest.raises(DataError, match="corrupt gzip") as e:
        load_interactions(path)
    assert e.value.source == str(path)


def test_renamed_columns_are_required(tmp_path: Path) -> None:
    path = write(tmp_path, "r.csv", "user,item\n1,2\n")
    assert len(load_interactions(path, columns=ColumnMapping())) == 1  # default names are optional
    with pytest.raises(DataError, match="no column 'rating'") as e:
        load_interactions(path, columns=ColumnMapping.parse("value=rating"))
    assert (e.value.line, e.value.field) == (1, "rating")
    pq_path = tmp_path / "r.parquet"
    pd.DataFrame({"user": [1], "item": [2], "extra": [3]}).to_parquet(pq_path)
    with pytest.raises(DataError, match=r"no column 'ts'; the columns are \['user', 'item', 'extra'\]") as e:
        load_interactions(pq_path, columns=ColumnMapping(timestamp="ts", value=None))
    assert (e.value.source, e.value.field) == (str(pq_path), "ts")


def test_parquet_errors_use_row_numbers(tmp_path: Path) -> None:
    path = tmp_path / "r.parquet"
    pd.DataFrame({"user": ["1", "2", None], "item": [1, 2, 3], "value": [1.0, float("nan"), 2.0]}).to_parquet(path)
    with pytest.raises(DataError, match="non-numeric value ''") as e:  # NaN means missing
        load_interactions(path)
    assert (e.value.line, e.value.field) == (2, "value")
    pd.DataFrame({"user": [1], "item": [[1, 2]]}).to_parquet(path)
    with pytest.raises(DataError, match="unsupported column type") as e:
        load_interactions(path)
    assert e.value.field == "item"
    pd.DataFrame({"user": pd.Series([], dtype="int64"), "item": pd.Series([], dtype="int64")}).to_parquet(path)
    with pytest.raises(DataError, match="no data rows"):
        load_interactions(path)


def test_bad_arguments_are_data_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "r.csv", "user,item\n1,2\n")
    with pytest.raises(DataError) as e:
        load_interactions(path, fmt="xml")
    assert e.value.field == "format"
    with pytest.raises(DataError) as e:
        load_interactions(path, delimiter="::")
    assert e.value.field == "delimiter"
    with pytest.raises(DataError) as e:
        load_interactions(path, duplicates="newest")
    assert e.value.field == "duplicates"
    tsv = write(tmp_path, "r2.csv", "user\titem\n1,5\t2\n")
    assert load_interactions(tsv, delimiter="\\t", string_ids=True)["user"].tolist() == ["1,5"]


# ---------------------------------------------------------------- column mapping


def test_column_mapping_parse() -> None:
    assert ColumnMapping.parse("user=userId, item=movieId,value=rating,timestamp=ts") == ColumnMapping(
        "userId", "movieId", "rating", "ts"
    )
    assert ColumnMapping.parse("value=,timestamp=") == ColumnMapping(value=None, timestamp=None)
    assert ColumnMapping.parse("") == ColumnMapping()
    assert ColumnMapping.parse("item=movieId") == ColumnMapping(item="movieId")


@pytest.mark.parametrize(
    "text", ["user", "rating=r", "user=a,user=b", "user=", "user=a,,item=b", "user=x,item=x", "item=value"]
)
def test_column_mapping_errors(text: str) -> None:
    with pytest.raises(DataError) as e:
        ColumnMapping.parse(text)
    assert e.value.field == "columns"


# ---------------------------------------------------------------- NCF split and side files


def write_ncf(tmp_path: Path, rating: str, negative: str) -> Path:
    write(tmp_path, "test.rating.tsv", rating)
    write(tmp_path, "test.negative.tsv", negative)
    return tmp_path


def test_ncf_split_golden(tmp_path: Path) -> None:
    test, neg = load_ncf_split(write_ncf(tmp_path, "1\t48\n2\t0017\n", "1\t5\t6\t7\n2\t8\t9\t010\n"))
    pd.testing.assert_frame_equal(
        test,
        pd.DataFrame(
            {
                "user": pd.Series(["1", "2"], dtype=object),
                "item": pd.Series(["48", "17"], dtype=object),
                "line": np.array([1, 2], dtype=np.int64),
            }
        ),
    )
    assert neg["user"].tolist() == ["1", "2"] and neg["line"].tolist() == [1, 2]
    assert neg["negatives"].tolist() == [["5", "6", "7"], ["8", "9", "10"]]
    assert all(type(x) is str for x in neg["negatives"][0])


@pytest.mark.parametrize(
    ("rating", "negative", "file", "line", "field", "message"),
    [
        ("1\t48\n2\n", "1\t5\n2\t6\n", "test.rating.tsv", 2, None, "expected 2 fields"),
        ("1\t48\n2\tx\n", "1\t5\n2\t6\n", "test.rating.tsv", 2, "item", "non-numeric item id"),
        ("1\t48\n1\t49\n", "1\t5\n2\t6\n", "test.rating.tsv", 2, "user", "appears twice"),
        ("", "1\t5\n", "test.rating.tsv", None, None, "empty"),
        ("1\t48\n2\t49\n", "1\t5\t6\n2\t6\n", "test.negative.tsv", 2, None, "expected 3 fields"),
        ("1\t48\n2\t49\n", "1\t5\t6\n2\t6\t\n", "test.negative.tsv", 2, "negative 2", "empty item id"),
        ("1\t48\n2\t49\n", "1\t5\t6\n3\t6\t7\n", "test.negative.tsv", 2, "user", "has user 2"),
        ("1\t48\n2\t49\n", "1\t5\t6\n", "test.negative.tsv", None, None, "1 rows"),
        ("1\t48\n2\t49\n", "1\n2\n", "test.negative.tsv", 1, None, "at least 2"),
        ("1\t48\n2\t49\n", "1\t\xff\n", "test.negative.tsv", 1, "negative 1", "undecodable"),
    ],
)
def test_ncf_split_errors(
    tmp_path: Path, rating: str, negative: str, file: str, line: int | None, field: str | None, message: str
) -> None:
    write(tmp_path, "test.rating.tsv", rating)
    write(tmp_path, "test.negative.tsv", negative.encode("latin-1"))
    with pytest.raises(DataError) as e:
        load_ncf_split(tmp_path)
    assert (e.value.source, e.value.line, e.value.field) == (str(tmp_path / file), line, field), str(e.value)
    assert message in str(e.value)


U_ITEM = (
    "1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    "02|Caf\xe9 (1999)|01-Jan-1999||http://y|1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|1\n"
)
MOVIES = "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Caf\xe9 (1999)::Drama\n3::No Genre (2000)::\n"


def test_item_titles_and_genres(tmp_path: Path) -> None:
    u_item = write(tmp_path, "u.item", U_ITEM.encode("latin-1"))
    movies = write(tmp_path, "movies.dat", MOVIES.encode("latin-1"))
    assert load_item_titles(u_item) == {"1": "Toy Story (1995)", "2": "Café (1999)"}
    assert load_item_genres(u_item) == {
        "1": ["Animation", "Children's", "Comedy"],
        "2": ["unknown", "Western"],
    }
    assert load_item_titles(movies) == {"1": "Toy Story (1995)", "2": "Café (1999)", "3": "No Genre (2000)"}
    assert load_item_genres(movies) == {"1": ["Animation", "Children's", "Comedy"], "2": ["Drama"], "3": []}
    # the public tags: genres and the release period (the catalog's years in bins of about equal item count)
    assert load_item_tags(movies) == {"1": ["Animation", "Children's", "Comedy", "released 1995-1998"],
                                      "2": ["Drama", "released 1999"], "3": ["released 2000"]}
    assert release_year("Toy Story (1995) ") == 1995 and release_year("Untitled") is None


@given(st.lists(st.one_of(st.none(), st.integers(1890, 2030)), max_size=60), st.integers(1, 20))
def test_period_tags_cover_each_year_once_in_at_most_bins_periods(years, bins) -> None:
    tags = period_tags(years, bins)
    assert [t is None for t in tags] == [y is None for y in years]
    assert len({t for t in tags if t}) <= bins
    for year, tag in zip(years, tags, strict=True):
        if year is not None:  # "released 1995" or "released 1983-1987", and the year is inside it
            lo, _, hi = tag.removeprefix("released ").partition("-")
            assert int(lo) <= year <= int(hi or lo)


@pytest.mark.parametrize(
    ("name", "content", "line", "field"),
    [
        ("u.item", U_ITEM + "3|x|||u|0|0\n", 3, None),
        ("u.item", U_ITEM.replace("|1|1|1|", "|1|2|1|"), 1, "Children's"),
        ("u.item", U_ITEM + U_ITEM.splitlines()[0] + "\n", 3, "item"),
        ("movies.dat", MOVIES + "x::T::Drama\n", 4, "item"),
        ("movies.dat", MOVIES + "4::Drama\n", 4, None),
        ("movies.dat", MOVIES + "4:: ::Drama\n", 4, "title"),
        ("movies.dat", "", None, None),
    ],
)
def test_item_file_errors(tmp_path: Path, name: str, content: str, line: int | None, field: str | None) -> None:
    path = write(tmp_path, name, content.encode("latin-1"))
    for load in (load_item_titles, load_item_genres, load_item_tags):
        with pytest.raises(DataError) as e:
            load(path)
        assert (e.value.source, e.value.line, e.value.field) == (str(path), line, field), str(e.value)
    with pytest.raises(DataError, match="cannot read"):
        load_item_titles(tmp_path / "nope.dat")


# ---------------------------------------------------------------- fuzzing

SPICE = [
    b"\t",
    b"::",
    b":",
    b",",
    b";",
    b"|",
    b'"',
    b"\n",
    b"\r",
    b"\r\n",
    b"\x00",
    b"\xff",
    b"\xc3",
    b"-",
    b".",
    b"e",
    b" ",
    b"\xef\xbb\xbf",
    b"0",
    b"9" * 13,
    b"nan",
    b"2000-01-01",
    b"\xe2\x82",
]


def render(fmt: str, rows: list[tuple[int, int, int, int]], header: bool) -> bytes:
    if fmt == "ml-100k":
        text = "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows)
    elif fmt == "ml-1m":
        text = "".join(f"{u}::{i}::{r}" + (f"::{t}" if header else "") + "\n" for u, i, r, t in rows)
    else:
        text = ("user,item,value,timestamp\n" if header else "user,item\n") + "".join(
            f"{u},{i},{r},{t}\n" if header else f"{u},{i}\n" for u, i, r, t in rows
        )
    return text.encode()


@st.composite
def fuzzed(draw: st.DrawFn, fmt: str) -> bytes:
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=120) | st.text(max_size=80).map(str.encode))
    row = st.tuples(st.integers(0, 300), st.integers(0, 300), st.integers(1, 5), st.integers(0, 10**10))
    data = bytearray(render(fmt, draw(st.lists(row, max_size=6)), draw(st.booleans())))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["delete", "insert", "dup_sep", "truncate_line", "drop_sep"]))
        pos = draw(st.integers(0, len(data)))
        if op == "delete":
            del data[pos : pos + draw(st.integers(1, 4))]
        elif op == "insert":
            data[pos:pos] = draw(st.sampled_from(SPICE) | st.binary(min_size=1, max_size=3))
        else:
            sep = {"ml-100k": b"\t", "ml-1m": b"::", "csv": b","}[fmt]
            at = data.find(b"\n" if op == "truncate_line" else sep, pos)
            if at >= 0 and op == "truncate_line":
                del data[max(pos, at - 3) : at]
            elif at >= 0:
                data[at : at + len(sep)] = sep * 2 if op == "dup_sep" else b""
    return bytes(data)


def fuzz_once(dirpath: Path, fmt: str, data: bytes, policy: DuplicatePolicy, string_ids: bool) -> None:
    name = {"ml-100k": "u.data", "ml-1m": "ratings.dat", "csv": "r.csv"}[fmt]
    path = dirpath / name
    path.write_bytes(data)
    try:
        df = load_interactions(path, duplicates=policy, string_ids=string_ids)
    except DataError as e:
        assert e.source == str(path)
        assert e.line is None or 1 <= e.line <= data.count(b"\n") + 1
        return
    check_schema(df)
    assert df["line"].max() <= data.count(b"\n") + 1
    if fmt != "csv":
        assert df["value"].between(1, 5).all()


@pytest.mark.parametrize("fmt", ["ml-100k", "ml-1m", "csv"])
def test_fuzz_parsers_raise_only_data_errors(tmp_path_factory: pytest.TempPathFactory, fmt: str) -> None:
    dirpath = tmp_path_factory.mktemp(f"fuzz-{fmt}")

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=fuzzed(fmt), policy=st.sampled_from(list(DuplicatePolicy)), string_ids=st.booleans())
    def run(data: bytes, policy: DuplicatePolicy, string_ids: bool) -> None:
        fuzz_once(dirpath, fmt, data, policy, string_ids)

    run()


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**9), st.integers(1, 5), st.integers(0, MAX_TIMESTAMP))
def test_fuzz_valid_rows_round_trip(user: int, rating: int, ts: int) -> None:
    """A valid row always parses to exactly its values (checks the vectorised conversions)."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "u.data"
        path.write_text(f"{user:08d}\t{user + 1}\t{rating}\t{ts}\n")
        df = load_interactions(path)
    assert df.iloc[0].tolist() == [str(user), str(user + 1), float(rating), ts, 1]


# ---------------------------------------------------------------- real data


@pytest.mark.data
def test_real_ml100k(data_dir: Path) -> None:
    df = load_interactions(need(data_dir / "movielens" / "ml-100k" / "u.data"))
    assert (len(df), df["user"].nunique(), df["item"].nunique()) == (100000, 943, 1682)
    check_schema(df)
    assert df["timestamp"].notna().all()


@pytest.mark.data
def test_real_ml1m_no_timestamp(data_dir: Path) -> None:
    path = need(data_dir / "movielens" / "ml-1m" / "derived" / "ratings_no_timestamp.dat.gz")
    df = load_interactions(path)
    assert (len(df), df["user"].nunique(), df["item"].nunique()) == (1000209, 6040, 3706)
    assert df["timestamp"].isna().all()
    check_schema(df)


@pytest.mark.data
def test_real_ncf_split(data_dir: Path) -> None:
    ncf = need(data_dir / "movielens" / "ml-1m" / "ncf")
    need(ncf / "test.negative.tsv")
    test, neg = load_ncf_split(ncf)
    assert len(test) == len(neg) == 6040
    assert test["user"].tolist() == [str(u) for u in range(1, 6041)]
    assert (neg["negatives"].map(len) == 99).all()
    assert test.iloc[0].tolist() == ["1", "48", 1]


@pytest.mark.data
def test_real_titles(data_dir: Path) -> None:
    u_item = need(data_dir / "movielens" / "ml-100k" / "u.item")
    movies = need(data_dir / "movielens" / "ml-1m" / "movies.dat")
    titles_100k, titles_1m = load_item_titles(u_item), load_item_titles(movies)
    assert (len(titles_100k), len(titles_1m)) == (1682, 3883)
    assert titles_100k["1"] == titles_1m["1"] == "Toy Story (1995)"
    assert titles_1m["73"] == "Misérables, Les (1995)"
    assert load_item_genres(movies)["1"] == load_item_genres(u_item)["1"] == ["Animation", "Children's", "Comedy"]


CELL = st.text(st.characters(blacklist_characters=',"\n\r', blacklist_categories=["Cs"]), max_size=12)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cells=st.lists(st.tuples(CELL, CELL, CELL, CELL | st.datetimes().map(str)), min_size=1, max_size=4))
def test_fuzz_csv_cells(tmp_path: Path, cells: list[tuple[str, str, str, str]]) -> None:
    """Arbitrary cell text (ids, values, ISO or garbage timestamps) gives a valid frame or a DataError."""
    text = "user,item,value,timestamp\n" + "".join(",".join(row) + "\n" for row in cells)
    fuzz_once(tmp_path, "csv", text.encode(), DuplicatePolicy.LAST, string_ids=True)
