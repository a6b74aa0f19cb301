"""Reliability figures: HR@10 under node dropouts; a poisoning node with and without defenses.

    python -m simulations.benchmarks.reliability --data-dir ../shared/data --out FILE.json

Every federation runs on the in-process runtime (:mod:`simulations.inprocess`: the real ClientApp, its
mods and the real coordinator loop, a protobuf round trip per message, no Ray), which keeps the 8 dropout
and 6 poisoning federations affordable on two cores. The Flower-runtime paths of the same faults are
covered by ``tests/test_reliability_flwr.py``.

- ``dropout``: ML-100K, 10 silos, ``sim.fault-dropout`` 0 / 0.1 / 0.3 / 0.5 in both ``sim.fault-mode`` s
  (``crash``: no update; ``late``: trained, reply after the deadline). Test HR@10 (sampled, and full rank)
  of the round selected on validation.
- ``poisoning``: partition 0 of N silos promotes one unpopular target item (fake profiles that all hold the
  target, update boosted to just under ``federation.max-update-norm``; :func:`simulations.faults.poisoning`). For the
  benign nodes' users, with the served model (``model.pt`` + node state): the target's mean full-catalog
  rank among unseen items, the fraction with the target in their top-10, and benign test HR@10. Defenses:
  ``federation.aggregation`` median / trimmed-mean, ``federation.norm-bound``.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.config import RunConfig
from simulations.benchmarks import NONPRIVATE, benchmark_parser, print_table, use_data_dir, write_json

DROPOUT_BASE = {**NONPRIVATE,
                "data.path": "movielens:ml-100k", "data.partitioner": "silos", "data.partitions": 10,
                "federation.min-nodes": 10, "model.name": "gmf", "model.embedding-dim": 32, "train.negatives": 4,
                "train.lr": 0.01, "train.batch-size": 256, "federation.rounds": 20, "eval.patience": 0,
                "eval.full-rank": True, "seed": 42}
POISON_BASE = {**NONPRIVATE,
               "data.synthetic-users": 600, "data.synthetic-items": 500, "data.partitioner": "silos",
               "data.partitions": 10, "federation.min-nodes": 10, "model.name": "gmf", "train.lr": 0.01,
               "federation.rounds": 8, "eval.patience": 0, "eval.full-rank": False, "seed": 42}
DEFENSES = {"none (mean)": {}, "median": {"federation.aggregation": "median"},
            "trimmed-mean 0.2": {"federation.aggregation": "trimmed-mean"},
            "norm-bound": {"federation.norm-bound": 8.0}}  # 8: about the median benign update norm of POISON_BASE
BOOSTS = (30.0, 300.0)  # update norm ~5 (inside the benign range) and ~50 (far outside it)


def run_inprocess(cfg: RunConfig, run_dir: Path, wrap=None) -> tuple[Any, list[dict], Any]:
    """The coordinator loop over an in-process Grid; the ClientApp optionally wrapped (hostile nodes)."""
    from simulations.client_app import app as client_app
    from simulations.inprocess import InProcessGrid, simulation_node_configs
    from simulations.server_app import federated_run

    cfg = cfg.with_overrides({"federation.run-dir": str(run_dir), "sim.node-state-dir": str(run_dir / "nodes")})
    grid = InProcessGrid(wrap(client_app) if wrap else client_app, simulation_node_configs(cfg.data.partitions),
                         cfg.to_flower_config())
    summary = federated_run(cfg, grid, 1).execute()
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return summary, records, grid


def dropout(rates: list[float], modes: list[str], rounds: int, work: Path) -> list[dict]:
    rows = []
    for mode in modes:
        for rate in rates:
            if rate == 0 and mode != modes[0]:
                continue  # 0 % is the same run in every mode
            cfg = RunConfig.from_mapping({**DROPOUT_BASE, "federation.rounds": rounds, "sim.fault-dropout": rate,
                                          "sim.fault-mode": mode})
            start = time.perf_counter()
            summary, records, _ = run_inprocess(cfg, work / f"dropout-{mode}-{rate:g}")
            rows.append({"mode": mode if rate else "-", "dropout": rate, "hr10": summary.test["hr10"],
                         "hr10_full": summary.test.get("hr10_full"), "ndcg10": summary.test["ndcg10"],
                         "answered_mean": float(np.mean([r["answered"] - len(r["failed"]) for r in records])),
                         "sampled": records[0]["sampled"], "best_round": summary.best_round,
                         "wall_seconds": time.perf_counter() - start})
            print(rows[-1])
    return rows


def target_item(cfg: RunConfig, quantile: float = 0.2) -> int:
    """An unpopular item: the one at ``quantile`` of the training popularity among items with interactions."""
    from simulations.client_app import _full

    data, _, _ = _full(cfg.data.path, cfg.seed, cfg.data.synthetic_users, cfg.data.synthetic_items)
    pop = data.item_popularity()
    items = np.flatnonzero(pop > 0)
    order = items[np.argsort(pop[items], kind="stable")]
    return int(order[int(quantile * (len(order) - 1))])


def target_exposure(run_dir: Path, target: int, partitions: list[int], k: int = 10) -> dict[str, float]:
    """Target item's full-catalog rank among unseen items for the users of ``partitions`` (served model)."""
    from client.serving.source import ModelSource
    from simulations.client_app import hand_over_partition

    ranks = []
    for pid in partitions:
        rec = ModelSource(run=run_dir, partition=pid, hand_over=hand_over_partition).load()
        for start in range(0, rec.n_users, 128):
            rows = np.arange(start, min(start + 128, rec.n_users))
            with torch.no_grad():
                scores = rec.model(torch.from_numpy(rows), torch.arange(rec.n_items).expand(len(rows), -1)).numpy()
            for row, s in zip(rows, scores, strict=True):
                seen = rec.seen_items[rec.seen_indptr[row]: rec.seen_indptr[row + 1]]
                if target in seen:
                    continue
                unseen = np.ones(rec.n_items, bool)
                unseen[seen] = False
                ranks.append(1 + int((s[unseen] > s[target]).sum()))
    ranks_arr = np.array(ranks)
    return {"target_mean_rank": float(ranks_arr.mean()), "target_median_rank": float(np.median(ranks_arr)),
            f"target_in_top{k}": float((ranks_arr <= k).mean()), "benign_users": len(ranks)}


