"""Where a node's recommender comes from; loading it again is how a server hot-reloads.

Three layouts (see ``server/loop.py`` and ``simulations/centralized.py``):

- **centralized run** (``fedrec train --out DIR``): ``DIR/model.pt`` holds the full
  state and the user pseudonyms of its rows;
- **federated simulation run** (``fedrec simulate --out DIR``): ``DIR/model.pt`` holds
  the global part, ``DIR/summary.json`` the run key, and simulated node ``i`` keeps
  its user embeddings in ``<node-state-dir>/partition-<i>/<run-key>/user_emb.pt``;
- **deployment node**: the coordinator's model file (``--model``), the node's own
  prepared dataset (``--data``) and its state directory (``--state-dir``), with the
  user embeddings in ``<state-dir>/<run-key>/user_emb.pt``.

Every problem is a :class:`FedrecError` naming the file. The model file is read
once into memory, so its version (SHA-256 prefix) always matches what was loaded
even while the coordinator replaces it.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from client import personal
from client.node import refit_user_rows
from client.node_data import resolve_node_data
from client.recommender import NodeRecommender
from client.state import users_fingerprint
from shared.config import RunConfig
from shared.errors import FedrecError
from shared.interactions import InteractionData
from shared.models import build_model, merge_state
from shared.prepared_files import FILES
from shared.rundir import MODEL_FORMAT
from shared.seeding import numpy_rng, torch_seed

STATE_FILE = "user_emb.pt"


@dataclass(frozen=True)
class ModelSource:
    """A run directory (``run``, optional ``partition``) or a deployment (``model``, ``data``, ``state_dir``)."""

    run: Path | None = None
    partition: int | None = None
    model: Path | None = None
    data: Path | None = None
    state_dir: Path | None = None
    run_key: str | None = None
    # a simulated run: what hands a simulated node its partition in this process (the simulation layer's
    # ``simulations.client_app.hand_over_partition``); production code never partitions data itself
    hand_over: Callable[[RunConfig, int, int], object] | None = None

    def __post_init__(self) -> None:
        deployment = (self.model, self.data, self.state_dir)
        if self.run is not None and any(p is not None for p in deployment):
            raise FedrecError("give either --run DIR or --model/--data/--state-dir, not both")
        if self.run is None and any(p is None for p in deployment):
            raise FedrecError("give --run DIR, or all of --model PATH --data PATH --state-dir PATH")
        if self.partition is not None and self.partition < 0:
            raise FedrecError(f"--partition must be >= 0, got {self.partition}")

    @property
    def model_file(self) -> Path:
        return self.run / "model.pt" if self.run is not None else Path(self.model)

    def partitions(self) -> list[int]:
        """Node partitions this source covers: [partition], all of a federated run, or [0]."""
        payload, _ = _read_model(self.model_file)
        if self.run is None or "global" not in payload:
            return [self.partition or 0]
        cfg = _run_config(self.run)
        if self.partition is not None:
            return [self.partition]
        return list(range(cfg.data.partitions))

    def load(self) -> NodeRecommender:
        """Read the model and the node's data and user embeddings; a fully built recommender."""
        payload, version = _read_model(self.model_file)
        if "state" in payload:
            return _centralized(payload, version, self.model_file)
        if "global" not in payload:
            raise FedrecError(f"{self.model_file}: model file holds neither a full state nor a global part")
        if self.run is not None:
            return self._federated(payload, version)
        cfg = _config(payload, self.model_file)
        nd = resolve_node_data(cfg, {"data-path": str(self.data)})
        items = _catalog(str(self.data), cfg)
        key = self.run_key or _sibling_run_key(self.model_file) or _scan_run_key(Path(self.state_dir), nd.data)
        state = Path(self.state_dir) / key / STATE_FILE
        return _assemble(cfg, payload["global"], nd.data, items, state, version)

    def _federated(self, payload: dict[str, Any], version: str) -> NodeRecommender:
        cfg = _run_config(self.run)
        n = cfg.data.partitions
        if self.partition is None and n > 1:
            raise FedrecError(f"{self.run} is a federated run of {n} nodes: choose --partition 0..{n - 1}")
        pid = self.partition or 0
        if pid >= n:
            raise FedrecError(f"--partition {pid} is outside 0..{n - 1}")
        key = self.run_key or _sibling_run_key(self.model_file)
        if not key:
            raise FedrecError(f"{self.run}: no summary.json with the run key (unfinished run?)")
        if self.hand_over is not None:
            self.hand_over(cfg, pid, n)
        nd = resolve_node_data(cfg, {"partition-id": pid, "num-partitions": n})
        expected = json.loads((self.run / "config.json").read_text()).get("catalog_hash")
        if expected and expected != nd.catalog_hash:
            raise FedrecError(f"{self.run}: the run's item catalog differs from the node's data")
        root = Path(cfg.sim.node_state_dir) if cfg.sim.node_state_dir else self.run / "nodes"
        state = root / f"partition-{pid}" / key / STATE_FILE
        items = _catalog(cfg.data.path, cfg)
        return _assemble(cfg, payload["global"], nd.data, items, state, version)


