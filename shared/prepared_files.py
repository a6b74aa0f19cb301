"""The files of a prepared dataset directory and its manifest check (no pandas: nodes read this too).

:mod:`shared.prepared` builds and writes the directory; :mod:`shared.node_dataset` reads a node's copy straight
into index arrays. Both go through :func:`read_manifest`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from shared.errors import DataError

FORMAT = "fedrec-prepared-v1"
N_NEGATIVES = 99
FILES = ("interactions.parquet", "negatives.parquet", "catalog.parquet")
GENRES = "item_genres.parquet"


def read_manifest(path: Path, *, verify: bool = True) -> dict[str, Any]:
    """The directory's manifest, after checking its format and (``verify``) every listed file's SHA-256."""
    manifest_path = path / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise DataError("not a prepared dataset (no manifest.json; run `fedrec data prepare`)",
                        source=str(path)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"manifest is not valid JSON ({exc})", source=str(manifest_path)) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"unsupported dataset format (expected {FORMAT})", source=str(manifest_path), field="format")
    for name, digest in manifest.get("files", {}).items():
        if not (path / name).exists():
            raise DataError("file listed in the manifest is missing", source=str(path / name))
        if verify and sha256(path / name) != digest:
            raise DataError("file content does not match the manifest hash (modified?)", source=str(path / name))
    return manifest


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
