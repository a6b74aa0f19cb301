"""Resolve the ``data-path`` run-config value to prepared tables.

``"synthetic"`` builds the embedded default in memory (deterministic in the
seed and size). Its pseudonym keys are derived from the seed: fine for data
about nobody, never for real logs, which go through ``fedrec data prepare``.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from shared import prepared, synthetic
from shared.keys import KeySet

SYNTHETIC = "synthetic"


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


def load_tables(data_path: str, *, seed: int, synthetic_users: int = 943, synthetic_items: int = 1682):
    """Prepared tables for a run: the synthetic default or a prepared directory."""
    if data_path == SYNTHETIC:
        return synthetic_tables(seed, synthetic_users, synthetic_items)
    return _read_cached(str(Path(data_path).expanduser().resolve()))
