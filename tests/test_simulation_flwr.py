"""A real federation through the Flower runtime: `fedrec simulate` -> `flwr run` -> local SuperLink (Ray)."""

from __future__ import annotations

import json

import torch

from shared.models import LOCAL_PREFIX
from simulations.driver import superlink_pids
from tests.support import MODEL_AVERAGING


def test_flwr_run_simulation_learns_and_cleans_up(tmp_path):
    from simulations.driver import simulate

    result = simulate(
        "synthetic",
        {**{k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in MODEL_AVERAGING.items()},
         "federation.rounds": "2", "data.partitions": "2", "federation.min-nodes": "2", "data.synthetic-users": "200",
         "data.synthetic-items": "300", "model.name": "gmf", "train.lr": "0.01", "eval.full-rank": "false"},
        tmp_path / "run",
        show_progress=False,
    )
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2]
    assert all(len(r["nodes"]) == 2 and not r["rejected"] for r in records)
    assert records[1]["val"]["hr10"] > records[0]["val"]["hr10"]
    assert result.summary["best_round"] == 2
    # the coordinator only ever held the global part
    model = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert model["global"] and not any(k.startswith(LOCAL_PREFIX) for k in model["global"])
    # what a node sent per round is the size of the global part alone (plus npy headers and key names)
    global_bytes = sum(v.numel() * v.element_size() for v in model["global"].values())
    overhead = 256 * len(model["global"])
    assert all(r["bytes_up_per_node"] == r["bytes_down_per_node"] for r in records)
    assert all(global_bytes <= r["bytes_up_per_node"] <= global_bytes + overhead for r in records)
    # the SuperLink we started is gone
    assert superlink_pids(tmp_path / "run" / "flwr-home") == []
    assert "[fedrec] finished" in (tmp_path / "run" / "flwr.log").read_text()
