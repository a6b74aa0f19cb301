"""Row-mean aggregation: each row averaged over the nodes that changed it."""

from __future__ import annotations

import numpy as np
import pytest

from server.row_mean import changed_rows, row_mean
from shared.config import RunConfig
from shared.errors import ConfigError
from tests.support import MODEL_AVERAGING


def test_rows_are_averaged_over_the_nodes_that_changed_them():
    ref = {"item_emb.weight": np.zeros((4, 2), np.float32), "bias": np.zeros(3, np.float32)}
    a = {"item_emb.weight": np.array([[1, 1], [0, 0], [2, 0], [0, 0]], np.float32),
         "bias": np.array([1, 0, 3], np.float32)}
    b = {"item_emb.weight": np.array([[3, 3], [0, 0], [0, 0], [0, 0]], np.float32),
         "bias": np.array([2, 0, 0], np.float32)}
    out = row_mean([(a, 1.0), (b, 3.0)], ref)
    # row 0: both changed it, weighted 1:3; row 2: only a; rows 1, 3: nobody -> the reference
    np.testing.assert_allclose(out["item_emb.weight"], [[2.5, 2.5], [0, 0], [2, 0], [0, 0]])
    np.testing.assert_allclose(out["bias"], [1.75, 0, 3])
    assert out["item_emb.weight"].dtype == np.float32


def test_dense_updates_equal_fedavg():
    rng = np.random.default_rng(0)
    ref = {"w": rng.normal(size=(5, 3)).astype(np.float32)}
    ups = [({"w": ref["w"] + rng.normal(size=(5, 3)).astype(np.float32)}, float(n)) for n in (2, 5, 1)]
    fedavg = sum(u["w"].astype(np.float64) * n for u, n in ups) / 8
    np.testing.assert_allclose(row_mean(ups, ref)["w"], fedavg, rtol=1e-6)


def test_changed_rows_shapes():
    ref = np.zeros((3, 2, 2))
    v = ref.copy()
    v[1, 1, 0] = 1
    assert changed_rows(v, ref).tolist() == [False, True, False]
    assert changed_rows(np.float64(1.0), np.float64(1.0)).tolist() == [False]


@pytest.mark.parametrize("extra", [{"dp.enabled": True}, {"transport.compression": "fp16"},
                                   {"transport.secure-aggregation": True}, {"federation.strategy": "fedadam"}])
def test_row_mean_refuses_what_changes_every_row(extra):
    with pytest.raises(ConfigError, match="aggregation"):
        RunConfig.from_mapping({**MODEL_AVERAGING, "federation.aggregation": "row-mean", **extra})


def test_row_mean_runs_through_the_coordinator_loop(tmp_path):
    from simulations.benchmarks.common import run_federation_inprocess

    cfg = RunConfig.from_mapping({**MODEL_AVERAGING,
        "data.synthetic-users": 120, "data.synthetic-items": 200, "data.partitioner": "user-per-node",
        "data.partitions": 120,
        "federation.min-nodes": 120, "model.name": "gmf", "model.embedding-dim": 8, "train.lr": 0.05,
        "train.local-epochs": 2, "federation.fraction-train": 0.25,
        "federation.rounds": 3, "eval.every": 3, "eval.full-rank": False, "eval.patience": 0,
        "federation.max-update-norm": 1000.0,
        "federation.aggregation": "row-mean"})
    summary, records, _ = run_federation_inprocess(cfg, tmp_path / "run")
    losses = [r["train_loss"] for r in records]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert all(len(r["nodes"]) == 30 and not r.get("rejected") for r in records)
    assert summary.test["hr10"] > 0.25  # 3 rounds learn: a random ranking of 100 candidates scores 0.10
