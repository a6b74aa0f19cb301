"""Demo data for a deployment: each node's own prepared dataset over one federation-wide item catalog.

What real data owners do on their own machines, done here for synthetic logs:
each owner has its own user key, all share one item key, and every node's
dataset is prepared against the same full item catalog (so item ``i`` is the
same row of the global item embedding everywhere). The coordinator receives only
the catalog (public item pseudonyms).
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from shared import prepared, schema
from shared.errors import FedrecError
from shared.keys import generate_keys, key_path
from shared.synthetic import SyntheticSpec, generate


@dataclass(frozen=True)
class DemoData:
    """Where the demo federation's data lives."""

    root: Path
    nodes: list[Path]  # node i's prepared dataset
    catalog: Path  # the coordinator's copy of the item catalog
    catalog_hash: str


def node_dir(root: Path, i: int) -> Path:
    return root / f"node-{i + 1}"


def make_demo_data(root: Path, *, nodes: int = 2, users: int = 200, items: int = 300, seed: int = 42,
                   force: bool = False) -> DemoData:
    """Generate one synthetic log, split its users over ``nodes`` owners, prepare each against the full catalog."""
    if nodes < 1:
        raise FedrecError("--nodes must be >= 1")
    if users < 10 * nodes:
        raise FedrecError(f"--users must be >= {10 * nodes} (10 per node)")
    try:
        raw = generate(SyntheticSpec(n_users=users, n_items=items, seed=seed)).interactions
    except ValueError as exc:
        raise FedrecError(f"synthetic data: {exc}") from None
    return prepare_nodes(raw, root, nodes=nodes, catalog_items=[str(i + 1) for i in range(items)], seed=seed,
                         force=force)


def prepare_nodes(raw: pd.DataFrame, root: Path, *, nodes: int, catalog_items: list[str], seed: int,
                  force: bool = False) -> DemoData:
    """Split ``raw``'s users over ``nodes`` owners (seeded); prepare each owner's part against one catalog."""
    if root.exists() and any(root.iterdir()) and not force:
        raise FedrecError(f"{root} is not empty (use --force to replace it)")
    if force and root.exists():
        shutil.rmtree(root)
    user_ids = np.array(sorted(raw[schema.USER].unique()))
    owners = np.random.default_rng(seed).permutation(len(user_ids)) % nodes  # balanced, seeded assignment
    first_keys = None
    out, hashes = [], set()
    for i in range(nodes):
        home = node_dir(root, i)
        keys = generate_keys(home / "keys", item_key_from=key_path(first_keys, "item") if first_keys else None)
        first_keys = first_keys or home / "keys"
        subset = raw[raw[schema.USER].isin(set(user_ids[owners == i]))].reset_index(drop=True)
        source = {"name": f"node-{i + 1}", "format": "dataframe", "dataset_id": uuid.uuid4().hex}
        tables = prepared.prepare(subset, keys, seed=seed, source=source, catalog_items=catalog_items)
        tables.manifest["reid_binding"] = f"{source['dataset_id']}:{tables.manifest['catalog_hash']}"
        prepared.write(tables, home / "data")
        assert tables.reid is not None
        tables.reid.save(home / "keys" / "reid" / f"{source['dataset_id']}.enc", keys.owner,
                         bound_to=tables.manifest["reid_binding"])
        out.append(home / "data")
        hashes.add(tables.catalog.content_hash)
    if len(hashes) != 1:  # cannot happen with a shared item key and catalog; guard the invariant anyway
        raise FedrecError("node catalogs differ")
    catalog = root / "coordinator" / "catalog.parquet"
    catalog.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out[0] / prepared.FILES[2], catalog)
    return DemoData(root, out, catalog, hashes.pop())
