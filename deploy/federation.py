"""A real Flower deployment on one machine: SuperLink with TLS and SuperNode auth, SuperNodes, `flwr run`.

:class:`LocalDeployment` runs exactly the operator commands of the deployment guide
(README, "Deployment"), each process with its own ``FLWR_HOME``, on free ports of
``127.0.0.1``, started and stopped by PID. Tests use it for the end-to-end check;
``scripts/deploy_demo.sh`` is the same sequence in shell.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.certs import CertPaths
from deploy.flower_app import app_dir, write_run_config
from deploy.processes import BIN, ManagedProcess, fedrec_env, free_port, start, wait_for, wait_https
from shared.config import RunConfig
from shared.errors import FedrecError

CONNECTION = "fedrec-local"


@dataclass(frozen=True)
class NodeSpec:
    """One SuperNode: its name, node_config values and its SuperNode auth key."""

    name: str
    data_path: Path
    state_dir: Path
    auth_key: Path | None = None  # OpenSSH EC P-384 private key (SuperNode auth)
    chunk_pairs: int = 0  # memory bound of a DP step (scored pairs per chunk); 0: the ClientApp's 8192

    def node_config(self) -> dict[str, str | int]:
        """What the fedrec ClientApp reads from node_config in a deployment."""
        config: dict[str, str | int] = {
            "data-path": str(self.data_path.resolve()), "node-name": self.name,
            "state-dir": str(self.state_dir.resolve()), "signing-key": str((self.state_dir / "signing.key").resolve())}
        if self.chunk_pairs:
            config["chunk-pairs"] = self.chunk_pairs
        return config


def write_node_config(spec: NodeSpec, path: Path) -> Path:
    """The node_config as a TOML file (``flower-supernode --node-config node.toml``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in spec.node_config().items()))
    return path


class LocalDeployment:
    """SuperLink + SuperNodes + the `flwr` CLI, all under ``root`` (homes, logs, node configs)."""

    def __init__(self, root: Path, certs: CertPaths, *, host: str = "127.0.0.1") -> None:
        self.root = root.resolve()
        self.certs = certs
        self.host = host
        self.port = 0
        self.processes: list[ManagedProcess] = []
        self.cli_home = self.root / "cli-home"

    # --- context management: whatever happens, stop what we started -------------------------
    def __enter__(self) -> LocalDeployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop every process started here (SuperNodes first), by PID."""
        for proc in reversed(self.processes):
            proc.stop()

    def leftovers(self) -> list[int]:
        return [pid for proc in self.processes for pid in proc.leftovers()]

    # --- SuperLink ----------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start_superlink(self, *, node_auth: bool = True, database: Path | None = None) -> ManagedProcess:
        """``flower-superlink`` with TLS (+ SuperNode auth), runtime installs disabled; waits until it serves."""
        self.port = free_port(self.host)
        cmd = [str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(self.certs.ca_cert),
               "--ssl-certfile", str(self.certs.server_cert), "--ssl-keyfile", str(self.certs.server_key),
               "--host", self.host, "--port", str(self.port), "--disable-runtime-dependency-installation"]
        if node_auth:
            cmd.append("--enable-supernode-auth")
        if database is not None:
            cmd += ["--database", str(database)]
        proc = self._start("superlink", cmd, self.root / "superlink-home")
        wait_https(self.host, self.port, self.certs.ca_cert, proc)
        self.write_connection()
        return proc

    def write_connection(self) -> Path:
        """``$FLWR_HOME/config.toml`` of the `flwr` CLI: one TLS connection to this SuperLink."""
        self.cli_home.mkdir(parents=True, exist_ok=True)
        path = self.cli_home / "config.toml"
        path.write_text(f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
                        f'address = "{self.address}"\nroot-certificates = "{self.certs.ca_cert.resolve()}"\n')
        return path

    # --- flwr CLI -------------------------------------------------------------------------------
    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run ``flwr <args>`` against this deployment (its own FLWR_HOME)."""
        cmd = [str(BIN / "flwr"), *args]
        return subprocess.run(cmd, env=fedrec_env(self.cli_home), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, start_new_session=True, check=False)

    def register(self, public_key: Path, name: str) -> None:
        """``flwr supernode register <key.pub> <connection> --name <name>``."""
        out = self.flwr("supernode", "register", str(public_key), CONNECTION, "--name", name)
        if out.returncode != 0:
            raise FedrecError(f"registering {name} failed (exit {out.returncode}): {out.stdout}{out.stderr}")

    def supernodes(self) -> list[dict[str, Any]]:
        """``flwr supernode list --format json``: the SuperLink's view of the nodes."""
        out = self.flwr("supernode", "list", CONNECTION, "--format", "json")
        if out.returncode != 0:
            raise FedrecError(f"flwr supernode list failed: {out.stdout}{out.stderr}")
        doc = json.loads(out.stdout)
        return list(doc.get("nodes", doc) if isinstance(doc, dict) else doc)

    def wait_online(self, count: int, timeout: float = 120.0) -> list[dict[str, Any]]:
        """Wait until ``count`` SuperNodes are online."""
        def online():
            nodes = [n for n in self.supernodes() if str(n.get("status", "")).lower() == "online"]
            return nodes if len(nodes) >= count else None
        return wait_for(online, f"{count} online SuperNode(s)", timeout, interval=1.0)

    # --- SuperNodes -----------------------------------------------------------------------------
    def start_supernode(self, spec: NodeSpec, *, ca_cert: Path | None = None,
                        extra_args: list[str] | None = None, env: Mapping[str, str] | None = None) -> ManagedProcess:
        """``flower-supernode`` for ``spec`` (TLS with ``ca_cert``, default: the federation CA); ``env`` is added
        to its environment, which its ClientApp processes inherit."""
        home = self.root / "nodes" / spec.name
        config = write_node_config(spec, home / "node.toml")
        cmd = [str(BIN / "flower-supernode"), "--root-certificates", str(ca_cert or self.certs.ca_cert),
               "--superlink", self.address, "--host", self.host, "--port", str(free_port(self.host)),
               "--node-config", str(config)]
        if spec.auth_key is not None:
            cmd += ["--auth-supernode-private-key", str(spec.auth_key)]
        return self._start(f"supernode-{spec.name}", cmd + list(extra_args or []), home / "flwr-home", env)

    # --- runs -------------------------------------------------------------------------------------
    def run(self, overrides: Mapping[str, Any], config_path: Path, *, timeout: float = 1800.0) -> ManagedProcess:
        """``flwr run <app> <connection> --stream --run-config <file>``; returns when the stream ends."""
        cfg = RunConfig.from_mapping(overrides)  # validate before anything is submitted
        write_run_config(cfg, config_path)
        cmd = [str(BIN / "flwr"), "run", str(app_dir()), CONNECTION, "--stream", "--run-config", str(config_path)]
        proc = start("flwr-run", cmd, self.root / "logs" / "flwr-run.log", fedrec_env(self.cli_home))
        self.processes.append(proc)
        try:
            proc.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.stop()
            raise FedrecError(f"flwr run did not finish within {timeout:.0f} s; log {proc.log_path}") from None
        return proc

    def _start(self, name: str, cmd: list[str], flwr_home: Path,
               env: Mapping[str, str] | None = None) -> ManagedProcess:
        proc = start(name, cmd, self.root / "logs" / f"{name}.log", fedrec_env(flwr_home, env))
        self.processes.append(proc)
        return proc
