"""Cost of a round as the catalog and the federation grow (the embedded generator at larger sizes, Zipf items).

- ``items``: catalogs of 4 k -> 100 k -> 1 M items (every item in the catalog, most never seen: Zipf 0.9) at a
  fixed 10 nodes of 50 users each, GMF 32, one non-private round, ``transport.item-updates`` dense vs sparse, on
  the in-process Grid (real ClientApp and coordinator, every message through a protobuf round trip): bytes up and
  down per node, the slowest node's round seconds, the coordinator's validation + aggregation seconds, the peak RSS
  of one node round in a fresh process and of the whole in-process federation (coordinator + nodes, one process).
- ``nodes``: 10 -> 1 k -> 10 k virtual nodes of one user each (1,682 items, every node trains every round), on the
  in-process Grid and on Flower's simulation engine (Ray, ``flwr run``): per-round wall seconds and the peak RSS
  of the process that holds the coordinator (in-process: the whole federation).

- ``dp`` (``--dp-items``): DP training at a large catalog, noise on every row vs DP row selection (DP-AdaFEST:
  noise on the selected rows only, sparse replies): HR@10, bytes up, rows selected, epsilon spent.
- ``--negative-candidates``: sparse again with each round's negatives drawn from that many items per node
  (``train.negative-candidates``): the touched rows, and so the bytes, are then the positives plus those.
- ``quality``: dense and sparse trained for ``--quality-rounds`` rounds at ``--quality-items`` items: HR@10 and
  NDCG@10 (99 sampled negatives) of each, which must agree (the sparse encoding is exact).

Each cost is fitted on log-log axes (slope = how it grows) and printed with the table.

    python -m simulations.benchmarks.scale --out /tmp/scale.json [--items 4000,100000,1000000]
        [--nodes 10,1000,10000] [--ray-nodes 10,1000] [--quality-items 100000 --quality-rounds 10] [--work-dir DIR]
        [--negative-candidates 2000,8000]
        [--dp-items 100000 --dp-users 5000 --dp-rounds 20 --dp-epsilon 8]
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from shared import prepared, synthetic
from shared.config import RunConfig
from shared.datasets import synthetic_keys
from simulations.benchmarks import NONPRIVATE, benchmark_parser, print_table, write_json
from simulations.benchmarks.common import node_peak_rss, peak_rss_mb, reset_peak_rss, run_federation_inprocess

ITEMS_RUN = {**NONPRIVATE, "model.name": "gmf", "model.embedding-dim": 32, "data.partitions": 10,
             "federation.min-nodes": 10, "federation.rounds": 1, "eval.full-rank": False, "eval.patience": 0,
             "federation.max-update-norm": 1e6}
NODES_RUN = {**NONPRIVATE, "model.name": "gmf", "model.embedding-dim": 32, "data.partitioner": "user-per-node",
             "federation.rounds": 1, "federation.fraction-train": 1.0, "federation.fraction-evaluate": 1.0,
             "eval.full-rank": False, "eval.patience": 0, "federation.max-update-norm": 1e6,
             "transport.item-updates": "sparse"}
USERS_PER_NODE = 50


def catalog_dataset(n_items: int, work: Path, *, users: int = 10 * USERS_PER_NODE, seed: int = 42) -> Path:
    """A prepared dataset of the generator's ``users`` x ``n_items`` whose catalog holds every item (cached)."""
    out = work / f"synthetic-{users}x{n_items}"
    if (out / "manifest.json").exists():
        return out
    data = synthetic.generate(synthetic.SyntheticSpec(n_users=users, n_items=n_items, seed=seed))
    tables = prepared.prepare(data.interactions, synthetic_keys(seed), seed=seed,
                              source={"name": "synthetic", "users": users, "items": n_items},
                              catalog_items=[str(i + 1) for i in range(n_items)])
    prepared.write(tables, out, overwrite=True)
    return out


def fresh(run_dir: Path) -> Path:
    """``run_dir`` emptied: the benchmark owns its work directory and measures every point again."""
    shutil.rmtree(run_dir, ignore_errors=True)
    return run_dir


def point(sweep: str, runtime: str, mode: str, items: int, nodes: int, records: list[dict], **extra) -> dict:
    rec = records[0]
    return {"sweep": sweep, "runtime": runtime, "mode": mode, "items": items, "nodes": nodes,
            "bytes_up_per_node_round": rec.get("bytes_up_per_node"),
            "bytes_down_per_node_round": rec.get("bytes_down_per_node"),
            "node_round_seconds": rec.get("train_seconds_max"),
            "aggregation_seconds": rec.get("aggregation_seconds"),
            "round_wall_seconds": rec.get("seconds"), **extra}


