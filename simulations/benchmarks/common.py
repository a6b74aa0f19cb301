"""Benchmark plumbing for federations: in-process runs and process memory."""

from __future__ import annotations

import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from shared.config import RunConfig


def run_federation_inprocess(cfg: RunConfig, run_dir: Path | None = None) -> tuple[Any, list[dict], float]:
    """The real coordinator loop and ClientApp over an in-process Grid; (summary, records, wall seconds)."""
    from client.app import app as client_app
    from server.loop import FederatedRun
    from simulations.inprocess import InProcessGrid, simulation_node_configs

    run_dir = run_dir or Path(tempfile.mkdtemp(prefix="fedrec-bench-"))
    cfg = cfg.with_overrides({"run-dir": str(run_dir), "node-state-dir": cfg.node_state_dir or str(run_dir / "nodes")})
    grid = InProcessGrid(client_app, simulation_node_configs(cfg.num_partitions), cfg.to_flower_config())
    start = time.perf_counter()
    summary = FederatedRun(cfg, grid, 1).execute()
    wall = time.perf_counter() - start
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return summary, records, wall


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
