"""Per-user evaluation splits (NCF protocol) and sampled negatives.

- Leave-latest-out: for every user with >= 3 interactions, the latest one is the
  test item and the one before it the validation item; the rest is training.
  Ties in time (and logs without timestamps) are ordered by a seeded random key,
  so the split is deterministic in ``seed``. Users with < 3 interactions are
  training-only (never evaluated).
- Fixed test (NCF's published ML-1M split): the given (user, item) pairs are the
  test items; the validation item is the latest remaining one (random when
  there are no timestamps).
- Negatives: per evaluated user and role, ``n`` distinct items sampled uniformly
  from the catalog among items the user never interacted with (any split).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from shared import schema
from shared.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

TRAIN, VAL, TEST = "train", "val", "test"
SPLIT = "split"


def leave_latest_out(
    frame: pd.DataFrame, *, seed: int, fixed_test: pd.DataFrame | None = None
) -> pd.Series:
    """Label every row of ``frame`` (columns user, item, timestamp) train/val/test.

    ``fixed_test`` (columns user, item) forces the test rows; every listed pair
    must exist in ``frame``.
    """
    import pandas as pd

    rng = np.random.default_rng([seed, 0x5971])
    n = len(frame)
    tiebreak = rng.random(n)
    ts = frame[schema.TIMESTAMP]
    time_key = ts.fillna(-1).astype("int64").to_numpy() if ts.notna().any() else np.zeros(n, np.int64)
    labels = np.full(n, TRAIN, dtype=object)
    user_codes = pd.factorize(frame[schema.USER])[0]

    if fixed_test is not None:
        key = frame[schema.USER].astype(str) + "\x00" + frame[schema.ITEM].astype(str)
        want = fixed_test[schema.USER].astype(str) + "\x00" + fixed_test[schema.ITEM].astype(str)
        pos = pd.Index(key).get_indexer(want)
        if (pos < 0).any():
            bad = int(np.flatnonzero(pos < 0)[0])
            row = fixed_test.iloc[bad]
            line = int(row[schema.LINE]) if schema.LINE in fixed_test else bad + 1
            raise DataError("test pair is not an interaction of the dataset", line=line, field="item")
        labels[pos] = TEST
        is_test = np.zeros(n, bool)
        is_test[pos] = True
        # validation: latest non-test row per user
        order = np.lexsort((tiebreak, time_key, user_codes))
        cand = order[~is_test[order]]
        last = _last_per_group(user_codes[cand])
        counts = np.bincount(user_codes, minlength=user_codes.max() + 1 if n else 0)
        keep = counts[user_codes[cand[last]]] >= 3
        labels[cand[last][keep]] = VAL
        return pd.Series(labels, index=frame.index, name=SPLIT)

    order = np.lexsort((tiebreak, time_key, user_codes))
    codes_sorted = user_codes[order]
    counts = np.bincount(user_codes)
    last = _last_per_group(codes_sorted)
    eligible = counts[codes_sorted[last]] >= 3
    test_rows = order[last[eligible]]
    val_rows = order[last[eligible] - 1]
    labels[test_rows] = TEST
    labels[val_rows] = VAL
    return pd.Series(labels, index=frame.index, name=SPLIT)


def _last_per_group(sorted_codes: np.ndarray) -> np.ndarray:
    """Positions of the last element of each run in an array sorted by group."""
    if len(sorted_codes) == 0:
        return np.zeros(0, np.int64)
    return np.flatnonzero(np.r_[sorted_codes[1:] != sorted_codes[:-1], True])


def sample_negatives(
    seen_indptr: np.ndarray,
    seen_items: np.ndarray,
    users: np.ndarray,
    n_items: int,
    n: int,
    *,
    seed: int,
    stream: int,
) -> np.ndarray:
    """``(len(users), n)`` distinct unseen items per user (-1 padding if too few exist).

    ``seen_indptr/seen_items`` is a CSR over all users of every item they touched.
    """
    rng = np.random.default_rng([seed, stream, 0x9E6])
    out = np.full((len(users), n), -1, dtype=np.int64)
    for row, u in enumerate(users):
        seen = seen_items[seen_indptr[u] : seen_indptr[u + 1]]
        free = n_items - len(np.unique(seen))
        want = min(n, free)
        got: np.ndarray = np.zeros(0, np.int64)
        while len(got) < want:
            draw = rng.integers(0, n_items, size=2 * (want - len(got)) + 8)
            draw = draw[~np.isin(draw, seen)]
            got = np.concatenate([got, draw])
            _, first = np.unique(got, return_index=True)
            got = got[np.sort(first)]
        out[row, :want] = got[:want]
    return out
