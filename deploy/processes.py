"""Start and stop Flower server processes by PID, on free ports, with fedrec's environment.

Every process is started in its own session (so its process group id is its PID),
its output goes to a log file, and it is stopped by that PID: SIGTERM to the group,
a grace period, SIGKILL to whatever of the group and of its recorded descendants is
still alive. Nothing is ever looked up or killed by name.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from shared.errors import FedrecError

BIN = Path(sys.executable).parent  # flower-superlink, flower-supernode, flwr live beside this interpreter


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def fedrec_env(flwr_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for every Flower process fedrec starts: private FLWR_HOME, no telemetry, no installs."""
    env = dict(os.environ)
    env.update({
        "FLWR_HOME": str(flwr_home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra or {})
    flwr_home.mkdir(parents=True, exist_ok=True)
    return env


def _started(pid: int) -> float | None:
    """The creation time of ``pid`` (psutil), or None if there is no such process."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def alive(pid: int, started: float | None = None) -> bool:
    """True if ``pid`` exists, is not a zombie and (if given) is the process created at ``started``."""
    try:
        process = psutil.Process(pid)
        if process.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return False
        return started is None or process.create_time() == started
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def descendants(pid: int) -> list[int]:
    """PIDs of all live descendants of ``pid``."""
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def stop_pids(pids: list[int], grace: float = 10.0) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL what is left (processes we found by PID)."""
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            process = psutil.Process(pid)
            process.terminate()
            procs.append(process)
    _, still = psutil.wait_procs(procs, timeout=grace)
    for process in still:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            process.kill()


@dataclass
class ManagedProcess:
    """One process we started: its command, log and PID (= its process group)."""

    name: str
    cmd: list[str]
    log_path: Path
    proc: subprocess.Popen
    seen: dict[int, float] = field(default_factory=dict)  # descendants observed while it ran: pid -> created

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def remember_children(self) -> None:
        for pid in descendants(self.pid):
            if (created := _started(pid)) is not None:
                self.seen[pid] = created

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, wait ``grace`` s, then SIGKILL the group and every known descendant."""
        if self.running():
            self.remember_children()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait()
        deadline = time.monotonic() + grace
        while any(alive(p, t) for p, t in self.seen.items()) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid, started in self.seen.items():
            if alive(pid, started):  # the same process, not a recycled PID
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def leftovers(self) -> list[int]:
        """PIDs of this process and its known descendants that are still alive."""
        return [p for p in (self.pid, *self.seen) if alive(p, self.seen.get(p))]


def start(name: str, cmd: list[str], log_path: Path, env: Mapping[str, str], cwd: Path | None = None) -> ManagedProcess:
    """Start ``cmd`` detached in its own session, output appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=dict(env),
                                cwd=cwd, start_new_session=True)
    return ManagedProcess(name, cmd, log_path, proc)


def wait_https(host: str, port: int, ca_cert: Path, process: ManagedProcess, timeout: float = 60.0) -> None:
    """Wait until ``https://host:port/health`` answers with a certificate that ``ca_cert`` validates."""
    context = ssl.create_default_context(cafile=str(ca_cert))
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not process.running():
            raise FedrecError(f"{process.name} exited with {process.proc.returncode}; log {process.log_path}:\n"
                              + "\n".join(process.log_text().splitlines()[-15:]))
        try:
            conn = http.client.HTTPSConnection(host, port, context=context, timeout=2)
            conn.request("GET", "/health")
            status = conn.getresponse().status
            conn.close()
            if status < 500:
                return
            last = f"HTTP {status}"
        except (OSError, http.client.HTTPException) as exc:
            last = str(exc)
        time.sleep(0.3)
    raise FedrecError(f"{process.name} did not answer on https://{host}:{port} within {timeout:.0f} s ({last})")


def wait_for(predicate, what: str, timeout: float, interval: float = 0.5):
    """Poll ``predicate()`` until it returns a truthy value; raise FedrecError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise FedrecError(f"timed out after {timeout:.0f} s waiting for {what}")