def _read_model(path: Path) -> tuple[dict[str, Any], str]:
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise FedrecError(f"{path}: cannot read model file ({exc.strerror})") from None
    try:
        payload = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise FedrecError(f"{path}: not a readable model file ({exc.__class__.__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise FedrecError(f"{path}: not a fedrec model file")
    return payload, hashlib.sha256(blob).hexdigest()[:16]


def _config(payload: dict[str, Any], path: Path) -> RunConfig:
    if not isinstance(payload.get("config"), dict):
        raise FedrecError(f"{path}: model file has no run configuration")
    return RunConfig.from_mapping(payload["config"])


def _run_config(run: Path) -> RunConfig:
    try:
        return RunConfig.from_mapping(json.loads((run / "config.json").read_text())["config"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FedrecError(f"{run}/config.json: cannot read the run configuration ({exc})") from None


def _sibling_run_key(model_file: Path) -> str | None:
    summary = model_file.parent / "summary.json"
    try:
        return json.loads(summary.read_text()).get("run_key") if summary.exists() else None
    except (OSError, ValueError) as exc:
        raise FedrecError(f"{summary}: unreadable ({exc})") from None


def _scan_run_key(state_dir: Path, data: InteractionData) -> str:
    """The run key whose stored user embeddings belong to exactly this node's users."""
    fingerprint = users_fingerprint(data.user_ids)
    keys = [p.parent.name for p in sorted(state_dir.glob(f"*/{STATE_FILE}")) if _load_state(p)[0] == fingerprint]
    if len(keys) != 1:
        found = "none" if not keys else f"{len(keys)} ({', '.join(keys)})"
        raise FedrecError(f"{state_dir}: runs with embeddings for this node's users: {found}; pass --run-key")
    return keys[0]


def _load_state(path: Path) -> tuple[str | None, dict[str, torch.Tensor]]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FedrecError(f"{path}: no user embeddings for this node in this run") from None
    except Exception as exc:
        raise FedrecError(f"{path}: not a readable node state file ({exc.__class__.__name__})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("state"), dict):
        raise FedrecError(f"{path}: not a node state file")
    return payload.get("users"), payload["state"]


@functools.lru_cache(maxsize=4)
def _whole(data_path: str, seed: int, users: int, items: int) -> InteractionData:
    from shared.datasets import load_tables  # a centralized run's data (pandas: not on a node)

    tables = load_tables(data_path, seed=seed, synthetic_users=users, synthetic_items=items)
    return InteractionData.from_tables(tables)


def _catalog(data_path: str, cfg: RunConfig) -> np.ndarray:
    """Item pseudonyms in catalog order: a node's prepared directory is read with pyarrow alone."""
    if (Path(data_path).expanduser() / "manifest.json").exists():
        from shared.node_dataset import read_catalog

        items, _ = read_catalog(Path(data_path).expanduser() / FILES[2])
        return np.array([i.decode("ascii") for i in items.tolist()], dtype=object)
    from shared.datasets import load_tables

    tables = load_tables(data_path, seed=cfg.seed, synthetic_users=cfg.data.synthetic_users,
                         synthetic_items=cfg.data.synthetic_items)
    return np.asarray(tables.catalog.items, dtype=object)


def _shell(cfg: RunConfig, n_users: int, n_items: int):
    with torch_seed(cfg.seed, "recommender-shell"):
        return build_model(cfg, max(n_users, 1), n_items)


def _centralized(payload: dict[str, Any], version: str, path: Path) -> NodeRecommender:
    cfg = _config(payload, path)
    data = _whole(cfg.data.path, cfg.seed, cfg.data.synthetic_users, cfg.data.synthetic_items)
    if list(payload.get("user_ids", [])) != list(data.user_ids):
        raise FedrecError(f"{path}: the model's users differ from the users of {cfg.data.path}")
    model = _shell(cfg, data.n_users, data.n_items)
    try:
        model.load_state_dict(payload["state"])
    except RuntimeError as exc:
        raise FedrecError(f"{path}: model state does not fit {cfg.model.name} on this data ({exc})") from None
    return NodeRecommender.build(cfg, model, data, _catalog(cfg.data.path, cfg), version=version)


def _assemble(cfg: RunConfig, global_part: dict, data: InteractionData, items: np.ndarray, state: Path,
              version: str) -> NodeRecommender:
    users, local = _load_state(state)
    if users != users_fingerprint(data.user_ids):
        raise FedrecError(f"{state}: these user embeddings belong to a different set of users than the node's data")
    model = _shell(cfg, data.n_users, len(items))
    local, offsets = personal.split(local)
    try:  # serve the node's personal model (dual personalization), as it was evaluated
        if cfg.model.personalization == "dual":
            global_part = personal.view(global_part, offsets)
        merge_state(model, global_part=global_part, local_part=local)
    except ValueError as exc:
        raise FedrecError(f"model and node state do not fit together: {exc}") from None
    # serve what was evaluated: with eval-user-epochs the users are refitted to this global part first
    refit_user_rows(model, cfg, data, rng=numpy_rng(cfg.seed, "serve-users", users))
    return NodeRecommender.build(cfg, model, data, items, version=version)
