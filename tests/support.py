"""Helpers the test modules share (plain functions and constants; the fixtures are in ``conftest.py``).

No test module imports another test module: what two of them need lives here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.supercore.task_identity import TaskIdentity

from client import personal
from server import checkpoint
from shared.config import RunConfig
from shared.interactions import InteractionData
from shared.ledger import read_jsonl
from shared.models import LOCAL_PREFIX
from simulations.client_app import app as client_app
from simulations.inprocess import InProcessGrid, simulation_node_configs
from simulations.server_app import federated_run

REPO = Path(__file__).resolve().parents[1]

# The run-config defaults most tests were written against, before private noisy-sum releases became the
# default: the federation averages the nodes' models, without DP unless a test sets dp = true (then DP-SGD on
# each node, local noise). Tests of the default mechanism (tests/test_dp_releases.py) do not use it.
MODEL_AVERAGING = {"dp.enabled": False, "model.item-bias": False, "model.item-init": "random", "dp.clip-norm": 1.0,
                   "dp.sample-rate": 0.1,
                   "dp.mechanism": "local-sgd", "dp.noise": "local", "dp.frequency-share": 0.0}

# a small 3-node federation on the embedded synthetic data (GMF, sampled-negative evaluation only)
SMALL_FEDERATION = {**MODEL_AVERAGING,
                    "data.synthetic-users": 240, "data.synthetic-items": 300, "model.name": "gmf", "train.lr": 0.01,
                    "data.partitions": 3, "federation.min-nodes": 3, "eval.full-rank": False}

# the reliability tests' federation: the node count is the test's, node state under ``tmp_path/nodes``
SMALL_RELIABILITY = {**MODEL_AVERAGING,
                     "data.synthetic-users": 200, "data.synthetic-items": 240, "model.name": "gmf", "train.lr": 0.01,
                     "eval.full-rank": False}


# the small centralized model the serving tests serve (GMF, one epoch)
SMALL_SERVING = {**MODEL_AVERAGING, "data.synthetic-users": 60, "data.synthetic-items": 120, "model.name": "gmf",
                 "train.epochs": 1, "eval.patience": 0, "eval.full-rank": False}


def shared_data_dir() -> Path:
    """``$FEDREC_DATA_DIR`` or ``../shared/data`` beside the repository."""
    return Path(os.environ.get("FEDREC_DATA_DIR", REPO.parent / "shared" / "data"))


def need(path: Path) -> Path:
    """Skip the calling test unless ``path`` exists (MovieLens is never copied into the repo)."""
    if not path.exists():
        pytest.skip(f"{path} not present (set FEDREC_DATA_DIR to the MovieLens data directory)")
    return path


def train_small(out: Path, settings: dict) -> Path:
    """Train a centralized run of ``settings`` into ``out`` on one PyTorch thread; returns ``out``."""
    from simulations.centralized import train_centralized

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_centralized(RunConfig.from_mapping(settings), out, show_progress=False)
    finally:
        torch.set_num_threads(threads)
    return out


def cfg_for(tmp_path: Path, **extra) -> RunConfig:
    """:data:`SMALL_FEDERATION` with its run directory under ``tmp_path``, plus ``extra`` keys."""
    return RunConfig.from_mapping({**SMALL_FEDERATION, "federation.run-dir": str(tmp_path / "run"), **extra})


def make_cfg(tmp_path: Path, nodes: int, **extra) -> RunConfig:
    """:data:`SMALL_RELIABILITY` over ``nodes`` nodes whose state lives under ``tmp_path/nodes``."""
    return RunConfig.from_mapping({**SMALL_RELIABILITY, "data.partitions": nodes, "federation.min-nodes": nodes,
                                   "federation.run-dir": str(tmp_path / "run"),
                                   "sim.node-state-dir": str(tmp_path / "nodes"),
                                   **extra})


def federate(cfg: RunConfig, *, tap=None, wrap=None, nodes: int | None = None):
    """Run ``cfg`` on the in-process Grid (real ClientApp handlers, the real coordinator loop).

    ``wrap`` wraps the simulation ClientApp (fault injection), ``tap`` sees every message; ``nodes`` defaults to
    ``data.partitions``. Returns the run summary and the grid.
    """
    app = wrap(client_app) if wrap else client_app
    grid = InProcessGrid(app, simulation_node_configs(nodes or cfg.data.partitions), cfg.to_flower_config(), tap=tap)
    return federated_run(cfg, grid, 1).execute(), grid


def records(tmp_path: Path) -> list[dict]:
    """The coordinator's per-round records (``tmp_path/run/metrics.jsonl``)."""
    return [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]


