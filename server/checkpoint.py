"""Round checkpoints: written atomically after every round, read by ``federation.resume-from``.

A checkpoint holds everything needed to continue exactly where a run stopped:
the round just finished, the global arrays, the strategy's optimizer state,
the best model so far (early stopping), the patience counter, the run key nodes
use for their state, and every metrics record so far.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.atomic import atomic_write_bytes
from shared.errors import FedrecError

FORMAT = "fedrec-checkpoint-v1"
NAME = "checkpoint.pt"

Arrays = dict[str, np.ndarray]


@dataclass
class Checkpoint:
    """The coordinator's state after ``round``."""

    round: int
    arrays: Arrays
    run_key: str
    strategy_state: dict[str, Arrays] = field(default_factory=dict)
    best_round: int = 0
    best_score: float = float("-inf")
    best_arrays: Arrays | None = None
    stale: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False


def _t(arrays: Arrays | None) -> dict[str, torch.Tensor] | None:
    return None if arrays is None else {k: torch.from_numpy(np.array(v, copy=True)) for k, v in arrays.items()}


def _n(tensors: dict[str, torch.Tensor] | None) -> Arrays | None:
    return None if tensors is None else {k: v.numpy() for k, v in tensors.items()}


def save(directory: str | Path, ck: Checkpoint) -> Path:
    """Write ``checkpoint.pt`` atomically."""
    payload = {
        "format": FORMAT, "round": ck.round, "arrays": _t(ck.arrays), "run_key": ck.run_key,
        "strategy_state": {k: _t(v) for k, v in ck.strategy_state.items()}, "best_round": ck.best_round,
        "best_score": ck.best_score, "best_arrays": _t(ck.best_arrays), "stale": ck.stale,
        "history": ck.history, "stopped_early": ck.stopped_early,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    path = Path(directory) / NAME
    atomic_write_bytes(path, buf.getvalue())
    return path


def load(directory: str | Path) -> Checkpoint:
    """Read a run directory's checkpoint; a clear error if absent or corrupt."""
    path = Path(directory) / NAME
    if not path.exists():
        raise FedrecError(f"{path}: no checkpoint to resume from")
    try:
        p = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file: many torch exception types
        raise FedrecError(f"{path}: unreadable checkpoint ({exc.__class__.__name__})") from None
    if not isinstance(p, dict) or p.get("format") != FORMAT:
        raise FedrecError(f"{path}: not a fedrec checkpoint")
    return Checkpoint(
        round=p["round"], arrays=_n(p["arrays"]), run_key=p["run_key"],
        strategy_state={k: _n(v) for k, v in p["strategy_state"].items()}, best_round=p["best_round"],
        best_score=p["best_score"], best_arrays=_n(p["best_arrays"]), stale=p["stale"], history=p["history"],
        stopped_early=p["stopped_early"],
    )
