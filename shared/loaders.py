"""Loaders that turn interaction files into the raw interaction frame (see :mod:`shared.schema`).

Formats: MovieLens ``u.data`` (ml-100k), ``ratings.dat`` (ml-1m, with or without timestamps),
generic CSV and Parquet.  Every problem with a file's content is a :class:`DataError` naming the
file, the 1-based line and the field; when a file has several problems the lowest line is reported.
Blank lines are skipped (but counted).  Parsing is vectorised with pyarrow, so a 1M-line file
loads in about a second.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shared.errors import DataError
from shared.schema import COLUMNS, ITEM, LINE, TIMESTAMP, USER, VALUE, DuplicatePolicy

FORMATS = ("auto", "ml-100k", "ml-1m", "csv", "parquet")
MAX_TIMESTAMP = 253402300799  # 9999-12-31T23:59:59Z
_ML_FIELDS = ("user", "item", "rating", "timestamp")
_INT, _NEG = "^[0-9]+$", "^-[0-9]+$"
_FLOAT = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_SNIFF = (",", "\t", ";", "|")
PathArg = str | PathLike[str]
Names = Callable[[int], str | None]


@dataclass(frozen=True)
class ColumnMapping:
    """Source column names for the generic CSV / Parquet formats (``None``: column absent)."""

    user: str = "user"
    item: str = "item"
    value: str | None = "value"
    timestamp: str | None = "timestamp"

    def __post_init__(self) -> None:
        if not self.user or not self.item:
            raise DataError("the user and item columns must be named", field="columns")
        names = [n for n in (self.user, self.item, self.value, self.timestamp) if n]
        if len(set(names)) != len(names):
            raise DataError(f"two keys map to the same column in {names}", field="columns")

    @classmethod
    def parse(cls, text: str) -> ColumnMapping:
        """Parse ``"user=userId,item=movieId,value=rating,timestamp=ts"``; ``value=`` means absent."""
        found: dict[str, str | None] = {}
        for part in text.split(",") if text.strip() else []:
            key, eq, name = (s.strip() for s in part.partition("="))
            if not eq or key not in ("user", "item", "value", "timestamp") or key in found:
                raise DataError(
                    f"bad column mapping {part.strip()!r}: expected KEY=COLUMN, each KEY "
                    "once, KEY one of user, item, value, timestamp",
                    field="columns",
                )
            found[key] = name or None
        return cls(**found)  # type: ignore[arg-type]


class _Checker:
    """Collects the first bad row of each check; raises the lowest one."""

    def __init__(self, source: str, lines: np.ndarray) -> None:
        self.source, self.lines = source, lines
        self.errors: list[tuple] = []

    def flag(self, mask: np.ndarray, pos: int, field: str | None, message: Callable[[int], str]) -> None:
        idx = np.flatnonzero(mask)
        if idx.size:
            self.errors.append((int(idx[0]), pos, len(self.errors), field, message))

    def first_row(self) -> int:
        return min(self.errors)[0] if self.errors else len(self.lines)

    def error(self) -> DataError | None:
        if not self.errors:
            return None
        row, _, _, field, message = min(self.errors)
        return DataError(message(row), source=self.source, line=int(self.lines[row]), field=field)


def _read(path: PathArg) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise DataError(f"cannot read file: {e.strerror or e}", source=str(path)) from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"corrupt gzip data: {e}", source=str(path)) from None
    return data


def _decode(data: bytes, source: str, sep: str | None, names: Names) -> tuple[str, DataError | None]:
    """UTF-8 text up to the first undecodable line, and the error for that line."""
    try:
        text, cut = data.decode("utf-8"), None
    except UnicodeDecodeError as e:
        start = data.rfind(b"\n", 0, e.start) + 1
        field = names(data[start : e.start].count(sep.encode())) if sep else None
        cut = DataError(
            f"undecodable bytes (not UTF-8) at byte {e.start - start + 1} of the line",
            source=source,
            line=data.count(b"\n", 0, start) + 1,
            field=field,
        )
        text = data[:start].decode("utf-8")
    return text.removeprefix("\ufeff").replace("\r\n", "\n"), cut


def _lines(text: str) -> tuple[pa.Array, np.ndarray]:
    """Non-blank lines and their 1-based numbers."""
    lines = pc.split_pattern(pa.array([text], pa.large_string()), "\n").flatten()
    keep = pc.not_equal(pc.utf8_trim(lines, " \r"), "").to_numpy(zero_copy_only=False)
    return lines.filter(pa.array(keep)), np.flatnonzero(keep).astype(np.int64) + 1


Split = tuple[list[pa.Array], np.ndarray, DataError | None]


def _split(
    lines: pa.Array,
    lineno: np.ndarray,
    sep: str,
    nfields: int | None,
    source: str,
    cut: DataError | None,
    allowed: tuple[int, ...] = (),
) -> Split:
    """Split lines into string columns, stopping before the first line with another field count.

    ``nfields=None``: the first line's count, which must be one of ``allowed`` if given.
    """
    counts = pc.count_substring(lines, sep).to_numpy(zero_copy_only=False) + 1
    if nfields is None and len(counts):
        nfields = int(counts[0]) if not allowed or counts[0] in allowed else -1
    bad = np.flatnonzero(counts != nfields)
    if bad.size:
        b = int(bad[0])
        want = " or ".join(map(str, allowed)) if nfields == -1 else nfields
        cut = DataError(
            f"expected {want} fields separated by {sep!r}, found {counts[b]}",
            source=source,
            line=int(lineno[b]),
        )
        lines, lineno = lines.slice(0, b), lineno[:b]
    parts = pc.split_pattern(lines, sep)
    return [pc.list_element(parts, j) for j in range(max(nfields or 0, 0))], lineno, cut


def _ids(chk: _Checker, raw: pa.Array, pos: int, field: str, role: str, string_ids: bool) -> pa.Array:
    chk.flag(_np(pc.equal(raw, "")), pos, field, lambda r: f"empty {role} id")
    if string_ids:
        return raw
    chk.flag(
        ~_match(raw, _INT),
        pos,
        field,
        lambda r: (
            f"non-numeric {role} id {raw[r].as_py()!r} (ids must be integers; use --string-ids to keep other ids)"
        ),
    )
    return pc.replace_substring_regex(raw, "^0+([0-9])", r"\1")


def _values(chk: _Checker, raw: pa.Array, pos: int, field: str, rating: bool) -> np.ndarray:
    ok = _match(raw, _FLOAT)
    chk.flag(~ok, pos, field, lambda r: f"non-numeric value {raw[r].as_py()!r}")
    vals = pc.cast(pc.if_else(pa.array(ok), raw, "0"), pa.float64()).to_numpy(zero_copy_only=False)
    chk.flag(~np.isfinite(vals), pos, field, lambda r: f"non-finite value {raw[r].as_py()!r}")
    if rating:
        out = np.isfinite(vals) & ((vals < 1) | (vals > 5) | (vals != np.floor(vals)))
        chk.flag(out, pos, field, lambda r: f"rating {raw[r].as_py()!r} is not an integer 1..5")
    return vals


def _iso(text: str) -> int | str:
    """Unix seconds of an ISO-8601 string (UTC when naive), or an error message."""
    try:
        dt = datetime.fromisoformat(text)
        secs = math.floor((dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp())
    except (ValueError, OverflowError):
        return f"bad timestamp {text!r}: expected unix seconds or an ISO-8601 date"
    return secs if 0 <= secs <= MAX_TIMESTAMP else f"timestamp {text!r} is outside 1970..9999"


def _timestamps(chk: _Checker, raw: pa.Array, pos: int, field: str, iso: bool) -> pd.arrays.IntegerArray:
    empty, digits = _np(pc.equal(raw, "")), _match(raw, _INT)
    big = digits & _np(pc.greater(pc.utf8_length(pc.replace_substring_regex(raw, "^0+", "")), 12))
    secs = np.array(pc.cast(pc.if_else(pa.array(digits & ~big), raw, "0"), pa.int64()), np.int64)
    chk.flag(empty & (not iso), pos, field, lambda r: "missing timestamp")
    chk.flag(
        big | (secs > MAX_TIMESTAMP),
        pos,
        field,
        lambda r: f"timestamp {raw[r].as_py()!r} is beyond the year 9999",
    )
    chk.flag(_match(raw, _NEG), pos, field, lambda r: f"negative timestamp {raw[r].as_py()!r}")
    other = np.flatnonzero(~(empty | digits | _match(raw, _NEG)))
    texts = raw.take(pa.array(other, pa.int64())).to_pylist()
    parsed = {t: _iso(t) if iso else f"bad timestamp {t!r}: expected unix seconds" for t in set(texts)}
    bad = np.zeros(len(raw), bool)
    for r, t in zip(other, texts, strict=True):
        if isinstance(p := parsed[t], str):
            bad[r] = True
        else:
            secs[r] = p
    chk.flag(bad, pos, field, lambda r: parsed[raw[r].as_py()])
    return pd.arrays.IntegerArray(secs.astype(np.int64), empty.copy())


def _np(arr: pa.Array) -> np.ndarray:
    return arr.to_numpy(zero_copy_only=False).astype(bool)


def _match(raw: pa.Array, pattern: str) -> np.ndarray:
    return _np(pc.match_substring_regex(raw, pattern))


def _sniff(header: str, source: str) -> str:
    counts = [header.count(c) for c in _SNIFF]
    if max(counts) == 0:
        raise DataError(f"cannot detect the delimiter (tried {_SNIFF}); give one explicitly", source=source, line=1)
    return _SNIFF[counts.index(max(counts))]


Table = tuple[list[str], dict[str, pa.Array], np.ndarray, DataError | None]


def _csv_table(data: bytes, source: str, delimiter: str | None) -> Table:
    """Header, string columns by name, line numbers and cut-off error of a CSV file."""
    head = data.removeprefix(b"\xef\xbb\xbf").lstrip(b" \r\n").split(b"\n", 1)[0].decode("utf-8", "replace")
    if not head:
        raise DataError("no data rows (the file is empty)", source=source)
    sep = delimiter or _sniff(head, source)
    names = [h.strip() for h in head.rstrip("\r").split(sep)]
    text, cut = _decode(data, source, sep, lambda j: names[j] if j < len(names) else None)
    if '"' not in text:
        lines, lineno = _lines(text)
        if not len(lines):
            raise cut or DataError("no data rows (the file is empty)", source=source)
        cols, lineno, cut = _split(lines.slice(1), lineno[1:], sep, len(names), source, cut)
    else:
        reader = csv.reader(io.StringIO(text, newline="\n"), delimiter=sep, strict=True)
        rows, numbers, header, prev = [], [], None, 0
        try:
            for row in reader:
                start, prev = prev + 1, reader.line_num
                if not row or (len(row) == 1 and not row[0].strip(" \r")):
                    continue
                if header is None:
                    names = header = [h.strip() for h in row]
                elif len(row) != len(header):
                    cut = DataError(
                        f"expected {len(header)} fields separated by {sep!r}, found {len(row)}",
                        source=source,
                        line=start,
                    )
                    break
                else:
                    rows.append(row)
                    numbers.append(start)
        except csv.Error as e:
            cut = DataError(f"malformed CSV: {e}", source=source, line=reader.line_num)
        if header is None:
            raise cut or DataError("no data rows (the file is empty)", source=source)
        cols = [pa.array([r[j] for r in rows], pa.string()) for j in range(len(names))]
        lineno = np.array(numbers, np.int64)
    by_name: dict[str, pa.Array] = {}
    for name, col in zip(names, cols, strict=True):
        by_name.setdefault(name, col)
    return names, by_name, lineno, cut


def _parquet_table(path: PathArg, source: str, wanted: set[str | None]) -> Table:
    """Like :func:`_csv_table`, reading only the wanted columns; a row's line is its number."""
    try:
        pf = pq.ParquetFile(path)
        header = pf.schema_arrow.names
        names = [n for n in header if n in wanted]
        table = pf.read(columns=names)
    except OSError as e:
        raise DataError(f"cannot read file: {e.strerror or e}", source=source) from None
    except (pa.ArrowException, ValueError) as e:
        raise DataError(f"not a readable Parquet file: {e}", source=source) from None
    cols = {n: _arrow_strings(table.column(n), source, n) for n in names}
    return header, cols, np.arange(1, table.num_rows + 1, dtype=np.int64), None


