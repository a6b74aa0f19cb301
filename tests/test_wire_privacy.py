"""Wire privacy: everything a node sends to the coordinator in a whole DP run, byte for byte.

Nodes are configured as in a deployment (``data-path``, ``node-name``, ``state-dir``,
``signing-key`` in node_config; the coordinator only has the item catalog). Every
instruction and every reply crosses a protobuf round trip, exactly what the SuperLink
and SuperNode exchange; the serialized replies are recorded and searched for raw ids,
user pseudonyms and user embedding rows (as float32 and float16 bytes), and their
structure is checked: only global arrays, scalar metrics and signed ledger entries.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from deploy.demo_data import DemoData, prepare_nodes
from server.loop import FederatedRun, initial_model
from server.secagg import SecAggRun
from shared import schema
from shared.config import RunConfig
from shared.datasets import load_tables
from shared.ledger import FIELDS, read_jsonl
from shared.models import LOCAL_PREFIX
from shared.synthetic import SyntheticSpec, generate
from simulations.client_app import app as client_app
from simulations.inprocess import InProcessGrid
from tests.support import MODEL_AVERAGING, WireRecorder

SECAGG_STAGE_KEYS = {"secaggplus_configs", "fitres.metrics", "fitres.num_examples", "fitres.parameters",
                     "fitres.status"}
TRAIN_METRICS = {"num-examples", "train-loss", "train-seconds", "steps", "node-weight", "epsilon", "delta"}
EVAL_METRIC = re.compile(r"^(num-examples|node-weight|(val|test)-[a-z-]+-(sum|count)|(val|test)-count)$")


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> tuple[DemoData, pd.DataFrame]:
    """Two data owners whose raw ids look like real ones (e-mail addresses, ISBN-like item codes)."""
    raw = generate(SyntheticSpec(n_users=120, n_items=150, seed=7)).interactions
    raw[schema.USER] = raw[schema.USER].map(lambda u: f"reader.{int(u):04d}@example.org")
    raw[schema.ITEM] = raw[schema.ITEM].map(lambda i: f"isbn-978{int(i):010d}")
    items = sorted(raw[schema.ITEM].unique())
    root = tmp_path_factory.mktemp("wire")
    return prepare_nodes(raw, root / "data", nodes=2, catalog_items=items, seed=7), raw


def node_configs(data: DemoData, root: Path) -> list[dict]:
    return [{"data-path": str(p), "node-name": f"edge-{i + 1}", "state-dir": str(root / f"state-{i + 1}"),
             "signing-key": str(root / f"state-{i + 1}" / "signing.key")} for i, p in enumerate(data.nodes)]


def run(data: DemoData, root: Path, **extra) -> WireRecorder:
    cfg = RunConfig.from_mapping({**MODEL_AVERAGING,
                                  "data.catalog-path": str(data.catalog), "data.path": "/nonexistent-on-coordinator",
                                  "federation.run-dir": str(root / "run"), "model.name": "neumf",
                                  "model.embedding-dim": 8,
                                  "model.mlp-layers": "16,8", "federation.rounds": 2, "dp.enabled": True,
                                  "eval.full-rank": False,
                                  "federation.min-nodes": 2, **extra})
    configs = node_configs(data, root)
    recorder = WireRecorder(client_app, {1000 + i: Path(c["state-dir"]) for i, c in enumerate(configs)})
    grid = InProcessGrid(recorder, configs, cfg.to_flower_config())
    (SecAggRun if cfg.transport.secure_aggregation else FederatedRun)(cfg, grid, 1).execute()
    return recorder


@pytest.mark.parametrize("mode", [{"transport.compression": "fp16"}, {"transport.secure-aggregation": True},
                                  {"transport.compression": "fp16", "model.personalization": "dual"}],
                         ids=["plain-fp16", "secagg", "personal-fp16"])
def test_nothing_private_leaves_a_node(federation, tmp_path, mode):
    data, raw = federation
    recorder = run(data, tmp_path, **mode)
    blob = recorder.blob()
    assert len(recorder.sent) >= 8 and recorder.user_rows
    # 1. no raw id, in any encoding a node could use
    for raw_id in pd.concat([raw[schema.USER], raw[schema.ITEM]]).unique():
        assert raw_id.encode() not in blob and raw_id.encode("utf-16-le") not in blob, raw_id
    # 2. no user pseudonym (hex or binary)
    for path in data.nodes:
        for user in load_tables(str(path), seed=7).interactions["user"].unique():
            assert user.encode() not in blob and bytes.fromhex(user) not in blob, user
    # 3. no user embedding row, as float32 or float16 bytes, nor numerically close to any sent row
    rows = np.concatenate([t.reshape(-1, t.shape[-1]) for t in recorder.user_rows])
    for row in rows:
        assert row.astype(np.float32).tobytes() not in blob and row.astype(np.float16).tobytes() not in blob
    sent_rows = [a.numpy().reshape(-1, a.shape[-1]).astype(np.float32) for _, _, m in recorder.sent
                 for rec in m.content.array_records.values() for a in rec.values() if len(a.shape) == 2
                 and a.shape[-1] == rows.shape[-1]]
    if sent_rows:
        dist = torch.cdist(torch.from_numpy(rows.astype(np.float32)), torch.from_numpy(np.concatenate(sent_rows)))
        assert float(dist.min()) > 1e-3
    # 3b. no personal offset (dual personalization): no row of one, as float32 or float16 bytes
    assert bool(recorder.personal) == ("model.personalization" in mode)
    for offset in recorder.personal:
        for row in offset.reshape(-1, offset.shape[-1]) if offset.ndim > 1 else [offset]:
            for dtype in (np.float32, np.float16):
                if row.size >= 8 and np.any(row.astype(dtype)):
                    assert row.astype(dtype).tobytes() not in blob
    # 4. structure: global arrays, scalar metrics, signed ledger entries; nothing else
    cfg = RunConfig.from_mapping({**MODEL_AVERAGING,
                                  "data.catalog-path": str(data.catalog), "model.name": "neumf",
                                  "model.embedding-dim": 8,
                                  "model.mlp-layers": "16,8"})
    global_keys = set(initial_model(cfg)[0])
    for kind, _, reply in recorder.sent:
        assert not reply.has_error(), reply.error
        content = reply.content
        for rec in content.array_records.values():
            assert set(rec.keys()) <= global_keys and not any(k.startswith(LOCAL_PREFIX) for k in rec)
        for rec in content.metric_records.values():
            assert all(isinstance(v, int | float) for v in rec.values())
        if kind == "evaluate":
            assert set(content.keys()) == {"metrics"} and all(EVAL_METRIC.match(k) for k in content["metrics"])
        elif "transport.secure-aggregation" in mode:
            assert set(content.keys()) <= SECAGG_STAGE_KEYS
            if "fitres.parameters" in content:  # the plain update is removed; only the masked vector travels
                assert len(content["fitres.parameters"]) == 0
        else:
            assert set(content.keys()) == {"arrays", "metrics", "ledger"}
            assert set(content["metrics"].keys()) == TRAIN_METRICS
            assert all(a.dtype == "float16" for a in content["arrays"].values())
    # 5. the ledger entries that crossed the wire carry only mechanism parameters and epsilon
    entries = read_jsonl(tmp_path / "run" / "federation_ledger.jsonl")
    assert len(entries) == 4 and all(set(e) == {*FIELDS, "signature"} for e in entries)
    # 6. and nothing the coordinator stored holds a raw id or a user pseudonym either
    stored = b"".join(p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file())
    assert not any(u.encode() in stored for u in raw[schema.USER].unique())
