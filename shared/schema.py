"""The one interaction schema every loader produces.

A *raw interaction frame* is a ``pandas.DataFrame`` with exactly these columns:

========== ============================ ==============================================
column     dtype                        meaning
========== ============================ ==============================================
user       ``object`` (str)             raw user id as written in the source
item       ``object`` (str)             raw item id as written in the source
value      ``float64``                  rating or interaction strength (1.0 if absent)
timestamp  ``Int64`` (nullable)         unix seconds; <NA> when the source has none
line       ``int64``                    1-based source line, for error messages
========== ============================ ==============================================

Raw ids are strings. Integer ids are canonicalized (``"0042"`` -> ``"42"``)
unless the loader is told ids are arbitrary strings; either way they only
ever leave the data owner's machine as HMAC pseudonyms.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

USER = "user"
ITEM = "item"
VALUE = "value"
TIMESTAMP = "timestamp"
LINE = "line"

COLUMNS = (USER, ITEM, VALUE, TIMESTAMP, LINE)


class DuplicatePolicy(StrEnum):
    """What to do with several interactions of one user with one item."""

    ERROR = "error"  # refuse the file, naming both lines
    FIRST = "first"  # keep the earliest (by timestamp, then line)
    LAST = "last"  # keep the latest (by timestamp, then line)
    MAX = "max"  # keep the one with the highest value


def empty_frame() -> pd.DataFrame:
    """An empty frame with the schema's columns and dtypes."""
    import pandas as pd

    return pd.DataFrame(
        {
            USER: pd.Series([], dtype=object),
            ITEM: pd.Series([], dtype=object),
            VALUE: pd.Series([], dtype="float64"),
            TIMESTAMP: pd.Series([], dtype="Int64"),
            LINE: pd.Series([], dtype="int64"),
        }
    )