def _arrow_strings(col: pa.ChunkedArray, source: str, field: str) -> pa.Array:
    """A Parquet column as strings ("" for null), integral floats written as integers."""
    arr = col.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    try:
        if pa.types.is_floating(arr.type):
            arr = pc.if_else(pc.is_nan(arr), pa.scalar(None, arr.type), arr)
            whole = pc.and_(pc.equal(pc.floor(arr), arr), pc.less(pc.abs(arr), 2.0**53))
            ints = pc.cast(pc.if_else(whole, arr, 0.0), pa.int64()).cast(pa.string())
            arr = pc.if_else(whole, ints, arr.cast(pa.string()))
        elif pa.types.is_timestamp(arr.type) or pa.types.is_date(arr.type):
            arr = arr.cast(pa.timestamp("s"), safe=False).cast(pa.int64())
        return arr.cast(pa.string()).fill_null("")
    except pa.ArrowException:
        raise DataError(f"unsupported column type {arr.type}", source=source, field=field) from None


def _detect(path: PathArg) -> str:
    name = Path(path).name.lower()
    if name == "u.data":
        return "ml-100k"
    if "ratings" in name and name.endswith((".dat", ".dat.gz")):
        return "ml-1m"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".csv", ".tsv", ".csv.gz", ".tsv.gz")):
        return "csv"
    raise DataError(
        f"cannot tell the file format from its name; give one with --format ({', '.join(FORMATS[1:])})",
        source=str(path),
    )


