"""Sparse item updates: a node sends only the rows its training changed (``transport.item-updates = "sparse"``).

A node's update of an item table changes only the rows of items its users' training touched (positives and
sampled negatives); every other row comes back exactly as sent. The sparse encoding replaces such an array
``key`` by two arrays, ``key + ROWS`` (the changed row indices: integers, 1-D, strictly increasing) and
``key + VALUES`` (those rows, in the array's dtype), when that is smaller than the array; other arrays (dense
layers, which every step changes) travel as they are. Decoding against the model the coordinator sent gives back
the node's update exactly, so every aggregation computes what it computes on dense updates.

What the rows reveal: the set of items a node trained on, which a dense update reveals just as well (its
unchanged rows come back bit-identical). Under DP every row moves (noise), so the encoding is refused there.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

ROWS, VALUES = "@rows", "@values"


def changed_rows(value: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Indices of the rows (first axis) of ``value`` that differ from ``reference``, ascending.

    int32 (4 bytes a row) for tables of fewer than 2^31 rows, else int64.
    """
    diff = np.asarray(value) != np.asarray(reference)
    rows = np.flatnonzero(diff.reshape(diff.shape[0], -1).any(axis=1))
    return rows.astype(np.int32 if diff.shape[0] < 2**31 else np.int64)


def encode(arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``arrays`` with every array of rank >= 1 that is smaller as changed rows replaced by ``key@rows``/``key@values``.

    ``reference`` is what the coordinator sent (compared exactly, before any compression of ``arrays``).
    """
    out: dict[str, np.ndarray] = {}
    for key, value in arrays.items():
        value = np.asarray(value)
        ref = np.asarray(reference[key])
        if value.ndim == 0:
            out[key] = value
            continue
        rows = changed_rows(value, ref)
        row_bytes = value[:1].nbytes if len(value) else 0
        if rows.nbytes + len(rows) * row_bytes < value.nbytes:
            out[key + ROWS], out[key + VALUES] = rows, np.ascontiguousarray(value[rows])
        else:
            out[key] = value
    return out


def decode(arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]
           ) -> tuple[dict[str, np.ndarray], str | None]:
    """The dense update behind :func:`encode`'s output, or ``({}, why it is malformed)``.

    Rows not sent are the reference's, exactly; float16 rows (``transport.compression``) are upcast.
    Refused: a ``@rows`` without its ``@values`` (or the reverse), indices that are not integer, 1-D, strictly
    increasing (sorted, no duplicates) and inside the table, values whose shape does not match.
    """
    out: dict[str, np.ndarray] = {}
    for key, value in arrays.items():
        if key.endswith(VALUES):
            if key[: -len(VALUES)] + ROWS not in arrays:
                return {}, f"{key}: values without {key[: -len(VALUES)] + ROWS}"
            continue
        if not key.endswith(ROWS):
            out[key] = np.asarray(value)
            continue
        base = key[: -len(ROWS)]
        if base not in reference:
            return {}, f"{key}: no array {base!r} in the global model"
        if base + VALUES not in arrays:
            return {}, f"{key}: rows without {base + VALUES}"
        ref, rows, values = np.asarray(reference[base]), np.asarray(value), np.asarray(arrays[base + VALUES])
        if not np.issubdtype(rows.dtype, np.integer) or rows.ndim != 1:
            return {}, f"{key}: row indices must be a 1-D integer array, got {rows.dtype} of shape {rows.shape}"
        if ref.ndim == 0:
            return {}, f"{key}: {base!r} is a scalar and has no rows"
        if len(rows) and (rows[0] < 0 or rows[-1] >= ref.shape[0]):
            return {}, f"{key}: row index outside 0..{ref.shape[0] - 1} (min {rows.min()}, max {rows.max()})"
        if len(rows) > 1 and not bool(np.all(np.diff(rows) > 0)):
            kind = "duplicate" if len(np.unique(rows)) < len(rows) else "unsorted"
            return {}, f"{key}: {kind} row indices (they must be strictly increasing)"
        if values.shape != (len(rows), *ref.shape[1:]):
            return {}, f"{base + VALUES}: shape {values.shape} != ({len(rows)}, {', '.join(map(str, ref.shape[1:]))})"
        if base in arrays:
            return {}, f"{base}: sent both dense and as rows"
        fp16 = values.dtype == np.float16 and np.issubdtype(ref.dtype, np.floating)
        if values.dtype != ref.dtype and not fp16:
            return {}, f"{base + VALUES}: dtype {values.dtype} != {ref.dtype}"
        dense = ref.copy()
        dense[rows] = values.astype(ref.dtype)  # float16 upcast is lossless; unsent rows stay exact
        out[base] = dense
    return out, None
