"""A node's dataset cached as index arrays in its state directory, so Parquet is parsed once per dataset version.

Every ClientApp process of a deployed node starts fresh (one per instruction); reading the prepared Parquet files
costs ~60 MB resident (pyarrow's libraries and decode buffers) on top of the arrays themselves. So the first
ClientApp to need the data converts it in a short-lived child process (``python -m client.data_cache``, which
exits before training starts) into ``<state-dir>/data/<manifest digest>.npz`` (0600, atomic), and every process
verifies the dataset's files against its manifest (SHA-256, no pyarrow) and loads the arrays. A new or modified
dataset has another manifest digest, so a stale cache is never used.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from shared.atomic import atomic_write_bytes
from shared.errors import DataError
from shared.interactions import InteractionData, NodeDataset
from shared.prepared_files import read_manifest

ARRAYS = ("train_indptr", "train_items", "train_values", "val_item", "val_value", "test_item", "test_value",
          "val_negatives", "test_negatives")


def cache_path(dataset: Path, cache_dir: Path) -> Path:
    """Where the arrays of ``dataset`` (as its manifest describes it) are cached."""
    digest = hashlib.sha256((dataset / "manifest.json").read_bytes()).hexdigest()[:32]
    return cache_dir / f"{digest}.npz"


def load_node_dataset(dataset: str | Path, cache_dir: Path) -> NodeDataset:
    """The node's dataset: verified against its manifest, from the cache if there, else read and cached."""
    dataset = Path(dataset)
    read_manifest(dataset, verify=True)
    path = cache_path(dataset, cache_dir)
    try:
        return _load(path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        pass  # missing, or unreadable (writes are atomic, so only a damaged disk makes one): convert again
    done = subprocess.run([sys.executable, "-m", "client.data_cache", str(dataset), str(path)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise DataError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else
                        f"converting the dataset failed (exit {done.returncode})", source=str(dataset))
    return _load(path)


def convert(dataset: Path, path: Path) -> None:
    """Read the prepared Parquet files (pyarrow) and cache their arrays at ``path``."""
    from shared.node_dataset import read_node_dataset

    _save(read_node_dataset(dataset, verify=False), path)


def _save(own: NodeDataset, path: Path) -> None:
    d = own.data
    buf = io.BytesIO()
    np.savez(buf, user_ids=np.array(d.user_ids.tolist(), dtype="S"), n_items=np.int64(d.n_items),
             value_range=np.array(own.value_range, np.float64), catalog_hash=np.array(own.catalog_hash, "S"),
             **{name: getattr(d, name) for name in ARRAYS})
    atomic_write_bytes(path, buf.getvalue(), mode=0o600)


def _load(path: Path) -> NodeDataset:
    with np.load(path, allow_pickle=False) as z:
        data = InteractionData(user_ids=np.array([u.decode("ascii") for u in z["user_ids"].tolist()], dtype=object),
                               n_items=int(z["n_items"]), **{name: z[name] for name in ARRAYS})
        low, high = (float(x) for x in z["value_range"])
        return NodeDataset(data, (low, high), z["catalog_hash"].item().decode("ascii"))


if __name__ == "__main__":  # the child process of load_node_dataset
    try:
        convert(Path(sys.argv[1]), Path(sys.argv[2]))
    except DataError as exc:
        sys.exit(str(exc))
