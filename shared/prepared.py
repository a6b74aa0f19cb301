"""Pseudonymized, split datasets: build them from raw frames, write and read them.

A prepared dataset directory holds::

    manifest.json          format, counts, split protocol, catalog hash, file hashes
    interactions.parquet   user, item (pseudonyms), value, timestamp, split
    negatives.parquet      user, role (val|test), items (list of item pseudonyms)
    catalog.parquet        sorted item pseudonyms (row = embedding index)
    item_genres.parquet    optional public item metadata: item, genres (list)

No raw id is ever written here; raw ids survive only in the encrypted
re-identification map, which the owner keeps (see :mod:`shared.reidentify`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from shared import schema, splits
from shared.atomic import atomic_directory
from shared.catalog import ItemCatalog
from shared.errors import DataError
from shared.keys import KeySet
from shared.prepared_files import FILES, FORMAT, N_NEGATIVES, read_manifest, sha256
from shared.pseudonyms import pseudonymize_column
from shared.reidentify import ReidentificationMap

__all__ = ["FILES", "FORMAT", "N_NEGATIVES", "PreparedTables", "genre_matrix", "prepare", "read", "write"]


@dataclass
class PreparedTables:
    """The content of a prepared dataset, in memory."""

    interactions: pd.DataFrame  # user, item, value, timestamp, split
    negatives: pd.DataFrame  # user, role, items
    catalog: ItemCatalog
    manifest: dict[str, Any]
    item_genres: pd.DataFrame | None = None  # item, genres
    reid: ReidentificationMap | None = field(default=None, repr=False)


def prepare(
    raw: pd.DataFrame,
    keys: KeySet,
    *,
    seed: int,
    source: dict[str, Any] | None = None,
    fixed_test: pd.DataFrame | None = None,
    fixed_negatives: pd.DataFrame | None = None,
    catalog_items: list[str] | None = None,
    item_genres: dict[str, list[str]] | None = None,
) -> PreparedTables:
    """Pseudonymize and split a validated raw interaction frame.

    ``fixed_test``/``fixed_negatives`` (raw ids, from :func:`shared.movielens.load_ncf_split`)
    impose a published test split. ``catalog_items`` (raw item ids) fixes the
    catalog; by default it is every item in ``raw``.
    """
    if raw.empty:
        raise DataError("no interactions to prepare")
    users, user_map = pseudonymize_column(keys.user, raw[schema.USER])
    items, item_map = pseudonymize_column(keys.item, raw[schema.ITEM])
    if catalog_items is not None:
        _, cat_map = pseudonymize_column(keys.item, pd.Series(catalog_items, dtype=object))
        item_map = {**cat_map, **item_map}
        catalog = ItemCatalog.from_pseudonyms(cat_map.values())
        unknown = ~items.isin(set(catalog.items))
        if unknown.any():
            row = raw[unknown].iloc[0]
            line = int(row[schema.LINE])
            raise DataError(f"item {row[schema.ITEM]!r} is not in the catalog", line=line, field="item")
    else:
        catalog = ItemCatalog.from_pseudonyms(items)
    frame = pd.DataFrame(
        {
            "user": users,
            "item": items,
            "value": raw[schema.VALUE].astype(np.float32),
            "timestamp": raw[schema.TIMESTAMP].astype("Int64"),
        }
    )
    pseudo_test = None
    if fixed_test is not None:
        pseudo_test = pd.DataFrame(
            {
                "user": fixed_test[schema.USER].map(user_map),
                "item": fixed_test[schema.ITEM].map(item_map),
                schema.LINE: fixed_test[schema.LINE],
            }
        )
        missing = pseudo_test["user"].isna() | pseudo_test["item"].isna()
        if missing.any():
            line = int(fixed_test[missing].iloc[0][schema.LINE])
            raise DataError("test pair names a user or item absent from the ratings", line=line, field="item")
    frame["split"] = splits.leave_latest_out(frame, seed=seed, fixed_test=pseudo_test)
    negatives = _negatives(frame, catalog, seed=seed, fixed=fixed_negatives, user_map=user_map, item_map=item_map)
    genres = None
    if item_genres:
        rows = [(item_map[raw_id], g) for raw_id, g in item_genres.items() if raw_id in item_map]
        rows = [r for r in rows if r[0] in catalog._index]
        genres = pd.DataFrame(sorted(rows), columns=["item", "genres"])
    manifest = {
        "format": FORMAT,
        "source": source or {},
        "n_users": int(frame["user"].nunique()),
        "n_items": len(catalog),
        "n_interactions": len(frame),
        "has_timestamps": bool(frame["timestamp"].notna().any()),
        "value_range": [float(frame["value"].min()), float(frame["value"].max())],
        "catalog_hash": catalog.content_hash,
        "split": {
            "protocol": "fixed-test" if fixed_test is not None else "leave-latest-out",
            "seed": seed,
            "negatives": N_NEGATIVES,
            "fixed_negatives": fixed_negatives is not None,
            "counts": {k: int(v) for k, v in frame["split"].value_counts().items()},
        },
    }
    reid = ReidentificationMap(users={v: k for k, v in user_map.items()}, items={v: k for k, v in item_map.items()})
    return PreparedTables(frame, negatives, catalog, manifest, genres, reid)


def _negatives(
    frame: pd.DataFrame,
    catalog: ItemCatalog,
    *,
    seed: int,
    fixed: pd.DataFrame | None,
    user_map: dict[str, str],
    item_map: dict[str, str],
) -> pd.DataFrame:
    user_codes, user_ids = pd.factorize(frame["user"], sort=True)
    item_idx = catalog.index_of(frame["item"])
    order = np.argsort(user_codes, kind="stable")
    indptr = np.r_[0, np.cumsum(np.bincount(user_codes, minlength=len(user_ids)))]
    seen = item_idx[order]
    out = []
    for stream, role in enumerate((splits.VAL, splits.TEST)):
        held = frame["split"].to_numpy() == role
        users = np.unique(user_codes[held])
        if role == splits.TEST and fixed is not None:
            out.append(_fixed_negatives(frame, fixed, user_map, item_map))
            continue
        neg = splits.sample_negatives(indptr, seen, users, len(catalog), N_NEGATIVES, seed=seed, stream=stream)
        names = np.asarray(catalog.items, dtype=object)
        lists = [[names[j] for j in row if j >= 0] for row in neg]
        out.append(pd.DataFrame({"user": pd.Series(np.asarray(user_ids)[users], dtype=object), "role": role,
                                 "items": pd.Series(lists, dtype=object)}))
    return pd.concat(out, ignore_index=True).astype({"user": object, "role": object, "items": object})


def _fixed_negatives(
    frame: pd.DataFrame, fixed: pd.DataFrame, user_map: dict[str, str], item_map: dict[str, str]
) -> pd.DataFrame:
    """Published negatives, pseudonymized; a negative equal to the user's test item is dropped."""
    test = frame[frame["split"] == splits.TEST].set_index("user")["item"]
    users, lists = [], []
    for raw_user, negs, line in zip(fixed[schema.USER], fixed["negatives"], fixed[schema.LINE], strict=True):
        user = user_map.get(raw_user)
        if user is None:
            raise DataError(f"negatives for unknown user {raw_user!r}", line=int(line), field="user")
        pseudo = []
        for raw_item in negs:
            item = item_map.get(raw_item)
            if item is None:
                raise DataError(f"negative item {raw_item!r} is not in the catalog", line=int(line), field="item")
            if item != test.get(user):
                pseudo.append(item)
        users.append(user)
        lists.append(pseudo)
    return pd.DataFrame({"user": users, "role": splits.TEST, "items": lists})


