"""Privacy-utility benchmark: ML-1M (NCF test split), 10 silos, user-level DP, every mechanism and both floors.

    python -m simulations.benchmarks.privacy --data-dir ../shared/data --out FILE.json

For each mechanism (``--mechanisms``) and each run-long per-node budget epsilon (``--epsilons``,
inf = the non-private reference) at delta = 1e-5, runs the real coordinator loop and ClientApp
in-process (SecAgg+ included for distributed noise) and evaluates the released model: the last
round's (private validation selects nothing under DP). Every epsilon is the worst node's final
epsilon from its signed ledger (PRV accountant), for the whole run, frequency release included.

Mechanisms: ``local-sgd`` (each silo runs DP-SGD on its own users and adds all the noise; the
models are averaged), ``sgd-local`` / ``sgd-central`` / ``sgd-distributed`` (one noisy
clipped-gradient sum per round, the coordinator steps the model; the noise is added by every
silo / by the coordinator / as shares under SecAgg+), ``als-central`` / ``als-distributed``
(DP alternating least squares from noisy per-item sufficient statistics, or the floor model below
``dp.als-floor-below``; ``-passes``: the passes at every epsilon). Floors:
``popularity`` (items ranked by DP counts: the whole budget on one frequency release) and
``genres`` (public tag item vectors: genres and release periods plus the DP item bias, user vectors fitted locally).
``--scenario ml100k-cross-device`` runs the same curves with one user per node (943 nodes, all every round):
there a node is a user, so each noisy sum is DP-FedSGD over users, accounted per node over the rounds it takes
part in. Writes JSON (one object per point) and a PNG of all curves beside it.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import torch

from shared.config import RunConfig, parse_assignments
from shared.ledger import read_jsonl
from simulations.benchmarks import benchmark_parser, print_table, use_data_dir, write_json
from simulations.benchmarks.common import finished_run, node_peak_rss, run_federation_inprocess
from simulations.benchmarks.floors import floor_point

# 8 sampled negatives per positive for every point, the non-private reference included: measured 2026-12-08,
# sgd-central epsilon 8, test HR@10 / full-rank 0.6185 / 0.0704 with 8 against 0.6098 / 0.0642 with 4 (one run
# each); the non-private reference 0.6969 / 0.0887 with 8 against 0.7017 / 0.0858 with 4 (docs/reference/results.md)
BASE = {"data.path": "movielens:ml-1m", "data.partitioner": "silos", "data.partitions": 10,
        "federation.min-nodes": 10, "model.name": "gmf", "model.embedding-dim": 32, "model.item-init": "genres",
        "model.item-bias": True, "train.negatives": 8, "train.user-epochs": 1, "train.user-lr": 0.01,
        "train.local-epochs": 1, "federation.rounds": 30, "eval.every": 10, "eval.patience": 0,
        "eval.full-rank": False, "seed": 42, "dp.delta": 1e-5}
# one noisy sum per round: momentum SGD on the coordinator, every user in every step, clip below the typical
# per-user gradient norm (0.15 median at the start), 10 % of the privacy loss on the DP item counts
RELEASE = {"dp.mechanism": "sgd", "dp.sample-rate": 1.0, "dp.clip-norm": 0.1, "dp.server-lr": 20.0,
           "dp.server-momentum": 0.9, "dp.frequency-share": 0.1}
MECHANISMS: dict[str, dict[str, Any]] = {
    # the recipe of the earlier benchmark: full-batch local steps, a fresh Adam per round on every silo
    "local-sgd": {"dp.mechanism": "local-sgd", "dp.noise": "local", "dp.sample-rate": 1.0, "dp.clip-norm": 0.1,
                  "dp.max-interactions": 64, "train.lr": 0.02, "train.bias-lr": 0.2},
    "sgd-local": {**RELEASE, "dp.noise": "local"},
    "sgd-central": {**RELEASE, "dp.noise": "central"},
    "sgd-distributed": {**RELEASE, "dp.noise": "distributed"},
    # DP-ALS: 3 passes, 64 items per user (the score is u . v), or the floor model below dp.als-floor-below
    "als-central": {"dp.mechanism": "als", "dp.noise": "central", "federation.rounds": 3,
                    "dp.frequency-share": 0.1, "eval.every": 1},
    "als-distributed": {"dp.mechanism": "als", "dp.noise": "distributed", "federation.rounds": 3,
                        "dp.frequency-share": 0.1, "eval.every": 1},
}
# the passes themselves at every epsilon (the recipe's fallback to the floor switched off): what DP-ALS trains
MECHANISMS |= {f"{name}-passes": {**MECHANISMS[name], "dp.als-floor-below": 0.0}
               for name in ("als-central", "als-distributed")}
FLOORS = ("popularity", "genres")
# where the federation runs: ML-1M in 10 silos (the benchmark), or one user per node on ML-100K (943 nodes,
# every node every round as in the ml100k-cross-device preset): node = user, so the user-level guarantee is
# DP-FedSGD's, accounted over the rounds a node takes part in (no amplification by the coordinator's sampling)
SCENARIOS: dict[str, dict[str, Any]] = {
    "silos": {},
    "ml100k-cross-device": {"data.path": "movielens:ml-100k", "data.partitioner": "user-per-node",
                            "data.partitions": 943, "federation.min-nodes": 943},
}
TITLES = {"silos": "ML-1M, 10 silos", "ml100k-cross-device": "ML-100K, one user per node (943 nodes)"}
# the non-private reference: the same model and federation, FedAvg of local Adam epochs at the rate best
# without noise (a DP learning rate would understate it and flatter the ratios)
NON_PRIVATE = {"train.lr": 0.001}
# one user per node: the ml100k-cross-device preset's FedAvg (5 local Adam epochs at 0.05 on one user's items)
NON_PRIVATE_BY_SCENARIO = {"silos": NON_PRIVATE, "ml100k-cross-device": {
    "train.lr": 0.05, "train.user-lr": 0.05, "train.batch-size": 64, "train.local-epochs": 5,
    "federation.max-update-norm": 1000.0, "eval.user-epochs": 1, "federation.rounds": 20, "eval.every": 2}}


def point(mechanism: str, epsilon: float, overrides: dict, work: Path, non_private: dict = NON_PRIVATE) -> dict:
    """One curve point: ``mechanism`` at the run-long ``epsilon`` (inf: the non-private reference run)."""
    dp = math.isfinite(epsilon)
    if mechanism in FLOORS:
        return floor_point(mechanism, epsilon, {**BASE, **overrides}, work)
    values = {**BASE, **(MECHANISMS[mechanism] if dp else non_private), **overrides, "dp.enabled": dp,
              "dp.unit": "user"}
    if dp:
        values["dp.target-epsilon"] = epsilon
    cfg = RunConfig.from_mapping(values)
    run_dir = work / f"{mechanism if dp else 'nonprivate'}-eps{epsilon:g}"
    summary, records, wall = finished_run(cfg, run_dir) or run_federation_inprocess(cfg, run_dir)
    ledger = run_dir / "federation_ledger.jsonl"
    entries = read_jsonl(ledger) if ledger.exists() else []
    train = [r["train_seconds_max"] for r in records if r.get("train_seconds_max")]
    test = summary.test or {}
    return {
        "unit": "user", "mechanism": mechanism if dp else "non-private", "epsilon": max(
            (e["epsilon"] for e in entries), default=math.inf if not dp else 0.0), "target_epsilon": epsilon,
        "delta": max((e["delta"] for e in entries), default=None), "accountant": cfg.dp.accountant if dp else None,
        "noise": cfg.dp.noise if dp else None,
        "steps": max((sum(e["steps"] for e in entries if e["node_key_id"] == k) for k in
                      {e["node_key_id"] for e in entries}), default=None),
        "hr10": test.get("hr10"), "ndcg10": test.get("ndcg10"), "hr10_full": test.get("hr10_full"),
        "ndcg10_full": test.get("ndcg10_full"), "best_round": summary.best_round, "rounds": summary.rounds_run,
        "round_seconds": sum(train) / len(train) if train else None, "peak_rss_mb": node_peak_rss(cfg),
        "wall_seconds": wall, "config": cfg.to_flower_config(),
        "floor_vote": json.loads(vote.read_text()) if (vote := run_dir / "floor_vote.json").exists() else None,
    }


def plot(rows: list[dict], path: Path, title: str = TITLES["silos"]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, metric, label in ((axes[0], "hr10", "HR@10 (99 sampled negatives)"),
                              (axes[1], "hr10_full", "HR@10, full ranking")):
        for mechanism in dict.fromkeys(r["mechanism"] for r in rows):
            pts = sorted((r["target_epsilon"], r[metric]) for r in rows if r["mechanism"] == mechanism and
                         math.isfinite(r["target_epsilon"]) and r.get(metric) is not None)
            if pts:
                style = "--" if mechanism in FLOORS else "-"
                ax.plot(*zip(*pts, strict=True), style, marker="o", label=mechanism)
        for r in rows:
            if r["mechanism"] == "non-private" and r.get(metric) is not None:
                ax.axhline(r[metric], color="grey", linestyle=":", label="non-private")
        ax.set(xscale="log", xlabel="epsilon per node, whole run (user level, delta 1e-5, PRV)", ylabel=label)
        ax.legend(fontsize=7)
    fig.suptitle(f"{title}: privacy-utility")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--units", default="user", help="user (the interaction unit: local-sgd with --set)")
    parser.add_argument("--mechanisms", default=",".join([*MECHANISMS, *FLOORS]))
    parser.add_argument("--epsilons", default="1,2,4,8,inf")
    parser.add_argument("--scenario", default="silos", choices=list(SCENARIOS))
    parser.add_argument("--set", action="append", default=[], help="run-config override key=value")
    parser.add_argument("--work-dir", default=None,
                        help="where runs go; points already finished there with the same config are read back")
    args = parser.parse_args()
    use_data_dir(args.data_dir)
    torch.set_num_threads(1)
    overrides = {**SCENARIOS[args.scenario], **parse_assignments(args.set)}
    if args.units != "user":
        overrides["dp.unit"] = args.units
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="fedrec-privacy-"))
    rows = []
    epsilons = [float(e) for e in args.epsilons.split(",")]
    for mechanism in args.mechanisms.split(","):
        for eps in epsilons:
            if not math.isfinite(eps) and (mechanism in FLOORS or any(r["mechanism"] == "non-private" for r in rows)):
                continue  # the non-private point is the same for every mechanism
            rows.append({"scenario": args.scenario,
                         **point(mechanism, eps, overrides, work, NON_PRIVATE_BY_SCENARIO[args.scenario])})
            print(json.dumps({k: rows[-1][k] for k in ("mechanism", "epsilon", "hr10", "hr10_full")}), flush=True)
    base = next((r for r in rows if r["mechanism"] == "non-private"), None)
    for r in rows:
        for m in ("hr10", "hr10_full"):
            r[f"{m}_vs_nonprivate"] = r[m] / base[m] if base and base.get(m) and r.get(m) is not None else None
        r["nonprivate_round_seconds"] = base["round_seconds"] if base else None
    print_table(rows, ["mechanism", "target_epsilon", "epsilon", "delta", "steps", "hr10", "hr10_vs_nonprivate",
                       "hr10_full", "hr10_full_vs_nonprivate", "ndcg10", "round_seconds", "peak_rss_mb"],
                f"{TITLES[args.scenario]}: HR@10 under user-level DP (epsilon per node, whole run, PRV, delta 1e-5)")
    out = Path(args.out)
    write_json(out, {"points": [{k: ("inf" if isinstance(v, float) and math.isinf(v) else v) for k, v in r.items()}
                                for r in rows]})
    plot(rows, out.with_suffix(".png"), TITLES[args.scenario])


if __name__ == "__main__":
    main()
