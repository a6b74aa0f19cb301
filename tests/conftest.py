"""Shared fixtures: where MovieLens lives (skip cleanly when absent), small configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")

REPO = Path(__file__).resolve().parents[1]

# The run-config defaults most tests were written against, before private noisy-sum releases became the
# default: the federation averages the nodes' models, without DP unless a test sets dp = true (then DP-SGD on
# each node, local noise). Tests of the default mechanism (tests/test_dp_releases.py) do not use it.
MODEL_AVERAGING = {"dp.enabled": False, "model.item-bias": False, "model.item-init": "random", "dp.clip-norm": 1.0,
                   "dp.sample-rate": 0.1,
                   "dp.mechanism": "local-sgd", "dp.noise": "local", "dp.frequency-share": 0.0}


def shared_data_dir() -> Path:
    """``$FEDREC_DATA_DIR`` or ``../shared/data`` beside the repository."""
    return Path(os.environ.get("FEDREC_DATA_DIR", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return shared_data_dir()


def need(path: Path) -> Path:
    """Skip the calling test unless ``path`` exists (MovieLens is never copied into the repo)."""
    if not path.exists():
        pytest.skip(f"{path} not present (set FEDREC_DATA_DIR to the MovieLens data directory)")
    return path


@pytest.fixture(scope="session")
def ml100k(data_dir: Path) -> Path:
    return need(data_dir / "movielens" / "ml-100k")


@pytest.fixture(scope="session")
def ml1m(data_dir: Path) -> Path:
    return need(data_dir / "movielens" / "ml-1m")