def write(tables: PreparedTables, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write a prepared dataset directory atomically (all files or none)."""
    out_dir = Path(out_dir)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        pq.write_table(pa.Table.from_pandas(tables.interactions, preserve_index=False), tmp / FILES[0])
        neg_schema = pa.schema([("user", pa.string()), ("role", pa.string()), ("items", pa.list_(pa.string()))])
        pq.write_table(pa.Table.from_pandas(tables.negatives, schema=neg_schema, preserve_index=False), tmp / FILES[1])
        tables.catalog.save(tmp / FILES[2])
        files = list(FILES)
        if tables.item_genres is not None:
            pq.write_table(pa.Table.from_pandas(tables.item_genres, preserve_index=False), tmp / "item_genres.parquet")
            files.append("item_genres.parquet")
        manifest = dict(tables.manifest)
        manifest["files"] = {name: sha256(tmp / name) for name in files}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return out_dir


def read(path: str | Path, *, verify: bool = True) -> PreparedTables:
    """Read a prepared dataset directory; with ``verify``, check every file hash."""
    path = Path(path)
    manifest = read_manifest(path, verify=verify)
    try:
        interactions = pq.read_table(path / FILES[0]).to_pandas()
        negatives = pq.read_table(path / FILES[1]).to_pandas()
        genres_path = path / "item_genres.parquet"
        genres = pq.read_table(genres_path).to_pandas() if genres_path.exists() else None
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"cannot read dataset file ({exc})", source=str(path)) from None
    catalog = ItemCatalog.load(path / FILES[2], expected_hash=manifest.get("catalog_hash"))
    return PreparedTables(interactions, negatives, catalog, manifest, genres)


def genre_matrix(tables: PreparedTables) -> np.ndarray | None:
    """Public item metadata as a (n_items, n_genres) 0/1 matrix in catalog order (None if absent)."""
    if tables.item_genres is None or tables.item_genres.empty:
        return None
    vocab = sorted({g for gs in tables.item_genres["genres"] for g in gs})
    col = {g: j for j, g in enumerate(vocab)}
    out = np.zeros((len(tables.catalog), len(vocab)), np.float32)
    rows = tables.catalog.index_of(tables.item_genres["item"].tolist())
    for row, genres in zip(rows, tables.item_genres["genres"], strict=True):
        if row >= 0:
            out[row, [col[g] for g in genres]] = 1.0
    return out