def poisoning(base: dict[str, Any], defenses: dict[str, dict], boosts: list[float], work: Path) -> list[dict]:
    from simulations.faults import poisoning as attack

    cfg0 = RunConfig.from_mapping(base)
    target = target_item(cfg0)
    benign = list(range(1, cfg0.num_partitions))
    rows = []
    cases = [("-", {}, 0.0)] + [(name, extra, boost) for boost in boosts for name, extra in defenses.items()]
    for name, extra, boost in cases:
        cfg = cfg0.with_overrides(extra)
        run_dir = work / f"poison-{boost:g}-{name.split()[0]}"
        start = time.perf_counter()
        wrap = (lambda app, b=boost: attack(app, 0, target, boost=b)) if boost else None
        summary, records, _ = run_inprocess(cfg, run_dir, wrap)
        row = {"defense": name, "attack_boost": boost or "no attack", "target": target,
               **target_exposure(run_dir, target, benign), "hr10": summary.test["hr10"],
               "bounded_per_round": float(np.mean([len(r.get("norm_bounded", [])) for r in records])),
               "wall_seconds": time.perf_counter() - start}
        rows.append(row)
        print(row)
    return rows


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--scenarios", default="dropout,poisoning")
    parser.add_argument("--rates", default="0,0.1,0.3,0.5")
    parser.add_argument("--modes", default="crash,late")
    parser.add_argument("--rounds", type=int, default=DROPOUT_BASE["num-server-rounds"])
    parser.add_argument("--poison-data", default="synthetic", help="'synthetic' or 'movielens:ml-100k'")
    parser.add_argument("--boosts", default=",".join(f"{b:g}" for b in BOOSTS))
    parser.add_argument("--norm-bound", type=float, default=DEFENSES["norm-bound"]["norm-bound"])
    parser.add_argument("--work-dir", default=None, help="where run directories go (default: a temp dir)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    use_data_dir(args.data_dir)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="fedrec-reliability-"))
    doc: dict[str, Any] = {"runtime": "in-process (simulations.inprocess), 1 torch thread", "work_dir": str(work)}
    scenarios = args.scenarios.split(",")
    if "dropout" in scenarios:
        rows = dropout([float(x) for x in args.rates.split(",")], args.modes.split(","), args.rounds, work)
        doc["dropout"] = {"config": {**DROPOUT_BASE, "federation.rounds": args.rounds}, "rows": rows}
        print_table(rows, ["mode", "dropout", "answered_mean", "hr10", "hr10_full", "ndcg10", "best_round",
                           "wall_seconds"], "HR@10 under node dropouts (ML-100K, 10 silos)")
    if "poisoning" in scenarios:
        base = {**POISON_BASE, "data.path": args.poison_data}
        if args.poison_data != "synthetic":
            base = {**DROPOUT_BASE, "federation.rounds": args.rounds, "eval.full-rank": False,
                    "data.path": args.poison_data}
        defenses = {**DEFENSES, "norm-bound": {"federation.norm-bound": args.norm_bound}}
        rows = poisoning(base, defenses, [float(b) for b in args.boosts.split(",")], work)
        doc["poisoning"] = {"config": base, "defenses": defenses, "rows": rows}
        print_table(rows, ["attack_boost", "defense", "target", "target_mean_rank", "target_median_rank",
                           "target_in_top10", "hr10", "bounded_per_round", "wall_seconds"],
                    f"Promotion attack by 1 of {base['num-partitions']} nodes ({args.poison_data})")
    write_json(args.out, doc)


if __name__ == "__main__":
    main()
