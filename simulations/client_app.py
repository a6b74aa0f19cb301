"""The ClientApp of simulations: the production one (:mod:`client.app`) plus what only simulations have.

- :func:`partition_mod`: a simulated node (Flower's ``partition-id`` / ``num-partitions``
  node_config) gets its partition of the run's ``data.path`` from the run's partitioner
  (:mod:`simulations.partitioners`), handed over in-process
  (:func:`client.node_data.register_dataset`). A deployed node reads its own prepared
  dataset instead (``data-path`` in its node_config).
- :func:`simulations.faults.fault_mod`: ``sim.fault-dropout`` / ``sim.fault-mode`` injection for
  reliability runs and tests.

The simulation driver (``fedrec simulate``) builds its Flower app around this ClientApp; the
project's own app (``pyproject.toml``) is the production one, without either.
"""

from __future__ import annotations

import functools

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client.app import app as production
from client.node_data import NodeData, is_registered, partition_key, register_dataset, simulated_partition
from shared.config import RunConfig
from shared.datasets import load_tables
from shared.interactions import InteractionData
from simulations.faults import ClientCall, fault_mod
from simulations.partitioners import partition_users


@functools.lru_cache(maxsize=2)
def _full(path: str, seed: int, users: int, items: int) -> tuple[InteractionData, tuple[float, float], str]:
    tables = load_tables(path, seed=seed, synthetic_users=users, synthetic_items=items)
    return InteractionData.from_tables(tables), tuple(tables.manifest["value_range"]), tables.catalog.content_hash


@functools.lru_cache(maxsize=4)
def _partitions(path: str, seed: int, users: int, items: int, scheme: str, n: int, alpha: float):
    data, _, _ = _full(path, seed, users, items)
    return partition_users(data, scheme, n, seed=seed, alpha=alpha)


def hand_over_partition(cfg: RunConfig, pid: int, n: int) -> str:
    """Compute partition ``pid`` of ``n`` and register it for the node; returns its key."""
    key = partition_key(cfg, pid, n)
    if is_registered(key):
        return key
    data, value_range, catalog_hash = _full(cfg.data.path, cfg.seed, cfg.data.synthetic_users, cfg.data.synthetic_items)
    d = cfg.data
    parts = _partitions(d.path, cfg.seed, d.synthetic_users, d.synthetic_items, d.partitioner, n,
                        cfg.data.dirichlet_alpha)
    if not 0 <= pid < len(parts):
        from shared.errors import ConfigError

        raise ConfigError("partition-id", f"{pid} is outside 0..{len(parts) - 1}")
    register_dataset(key, NodeData(data.subset(parts[pid]), value_range, catalog_hash, f"partition-{pid}"))
    return key


def partition_mod(msg: Message, context: Context, call_next: ClientCall) -> Message:
    """Hand a simulated node its partition and its node-local settings (``sim.*``) before the production ClientApp
    reads them: Flower's simulation engine sets no node_config of its own beyond the partition."""
    node_config = context.node_config
    if "partition-id" in node_config and not node_config.get("dataset"):
        cfg = RunConfig.from_mapping(context.run_config)
        pid, n = simulated_partition(node_config, cfg)
        hand_over_partition(cfg, pid, n)
        if cfg.sim.node_state_dir and "state-dir" not in node_config:
            node_config["state-dir"] = f"{cfg.sim.node_state_dir}/partition-{pid}"
        node_config.setdefault("threads", cfg.sim.client_threads)
        node_config.setdefault("chunk-pairs", cfg.sim.chunk_pairs)
    return call_next(msg, context)


app = ClientApp(mods=[partition_mod, fault_mod])


@app.train()
def train(msg: Message, context: Context) -> Message:
    return production(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return production(msg, context)
