"""Optional update compression (``update-compression = "fp16"``): half the bytes up, validated after upcast."""

from __future__ import annotations

import json

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.app import compress
from server.guard import ReplyGuard, reply_problem, upcast_fp16
from tests.support import cfg_for, federate


def reply(arrays: dict[str, np.ndarray]) -> Message:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    record = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    return Message(RecordDict({"arrays": record, "metrics": MetricRecord({"num-examples": 3})}), dst_node_id=1,
                   message_type="train")


def test_node_sends_float16_and_the_coordinator_validates_after_upcasting():
    sent = compress({"w": torch.full((2, 3), 0.1), "idx": torch.arange(3)}, "fp16")
    assert sent["w"].dtype == torch.float16 and sent["idx"].dtype == torch.int64  # only floats are compressed
    assert compress({"w": torch.ones(1)}, "none")["w"].dtype == torch.float32
    ref = {"w": np.zeros((2, 3), np.float32)}
    msg = reply({"w": sent["w"].numpy()})
    assert "dtype" in reply_problem(msg, ref, 10.0)  # a coordinator without compression rejects float16
    upcast_fp16(msg, ref)
    arr = msg.content["arrays"]["w"].numpy()
    assert arr.dtype == np.float32 and np.allclose(arr, 0.1, atol=1e-4) and reply_problem(msg, ref, 10.0) is None
    bad = reply({"w": np.array([[np.nan, 0, 0], [0, 0, 0]], np.float16)})
    upcast_fp16(bad, ref)
    assert "non-finite" in reply_problem(bad, ref, 10.0)  # validation still applies to compressed replies
    huge = reply({"w": np.full((2, 3), 6e4, np.float16)})
    upcast_fp16(huge, ref)
    assert "update norm" in reply_problem(huge, ref, 10.0)


def test_guard_counts_wire_bytes_before_upcasting():
    guard = ReplyGuard(inner=None, max_update_norm=10.0, seed=0)  # inner unused before aggregation
    guard.compression = "fp16"
    guard._reference = {"w": np.zeros((4, 8), np.float32)}
    msg = reply({"w": np.ones((4, 8), np.float16)})
    msg.metadata.__dict__["_src_node_id"] = 7
    wire = msg.content["arrays"].count_bytes()
    guard.inner = type("Inner", (), {"aggregate_train": staticmethod(lambda rnd, replies: ("agg", None))})()
    assert guard.aggregate_train(1, [msg]) == ("agg", None)
    assert guard.report.bytes_up == [wire] and guard.report.accepted == [7]
    assert msg.content["arrays"]["w"].numpy().dtype == np.float32


def test_fp16_federation_halves_bytes_up_and_keeps_accuracy(tmp_path):
    results = {}
    for how in ("none", "fp16"):
        cfg = cfg_for(tmp_path / how, **{"federation.rounds": 3, "transport.compression": how})
        summary, _ = federate(cfg)
        records = [json.loads(x) for x in (tmp_path / how / "run" / "metrics.jsonl").read_text().splitlines()]
        results[how] = (summary.val["hr10"], records)
        final = torch.load(tmp_path / how / "run" / "model.pt", weights_only=True)["global"]
        assert all(v.dtype == torch.float32 for v in final.values())  # the global model keeps its dtype
    (hr_none, plain), (hr_fp16, half) = results["none"], results["fp16"]
    for a, b in zip(plain, half, strict=True):
        assert a["bytes_down_per_node"] == b["bytes_down_per_node"]
        assert 0.45 < b["bytes_up_per_node"] / a["bytes_up_per_node"] < 0.55
        assert not b["rejected"] and len(b["nodes"]) == 3
    assert abs(hr_fp16 - hr_none) <= 0.03, (hr_none, hr_fp16)
