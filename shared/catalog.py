"""The item catalog: sorted item pseudonyms -> row index of the item embedding.

Every node of a federation must use the same catalog, otherwise row ``i`` of the
global item embedding means different items on different nodes. The content
hash (SHA-256 over the sorted pseudonyms) lets a node prove which catalog it
uses; the coordinator and nodes compare hashes before training.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shared.errors import DataError
from shared.pseudonyms import PSEUDONYM_HEX

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class ItemCatalog:
    """An immutable, sorted list of item pseudonyms."""

    items: tuple[str, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if list(self.items) != sorted(set(self.items)):
            raise ValueError("catalog items must be sorted and unique")
        object.__setattr__(self, "_index", {p: i for i, p in enumerate(self.items)})

    @classmethod
    def from_pseudonyms(cls, pseudonyms: Iterable[str]) -> ItemCatalog:
        """Build a catalog from any iterable of item pseudonyms (deduplicated, sorted)."""
        return cls(tuple(sorted(set(pseudonyms))))

    def __len__(self) -> int:
        return len(self.items)

    @property
    def content_hash(self) -> str:
        """SHA-256 hex of the newline-joined sorted pseudonyms."""
        return hashlib.sha256("\n".join(self.items).encode("ascii")).hexdigest()

    def index_of(self, pseudonyms: pd.Series | np.ndarray | list[str]) -> np.ndarray:
        """Row indices of ``pseudonyms``; -1 for items not in the catalog."""
        get = self._index.get
        return np.fromiter((get(p, -1) for p in pseudonyms), dtype=np.int64, count=len(pseudonyms))

    def save(self, path: str | Path) -> None:
        """Write as Parquet (column ``item``); callers write into an atomic directory."""
        pq.write_table(pa.table({"item": pa.array(self.items, type=pa.string())}), path)

    @classmethod
    def load(cls, path: str | Path, *, expected_hash: str | None = None) -> ItemCatalog:
        """Read a catalog and, if given, check its content hash."""
        path = Path(path)
        try:
            items = pq.read_table(path, columns=["item"]).column("item").to_pylist()
        except (OSError, KeyError, pa.ArrowException) as exc:
            raise DataError(f"cannot read item catalog ({exc})", source=str(path)) from None
        for row, item in enumerate(items, start=1):
            if not isinstance(item, str) or len(item) != PSEUDONYM_HEX:
                raise DataError("not an item pseudonym", source=str(path), line=row, field="item")
        try:
            catalog = cls(tuple(items))
        except ValueError as exc:
            raise DataError(str(exc), source=str(path), field="item") from None
        if expected_hash is not None and catalog.content_hash != expected_hash:
            raise DataError(
                f"catalog hash {catalog.content_hash[:16]}… differs from the expected {expected_hash[:16]}…",
                source=str(path),
            )
        return catalog
