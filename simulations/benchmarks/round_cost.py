"""A node's cost of one round, DP against non-private, for the same model and data (issue 11's goal: <= 1.5x).

    python -m simulations.benchmarks.round_cost --data-dir ../shared/data --out FILE.json [--repeats 5]

The node is silo 0 of the privacy benchmark's federation (ML-1M, 10 silos, ~604 users) with that benchmark's
model (:data:`simulations.benchmarks.privacy.BASE`: GMF, 32 factors, genre vectors, item bias, 8 sampled negatives,
one user-row pass per round). Each repeat times, back to back in one process, the node's whole round:

- ``non-private``: :meth:`client.node.LocalNode.train_round` with the reference run's settings (the user-row pass,
  then one local Adam epoch at lr 0.001);
- ``dp`` (``sgd-central``'s recipe): :meth:`client.node.LocalNode.release` of kind ``gradient`` (the user-row pass
  on fresh OS-entropy batches, then the clipped per-user gradient sum over every user, Opacus ghost clipping),
  with the node's two PRV evaluations of its last round (the budget check before, the spend after, over the whole
  run's 31 releases).

The two alternate within each repeat, so a change of machine load hits both alike (the privacy benchmark's
"node s / round" ran beside a second benchmark process and moved by up to 2x with it). Reported: the median
and the minimum seconds of each and the ratio of the medians; ``--opacus-norms`` times DP with Opacus's own
per-sample norm samplers instead of :mod:`client.privacy.norms` (the baseline). The coordinator's side of a
round (a sum and an SGD step) and the ledger's signing and file writes are not in either figure.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from client.node import LocalNode
from client.node_data import resolve_node_data
from client.privacy import plan_for
from client.privacy.plan import refusal
from server.loop import initial_model
from shared.accounting import epsilon
from shared.config import RunConfig
from simulations.benchmarks import benchmark_parser, print_table, use_data_dir, write_json
from simulations.benchmarks.privacy import BASE, MECHANISMS, NON_PRIVATE
from simulations.client_app import hand_over_partition

SILO = 0


def node_for(values: dict) -> tuple[LocalNode, dict[str, torch.Tensor]]:
    """Silo 0's node under ``values`` and a fresh global part."""
    cfg = RunConfig.from_mapping(values)
    hand_over_partition(cfg, SILO, cfg.data.partitions)
    nd = resolve_node_data(cfg, {"partition-id": SILO, "num-partitions": cfg.data.partitions})
    return LocalNode(cfg, nd.data, nd.value_range, nd.node_key), initial_model(cfg)[0]


def use_opacus_norms() -> None:
    """Put Opacus's own Linear and Embedding norm samplers back, and keep fedrec's from being installed."""
    from opacus.grad_sample.embedding import compute_embedding_norm_sample
    from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import GradSampleHooksFastGradientClipping
    from opacus.grad_sample.linear import compute_linear_norm_sample

    import client.privacy.norms as norms

    norms.install = lambda: None
    GradSampleHooksFastGradientClipping.NORM_SAMPLERS[nn.Linear] = compute_linear_norm_sample
    GradSampleHooksFastGradientClipping.NORM_SAMPLERS[nn.Embedding] = compute_embedding_norm_sample


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--opacus-norms", action="store_true",
                        help="time DP with Opacus's own norm samplers (the baseline of client.privacy.norms)")
    args = parser.parse_args()
    use_data_dir(args.data_dir)
    torch.set_num_threads(1)  # as the privacy benchmark's nodes
    if args.opacus_norms:
        use_opacus_norms()
    plain, plain_part = node_for({**BASE, **NON_PRIVATE, "dp.enabled": False})
    dp, dp_part = node_for({**BASE, **MECHANISMS["sgd-central"], "dp.enabled": True, "dp.target-epsilon": 8.0,
                            "dp.unit": "user"})
    plan = plan_for(dp.cfg, dp.data)
    schedule = plan.schedule()  # the last round's accounting: the whole run's releases
    epsilon(schedule, plan.delta, plan.accountant)  # the accountant's one-time warm-up (imports) is not a round's
    seconds: dict[str, list[float]] = {"non-private": [], "dp": []}
    for _ in range(args.repeats):
        start = time.perf_counter()
        plain.train_round(plain_part, None, 1)
        seconds["non-private"].append(time.perf_counter() - start)
        start = time.perf_counter()
        refusal(schedule[:-1], plan)  # the node's prospective budget check, then the spend it records
        dp.release("gradient", dp_part, None, plan)
        epsilon(schedule, plan.delta, plan.accountant)
        seconds["dp"].append(time.perf_counter() - start)
    rows = [{"round": name, "users": dp.data.n_users, "interactions": int(dp.data.train_counts().sum()),
             "median_seconds": statistics.median(s), "min_seconds": min(s), "repeats": len(s),
             "seconds": s} for name, s in seconds.items()]
    ratio = rows[1]["median_seconds"] / rows[0]["median_seconds"]
    for r in rows:
        r["vs_nonprivate"] = r["median_seconds"] / rows[0]["median_seconds"]
    print_table(rows, ["round", "users", "interactions", "median_seconds", "min_seconds", "vs_nonprivate"],
                f"one node round, ML-1M silo {SILO} of 10: DP (sgd, user level) {ratio:.2f}x non-private")
    write_json(args.out, {"points": rows, "dp_vs_nonprivate": ratio, "norm_samplers": "opacus" if args.opacus_norms
                          else "client.privacy.norms", "config": dp.cfg.to_flower_config()})


if __name__ == "__main__":
    main()
