"""Which data a node trains on, from its ``node_config`` and the run config.

- Deployment: ``node_config["data-path"]`` names this node's own prepared dataset
  (all of its users).
- Simulation: Flower sets ``partition-id`` / ``num-partitions``; the node takes
  its partition of the run's ``data-path`` with the run's partitioner.
- In-process simulation: ``node_config["dataset"]`` names data that the simulation
  layer built in this process and handed over with :func:`register_dataset` (e.g. a
  node's partition with inserted canaries for an empirical privacy audit).

Nodes only ever read prepared (pseudonymized) datasets.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.config import RunConfig
from shared.datasets import load_tables
from shared.errors import ConfigError
from shared.interactions import InteractionData


@dataclass(frozen=True)
class NodeData:
    """A node's data and identity."""

    data: InteractionData
    value_range: tuple[float, float]
    catalog_hash: str
    node_key: str  # stable name for seeding and state: partition id or node name


_REGISTERED: dict[str, NodeData] = {}


def register_dataset(name: str, data: NodeData) -> None:
    """Hand a node its data in this process (``node_config["dataset"] = name``)."""
    _REGISTERED[name] = data


def resolve_node_data(cfg: RunConfig, node_config: Mapping[str, Any]) -> NodeData:
    """The node's data for this run (cached per process)."""
    if node_config.get("dataset"):
        name = str(node_config["dataset"])
        if name not in _REGISTERED:
            raise ConfigError("dataset", f"no dataset {name!r} was registered in this process")
        return _REGISTERED[name]
    if node_config.get("data-path"):
        name = str(node_config.get("node-name") or node_config["data-path"])
        return _whole(str(node_config["data-path"]), cfg.seed, name)
    if "partition-id" not in node_config:
        raise ConfigError("data-path", "node_config has neither data-path (deployment) nor partition-id (simulation)")
    pid, n = int(node_config["partition-id"]), int(node_config.get("num-partitions", cfg.num_partitions))
    return _partition(cfg.data_path, cfg.seed, cfg.synthetic_users, cfg.synthetic_items, cfg.partitioner, n,
                      cfg.dirichlet_alpha, pid)


@functools.lru_cache(maxsize=8)
def _whole(path: str, seed: int, name: str) -> NodeData:
    tables = load_tables(path, seed=seed)
    return NodeData(InteractionData.from_tables(tables), tuple(tables.manifest["value_range"]),
                    tables.catalog.content_hash, name)


@functools.lru_cache(maxsize=2)
def _full(path: str, seed: int, users: int, items: int) -> tuple[InteractionData, tuple[float, float], str]:
    tables = load_tables(path, seed=seed, synthetic_users=users, synthetic_items=items)
    return InteractionData.from_tables(tables), tuple(tables.manifest["value_range"]), tables.catalog.content_hash


@functools.lru_cache(maxsize=4)
def _partitions(path: str, seed: int, users: int, items: int, scheme: str, n: int, alpha: float):
    from simulations.partitioners import partition_users  # simulation only

    data, _, _ = _full(path, seed, users, items)
    return partition_users(data, scheme, n, seed=seed, alpha=alpha)


def _partition(path: str, seed: int, users: int, items: int, scheme: str, n: int, alpha: float, pid: int) -> NodeData:
    data, value_range, catalog_hash = _full(path, seed, users, items)
    parts = _partitions(path, seed, users, items, scheme, n, alpha)
    if not 0 <= pid < len(parts):
        raise ConfigError("partition-id", f"{pid} is outside 0..{len(parts) - 1}")
    return NodeData(data.subset(parts[pid]), value_range, catalog_hash, f"partition-{pid}")