def load_interactions(
    path: PathArg,
    *,
    fmt: str = "auto",
    columns: ColumnMapping | None = None,
    duplicates: DuplicatePolicy | str = DuplicatePolicy.ERROR,
    string_ids: bool = False,
    delimiter: str | None = None,
) -> pd.DataFrame:
    """Load an interaction file as a raw interaction frame sorted by line.

    CSV/Parquet value and timestamp columns under their default names are optional (absent: 1.0
    and <NA>); renamed ones are required.  Integer ids are canonicalised ("0042" -> "42");
    ``string_ids=True`` keeps any non-empty id as written.  Duplicates FIRST/LAST order by
    timestamp (<NA> earliest), then line; MAX keeps the highest value, then the earliest line.
    """
    source = str(path)
    try:
        policy = DuplicatePolicy(duplicates)
    except ValueError:
        raise DataError(f"unknown duplicate policy {duplicates!r}", field="duplicates") from None
    fmt = _detect(path) if fmt == "auto" else fmt
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}", field="format")
    delimiter = "\t" if delimiter in ("\\t", "tab") else delimiter
    if delimiter is not None and (len(delimiter) != 1 or delimiter in '"\r\n'):
        raise DataError(f"bad delimiter {delimiter!r}: must be one character", field="delimiter")
    if fmt in ("ml-100k", "ml-1m"):
        sep = "\t" if fmt == "ml-100k" else "::"
        text, cut = _decode(_read(path), source, sep, lambda j: _ML_FIELDS[j] if j < 4 else None)
        lines, lineno = _lines(text)
        nf, allowed = (4, ()) if fmt == "ml-100k" else (None, (3, 4))
        cols, lineno, cut = _split(lines, lineno, sep, nf, source, cut, allowed)
        full: list[pa.Array | None] = [*cols, None, None, None, None]
        return _frame(source, full[:4], lineno, cut, list(_ML_FIELDS), True, policy, string_ids)
    mapping = columns or ColumnMapping()
    wanted = (mapping.user, mapping.item, mapping.value, mapping.timestamp)
    if fmt == "csv":
        header, table, lineno, cut = _csv_table(_read(path), source, delimiter)
    else:
        header, table, lineno, cut = _parquet_table(path, source, set(wanted))
    for pos, want in enumerate(wanted):
        if want is not None and want not in table and want != (None, None, "value", "timestamp")[pos]:
            raise DataError(
                f"no column {want!r}; the columns are {header}",
                source=source,
                line=1 if fmt == "csv" else None,
                field=want,
            )
    present = [w if w in table else "" for w in wanted]
    cols = [pc.utf8_trim_whitespace(table[w]) if w else None for w in present]
    return _frame(source, cols, lineno, cut, present, False, policy, string_ids)


