"""Resolve the ``data.path`` run-config value to prepared tables.

- ``"synthetic"`` builds the embedded default in memory (deterministic in the
  seed and size). Its pseudonym keys are derived from the seed: fine for data
  about nobody, never for real logs, which go through ``fedrec data prepare``.
- ``"movielens:ml-100k"`` / ``"movielens:ml-1m"`` (simulations and benchmarks):
  MovieLens from ``$FEDREC_DATA_DIR`` (default ``../shared/data``), prepared
  once with fresh keys into ``$FEDREC_CACHE_DIR`` (default ``~/.cache/fedrec``).
- anything else is the path of a prepared dataset directory.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
from pathlib import Path

from shared import prepared, synthetic
from shared.keys import KeySet
from shared.paths import cache_dir

SYNTHETIC = "synthetic"
MOVIELENS_PREFIX = "movielens:"


def synthetic_keys(seed: int) -> KeySet:
    """Public, seed-derived keys for the synthetic dataset only."""
    def derive(kind: str) -> bytes:
        return hashlib.sha256(f"fedrec-synthetic-{kind}-{seed}".encode()).digest()

    return KeySet(user=derive("user"), item=derive("item"), owner=derive("owner"))


@functools.lru_cache(maxsize=4)
def synthetic_tables(seed: int, n_users: int = 943, n_items: int = 1682) -> prepared.PreparedTables:
    """The embedded default dataset, prepared (cached per process; treat as read-only)."""
    spec = synthetic.SyntheticSpec(n_users=n_users, n_items=n_items, seed=seed)
    data = synthetic.generate(spec)
    genres = {str(i + 1): [data.genre_names[g]] for i, g in enumerate(data.item_genre)}
    return prepared.prepare(
        data.interactions,
        synthetic_keys(seed),
        seed=seed,
        source={"name": "synthetic", "spec": spec.__dict__},
        item_genres=genres,
    )


@functools.lru_cache(maxsize=4)
def _read_cached(path: str) -> prepared.PreparedTables:
    return prepared.read(path)


def data_dir() -> Path:
    """Where raw MovieLens lives: ``$FEDREC_DATA_DIR``, else ``../shared/data`` beside the checkout or cwd."""
    if os.environ.get("FEDREC_DATA_DIR"):
        return Path(os.environ["FEDREC_DATA_DIR"]).expanduser()
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        candidate = base.parent / "shared" / "data"
        if candidate.exists():
            return candidate
    return Path.cwd().parent / "shared" / "data"


# what prepare_movielens writes, in the cache directory's name: a change to it (2: release-period tags beside the
# genres) prepares the dataset again instead of reading an older cached copy
PREPARED_VERSION = 2


def prepared_movielens(name: str) -> Path:
    """The prepared directory of a MovieLens dataset, preparing it on first use (process-safe)."""
    from shared.movielens import prepare_movielens

    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    out = root / "datasets" / f"{name}-v{PREPARED_VERSION}"
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "manifest.json").exists():
            prepare_movielens(name, data_dir(), out, root / "keys")
    return out


def resolve_data_path(data_path: str) -> str:
    """A prepared directory path (or "synthetic") for a run-config ``data.path``."""
    if data_path.startswith(MOVIELENS_PREFIX):
        return str(prepared_movielens(data_path[len(MOVIELENS_PREFIX):]))
    return data_path


def load_tables(data_path: str, *, seed: int, synthetic_users: int = 943, synthetic_items: int = 1682):
    """Prepared tables for a run: the synthetic default, MovieLens, or a prepared directory."""
    if data_path == SYNTHETIC:
        return synthetic_tables(seed, synthetic_users, synthetic_items)
    return _read_cached(str(Path(resolve_data_path(data_path)).expanduser().resolve()))
