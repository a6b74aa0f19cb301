"""`fedrec simulate`: run a federation with `flwr run` on a managed local SuperLink.

The driver resolves the run configuration (defaults <- preset <- --set), writes it
as one TOML file into the run directory, and runs ``flwr run <app> --stream``
with a run-scoped ``FLWR_HOME``, telemetry off and runtime dependency
installation disabled. It shows a progress bar per round (parsed from the
coordinator's log stream, kept in ``flwr.log``) and always stops the SuperLink
it started — by PID, found by its run-scoped database path — on success, error
or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from deploy.flower_app import simulation_app, write_run_config
from deploy.processes import fedrec_env, free_port, stop_pids
from shared.config import RunConfig, load_toml_config
from shared.datasets import SYNTHETIC, load_tables, resolve_data_path
from shared.errors import FedrecError
from shared.progress import progress_bar

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
ROUND_START = re.compile(r"\[fedrec\] round (\d+)/(\d+)$")
ROUND_DONE = re.compile(r"\[fedrec\] round (\d+) done: (.*)$")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class SimulationResult:
    run_dir: Path
    returncode: int
    summary: dict[str, Any]


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def preset_path(name: str) -> Path:
    path = PRESETS_DIR / f"{name}.toml"
    if not path.exists():
        raise FedrecError(f"unknown preset {name!r}; available: {', '.join(preset_names())}")
    return path


def resolve_config(preset: str | None, overrides: dict[str, Any], run_dir: Path) -> RunConfig:
    """Defaults <- preset <- overrides, with data and run paths made absolute."""
    values: dict[str, Any] = dict(load_toml_config(preset_path(preset))) if preset else {}
    values.update(overrides)
    cfg = RunConfig.from_mapping(values)
    data_path = cfg.data.path
    if data_path != SYNTHETIC:
        data_path = str(Path(resolve_data_path(data_path)).resolve())
    changes: dict[str, Any] = {"data.path": data_path, "federation.run-dir": str(run_dir),
                               # node state (user embeddings) on disk, so runs can resume and recommend later
                               "sim.node-state-dir": cfg.sim.node_state_dir or str(run_dir / "nodes")}
    if cfg.data.partitioner == "user-per-node":
        tables = load_tables(data_path, seed=cfg.seed, synthetic_users=cfg.data.synthetic_users,
                             synthetic_items=cfg.data.synthetic_items)
        changes["data.partitions"] = int(tables.manifest["n_users"])
    return cfg.with_overrides(changes)


def simulation_env(flwr_home: Path, ray_tmp: Path) -> dict[str, str]:
    """fedrec's Flower environment plus a private Ray temp dir and free local SuperLink ports."""
    return fedrec_env(flwr_home, {
        "RAY_TMPDIR": str(ray_tmp),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
    })


def superlink_pids(flwr_home: Path) -> list[int]:
    """PIDs of the local SuperLink(s) whose database lives under ``flwr_home``."""
    marker = str(flwr_home / "local-superlink")
    pids = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info.get("cmdline") or [])
        if "flower-superlink" in cmd and marker in cmd:
            pids.append(proc.pid)
    return pids


@contextlib.contextmanager
def managed_superlink(flwr_home: Path) -> Iterator[None]:
    """Whatever happens inside, stop the SuperLink(s) started under ``flwr_home``."""
    try:
        yield
    finally:
        stop_pids(superlink_pids(flwr_home))


def simulate(
    preset: str | None,
    overrides: dict[str, Any],
    run_dir: Path,
    *,
    show_progress: bool = True,
    num_supernodes: int | None = None,
    timeout: float | None = None,
) -> SimulationResult:
    """Run one federated simulation through the Flower runtime; return its summary."""
    run_dir = run_dir.resolve()
    if (run_dir / "summary.json").exists() and not ({"resume-from", "federation.resume-from"} & set(overrides)):
        raise FedrecError(f"{run_dir} holds a finished run; choose another --out")
    cfg = resolve_config(preset, overrides, run_dir)  # first: a bad config writes nothing
    run_dir.mkdir(parents=True, exist_ok=True)
    config_file = write_run_config(cfg, run_dir / "run-config.toml")
    nodes = num_supernodes or cfg.data.partitions
    flwr_home = run_dir / "flwr-home"
    ray_tmp = Path(tempfile.mkdtemp(prefix="fedrec-ray-"))
    cmd = [
        str(Path(sys.executable).parent / "flwr"), "run", str(simulation_app(run_dir / "app")), "--stream",
        "--run-config", str(config_file),
        "--federation-config", f"num-supernodes={nodes} client-resources-num-cpus=1",
    ]
    log_path = run_dir / "flwr.log"
    with managed_superlink(flwr_home), open(log_path, "a", buffering=1) as log, progress_bar(show_progress) as bar:
        task = bar.add_task(f"{preset or 'custom'}: {nodes} nodes", total=cfg.federation.rounds, status="starting")
        proc = subprocess.Popen(cmd, env=simulation_env(flwr_home, ray_tmp), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        started = time.monotonic()
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = ANSI.sub("", raw.rstrip("\n"))
                log.write(line + "\n")
                if m := ROUND_START.search(line):
                    bar.update(task, status=f"round {m.group(1)} training")
                elif m := ROUND_DONE.search(line):
                    bar.update(task, completed=int(m.group(1)), status=m.group(2)[:80])
                elif "[fedrec] early stop" in line:
                    bar.update(task, status="early stop")
                if "[fedrec] finished" in line or "[fedrec] early stop" in line:
                    bar.update(task, completed=cfg.federation.rounds)
                if timeout is not None and time.monotonic() - started > timeout:
                    raise FedrecError(f"simulation exceeded {timeout:.0f} s")
            proc.wait()
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=15)
            import shutil

            shutil.rmtree(ray_tmp, ignore_errors=True)
    summary_path = run_dir / "summary.json"
    if proc.returncode != 0 or not summary_path.exists():
        tail = "\n".join(log_path.read_text().splitlines()[-25:])
        raise FedrecError(f"simulation failed (flwr exit {proc.returncode}); last log lines:\n{tail}\n"
                          f"full log: {log_path}")
    import json

    return SimulationResult(run_dir, proc.returncode, json.loads(summary_path.read_text()))
