"""Which data a node trains on, from its ``node_config`` and the run config.

- Deployment: ``node_config["data-path"]`` names this node's own prepared dataset
  (all of its users).
- Simulation: Flower sets ``partition-id`` / ``num-partitions``; the simulation layer
  (:mod:`simulations.client_app`) computes that partition of the run's ``data.path`` and
  hands it over in-process with :func:`register_dataset` under :func:`partition_key`.
  Production code never partitions anything: a simulated node without its partition
  handed over is a configuration error.
- In-process simulation: ``node_config["dataset"]`` names data that the simulation layer
  registered by name (e.g. a node's partition with inserted canaries for an empirical
  privacy audit).

Nodes only ever read prepared (pseudonymized) datasets.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.data_cache import load_node_dataset
from client.state import default_state_dir
from shared.config import RunConfig
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
    """Hand a node its data in this process (``node_config["dataset"] = name``, or a :func:`partition_key`)."""
    _REGISTERED[name] = data


def is_registered(name: str) -> bool:
    return name in _REGISTERED


def partition_key(cfg: RunConfig, pid: int, n: int) -> str:
    """The name a simulated node's partition is registered under: everything that determines it."""
    d = cfg.data
    return (f"partition:{d.path}:{cfg.seed}:{d.synthetic_users}:{d.synthetic_items}:{d.partitioner}:"
            f"{cfg.data.dirichlet_alpha}:{n}:{pid}")


def simulated_partition(node_config: Mapping[str, Any], cfg: RunConfig) -> tuple[int, int]:
    """(partition id, partitions) of a simulated node."""
    return int(node_config["partition-id"]), int(node_config.get("num-partitions", cfg.data.partitions))


def resolve_node_data(cfg: RunConfig, node_config: Mapping[str, Any]) -> NodeData:
    """The node's data for this run (cached per process)."""
    if node_config.get("dataset"):
        name = str(node_config["dataset"])
        if name not in _REGISTERED:
            raise ConfigError("dataset", f"no dataset {name!r} was registered in this process")
        return _REGISTERED[name]
    if node_config.get("data-path"):
        name = str(node_config.get("node-name") or node_config["data-path"])
        state_dir = node_config.get("state-dir") or default_state_dir(name)
        return _whole(str(node_config["data-path"]), cfg.seed, name, str(Path(state_dir) / "data"))
    if "partition-id" not in node_config:
        raise ConfigError("data-path", "node_config has neither data-path (deployment) nor partition-id (simulation)")
    key = partition_key(cfg, *simulated_partition(node_config, cfg))
    if key not in _REGISTERED:
        raise ConfigError("partition-id", "a simulated node gets its partition from the simulation ClientApp "
                                          "(simulations.client_app:app), which this process is not running")
    return _REGISTERED[key]


@functools.lru_cache(maxsize=8)
def _whole(path: str, seed: int, name: str, cache_dir: str) -> NodeData:
    """A node's whole dataset: a prepared directory read without pandas, its arrays cached in the node's state
    (:mod:`client.data_cache`); the synthetic default or ``movielens:<name>`` through the data owner's loader
    (a developer's node)."""
    if (Path(path).expanduser() / "manifest.json").exists():
        own = load_node_dataset(Path(path).expanduser(), Path(cache_dir))
        return NodeData(own.data, own.value_range, own.catalog_hash, name)
    from shared.datasets import load_tables

    tables = load_tables(path, seed=seed)
    return NodeData(InteractionData.from_tables(tables), tuple(tables.manifest["value_range"]),
                    tables.catalog.content_hash, name)