# Each measured setting: (transport.item-updates, train.negative-candidates); 0 = negatives from the whole catalog.
def settings(candidates: Sequence[int]) -> list[tuple[str, int]]:
    return [("dense", 0), ("sparse", 0)] + [("sparse", c) for c in candidates if c > 0]


def series(r: dict) -> tuple[str, str, str]:
    """The curve a point belongs to: (sweep, runtime, mode, with its negative candidates when bounded)."""
    c = r.get("negative_candidates") or 0
    return r["sweep"], r["runtime"], r["mode"] + (f" c{c}" if c else "")


def items_sweep(sizes: list[int], work: Path, candidates: Sequence[int] = ()) -> list[dict]:
    rows: list[dict] = []
    if not sizes:
        return rows
    warm = RunConfig.from_mapping({**ITEMS_RUN, "data.path": str(catalog_dataset(min(sizes), work))})
    run_federation_inprocess(warm, fresh(work / "warm-up"))  # first-call costs (imports, allocator) stay out
    for n_items in sizes:
        path = catalog_dataset(n_items, work)
        node_rss = None
        for mode, c in settings(candidates):
            cfg = RunConfig.from_mapping({**ITEMS_RUN, "data.path": str(path), "transport.item-updates": mode,
                                          "train.negative-candidates": c})
            if node_rss is None:  # a node trains a dense table either way: one measurement per catalog
                node_rss = node_peak_rss(cfg)
            reset_peak_rss()
            summary, records, wall = run_federation_inprocess(cfg, fresh(work / f"items-{n_items}-{mode}-c{c}"))
            rows.append(point("items", "inprocess", mode, n_items, 10, records, node_peak_rss_mb=node_rss,
                              coordinator_peak_rss_mb=peak_rss_mb(), hr10=summary.test["hr10"],
                              wall_seconds=wall, negative_candidates=c))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def quality(n_items: int, rounds: int, work: Path, candidates: Sequence[int] = ()) -> list[dict]:
    """HR@10 (sampled, 99 negatives) of dense and sparse training over ``rounds`` rounds at ``n_items`` items."""
    out = []
    for mode, c in settings(candidates):
        cfg = RunConfig.from_mapping({**ITEMS_RUN, "data.path": str(catalog_dataset(n_items, work)),
                                      "transport.item-updates": mode, "federation.rounds": rounds,
                                      "train.negative-candidates": c})
        summary, records, wall = run_federation_inprocess(cfg, fresh(work / f"quality-{n_items}-{mode}-c{c}"))
        up = float(np.mean([r["bytes_up_per_node"] for r in records]))
        out.append({"mode": mode, "negative_candidates": c, "items": n_items, "rounds": rounds,
                    "best_round": summary.best_round,
                    "hr10": summary.test["hr10"], "ndcg10": summary.test["ndcg10"],
                    "bytes_up_per_node_round": up, "wall_seconds": wall})
        print(json.dumps(out[-1]), flush=True)
    return out


# DP at catalog scale: the default mechanism (one noisy clipped-gradient sum per round, DP item counts first) with
# the coordinator's noise, dense (noise on every row) vs DP row selection (noise on the selected rows only, sparse
# replies), and row selection with every node adding its own noise. User-level, epsilon per node for the run.
DP_RUN = {"model.name": "gmf", "model.embedding-dim": 32, "model.item-init": "random", "model.item-bias": True,
          "data.partitions": 10, "federation.min-nodes": 10, "eval.full-rank": False, "eval.patience": 0,
          "dp.enabled": True, "dp.mechanism": "sgd", "dp.floor-below": 0.0, "train.user-epochs": 0}
DP_MODES = {"dp-dense": {"dp.noise": "central"},
            "dp-sparse": {"dp.noise": "central", "dp.row-threshold": 3.0, "transport.item-updates": "sparse"},
            "dp-sparse-local": {"dp.noise": "local", "dp.row-threshold": 3.0, "transport.item-updates": "sparse"}}


