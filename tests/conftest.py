"""Shared fixtures: where MovieLens lives (skip cleanly when absent), one PyTorch thread.

Plain helpers and constants shared by several test modules are in :mod:`tests.support`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")

from tests.support import SMALL_SERVING, need, shared_data_dir, train_small


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return shared_data_dir()


@pytest.fixture(scope="session")
def ml100k(data_dir: Path) -> Path:
    return need(data_dir / "movielens" / "ml-100k")


@pytest.fixture(scope="session")
def ml1m(data_dir: Path) -> Path:
    return need(data_dir / "movielens" / "ml-1m")


@pytest.fixture
def one_thread():
    """PyTorch on one thread for the test (in-process nodes share the process; results stay exact)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> Path:
    """A trained :data:`~tests.support.SMALL_SERVING` run directory, shared by the serving tests."""
    return train_small(tmp_path_factory.mktemp("small-run"), SMALL_SERVING)