def node_chains(tmp_path: Path, nodes: int) -> dict[int, list[dict]]:
    """Each node's own ledger entries of this run (the source of truth for its spend)."""
    run_key = checkpoint.load(tmp_path / "run").run_key
    out = {}
    for pid in range(nodes):
        path = tmp_path / "nodes" / f"partition-{pid}" / "ledger.jsonl"
        out[pid] = [e for e in read_jsonl(path) if e["run_id"] == run_key] if path.exists() else []
    return out


def instruction(kind: str, arrays: ArrayRecord, config: dict, node: int = 1000) -> Message:
    """A coordinator instruction as a node receives it (for calling ClientApp handlers directly)."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    msg = Message(RecordDict({"arrays": arrays, "config": ConfigRecord(config)}), dst_node_id=node,
                  message_type=kind)
    msg.metadata.__dict__["_message_id"] = "m1"
    return msg


class WireRecorder:
    """Wrap a ClientApp: instructions and replies cross a protobuf round trip; reply bytes are kept."""

    def __init__(self, app, state_dirs: dict[int, Path] | None = None) -> None:
        self.app = app
        self.sent: list[tuple[str, bytes, Message]] = []  # (instruction type, reply bytes, decoded reply)
        self.state_dirs = state_dirs or {}
        self.user_rows: list[np.ndarray] = []  # every user-embedding table a node held after a reply
        self.personal: list[np.ndarray] = []  # every personal offset array a node held (model.personalization)

    def __call__(self, msg: Message, context) -> Message:
        msg = message_from_proto(message_to_proto(msg))
        reply = self.app(msg, context)
        blob = message_to_proto(reply).SerializeToString()
        self.sent.append((msg.metadata.message_type, blob, message_from_proto(message_to_proto(reply))))
        for path in Path(self.state_dirs.get(context.node_id, "/nonexistent")).glob("*/user_emb.pt"):
            state = torch.load(path, weights_only=True)["state"]
            self.user_rows += [t.numpy() for k, t in state.items() if k.startswith(LOCAL_PREFIX)]
            self.personal += [t.numpy() for k, t in state.items() if k.startswith(personal.PREFIX)
                              and t.is_floating_point()]
        return message_from_proto(message_to_proto(reply))

    def blob(self) -> bytes:
        return b"".join(b for _, b, _ in self.sent)


def heavy_and_light() -> InteractionData:
    """Two users: one with 500 interactions, one with 5."""
    return InteractionData(
        user_ids=np.array(["a", "b"], dtype=object), n_items=600,
        train_indptr=np.array([0, 500, 505]), train_items=np.r_[np.arange(500), np.arange(5)],
        train_values=np.ones(505, np.float32), val_item=np.full(2, -1), val_value=np.zeros(2, np.float32),
        test_item=np.full(2, -1), test_value=np.zeros(2, np.float32),
        val_negatives=np.full((2, 99), -1), test_negatives=np.full((2, 99), -1))


@contextlib.contextmanager
def serving(cmd: list[str], **popen: Any) -> Iterator[tuple[subprocess.Popen, str]]:
    """Start ``fedrec serve`` (``cmd``, its log on stdout or stderr as ``popen`` says), yield it with the address it
    reports; on leaving, SIGTERM must stop it with exit status 0 (it is killed if it does not)."""
    proc = subprocess.Popen(cmd, text=True, **popen)
    try:
        lines = proc.stderr if popen.get("stderr") == subprocess.PIPE else proc.stdout
        seen = []
        for line in lines:
            seen.append(line)
            if m := re.search(r"on (127\.0\.0\.1:\d+)", line):
                break
        else:
            raise AssertionError(f"fedrec serve exited ({proc.poll()}) without reporting its address:\n"
                                 f"{''.join(seen)}")
        yield proc, m.group(1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
