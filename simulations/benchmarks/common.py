"""Benchmark plumbing for federations: in-process runs and process memory."""

from __future__ import annotations

import contextlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from shared.config import RunConfig


def run_federation_inprocess(cfg: RunConfig, run_dir: Path | None = None) -> tuple[Any, list[dict], float]:
    """The real coordinator loop and ClientApp over an in-process Grid; (summary, records, wall seconds)."""
    from simulations.client_app import app as client_app
    from simulations.inprocess import InProcessGrid, simulation_node_configs
    from simulations.server_app import federated_run

    run_dir = run_dir or Path(tempfile.mkdtemp(prefix="fedrec-bench-"))
    cfg = cfg.with_overrides({"federation.run-dir": str(run_dir),
                              "sim.node-state-dir": cfg.sim.node_state_dir or str(run_dir / "nodes")})
    grid = InProcessGrid(client_app, simulation_node_configs(cfg.data.partitions), cfg.to_flower_config())
    start = time.perf_counter()
    summary = federated_run(cfg, grid, 1).execute()
    wall = time.perf_counter() - start
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return summary, records, wall


# keys that name where a run writes, not what it computes
RUN_LOCAL = {"federation.run-dir", "sim.node-state-dir", "federation.resume-from"}


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
    if "hr10_full" not in (summary.get("test") or {}) and not cfg.eval.full_rank:
        # finished before the coordinator ran its full-rank test pass: resuming a finished run runs just that
        done, records, _ = run_federation_inprocess(cfg.with_overrides({"federation.resume-from": str(run_dir)}),
                                                     run_dir)
        return done, records, None
    return SimpleNamespace(test=summary["test"], best_round=summary["best_round"],
                           rounds_run=summary["rounds_run"]), records, None


def node_peak_rss(cfg: RunConfig) -> float:
    """Peak RSS (MB) of a fresh process that runs one node's training round (silo 0) through the ClientApp.

    Under noisy-sum releases the round is one release of the run's training kind (gradient or ALS statistics);
    distributed noise is measured as central (SecAgg+'s own messages are not included).
    """
    if cfg.dp.enabled and cfg.dp.noise == "distributed":  # a node releases its share only under SecAgg+: measure
        cfg = cfg.with_overrides({"dp.noise": "central"})  # the same computation, without the protocol around it
    release = {"sgd": "gradient", "als": "als"}.get(cfg.dp.mechanism) if cfg.dp.enabled else None
    extra = f', "release": "{release}"' if release else ""
    code = f"""
import json, resource, tempfile, torch
torch.set_num_threads(1)
from simulations.client_app import app
from server.loop import initial_model
from shared.config import RunConfig
from simulations.inprocess import InProcessGrid
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
cfg = RunConfig.from_mapping(json.loads({json.dumps(json.dumps(cfg.to_flower_config()))}))
cfg = cfg.with_overrides({{"sim.node-state-dir": tempfile.mkdtemp()}})
init, catalog = initial_model(cfg)
grid = InProcessGrid(app, [{{"partition-id": 0, "num-partitions": cfg.data.partitions}}], cfg.to_flower_config())
msg = Message(RecordDict({{"arrays": ArrayRecord(init), "config": ConfigRecord({{"server-round": 1, "run-key": "rss",
              "catalog-hash": catalog{extra}}})}}), dst_node_id=1000, message_type=MessageType.TRAIN)
reply = list(grid.send_and_receive([msg]))[0]
assert not reply.has_error(), reply.error
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def reset_peak_rss() -> None:
    """Start a new peak: Linux resets this process's VmHWM to its current RSS (``clear_refs`` 5); else no-op."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB since the last :func:`reset_peak_rss` (Linux VmHWM).

    Elsewhere: ``ru_maxrss``, the peak since the process started.
    """
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
