"""Privacy-utility benchmark: ML-1M (NCF test split), 10 silos, DP-SGD on every node.

    python -m simulations.benchmarks.privacy --data-dir ../shared/data --out FILE.json

For each privacy unit (``user``, ``interaction``) and each run-long per-node budget
epsilon in {1, 2, 4, 8} at the default delta (1/n^1.1, n = the node's users or
interactions), runs the real coordinator loop and ClientApp in-process, and the
same configuration without DP (epsilon = inf). Every epsilon is the worst node's
final epsilon from its signed ledger (RDP accountant, Opacus), for the whole run.
Writes JSON (one object per point: unit, epsilon, delta, hr10, ndcg10, hr10_full,
epoch_seconds, peak_rss_mb, ...) and a PNG of the privacy-utility curve beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from shared.config import RunConfig, parse_assignments
from shared.ledger import read_jsonl
from simulations.benchmarks import print_table, use_data_dir, write_json
from simulations.benchmarks.common import run_federation_inprocess

# Chosen on ML-1M validation HR@10 (README, "Utility under DP"): full-batch steps (q = 1) so that every
# user's signal enters every step, a clip norm below every per-user gradient norm (all clipped), item vectors
# initialised from public genres, a per-item bias with its own, larger learning rate (each round is one Adam
# step from a fresh optimizer, i.e. a sign step of size lr), user embeddings fitted locally without noise.
BASE = {"data-path": "movielens:ml-1m", "partitioner": "silos", "num-partitions": 10, "min-nodes": 10,
        "model": "gmf", "embedding-dim": 32, "item-init": "genres", "item-bias": True, "num-negatives": 4,
        "optimizer": "adam", "lr": 0.01, "user-epochs": 1, "user-lr": 0.01, "local-epochs": 1,
        "num-server-rounds": 30, "eval-every": 5, "patience": 0, "full-rank": False, "seed": 42}
UNIT = {"user": {"dp-sample-rate": 1.0, "clip-norm": 0.1, "dp-max-interactions": 64, "lr": 0.02, "bias-lr": 0.2},
        "interaction": {"dp-sample-rate": 0.1, "clip-norm": 0.1, "lr": 0.01, "bias-lr": 0.05}}
# The non-private reference keeps the model and the federation but uses the learning rate that is best without
# noise (a DP learning rate would understate it and flatter the ratios).
NON_PRIVATE = {"lr": 0.001}
# keys that name where a run writes, not what it computes
RUN_LOCAL = {"run-dir", "node-state-dir", "resume-from"}


def point(unit: str, epsilon: float, overrides: dict, work: Path) -> dict:
    dp = math.isfinite(epsilon)
    values = {**BASE, **(UNIT[unit] if dp else NON_PRIVATE), **overrides, "dp": dp, "privacy-unit": unit}
    if dp:
        values["target-epsilon"] = epsilon
    cfg = RunConfig.from_mapping(values)
    run_dir = work / f"{unit}-eps{epsilon:g}"
    summary, records, wall = finished_run(cfg, run_dir) or run_federation_inprocess(cfg, run_dir)
    ledger = run_dir / "federation_ledger.jsonl"
    entries = read_jsonl(ledger) if ledger.exists() else []
    spent = max((e["epsilon"] for e in entries), default=math.inf if not dp else 0.0)
    train = [r["train_seconds_max"] for r in records if r.get("train_seconds_max")]
    return {
        "unit": unit, "epsilon": spent if dp else math.inf, "target_epsilon": epsilon,
        "delta": max((e["delta"] for e in entries), default=None), "accountant": cfg.accountant,
        "steps": max((sum(e["steps"] for e in entries if e["node_key_id"] == k) for k in
                      {e["node_key_id"] for e in entries}), default=None),
        "hr10": summary.test["hr10"], "ndcg10": summary.test["ndcg10"], "hr10_full": summary.test.get("hr10_full"),
        "best_round": summary.best_round, "rounds": summary.rounds_run,
        "epoch_seconds": sum(train) / len(train) / cfg.local_epochs if train else None,
        "peak_rss_mb": node_peak_rss(cfg), "wall_seconds": wall, "config": cfg.to_flower_config(),
    }


def finished_run(cfg: RunConfig, run_dir: Path) -> tuple[Any, list[dict], float | None] | None:
    """A run already finished in ``run_dir`` with exactly this configuration, read back; else None.

    Lets an interrupted benchmark continue (``--work-dir`` of the earlier call) without rerunning finished points.
    """
    try:
        saved = json.loads((run_dir / "config.json").read_text())["config"]
        summary = json.loads((run_dir / "summary.json").read_text())
        records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    except (OSError, ValueError, KeyError):
        return None
    mine = cfg.to_flower_config()
    if {k: v for k, v in saved.items() if k not in RUN_LOCAL} != {k: v for k, v in mine.items() if k not in RUN_LOCAL}:
        return None
    print(f"reusing finished run {run_dir}", flush=True)
    if "hr10_full" not in (summary.get("test") or {}) and not cfg.full_rank:
        # finished before the coordinator ran its full-rank test pass: resuming a finished run runs just that
        done, records, _ = run_federation_inprocess(cfg.with_overrides({"resume-from": str(run_dir)}), run_dir)
        return done, records, None
    return SimpleNamespace(test=summary["test"], best_round=summary["best_round"],
                           rounds_run=summary["rounds_run"]), records, None


def node_peak_rss(cfg: RunConfig) -> float:
    """Peak RSS (MB) of a fresh process that runs one node's training round (silo 0) through the ClientApp."""
    code = f"""
import json, resource, tempfile, torch
torch.set_num_threads(1)
from client.app import app
from server.loop import initial_model
from shared.config import RunConfig
from simulations.inprocess import InProcessGrid
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
cfg = RunConfig.from_mapping(json.loads({json.dumps(json.dumps(cfg.to_flower_config()))}))
cfg = cfg.with_overrides({{"node-state-dir": tempfile.mkdtemp()}})
init, catalog = initial_model(cfg)
grid = InProcessGrid(app, [{{"partition-id": 0, "num-partitions": cfg.num_partitions}}], cfg.to_flower_config())
msg = Message(RecordDict({{"arrays": ArrayRecord(init), "config": ConfigRecord({{"server-round": 1, "run-key": "rss",
              "catalog-hash": catalog}})}}), dst_node_id=1000, message_type=MessageType.TRAIN)
reply = list(grid.send_and_receive([msg]))[0]
assert not reply.has_error(), reply.error
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for unit in sorted({r["unit"] for r in rows}):
        pts = sorted((r["target_epsilon"], r["hr10"]) for r in rows if r["unit"] == unit and
                     math.isfinite(r["target_epsilon"]))
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=f"{unit}-level DP")
    for r in rows:
        if not math.isfinite(r["target_epsilon"]):
            ax.axhline(r["hr10"], color="grey", linestyle="--", label="non-private")
            break
    ax.set(xscale="log", xlabel="epsilon per node, whole run (RDP)", ylabel="HR@10 (NCF test split)",
           title="ML-1M, 10 silos: privacy-utility")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--out", required=True)
    parser.add_argument("--units", default="user,interaction")
    parser.add_argument("--epsilons", default="1,2,4,8,inf")
    parser.add_argument("--set", action="append", default=[], help="run-config override key=value")
    parser.add_argument("--work-dir", default=None,
                        help="where runs go; points already finished there with the same config are read back")
    args = parser.parse_args()
    use_data_dir(args.data_dir)
    torch.set_num_threads(1)
    overrides = parse_assignments(args.set)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="fedrec-privacy-"))
    rows = []
    epsilons = [float(e) for e in args.epsilons.split(",")]
    for unit in args.units.split(","):
        for eps in epsilons:
            if not math.isfinite(eps) and rows and any(not math.isfinite(r["target_epsilon"]) for r in rows):
                continue  # the non-private point is the same for every unit
            rows.append(point(unit, eps, overrides, work))
            print(json.dumps({k: rows[-1][k] for k in ("unit", "epsilon", "hr10", "ndcg10")}), flush=True)
    base = next((r["hr10"] for r in rows if not math.isfinite(r["target_epsilon"])), None)
    for r in rows:
        r["hr10_vs_nonprivate"] = r["hr10"] / base if base else None
    print_table(rows, ["unit", "target_epsilon", "epsilon", "delta", "steps", "hr10", "ndcg10", "hr10_full",
                       "hr10_vs_nonprivate", "epoch_seconds", "peak_rss_mb"],
                "ML-1M 10 silos: HR@10 under DP (epsilon per node for the whole run, RDP)")
    out = Path(args.out)
    write_json(out, {"points": [{k: ("inf" if isinstance(v, float) and math.isinf(v) else v) for k, v in r.items()}
                                for r in rows]})
    plot(rows, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
