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
    """Write ``columns`` atomically (0600) in the format ``path``'s suffix names: CSV, JSON records or Parquet.

    A pandas DataFrame is accepted too (the data owner's reveal writes one).
    """
    if hasattr(columns, "to_dict") and hasattr(columns, "columns"):  # a DataFrame
        columns = {str(c): columns[c].to_numpy() for c in columns.columns}
    import pyarrow as pa

    table = pa.table({name: pa.array(np.asarray(v)) for name, v in columns.items()})
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        data = sink.getvalue().to_pybytes()
    elif suffix == ".json":
        names = list(columns)
        rows = zip(*(np.asarray(columns[n]).tolist() for n in names), strict=True)
        data = json.dumps([dict(zip(names, r, strict=True)) for r in rows], indent=1).encode()
    else:
        import pyarrow.csv as pacsv

        sink = pa.BufferOutputStream()
        pacsv.write_csv(table, sink, pacsv.WriteOptions(quoting_style="needed"))
        data = sink.getvalue().to_pybytes()
    atomic_write_bytes(path, data, mode=0o600)
