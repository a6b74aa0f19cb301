"""Dual personalization (PFedRec's item side): the node's offset, kept on the node, evaluated and served with."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from flwr.app import RecordDict

from client import personal
from client.node import LocalNode
from client.node_data import resolve_node_data
from client.serving.source import ModelSource
from client.state import NodeStateStore, users_fingerprint
from client.trainer import NegativeSampler
from server import checkpoint
from shared import sparse_rows
from shared.config import RunConfig
from shared.interactions import InteractionData
from simulations.client_app import hand_over_partition
from simulations.server_app import InjectedFault
from tests.support import SMALL_FEDERATION, cfg_for, federate


def test_the_view_of_a_node_offset_is_its_trained_model_and_keeps_only_touched_rows():
    gen = torch.Generator().manual_seed(0)
    received = OrderedDict(table=torch.randn(50, 4, generator=gen), dense=torch.randn(3, 4, generator=gen))
    trained = OrderedDict((k, v.clone()) for k, v in received.items())
    trained["table"][[3, 17, 40]] += 0.5
    trained["dense"] += 0.1
    kept = personal.offsets(trained, received)
    assert kept["personal.table" + sparse_rows.ROWS].tolist() == [3, 17, 40]
    assert "personal.dense" in kept and all(k.startswith(personal.PREFIX) for k in kept)
    view = personal.view(received, kept)
    assert all(torch.allclose(view[k], trained[k], atol=1e-6) for k in trained)
    moved = OrderedDict((k, v + 1.0) for k, v in received.items())  # a newer global model: the offset rides on it
    assert torch.allclose(personal.view(moved, kept)["table"], trained["table"] + 1.0, atol=1e-6)
    assert personal.view(received, OrderedDict()) == received


def test_offsets_of_another_model_are_refused():
    received = OrderedDict(table=torch.zeros(10, 4))
    kept = personal.offsets(OrderedDict(table=torch.ones(10, 4)), received)
    with pytest.raises(ValueError, match="do not fit"):
        personal.view(OrderedDict(table=torch.zeros(10, 4), other=torch.zeros(2)), kept)
    with pytest.raises(ValueError):
        personal.view(OrderedDict(table=torch.zeros(5, 4)), personal.offsets(
            OrderedDict(table=torch.ones(10, 4)), OrderedDict(table=torch.zeros(10, 4))))


def test_the_anchor_negative_pool_never_draws_held_out_items():
    data = InteractionData(
        user_ids=np.array(["a"]), n_items=40, train_indptr=np.array([0, 2]), train_items=np.array([0, 1]),
        train_values=np.ones(2, np.float32), val_item=np.array([2]), val_value=np.ones(1, np.float32),
        test_item=np.array([3]), test_value=np.ones(1, np.float32), val_negatives=np.full((1, 99), -1),
        test_negatives=np.full((1, 99), -1))
    rng = np.random.default_rng(0)
    honest = NegativeSampler(data)(np.zeros(4000, np.int64), 1, rng)
    anchor = NegativeSampler(data, held_out=True)(np.zeros(4000, np.int64), 1, rng)
    assert {2, 3} <= set(honest.ravel()) and not {0, 1} & set(honest.ravel())  # held-out items are fair negatives
    assert not {0, 1, 2, 3} & set(anchor.ravel())


def test_personal_offsets_survive_a_coordinator_kill_and_are_what_the_node_evaluates_and_serves(tmp_path):
    base = {"federation.rounds": 3, "model.personalization": "dual", "sim.node-state-dir": str(tmp_path / "nodes")}
    with pytest.raises(InjectedFault):
        federate(cfg_for(tmp_path, **base, **{"sim.fail-after-round": 2}))
    state_files = sorted((tmp_path / "nodes").glob("partition-*/*/user_emb.pt"))
    assert len(state_files) == 3
    killed = {p: torch.load(p, weights_only=True) for p in state_files}
    assert all(k["round"] == 2 and any(n.startswith("personal.item_emb.") for n in k["state"])
               for k in killed.values())  # (a silo touches every row: stored dense)
    found = []

    def wrap(app):
        def call(msg, ctx):
            if not found or found[-1][0] != ctx.node_id:  # the resumed run's nodes start from fresh contexts
                path = next(p for p in state_files if p.parent.parent.name == f"partition-{ctx.node_id - 1000}")
                on_disk = torch.load(path, weights_only=True)
                found.append((ctx.node_id, len(ctx.state), on_disk))
            return app(msg, ctx)
        return call

    cfg = cfg_for(tmp_path, **base, **{"federation.resume-from": str(tmp_path / "run")})
    federate(cfg, wrap=wrap)
    first = {node: (n_state, disk) for node, n_state, disk in reversed(found)}
    assert len(first) == 3 and all(n_state == 0 for n_state, _ in first.values())
    for path, before in killed.items():
        disk = first[1000 + int(path.parent.parent.name.split("-")[1])][1]
        assert all(torch.equal(disk["state"][k], v) for k, v in before["state"].items())
    saved = torch.load(state_files[0], weights_only=True)
    keys = set(saved["state"])
    assert saved["round"] == 3 and keys == set(killed[state_files[0]]["state"])
    # a restarted node (empty context.state) finds them in its state directory
    store = NodeStateStore(RecordDict(), state_files[0].parent.parent, state_files[0].parent.name)
    loaded = store.load_local(saved["users"])
    assert loaded is not None and set(loaded) == keys
    assert all(torch.equal(loaded[k], saved["state"][k]) for k in keys)
    # and they are what the node evaluates with: without them the same node scores differently
    pid = int(state_files[0].parent.parent.name.split("-")[1])
    nd = resolve_node_data(cfg, {"partition-id": pid, "num-partitions": 3})
    assert users_fingerprint(nd.data.user_ids) == saved["users"]
    node = LocalNode(cfg, nd.data, nd.value_range, nd.node_key)
    model = checkpoint.load(tmp_path / "run").arrays
    global_part = OrderedDict((k, torch.from_numpy(np.asarray(v))) for k, v in model.items())
    users_only = OrderedDict((k, v) for k, v in loaded.items() if not k.startswith(personal.PREFIX))
    with_offsets = node.evaluate(global_part, loaded, ["val"], full_rank=True)
    without = node.evaluate(global_part, users_only, ["val"], full_rank=True)
    assert with_offsets["val-ndcg-full-sum"] != without["val-ndcg-full-sum"]
    # the node's final lists come from the same personal model
    rec = ModelSource(run=tmp_path / "run", partition=pid, hand_over=hand_over_partition).load()
    served = rec.model.item_emb["gmf"].weight.detach()
    final = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["global"]
    offsets = personal.split(loaded)[1]
    want = personal.view(OrderedDict((k, v.float()) for k, v in final.items()), offsets)["item_emb.gmf.weight"]
    assert torch.allclose(served, want, atol=1e-6) and not torch.allclose(served, final["item_emb.gmf.weight"])


def test_without_dual_nothing_personal_is_kept(tmp_path):
    cfg = RunConfig.from_mapping({**SMALL_FEDERATION, "federation.rounds": 1,
                                  "federation.run-dir": str(tmp_path / "run"),
                                  "sim.node-state-dir": str(tmp_path / "nodes")})
    federate(cfg)
    for path in (tmp_path / "nodes").glob("partition-*/*/user_emb.pt"):
        assert not any(k.startswith(personal.PREFIX) for k in torch.load(path, weights_only=True)["state"])


def one_user_per_node(tmp_path, name: str, **extra) -> float:
    """Test HR@10 of a small one-user-per-node federation on the synthetic data (every node, every round)."""
    cfg = RunConfig.from_mapping({
        **SMALL_FEDERATION, "data.synthetic-users": 50, "data.synthetic-items": 150,
        "data.partitioner": "user-per-node", "data.partitions": 50, "federation.min-nodes": 50,
        "federation.rounds": 2, "train.lr": 0.05, "train.local-epochs": 5, "train.batch-size": 64,
        "federation.max-update-norm": 1000.0, "eval.every": 1, "eval.patience": 0,
        "federation.run-dir": str(tmp_path / name), **extra})
    return federate(cfg)[0].test["hr10"]


def test_item_side_personalization_gains_only_from_the_anchor_protocol_leak(tmp_path):
    """PFedRec's personal item rows move only the items a user trained on: its positives up, its sampled
    negatives down. Under the anchors' protocol the held-out item is never a negative, so it is the one item
    left untouched and rises to the top (HR@10 -> 1); with honest negatives the offsets are noise on the
    candidates and the personal model ranks no better than the shared one."""
    shared = one_user_per_node(tmp_path, "shared")
    honest = one_user_per_node(tmp_path, "dual", **{"model.personalization": "dual"})
    leaky = one_user_per_node(tmp_path, "dual-unseen", **{"model.personalization": "dual",
                                                          "train.negative-pool": "unseen"})
    assert leaky >= 0.95 and leaky > shared + 0.2
    assert honest <= shared + 0.02
