"""A node's prepared dataset read straight from Parquet into index arrays (pyarrow + NumPy, no pandas).

This is the deployment node's data path (``flower-supernode --node-config data-path=...``): the files are
checked against the manifest, pseudonyms are read as fixed-width bytes (32 hex characters, no Python string per
row), users are numbered in sorted-pseudonym order and items by catalog row, exactly as
:meth:`shared.interactions.InteractionData.from_tables` numbers them (a test keeps the two equal). Keeping pandas
off the node saves about 40 MB of imports and the DataFrames of string columns on an edge device.
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shared import splits
from shared.errors import DataError
from shared.interactions import InteractionData, NodeDataset
from shared.prepared_files import FILES, N_NEGATIVES, read_manifest
from shared.pseudonyms import PSEUDONYM_HEX

WIDTH = PSEUDONYM_HEX
_NUMBERS = {pa.int8(): np.int8, pa.int16(): np.int16, pa.int32(): np.int32, pa.int64(): np.int64,
            pa.float32(): np.float32, pa.float64(): np.float64}


def _pseudonyms(column: pa.ChunkedArray | pa.Array, source: Path, field: str) -> np.ndarray:
    """``column`` as an ``S32`` array; a DataError naming the file and field for nulls or other widths."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if arr.null_count:
        raise DataError("missing pseudonym", source=str(source), field=field)
    lengths = pc.binary_length(arr)
    if len(arr) and (pc.min(lengths).as_py() != WIDTH or pc.max(lengths).as_py() != WIDTH):
        bad = int(np.flatnonzero(_numbers(lengths, source, field) != WIDTH)[0])
        raise DataError("not a pseudonym", source=str(source), line=bad + 1, field=field)
    fixed = pc.cast(arr, pa.binary(WIDTH))
    return np.frombuffer(fixed.buffers()[1], dtype=f"S{WIDTH}", count=len(fixed), offset=fixed.offset * WIDTH)


def _numbers(column: pa.ChunkedArray | pa.Array, source: Path, field: str) -> np.ndarray:
    """A numeric column as a NumPy view of its buffer (``to_numpy``/``np.asarray`` would import pandas, ~40 MB)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if arr.null_count:
        raise DataError("missing value", source=str(source), field=field)
    dtype = _NUMBERS.get(arr.type)
    if dtype is None:
        raise DataError(f"expected numbers, got {arr.type}", source=str(source), field=field)
    if not len(arr):
        return np.zeros(0, dtype)
    return np.frombuffer(arr.buffers()[1], dtype=dtype, count=len(arr), offset=arr.offset * np.dtype(dtype).itemsize)


def _labels(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, list[str]]:
    """(codes, distinct values) of a string column: code ``i`` is ``values[i]``."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    encoded = pc.dictionary_encode(arr)
    values = encoded.dictionary  # decoded from its buffers: to_pylist() would import pandas (~40 MB)
    width = np.int64 if pa.types.is_large_string(values.type) else np.int32
    offsets = np.frombuffer(values.buffers()[1], dtype=width, count=len(values) + 1,
                            offset=values.offset * np.dtype(width).itemsize) if len(values) else np.zeros(1, width)
    data = values.buffers()[2].to_pybytes() if values.buffers()[2] is not None else b""
    return _numbers(encoded.indices, Path(), "codes"), [data[a:b].decode() for a, b in itertools.pairwise(offsets)]


def _is(codes: tuple[np.ndarray, list[str]], value: str) -> np.ndarray:
    """Boolean mask of the rows labelled ``value``."""
    indices, values = codes
    return indices == values.index(value) if value in values else np.zeros(len(indices), bool)


def _read(path: Path, columns: list[str]) -> pa.Table:
    try:
        with pq.ParquetFile(path) as file:  # not pq.read_table: that imports pyarrow.dataset (~50 MB resident)
            return file.read(columns=columns, use_threads=False)
    except (OSError, KeyError, pa.ArrowException) as exc:
        raise DataError(f"cannot read dataset file ({exc})", source=str(path)) from None


def read_catalog(path: Path, expected_hash: str | None = None) -> tuple[np.ndarray, str]:
    """(sorted ``S32`` item pseudonyms, content hash) of a catalog file; the same checks as ``ItemCatalog.load``."""
    items = _pseudonyms(_read(path, ["item"]).column("item"), path, "item")
    if len(items) > 1 and not bool(np.all(items[1:] > items[:-1])):
        raise DataError("catalog items must be sorted and unique", source=str(path), field="item")
    digest = hashlib.sha256(b"\n".join(items.tolist())).hexdigest()
    if expected_hash is not None and digest != expected_hash:
        raise DataError(f"catalog hash {digest[:16]}… differs from the expected {expected_hash[:16]}…",
                        source=str(path))
    return items, digest


