"""Empirical privacy audit: claimed epsilon beside the one-run lower bound epsilon-hat (Steinke, Nasr, Jagielski 2023).

    python -m simulations.benchmarks.empirical_audit --data-dir ../shared/data --out FILE.json

For each dataset (the embedded synthetic data; ML-100K when present) and each budget epsilon in
{1, 8, inf}, one federation trains with canaries in node 0 (:mod:`simulations.privacy_audit`);
the auditor sees what the coordinator sees (every update node 0 releases) and bounds epsilon
from below at 95 % confidence. Broken mechanisms (``--breakages``: noise off, clipping off)
keep claiming the planned epsilon in their ledgers; the audit must catch them. Settings:
``audit`` is the most powerful one tried (DP-SGD on each node, SGD, clip norm 0.01, q = 1: node 0's
update is linear in its noisy clipped sum), ``default`` is fedrec's default mechanism (noisy sums,
here with the coordinator's noise), audited on the released global model.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import torch

from shared.config import RunConfig
from simulations.benchmarks import benchmark_parser, print_table, use_data_dir, write_json
from simulations.privacy_audit import empirical_epsilon

DATA = {
    "synthetic": {"data.path": "synthetic", "data.synthetic-users": 943, "data.synthetic-items": 3000,
                  "data.partitions": 3, "federation.min-nodes": 3},
    "ml100k": {"data.path": "movielens:ml-100k", "data.partitions": 5, "federation.min-nodes": 5},
}
CANARIES = {"synthetic": 1000, "ml100k": 800}  # distinct rare items: half the catalog is available
SETTINGS = {
    # DP-SGD on each node (local noise), models averaged: the coordinator sees node 0's own noisy updates
    "audit": {"dp.mechanism": "local-sgd", "dp.noise": "local", "model.name": "gmf", "model.embedding-dim": 16,
              "train.optimizer": "sgd", "train.lr": 0.5, "dp.sample-rate": 1.0, "dp.clip-norm": 0.01,
              "federation.rounds": 10, "train.user-epochs": 1},
    # fedrec's default: one noisy sum per round, noise added by the coordinator (the released model is audited)
    "default": {"dp.noise": "central", "model.name": "gmf", "federation.rounds": 10},
}
COMMON = {"eval.every": 10, "eval.patience": 0, "eval.full-rank": False, "dp.unit": "user", "seed": 42}


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--datasets", default="synthetic,ml100k")
    parser.add_argument("--settings", default="audit")
    parser.add_argument("--epsilons", default="1,8,inf")
    parser.add_argument("--breakages", default="no-noise,no-clipping", help="run at epsilon = 1, or 'none'")
    args = parser.parse_args()
    use_data_dir(args.data_dir)
    torch.set_num_threads(1)
    rows = []
    for dataset in args.datasets.split(","):
        if dataset == "ml100k" and not (Path(args.data_dir) / "movielens" / "ml-100k").exists():
            print("ML-100K not found: skipped")
            continue
        for setting in args.settings.split(","):
            runs = [(float(e), None) for e in args.epsilons.split(",")]
            runs += [(1.0, b) for b in args.breakages.split(",") if b != "none"]
            for eps, breakage in runs:
                values = {**DATA[dataset], **SETTINGS[setting], **COMMON, "dp.enabled": math.isfinite(eps)}
                if math.isfinite(eps):
                    values["dp.target-epsilon"] = eps
                with tempfile.TemporaryDirectory(prefix="fedrec-audit-") as work:
                    r = empirical_epsilon(RunConfig.from_mapping(values), canaries=CANARIES[dataset],
                                          breakage=breakage, work_dir=Path(work))
                r |= {"dataset": dataset, "setting": setting,
                      "caught": r["epsilon_lower_bound"] > r["claimed_epsilon"]}
                rows.append(r)
                print(json.dumps({k: r[k] for k in ("dataset", "setting", "breakage", "claimed_epsilon",
                                                    "epsilon_lower_bound")}), flush=True)
    print_table(rows, ["dataset", "setting", "breakage", "target_epsilon", "claimed_epsilon", "delta", "accountant",
                       "epsilon_lower_bound", "canaries", "guesses", "correct", "caught", "test_hr10"],
                "empirical audit: claimed epsilon (user level, whole run) vs one-run lower bound (95 %)")
    out = Path(args.out)
    write_json(out, {"points": [{k: ("inf" if isinstance(v, float) and math.isinf(v) else v) for k, v in r.items()}
                                for r in rows]})


if __name__ == "__main__":
    main()
