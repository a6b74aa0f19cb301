"""Edge footprint of a node, and what fp16 update compression saves and costs.

- ``rss``: a real deployment on 127.0.0.1 (SuperLink with TLS + SuperNode auth, one
  SuperNode whose ``data-path`` is one silo of ML-1M split into 10) runs one DP round.
  Sampled every 50 ms from /proc: the node's idle RSS/PSS (``flower-supernode`` and its
  ``flower-superexec``), and the peak while its ``flwr-clientapp`` trains and evaluates
  (sum over the node's process tree, and the ClientApp's own VmHWM). Goal (issue 6):
  <= 500 MB during DP training.
- ``compression``: the same federation with ``transport.compression`` none vs fp16
  (in-process Grid, real ClientApp and coordinator): bytes a node sends per round and
  HR@10 at the end, on the synthetic default (3 silos) and optionally ML-1M (10 silos).

    python -m simulations.benchmarks.footprint --data-dir ../shared/data --out /tmp/footprint.json [--ml1m]
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from deploy.processes import descendants
from simulations.benchmarks import NONPRIVATE, benchmark_parser

SILO_RUN = {**NONPRIVATE,
            "federation.rounds": 1, "dp.enabled": True, "federation.min-nodes": 1, "federation.fraction-evaluate": 1.0,
            "eval.full-rank": True}
# (run config, node_config) per setting: default DP-SGD on the node (local-sgd: the heaviest, Opacus steps and a
# full-rank evaluation); the edge setting bounds a DP step to 512 scored pairs (node_config chunk-pairs: the same
# clipped sums, in smaller chunks) and ranks 100 sampled candidates; the default mechanism (one noisy clipped-
# gradient sum per round; central noise, since one node cannot run SecAgg+) with the edge node_config
RELEASE = {"dp.mechanism": "sgd", "dp.noise": "central", "dp.frequency-share": 0.1, "dp.floor-below": 0.0,
           "dp.sample-rate": 1.0, "federation.rounds": 2}
# (run config, chunk-pairs, SuperNode environment); edge-trim runs the SuperNode (and so its ClientApps) with glibc's
# MALLOC_TRIM_THRESHOLD_=0: freed heap goes back to the OS at once, for a lower peak and slower training
TRIM = {"MALLOC_TRIM_THRESHOLD_": "0"}
SETTINGS = {"default": ({}, 0, {}), "edge": ({"eval.full-rank": False}, 512, {}),
            "edge-trim": ({"eval.full-rank": False}, 512, TRIM),
            "edge-sgd": ({**RELEASE, "eval.full-rank": False}, 512, {}),
            "edge-sgd-trim": ({**RELEASE, "eval.full-rank": False}, 512, TRIM)}


def _kb(pid: int, field: str, source: str = "status") -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/{source}").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class TreeSampler(threading.Thread):
    """Samples RSS/PSS of a process tree; keeps the peaks and each ``flwr-clientapp``'s VmHWM."""

    def __init__(self, root: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.stop_event = threading.Event()
        self.peak_rss = self.peak_pss = 0
        self.clientapps: dict[int, tuple[int, int]] = {}  # pid -> (VmHWM, peak RssAnon) in kB, in start order
        self.samples: list[tuple[int, int]] = []

    def sample(self) -> tuple[int, int]:
        pids = [self.root, *descendants(self.root)]
        rss = sum(_kb(p, "VmRSS") for p in pids)
        pss = sum(_kb(p, "Pss", "smaps_rollup") for p in pids)
        for p in pids:
            with contextlib.suppress(OSError):
                if b"flwr-clientapp" in Path(f"/proc/{p}/cmdline").read_bytes():
                    hwm, anon = self.clientapps.get(p, (0, 0))
                    self.clientapps[p] = (max(hwm, _kb(p, "VmHWM")), max(anon, _kb(p, "RssAnon")))
        return rss, pss

    def run(self) -> None:
        while not self.stop_event.is_set():
            rss, pss = self.sample()
            self.samples.append((rss, pss))
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            time.sleep(self.interval)


def ml1m_silo(out: Path, *, silo: int = 0, silos: int = 10, seed: int = 42) -> Path:
    """One silo of prepared ML-1M (users split as the ``silos`` partitioner does) as its own prepared dataset."""
    from shared import prepared
    from shared.datasets import load_tables
    from shared.interactions import InteractionData
    from simulations.partitioners import partition_users

    if (out / "manifest.json").exists():
        return out
    tables = load_tables("movielens:ml-1m", seed=seed)
    data = InteractionData.from_tables(tables)
    users = set(np.asarray(data.user_ids)[partition_users(data, "silos", silos, seed=seed)[silo]])
    inter = tables.interactions[tables.interactions["user"].isin(users)].reset_index(drop=True)
    negs = tables.negatives[tables.negatives["user"].isin(users)].reset_index(drop=True)
    manifest = {**tables.manifest, "n_users": len(users), "n_interactions": len(inter),
                "source": {**tables.manifest["source"], "silo": f"{silo + 1}/{silos}"}}
    prepared.write(prepared.PreparedTables(inter, negs, tables.catalog, manifest, tables.item_genres), out,
                   overwrite=True)
    return out


def measure_rss(work: Path, silo_dir: Path, overrides: dict[str, Any], chunk_pairs: int = 0,
                env: dict[str, str] | None = None) -> dict[str, Any]:
    """Idle and peak memory of one real SuperNode running one DP round on ``silo_dir``."""
    from deploy.certs import CertPaths, create_ca_and_server, create_node_keys
    from deploy.federation import LocalDeployment, NodeSpec

    certs = CertPaths(work / "certs")
    create_ca_and_server(certs, ["127.0.0.1"], force=True)
    create_node_keys(certs, ["edge-1"], force=True)
    with LocalDeployment(work / "deployment", certs) as dep:
        dep.start_superlink()
        dep.register(certs.node_pub("edge-1"), "edge-1")
        node = dep.start_supernode(NodeSpec("edge-1", silo_dir, work / "state", certs.node_key("edge-1"),
                                            chunk_pairs=chunk_pairs), env=env)
        dep.wait_online(1)
        time.sleep(3.0)  # settle
        idle = [TreeSampler(node.pid).sample() for _ in range(10)]
        sampler = TreeSampler(node.pid)
        sampler.start()
        run = dep.run({**SILO_RUN, **overrides, "data.catalog-path": str(silo_dir / "catalog.parquet"),
                       "federation.run-dir": str(work / "run")}, work / "run-config.toml")
        sampler.stop_event.set()
        sampler.join()
        if run.proc.returncode != 0:
            raise RuntimeError(f"flwr run failed; see {run.log_path}")
    apps = list(sampler.clientapps.values())  # in start order: one process per message
    kinds = message_kinds({**SILO_RUN, **overrides})
    if len(apps) != len(kinds):
        raise RuntimeError(f"expected {len(kinds)} ClientApp processes ({', '.join(kinds)}), sampled {len(apps)}")
    record = json.loads((work / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    mb = 1 / 1024

    def peak(kind: str, field: int = 0) -> float | None:
        values = [a[field] for a, k in zip(apps, kinds, strict=True) if k == kind]
        return max(values) * mb if values else None

    return {"idle_rss_mb": max(r for r, _ in idle) * mb, "idle_pss_mb": max(p for _, p in idle) * mb,
            "peak_rss_mb": sampler.peak_rss * mb, "peak_pss_mb": sampler.peak_pss * mb,
            "train_clientapp_hwm_mb": peak("train"), "train_clientapp_anon_mb": peak("train", 1),
            "release_clientapp_hwm_mb": peak("release"), "eval_clientapp_hwm_mb": peak("evaluate"),
            "clientapp_hwm_max_mb": max(a[0] for a in apps) * mb, "clientapp_hwm_mb": [a[0] * mb for a in apps],
            "clientapp_kinds": kinds,
            "epsilon": record.get("epsilon_max"), "train_examples": record["train_examples"],
            "val": record.get("val"), "train_seconds": record.get("train_seconds_max"),
            "bytes_up": record["bytes_up_per_node"], "leftovers": dep.leftovers()}


def message_kinds(run: dict[str, Any]) -> list[str]:
    """What each ClientApp process of a one-node run handles, in order: the frequency release first (mechanisms
    that start from DP counts), then a train and an evaluate message per round, then the final test pass."""
    release = run.get("dp.mechanism") in ("sgd", "als") and run.get("dp.frequency-share", 0) > 0
    return ["release"] * release + ["train", "evaluate"] * int(run["federation.rounds"]) + ["evaluate"]


def run_inprocess(overrides: dict[str, Any], run_dir: Path) -> list[dict[str, Any]]:
    """A federation over the in-process Grid (real ClientApp and coordinator loop); its metrics records."""
    from shared.config import RunConfig
    from simulations.client_app import app as client_app
    from simulations.inprocess import InProcessGrid, simulation_node_configs
    from simulations.server_app import federated_run

    cfg = RunConfig.from_mapping({**overrides, "federation.run-dir": str(run_dir),
                                  "sim.node-state-dir": str(run_dir / "nodes")})
    grid = InProcessGrid(client_app, simulation_node_configs(cfg.data.partitions), cfg.to_flower_config())
    federated_run(cfg, grid, 1).execute()
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def compression(name: str, overrides: dict[str, Any], work: Path) -> list[dict[str, Any]]:
    rows = []
    for how in ("none", "fp16"):
        start = time.perf_counter()
        records = run_inprocess({**overrides, "transport.compression": how}, work / f"{name}-{how}")
        last = records[-1]
        rows.append({"data": name, "compression": how, "rounds": len(records),
                     "bytes_up_per_node_round": float(np.mean([r["bytes_up_per_node"] for r in records])),
                     "bytes_down_per_node_round": float(np.mean([r["bytes_down_per_node"] for r in records])),
                     "val_hr10": last["val"]["hr10"], "test_hr10": last["test"]["hr10"],
                     "test_hr10_full": last["test"].get("hr10_full", float("nan")),
                     "seconds": time.perf_counter() - start})
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from simulations.benchmarks import print_table, use_data_dir, write_json
    from simulations.driver import preset_path

    parser = benchmark_parser(__doc__)
    parser.add_argument("--parts", default="rss,compression", help="comma-separated: rss, compression")
    parser.add_argument("--ml1m", action="store_true", help="also measure compression on ML-1M (10 silos)")
    parser.add_argument("--ml1m-rounds", type=int, default=3)
    parser.add_argument("--synthetic-rounds", type=int, default=5)
    parser.add_argument("--settings", default=",".join(SETTINGS), help="rss settings: " + ", ".join(SETTINGS))
    args = parser.parse_args(argv)
    use_data_dir(args.data_dir)
    from shared.config import load_toml_config
    from shared.datasets import cache_dir

    work = Path(tempfile.mkdtemp(prefix="fedrec-footprint-"))
    doc: dict[str, Any] = {"work_dir": str(work)}
    parts = set(args.parts.split(","))
    if "rss" in parts:
        silo = ml1m_silo(cache_dir() / "benchmarks" / "ml1m-silo-1-of-10")
        ml1m = load_toml_config(preset_path("ml1m-silos"))
        model = {k: ml1m[k] for k in ("model.name", "model.embedding-dim", "model.mlp-layers", "train.lr",
                                      "train.batch-size")}
        rows = []
        for i, name in enumerate(args.settings.split(",")):  # a setting may repeat: each gets its own deployment
            extra, chunk_pairs, env = SETTINGS[name]
            row = {"setting": name, **measure_rss(work / f"rss-{i}-{name}", silo, {**model, **extra}, chunk_pairs,
                                                  env),
                   "overrides": extra, "chunk_pairs": chunk_pairs or 8192, "env": " ".join(f"{k}={v}" for k, v in
                                                                                          env.items())}
            rows.append(row)
            print(json.dumps(row, default=str), flush=True)
        doc["rss"] = {"model": model, "silo": str(silo), "rows": rows}
        print_table(rows, ["setting", "chunk_pairs", "env", "train_seconds", "idle_rss_mb", "idle_pss_mb",
                           "train_clientapp_hwm_mb", "train_clientapp_anon_mb", "release_clientapp_hwm_mb",
                           "eval_clientapp_hwm_mb", "clientapp_hwm_max_mb", "peak_rss_mb", "peak_pss_mb"],
                    "SuperNode footprint (MB), one DP round on an ML-1M silo (1/10); goal <= 500 MB while training")
    if "compression" in parts:
        rows = compression("synthetic", {**load_toml_config(preset_path("synthetic")), "eval.patience": 0,
                                         "federation.rounds": args.synthetic_rounds}, work)
        if args.ml1m:
            rows += compression("ml-1m", {**load_toml_config(preset_path("ml1m-silos")), "eval.patience": 0,
                                          "federation.rounds": args.ml1m_rounds, "eval.every": args.ml1m_rounds},
                                work)
        doc["compression"] = rows
        print_table(rows, ["data", "compression", "rounds", "bytes_up_per_node_round", "bytes_down_per_node_round",
                           "val_hr10", "test_hr10", "test_hr10_full", "seconds"], "update compression")
    write_json(args.out, doc)
    return doc


if __name__ == "__main__":
    main()