def dp_quality(n_items: int, users: int, rounds: int, epsilon: float, threshold: float, work: Path,
               modes: list[str]) -> list[dict]:
    """HR@10 and bytes of DP training (``DP_MODES``) at ``n_items`` items over ``users`` users in 10 silos."""
    out = []
    path = catalog_dataset(n_items, work, users=users)
    for mode in modes:
        extra = DP_MODES[mode]
        if "dp.row-threshold" in extra:
            extra = {**extra, "dp.row-threshold": threshold}
        cfg = RunConfig.from_mapping({**DP_RUN, **extra, "data.path": str(path), "federation.rounds": rounds,
                                      "dp.target-epsilon": epsilon})
        name = f"dp-{n_items}-{users}-{mode}" + (f"-t{threshold:g}" if "dp.row-threshold" in extra else "")
        summary, records, wall = run_federation_inprocess(cfg, fresh(work / name))
        trained = [r for r in records if r["round"] >= 1]
        selected = [r["rows_selected"] for r in trained if r.get("rows_selected") is not None]
        out.append({"mode": mode, "items": n_items, "users": users, "epsilon": epsilon, "delta": 1e-5,
                    "row_threshold": cfg.dp.row_threshold,
                    "unit": "user", "accountant": cfg.dp.accountant, "rounds": len(trained),
                    "best_round": summary.best_round, "hr10": summary.test["hr10"], "ndcg10": summary.test["ndcg10"],
                    "bytes_up_per_node_round": float(np.mean([r["bytes_up_per_node"] for r in trained])),
                    "rows_selected": float(np.mean(selected)) if selected else float(n_items),
                    "epsilon_spent": max(r.get("epsilon_max", 0.0) for r in records), "wall_seconds": wall})
        print(json.dumps(out[-1]), flush=True)
    return out


def nodes_run(nodes: int) -> RunConfig:
    return RunConfig.from_mapping({**NODES_RUN, "data.synthetic-users": nodes, "data.partitions": nodes,
                                   "federation.min-nodes": nodes})


def nodes_sweep(sizes: list[int], ray_sizes: list[int], work: Path) -> list[dict]:
    rows = []
    if sizes:
        run_federation_inprocess(nodes_run(min(sizes)), fresh(work / "warm-up-nodes"))
    for nodes in sizes:
        reset_peak_rss()
        _, records, wall = run_federation_inprocess(nodes_run(nodes), fresh(work / f"nodes-{nodes}-inprocess"))
        rows.append(point("nodes", "inprocess", "sparse", 1682, nodes, records, wall_seconds=wall,
                          coordinator_peak_rss_mb=peak_rss_mb(), node_peak_rss_mb=None))
        print(json.dumps(rows[-1]), flush=True)
    for nodes in ray_sizes:
        rows.append(ray_point(nodes, work))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def ray_point(nodes: int, work: Path) -> dict:
    """One round on Flower's simulation engine; the ServerApp process's peak RSS is sampled from /proc."""
    import threading

    import psutil

    from simulations.driver import simulate

    run_dir = fresh(work / f"nodes-{nodes}-ray")
    peak = {"mb": 0.0}
    done = threading.Event()

    def sample() -> None:  # the coordinator runs in `flwr-serverapp` (or the simulation process holding it)
        while not done.wait(0.5):
            for proc in psutil.process_iter(["cmdline", "memory_info"]):
                cmd = " ".join(proc.info["cmdline"] or [])
                if ("flwr-serverapp" in cmd or "flwr-simulation" in cmd) and proc.info["memory_info"]:
                    peak["mb"] = max(peak["mb"], proc.info["memory_info"].rss / 2**20)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    try:
        simulate(None, nodes_run(nodes).to_flower_config(), run_dir, show_progress=False)
    finally:
        done.set()
    wall = time.perf_counter() - start
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return point("nodes", "ray", "sparse", 1682, nodes, records, wall_seconds=wall,
                 coordinator_peak_rss_mb=peak["mb"] or None, node_peak_rss_mb=None)


