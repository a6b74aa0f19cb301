"""Run directories: resolved config, per-step metrics (JSONL), models, plots.

Layout (centralized and federated runs alike)::

    config.json        the resolved RunConfig (+ run kind and id)
    metrics.jsonl      one JSON object per epoch/round, appended durably
    summary.json       final figures (written last: its presence marks a finished run)
    model.pt           final/best model
    *.png              plots
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import torch

from shared.atomic import append_line_durable, atomic_write_bytes, atomic_write_text
from shared.config import RunConfig
from shared.errors import FedrecError

MODEL_FORMAT = "fedrec-model-v1"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


class RunDirectory:
    """A run's output directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, path: str | Path, cfg: RunConfig, *, kind: str, extra: dict | None = None,
               exist_ok: bool = False) -> RunDirectory:
        """Make the directory and write ``config.json``; refuse a finished run unless ``exist_ok``."""
        run = cls(path)
        if (run.path / "summary.json").exists() and not exist_ok:
            raise FedrecError(f"{run.path} holds a finished run; choose another --out")
        run.path.mkdir(parents=True, exist_ok=True)
        doc = {"kind": kind, "config": cfg.to_flower_config(), **(extra or {})}
        atomic_write_text(run.path / "config.json", json.dumps(doc, indent=2, sort_keys=True) + "\n")
        return run

    def log(self, record: dict[str, Any]) -> None:
        """Append one metrics record."""
        append_line_durable(self.path / "metrics.jsonl", json.dumps(_jsonable(record), sort_keys=True))

    def records(self) -> list[dict[str, Any]]:
        """All metrics records so far."""
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def write_json(self, name: str, doc: dict[str, Any]) -> None:
        atomic_write_text(self.path / name, json.dumps(_jsonable(doc), indent=2, sort_keys=True) + "\n")

    def save_model(self, name: str, payload: dict[str, Any]) -> Path:
        """Atomically save a model payload (state dicts + metadata) with torch.save."""
        buf = io.BytesIO()
        torch.save({"format": MODEL_FORMAT, **payload}, buf)
        atomic_write_bytes(self.path / name, buf.getvalue())
        return self.path / name


def load_model_payload(path: str | Path) -> dict[str, Any]:
    """Read a model file written by :meth:`RunDirectory.save_model`."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FedrecError(f"{path}: model file not found") from None
    except Exception as exc:  # torch raises many types for corrupt files
        raise FedrecError(f"{path}: not a readable model file ({exc.__class__.__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise FedrecError(f"{path}: not a fedrec model file")
    return payload
