"""Sparse item updates (``transport.item-updates = "sparse"``): only changed rows travel; the model is the same."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from hypothesis import given, settings
from hypothesis import strategies as st

from client.trainer import NegativeSampler, TrainSettings, train_epochs
from server import checkpoint
from server.guard import ReplyGuard, densify_rows
from shared.config import RunConfig
from shared.errors import ConfigError
from shared.interactions import InteractionData
from shared.models import build_model
from shared.sparse_rows import ROWS, VALUES, decode, encode
from tests.support import MODEL_AVERAGING, federate, records

pytestmark = pytest.mark.usefixtures("one_thread")


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 40), cols=st.integers(1, 6), seed=st.integers(0, 2**31), share=st.floats(0, 1))
def test_encode_then_decode_gives_back_the_update_exactly(rows, cols, seed, share):
    rng = np.random.default_rng(seed)
    reference = {"table": rng.normal(size=(rows, cols)).astype(np.float32),
                 "bias": rng.normal(size=rows).astype(np.float32), "scale": np.float32(1.0) * np.ones(())}
    new = {k: v.copy() for k, v in reference.items()}
    touched = rng.random(rows) < share
    new["table"][touched] += 0.5
    new["bias"][touched] -= 0.25
    sent = encode(new, reference)
    if touched.sum() * (cols * 4 + 8) < rows * cols * 4:  # smaller as rows: sent as rows
        assert set(sent) >= {"table" + ROWS, "table" + VALUES} and "table" not in sent
        assert sent["table" + ROWS].tolist() == np.flatnonzero(touched).tolist()
    dense, problem = decode(sent, reference)
    assert problem is None and set(dense) == set(reference)
    for key in reference:
        assert dense[key].dtype == reference[key].dtype
        np.testing.assert_array_equal(dense[key], new[key])


def test_sparse_float16_rows_are_upcast_and_unsent_rows_stay_exact():
    reference = {"t": np.linspace(0, 1, 40, dtype=np.float32).reshape(20, 2)}
    sent = {"t" + ROWS: np.array([3, 7]), "t" + VALUES: np.array([[1, 2], [3, 4]], np.float16)}
    dense, problem = decode(sent, reference)
    assert problem is None and dense["t"].dtype == np.float32
    untouched = np.setdiff1d(np.arange(20), [3, 7])
    np.testing.assert_array_equal(dense["t"][untouched], reference["t"][untouched])
    np.testing.assert_array_equal(dense["t"][[3, 7]], [[1, 2], [3, 4]])


REF = {"t": np.zeros((10, 2), np.float32)}


@pytest.mark.parametrize(("sent", "reason"), [
    ({"t@rows": np.array([1, 10]), "t@values": np.ones((2, 2), np.float32)}, "outside 0..9"),
    ({"t@rows": np.array([-1, 2]), "t@values": np.ones((2, 2), np.float32)}, "outside 0..9"),
    ({"t@rows": np.array([2, 2]), "t@values": np.ones((2, 2), np.float32)}, "duplicate"),
    ({"t@rows": np.array([4, 2]), "t@values": np.ones((2, 2), np.float32)}, "unsorted"),
    ({"t@rows": np.array([1.0, 2.0]), "t@values": np.ones((2, 2), np.float32)}, "integer"),
    ({"t@rows": np.array([[1, 2]]), "t@values": np.ones((2, 2), np.float32)}, "1-D"),
    ({"t@rows": np.array([1, 2]), "t@values": np.ones((3, 2), np.float32)}, "shape"),
    ({"t@rows": np.array([1, 2]), "t@values": np.ones((2, 2), np.float64)}, "dtype"),
    ({"t@rows": np.array([1, 2])}, "rows without"),
    ({"t@values": np.ones((2, 2), np.float32)}, "values without"),
    ({"u@rows": np.array([1]), "u@values": np.ones((1, 2), np.float32)}, "no array 'u'"),
    ({"t": np.zeros((10, 2), np.float32), "t@rows": np.array([1]), "t@values": np.ones((1, 2), np.float32)},
     "both dense and as rows"),
])
def test_malformed_sparse_updates_are_refused_with_a_reason(sent, reason):
    dense, problem = decode(sent, REF)
    assert dense == {} and problem is not None and reason in problem, problem


def reply(arrays: dict[str, np.ndarray], node: int = 7) -> Message:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    record = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    msg = Message(RecordDict({"arrays": record, "metrics": MetricRecord({"num-examples": 3})}), dst_node_id=1,
                  message_type="train")
    msg.metadata.__dict__["_src_node_id"] = node
    return msg


def test_the_guard_rebuilds_sparse_replies_and_rejects_malformed_ones_with_the_reason():
    seen = []
    inner = type("Inner", (), {"aggregate_train": staticmethod(lambda rnd, replies: seen.extend(replies))})()
    guard = ReplyGuard(inner, max_update_norm=10.0, seed=0, item_updates="sparse")
    guard._reference = {k: v.copy() for k, v in REF.items()}
    good = reply({"t@rows": np.array([0, 5]), "t@values": np.ones((2, 2), np.float32)}, node=7)
    wire = good.content["arrays"].count_bytes()
    bad = reply({"t@rows": np.array([5, 0]), "t@values": np.ones((2, 2), np.float32)}, node=8)
    guard.aggregate_train(1, [good, bad])
    assert guard.report.accepted == [7] and guard.report.bytes_up == [wire]  # bytes as they travelled
    assert guard.report.rejected == [(8, "t@rows: unsorted row indices (they must be strictly increasing)")]
    dense = seen[0].content["arrays"]["t"].numpy()
    assert dense.shape == (10, 2) and dense[[0, 5]].tolist() == [[1, 1], [1, 1]] and dense.sum() == 4
    assert densify_rows(reply({"t": np.zeros((10, 2), np.float32)}), REF) is None  # dense arrays pass as they are


def test_sparse_updates_are_refused_with_dp_and_with_secure_aggregation():
    with pytest.raises(ConfigError, match=r"transport\.item-updates"):
        RunConfig.from_mapping({**MODEL_AVERAGING, "transport.item-updates": "sparse", "dp.enabled": True})
    with pytest.raises(ConfigError, match=r"transport\.item-updates"):
        RunConfig.from_mapping({**MODEL_AVERAGING, "transport.item-updates": "sparse",
                                "transport.secure-aggregation": True})


@pytest.mark.parametrize("aggregation", ["mean", "row-mean"])
def test_a_sparse_federation_trains_exactly_the_dense_model_with_fewer_bytes(tmp_path, aggregation):
    """One user per node: each node changes the rows of its positives and sampled negatives only."""
    base = {**MODEL_AVERAGING, "data.synthetic-users": 40, "data.synthetic-items": 2000,
            "data.partitioner": "user-per-node", "data.partitions": 40, "federation.min-nodes": 40,
            "federation.fraction-train": 0.5, "model.name": "gmf", "model.embedding-dim": 16,
            "train.lr": 0.05, "federation.rounds": 2, "eval.every": 2, "eval.full-rank": False,
            "eval.patience": 0, "federation.max-update-norm": 1000.0, "federation.aggregation": aggregation}
    arrays, up = {}, {}
    for mode in ("dense", "sparse"):
        cfg = RunConfig.from_mapping({**base, "transport.item-updates": mode,
                                      "federation.run-dir": str(tmp_path / mode / "run")})
        federate(cfg)
        arrays[mode] = checkpoint.load(tmp_path / mode / "run").arrays
        rs = records(tmp_path / mode)
        assert all(len(r["nodes"]) == 20 and not r["rejected"] for r in rs)
        up[mode] = np.mean([r["bytes_up_per_node"] for r in rs])
    assert list(arrays["sparse"]) == list(arrays["dense"])
    for key, value in arrays["dense"].items():
        np.testing.assert_array_equal(arrays["sparse"][key], value, err_msg=key)  # bit for bit
    assert up["sparse"] < 0.5 * up["dense"], up  # measured 0.33: ~100 positives x 4 negatives of 2,000 rows


def few_items_each(users: int, per_user: int, n_items: int) -> InteractionData:
    rng = np.random.default_rng(3)
    items = np.concatenate([np.sort(rng.choice(n_items, per_user, replace=False)) for _ in range(users)])
    none = np.full(users, -1)
    return InteractionData(
        user_ids=np.array([f"u{i}" for i in range(users)]), n_items=n_items,
        train_indptr=np.arange(0, users * per_user + 1, per_user), train_items=items,
        train_values=np.ones(len(items), np.float32), val_item=none, val_value=np.ones(users, np.float32),
        test_item=none, test_value=np.ones(users, np.float32), val_negatives=np.full((users, 99), -1),
        test_negatives=np.full((users, 99), -1))


@pytest.mark.parametrize("candidates", [0, 50])
def test_bounded_negative_candidates_touch_only_the_positives_and_the_drawn_candidates(candidates):
    """``train.negative-candidates``: one training call changes the item rows of its positives and its drawn
    candidates, nothing else; unbounded (0), the negatives reach far more of the catalog."""
    cfg = RunConfig.from_mapping({**MODEL_AVERAGING, "model.name": "gmf", "model.embedding-dim": 8,
                                  "train.negative-candidates": candidates, "train.local-epochs": 3})
    data = few_items_each(users=20, per_user=10, n_items=3000)
    s = TrainSettings.from_config(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, data.n_users, data.n_items)
    before = model.state_dict()["item_emb.gmf.weight"].clone()
    train_epochs(model, data, s, epochs=3, rng=np.random.default_rng(7))
    changed = set(np.flatnonzero((model.state_dict()["item_emb.gmf.weight"] != before).any(dim=1).numpy()).tolist())
    positives = set(data.train_items.tolist())
    negatives = changed - positives
    if candidates:  # the sampler's first draw from the call's rng is the candidate set
        drawn = set(np.random.default_rng(7).choice(data.n_items, size=candidates, replace=False).tolist())
        assert negatives <= drawn and len(negatives) > 0.8 * candidates, (len(negatives), candidates)
    else:
        assert len(negatives) > 10 * candidates + 1000  # 3 epochs x 4 negatives x 200 positives over 3,000 items


def test_negative_candidates_keep_the_users_own_items_out():
    data = few_items_each(users=1, per_user=20, n_items=200)
    own = set(data.train_items.tolist())
    pool = np.array(sorted(own)[:3] + [i for i in range(200) if i not in own][:5])  # 3 of the 8 are the user's own
    neg = NegativeSampler(data, candidates=pool)(np.zeros(2000, np.int64), 1, np.random.default_rng(0))
    assert set(neg.ravel()) == set(pool.tolist()) - own


@pytest.mark.parametrize("knob", [{"train.negative-candidates": 100}, {"train.negative-pool": "unseen"}])
def test_non_private_negative_knobs_are_refused_under_dp(knob):
    """DP draws its own negatives (client/privacy/samples.py): a knob it would ignore is an error, not a no-op."""
    RunConfig.from_mapping({**MODEL_AVERAGING, **knob})  # fine without DP
    with pytest.raises(ConfigError, match=next(iter(knob)).replace(".", r"\.")):
        RunConfig.from_mapping({**MODEL_AVERAGING, **knob, "dp.enabled": True})