def _rows(sorted_keys: np.ndarray, keys: np.ndarray, what: str, source: Path, field: str) -> np.ndarray:
    """Index of every key in ``sorted_keys``; a DataError naming the first one that is not there."""
    idx = np.searchsorted(sorted_keys, keys)
    found = idx < len(sorted_keys)
    found[found] = sorted_keys[idx[found]] == keys[found]
    if not found.all():
        raise DataError(f"{what}", source=str(source), line=int(np.flatnonzero(~found)[0]) + 1, field=field)
    return idx.astype(np.int64)


def read_node_dataset(path: str | Path, *, verify: bool = True) -> NodeDataset:
    """Read a prepared dataset directory into the node's index arrays (all of its users)."""
    path = Path(path)
    pa.set_memory_pool(pa.system_memory_pool())  # Arrow's default jemalloc pool keeps ~30 MB of freed pages
    manifest = read_manifest(path, verify=verify)
    catalog, catalog_hash = read_catalog(path / FILES[2], manifest.get("catalog_hash"))
    source = path / FILES[0]
    table = _read(source, ["user", "item", "value", "split"])
    users = _pseudonyms(table.column("user"), source, "user")
    user_ids, user_codes = np.unique(users, return_inverse=True)
    items = _rows(catalog, _pseudonyms(table.column("item"), source, "item"),
                  "interaction with an item missing from the catalog", source, "item")
    values = _numbers(table.column("value"), source, "value").astype(np.float32)
    split = _labels(table.column("split"))
    n_users = len(user_ids)
    is_train = _is(split, splits.TRAIN)
    order = np.lexsort((items[is_train], user_codes[is_train]))
    indptr = np.r_[0, np.cumsum(np.bincount(user_codes[is_train], minlength=n_users))]

    def held(role: str) -> tuple[np.ndarray, np.ndarray]:
        mask = _is(split, role)
        item, value = np.full(n_users, -1, np.int64), np.zeros(n_users, np.float32)
        item[user_codes[mask]], value[user_codes[mask]] = items[mask], values[mask]
        return item, value

    val_item, val_value = held(splits.VAL)
    test_item, test_value = held(splits.TEST)
    negatives = _negatives(path / FILES[1], user_ids, catalog)
    return NodeDataset(
        InteractionData(
            user_ids=np.array([u.decode("ascii") for u in user_ids.tolist()], dtype=object), n_items=len(catalog),
            train_indptr=indptr, train_items=items[is_train][order], train_values=values[is_train][order],
            val_item=val_item, val_value=val_value, test_item=test_item, test_value=test_value,
            val_negatives=negatives[splits.VAL], test_negatives=negatives[splits.TEST]),
        tuple(manifest["value_range"]), catalog_hash)


def _negatives(source: Path, user_ids: np.ndarray, catalog: np.ndarray) -> dict[str, np.ndarray]:
    """(n_users, 99) catalog rows of each user's sampled negatives per role, -1 padding."""
    table = _read(source, ["user", "role", "items"])
    rows = _rows(user_ids, _pseudonyms(table.column("user"), source, "user"),
                 "negatives name a user with no interactions", source, "user")
    roles = _labels(table.column("role"))
    lists = table.column("items").combine_chunks()
    if lists.null_count:
        raise DataError("missing negatives list", source=str(source), field="items")
    lengths = np.diff(_numbers(lists.offsets, source, "items")).astype(np.int64)
    if len(lengths) and lengths.max() > N_NEGATIVES:
        raise DataError(f"more than {N_NEGATIVES} negatives for a user", source=str(source), field="items")
    flat = _rows(catalog, _pseudonyms(pc.list_flatten(lists), source, "items"),
                 "negative item missing from the catalog", source, "items")
    owner = np.repeat(np.arange(len(lengths)), lengths)
    position = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out = {}
    for role in (splits.VAL, splits.TEST):
        negs = np.full((len(user_ids), N_NEGATIVES), -1, np.int64)
        mine = _is(roles, role)[owner]
        negs[rows[owner[mine]], position[mine]] = flat[mine]
        out[role] = negs
    return out