def slopes(rows: list[dict]) -> list[dict]:
    """Least-squares slope of log(cost) on log(size) per (sweep, runtime, mode) and cost."""
    out = []
    costs = ("bytes_up_per_node_round", "node_round_seconds", "aggregation_seconds", "round_wall_seconds",
             "coordinator_peak_rss_mb")
    for key in sorted({series(r) for r in rows}):
        group = [r for r in rows if series(r) == key]
        size = "items" if key[0] == "items" else "nodes"
        for cost in costs:
            pts = [(r[size], r[cost]) for r in group if r.get(cost)]
            if len(pts) >= 2:
                x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
                out.append({"sweep": key[0], "runtime": key[1], "mode": key[2], "cost": cost,
                            "slope": float(np.polyfit(x, y, 1)[0])})
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for (sweep, runtime, mode) in sorted({series(r) for r in rows}):
        group = sorted((r for r in rows if series(r) == (sweep, runtime, mode)), key=lambda r: r[sweep])
        xs = [r[sweep] for r in group]
        label = f"{runtime} {mode}"
        if sweep == "items":
            axes[0].loglog(xs, [r["bytes_up_per_node_round"] for r in group], "o-", label=label)
            axes[1].loglog(xs, [r["aggregation_seconds"] for r in group], "o-", label=label)
        else:
            axes[2].loglog(xs, [r["round_wall_seconds"] for r in group], "o-", label=label)
    for ax, (title, xlabel) in zip(axes, [("bytes up per node per round", "items"),
                                          ("coordinator validation + aggregation (s)", "items"),
                                          ("round wall time (s)", "nodes")], strict=True):
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:  # a sweep that did not run leaves its panel empty
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__doc__, data_dir=False)
    parser.add_argument("--items", default="4000,100000,1000000")
    parser.add_argument("--nodes", default="10,1000,10000")
    parser.add_argument("--ray-nodes", default="10,1000")
    parser.add_argument("--quality-items", type=int, default=100000, help="catalog of the dense-vs-sparse HR check")
    parser.add_argument("--quality-rounds", type=int, default=10, help="rounds of that check (0: skip it)")
    parser.add_argument("--negative-candidates", default="",
                        help="also run sparse with train.negative-candidates = each of these (comma-separated)")
    parser.add_argument("--work-dir", default=None, help="keep datasets and runs here (default: a temp dir)")
    parser.add_argument("--dp-items", default="", help="catalogs of the DP check, e.g. 100000,1000000 (empty: skip)")
    parser.add_argument("--dp-users", type=int, default=5000, help="users of the DP check's datasets (10 silos)")
    parser.add_argument("--dp-rounds", type=int, default=20, help="at most this many DP rounds (the recipe decides)")
    parser.add_argument("--dp-epsilon", type=float, default=8.0)
    parser.add_argument("--dp-threshold", type=float, default=3.0, help="dp.row-threshold of the row-selection runs")
    parser.add_argument("--dp-modes", default=",".join(DP_MODES), help="which of " + ", ".join(DP_MODES))
    args = parser.parse_args(argv)
    import tempfile

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="fedrec-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    cands = _ints(args.negative_candidates)
    rows = items_sweep(_ints(args.items), work, cands) + nodes_sweep(_ints(args.nodes), _ints(args.ray_nodes), work)
    checks = quality(args.quality_items, args.quality_rounds, work, cands) if args.quality_rounds else []
    modes = args.dp_modes.split(",")
    private = [p for n in _ints(args.dp_items) for p in dp_quality(n, args.dp_users, args.dp_rounds, args.dp_epsilon,
                                                                    args.dp_threshold, work, modes)]
    fits = slopes(rows)
    columns = ["sweep", "runtime", "mode", "negative_candidates", "items", "nodes", "bytes_up_per_node_round",
               "bytes_down_per_node_round",
               "node_round_seconds", "aggregation_seconds", "round_wall_seconds", "node_peak_rss_mb",
               "coordinator_peak_rss_mb"]
    print_table(rows, columns, "Cost of one round (GMF 32, non-private)")
    print_table(fits, ["sweep", "runtime", "mode", "cost", "slope"], "log-log slopes (1 = linear)")
    if checks:
        print_table(checks, ["mode", "negative_candidates", "items", "rounds", "best_round", "hr10", "ndcg10",
                             "bytes_up_per_node_round"],
                    "dense vs sparse: the same model")
    if private:
        print_table(private, ["mode", "items", "users", "epsilon", "row_threshold", "rounds", "hr10", "ndcg10",
                              "rows_selected", "bytes_up_per_node_round", "epsilon_spent", "wall_seconds"],
                    "DP (user level, delta 1e-5, PRV): dense noise vs DP row selection")
    out = Path(args.out)
    write_json(out, {"points": rows, "slopes": fits, "quality": checks, "dp": private,
                     "command": "python -m simulations.benchmarks.scale",
                     "settings": {"items_run": ITEMS_RUN, "nodes_run": NODES_RUN, "users_per_node": USERS_PER_NODE}})
    plot(rows, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
