"""Keyed pseudonyms: HMAC-SHA256 truncated to 128 bits, hex encoded.

``pseudonym(key, raw_id) = hex(HMAC-SHA256(key, utf8(raw_id))[:16])``. Same key
and id give the same pseudonym; without the key a pseudonym cannot be linked to
its id (beyond guessing ids and keys). Users and items use different keys.
128-bit truncation keeps a collision among a billion ids below 1e-20.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
from cryptography.hazmat.primitives import hashes, hmac

if TYPE_CHECKING:
    import pandas as pd

PSEUDONYM_BYTES = 16
PSEUDONYM_HEX = 2 * PSEUDONYM_BYTES


def pseudonym(key: bytes, raw_id: str) -> str:
    """The pseudonym of one raw id."""
    mac = hmac.HMAC(key, hashes.SHA256())
    mac.update(raw_id.encode("utf-8"))
    return mac.finalize()[:PSEUDONYM_BYTES].hex()


def pseudonym_map(key: bytes, raw_ids: Iterable[str]) -> dict[str, str]:
    """Raw id -> pseudonym for every distinct id (each HMAC computed once)."""
    return {raw: pseudonym(key, raw) for raw in dict.fromkeys(raw_ids)}


def pseudonymize_column(key: bytes, column: pd.Series) -> tuple[pd.Series, dict[str, str]]:
    """Replace raw ids in ``column`` by pseudonyms; return the column and the map used."""
    import pandas as pd

    codes, uniques = pd.factorize(column, sort=False)
    mapping = pseudonym_map(key, (str(u) for u in uniques))
    pseudo = np.asarray([mapping[str(u)] for u in uniques], dtype=object)
    return pd.Series(pseudo[codes], index=column.index, dtype=object), mapping
