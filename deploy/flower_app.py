"""The Flower apps fedrec runs: the production app (this project) and the simulation app built from it.

The project's own ``pyproject.toml`` is the production app: ``client.app:app`` and
``server.app:app``, and its FAB carries ``shared``, ``client`` and ``server`` only.
:func:`simulation_app` builds, in a run directory, the same app whose ClientApp and ServerApp
are :mod:`simulations.client_app` (partitions handed over in-process, node fault injection) and
:mod:`simulations.server_app` (coordinator fault injection), and whose FAB also carries the
simulation layer — what ``fedrec simulate`` hands to ``flwr run``.
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from shared.atomic import atomic_write_text
from shared.config import RunConfig
from shared.errors import FedrecError

PACKAGES = ("shared", "client", "server")


def app_dir() -> Path:
    """The production Flower app (the project root holding pyproject.toml with [tool.flwr.app])."""
    root = Path(__file__).resolve().parents[1]
    pyproject = root / "pyproject.toml"
    if not pyproject.exists() or "flwr" not in tomllib.loads(pyproject.read_text()).get("tool", {}):
        raise FedrecError(f"{root} is not a fedrec source checkout (no pyproject.toml with [tool.flwr.app])")
    return root


def simulation_app(dest: Path) -> Path:
    """The simulation app under ``dest`` (replaced): the production packages, ``simulations/*.py``, a pyproject
    naming ``simulations.client_app:app``."""
    root = app_dir()
    if dest.exists():
        shutil.rmtree(dest)
    for package in PACKAGES:
        shutil.copytree(root / package, dest / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (dest / "simulations").mkdir(parents=True)
    for module in (root / "simulations").glob("*.py"):
        shutil.copy2(module, dest / "simulations" / module.name)
    project = tomllib.loads((root / "pyproject.toml").read_text())
    flwr: dict[str, Any] = project["tool"]["flwr"]["app"]
    flwr["components"]["clientapp"] = "simulations.client_app:app"
    flwr["components"]["serverapp"] = "simulations.server_app:app"
    flwr["fab-include"] = [*flwr["fab-include"], "simulations/*.py"]
    project["project"].pop("readme", None)
    (dest / "pyproject.toml").write_text(tomli_w.dumps(project))
    return dest


def write_run_config(cfg: RunConfig, path: Path) -> Path:
    """The resolved config as a flat TOML file (what `flwr run --run-config FILE` reads)."""
    atomic_write_text(path, tomli_w.dumps(cfg.to_flower_config()))
    return path
