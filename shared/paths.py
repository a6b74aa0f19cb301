"""Where fedrec keeps its caches (no heavy imports: nodes use this)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$FEDREC_CACHE_DIR`` or ``~/.cache/fedrec``."""
    return Path(os.environ.get("FEDREC_CACHE_DIR", Path.home() / ".cache" / "fedrec")).expanduser()