def _frame(
    source: str,
    cols: list[pa.Array | None],
    lineno: np.ndarray,
    cut: DataError | None,
    names: list[str],
    movielens: bool,
    policy: DuplicatePolicy,
    string_ids: bool,
) -> pd.DataFrame:
    """Validate the string columns, check duplicates and build the schema frame."""
    chk, n = _Checker(source, lineno), len(lineno)
    if n == 0:
        raise cut or DataError("no data rows (the file is empty)", source=source)
    user, item, value, ts = cols
    user = _ids(chk, user, 0, names[0], "user", string_ids)
    item = _ids(chk, item, 1, names[1], "item", string_ids)
    frame = pd.DataFrame(
        {
            USER: pd.Series(user.to_numpy(zero_copy_only=False), dtype=object),
            ITEM: pd.Series(item.to_numpy(zero_copy_only=False), dtype=object),
            VALUE: np.ones(n) if value is None else _values(chk, value, 2, names[2], movielens),
            TIMESTAMP: (
                pd.arrays.IntegerArray(np.zeros(n, np.int64), np.ones(n, bool))
                if ts is None
                else _timestamps(chk, ts, 3, names[3], not movielens)
            ),
            LINE: lineno,
        }
    )[list(COLUMNS)]
    if policy is DuplicatePolicy.ERROR:
        ok = frame.iloc[: chk.first_row()]
        dup = ok.duplicated([USER, ITEM]).to_numpy()
        if dup.any():
            later = ok.iloc[int(np.argmax(dup))]
            first = ok[(ok[USER] == later[USER]) & (ok[ITEM] == later[ITEM])][LINE].iloc[0]
            raise DataError(
                f"duplicate interaction (user {later[USER]}, item {later[ITEM]}) also on line {first}",
                source=source,
                line=int(later[LINE]),
                field=names[1],
            )
    if (err := chk.error() or cut) is not None:
        raise err
    if policy is DuplicatePolicy.ERROR:
        return frame
    if policy is DuplicatePolicy.MAX:
        frame = frame.sort_values([VALUE, LINE], ascending=[False, True], kind="stable")
    else:
        frame = frame.sort_values([TIMESTAMP, LINE], na_position="first", kind="stable")
    keep = "last" if policy is DuplicatePolicy.LAST else "first"
    return frame.drop_duplicates([USER, ITEM], keep=keep).sort_values(LINE).reset_index(drop=True)
