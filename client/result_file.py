"""Result files of pseudonymous recommendations, written where the data lives (no pandas: the node install).

A result is long format, one row per (user, rank): ``user``, ``rank`` (1-based), ``item``, ``score``, as
:meth:`client.recommender.NodeRecommender.to_columns` returns it; the data owner's ``reveal`` adds columns.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from shared.atomic import atomic_write_bytes

FORMATS = (".csv", ".json", ".parquet")
Columns = Mapping[str, np.ndarray]


def concat(parts: Sequence[Columns]) -> dict[str, np.ndarray]:
    """The parts' rows one after the other (every part has the same columns)."""
    if not parts:
        return {}
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def write_result(columns: Columns, path: Path) -> None:
    """Write ``columns`` atomically (0600) in the format ``path``'s suffix names: CSV, JSON records or Parquet."""
    if path.suffix.lower() == ".json":
        names = list(columns)
        rows = zip(*(np.asarray(columns[n]).tolist() for n in names), strict=True)
        atomic_write_bytes(path, json.dumps([dict(zip(names, r, strict=True)) for r in rows], indent=1).encode(),
                           mode=0o600)
        return
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    table = pa.table({name: pa.array(np.asarray(v)) for name, v in columns.items()})
    sink = pa.BufferOutputStream()
    if path.suffix.lower() == ".parquet":
        pq.write_table(table, sink)
    else:
        pacsv.write_csv(table, sink, pacsv.WriteOptions(quoting_style="needed"))
    atomic_write_bytes(path, sink.getvalue().to_pybytes(), mode=0o600)
