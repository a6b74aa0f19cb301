"""The data owner's jobs: keys, prepare (raw logs -> pseudonymized dataset), reveal.

These run on the owner's machine, the only place raw ids exist. ``prepare``
validates everything before writing anything; its outputs appear atomically.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from client.result_file import write_result
from shared import loaders, movielens, prepared
from shared.atomic import atomic_write_bytes
from shared.errors import DataError, FedrecError
from shared.keys import load_key, load_keys
from shared.reidentify import ReidentificationMap
from shared.schema import DuplicatePolicy


@dataclass(frozen=True)
class PrepareOptions:
    """Inputs of ``fedrec data prepare`` besides the raw file."""

    keys: Path
    out: Path
    fmt: str = "auto"
    columns: str | None = None
    duplicates: DuplicatePolicy = DuplicatePolicy.ERROR
    string_ids: bool = False
    delimiter: str | None = None
    ncf_split: Path | None = None
    item_metadata: Path | None = None
    catalog_items: Path | None = None
    seed: int = 42
    reid_map: Path | None = None
    overwrite: bool = False


def reid_map_path(keys_dir: Path, dataset_id: str) -> Path:
    """Default location of a dataset's encrypted re-identification map: beside the owner's keys."""
    return Path(keys_dir) / "reid" / f"{dataset_id}.enc"


def prepare_dataset(raw_path: Path, opts: PrepareOptions) -> dict:
    """Validate, pseudonymize, split and write; returns the manifest.

    Nothing is written unless every input validates. The re-identification map
    is encrypted with the owner key and written beside the keys (0600).
    """
    keys = load_keys(opts.keys)
    mapping = loaders.ColumnMapping.parse(opts.columns) if opts.columns else None
    raw = loaders.load_interactions(
        raw_path, fmt=opts.fmt, columns=mapping, duplicates=opts.duplicates,
        string_ids=opts.string_ids, delimiter=opts.delimiter,
    )
    fixed_test = fixed_neg = None
    if opts.ncf_split is not None:
        fixed_test, fixed_neg = movielens.load_ncf_split(opts.ncf_split)
    genres = movielens.load_item_tags(opts.item_metadata) if opts.item_metadata else None
    catalog_items = read_catalog_items(opts.catalog_items) if opts.catalog_items else None
    dataset_id = uuid.uuid4().hex
    source = {"name": Path(raw_path).name, "format": opts.fmt, "dataset_id": dataset_id}
    try:
        tables = prepared.prepare(raw, keys, seed=opts.seed, source=source, fixed_test=fixed_test,
                                  fixed_negatives=fixed_neg, item_genres=genres, catalog_items=catalog_items)
    except DataError as exc:
        if exc.source is None and opts.ncf_split is not None and exc.line is not None:
            raise DataError(exc.detail, source=str(opts.ncf_split), line=exc.line, field=exc.field) from None
        raise
    reid_path = opts.reid_map or reid_map_path(opts.keys, dataset_id)
    if reid_path.resolve().is_relative_to(opts.out.resolve()):
        raise FedrecError("the re-identification map must not be stored inside the dataset directory")
    tables.manifest["reid_binding"] = _binding(tables.manifest)
    prepared.write(tables, opts.out, overwrite=opts.overwrite)
    assert tables.reid is not None
    tables.reid.save(reid_path, keys.owner, bound_to=tables.manifest["reid_binding"])
    return tables.manifest | {"reid_map": str(reid_path)}


def read_catalog_items(path: Path) -> list[str]:
    """The federation's item list (raw ids): a MovieLens item file, or one id per line."""
    if path.name in ("u.item", "movies.dat"):
        return list(movielens.load_item_titles(path))
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read item list ({exc})", source=str(path)) from None
    items = [line.strip() for line in lines if line.strip()]
    if not items:
        raise DataError("the item list is empty", source=str(path))
    if len(set(items)) != len(items):
        raise DataError("the item list has duplicate ids", source=str(path))
    return items


def write_catalog(items_path: Path, keys_dir: Path, out: Path) -> str:
    """Pseudonymize a federation's item list with the shared item key into a catalog file; return its hash.

    Every data owner and the coordinator (``data.catalog-path``) then use the same catalog.
    """
    from shared.catalog import ItemCatalog
    from shared.keys import load_key
    from shared.pseudonyms import pseudonym_map

    item_key = load_key(Path(keys_dir) / "item.key", "item")
    catalog = ItemCatalog.from_pseudonyms(pseudonym_map(item_key, read_catalog_items(items_path)).values())
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"item": pa.array(catalog.items, type=pa.string())}), sink)
    atomic_write_bytes(out, sink.getvalue().to_pybytes())
    return catalog.content_hash


def _binding(manifest: dict) -> str:
    return f"{manifest['source']['dataset_id']}:{manifest['catalog_hash']}"


def read_result(path: Path) -> pd.DataFrame:
    """Read a result file (CSV, JSON records or Parquet) of pseudonymous recommendations."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pq.read_table(path).to_pandas()
        if suffix == ".json":
            return pd.read_json(path, orient="records", dtype=False)
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise FedrecError(f"{path}: result file not found") from None
    except (ValueError, OSError, pa.ArrowException) as exc:
        raise FedrecError(f"{path}: cannot read result file ({exc})") from None


def reveal(result: Path, *, dataset: Path, keys_dir: Path, out: Path, reid_map: Path | None = None,
           titles: Path | None = None) -> int:
    """Map the ``user``/``item`` pseudonym columns of ``result`` back to raw ids (owner only).

    Adds ``raw_user``/``raw_item`` (and ``title`` when a MovieLens item file is
    given). Unknown pseudonyms are an error; nothing is written on any error.
    Returns the number of rows written.
    """
    manifest = prepared.read(dataset, verify=False).manifest
    binding = manifest.get("reid_binding")
    if not binding:
        raise FedrecError(f"{dataset}: dataset has no re-identification binding (not made by `data prepare`)")
    owner = load_key(Path(keys_dir) / "owner.key", "owner")
    path = reid_map or reid_map_path(keys_dir, manifest["source"]["dataset_id"])
    reid = ReidentificationMap.load(path, owner, bound_to=binding)
    frame = read_result(result)
    if "user" not in frame.columns and "item" not in frame.columns:
        raise FedrecError(f"{result}: no 'user' or 'item' column to reveal")
    for column, table in (("user", reid.users), ("item", reid.items)):
        if column not in frame.columns:
            continue
        raw = frame[column].astype(str).map(table)
        if raw.isna().any():
            row = int(raw.isna().to_numpy().argmax())
            value = frame[column].iloc[row]
            raise FedrecError(f"{result}: row {row + 1}: {column} {value!r} is not a pseudonym of this dataset")
        frame[f"raw_{column}"] = raw
    if titles is not None and "raw_item" in frame.columns:
        names = movielens.load_item_titles(titles)
        frame["title"] = frame["raw_item"].map(names).fillna("")
    write_result({str(c): frame[c].to_numpy() for c in frame.columns}, out)
    return len(frame)
