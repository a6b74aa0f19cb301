"""End-of-run artifacts of a federated run: plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from shared.plots import learning_curves


def participation_plot(records: list[dict[str, Any]], path: str | Path) -> Path:
    """Which node's update was aggregated in which round (heatmap up to 60 nodes, else a histogram)."""
    rounds = [r["round"] for r in records]
    nodes = sorted({n for r in records for n in r.get("nodes", [])})
    fig, ax = plt.subplots(figsize=(8, 4))
    if nodes and len(nodes) <= 60:
        index = {n: i for i, n in enumerate(nodes)}
        grid = np.zeros((len(nodes), len(rounds)))
        for j, r in enumerate(records):
            for n in r.get("nodes", []):
                grid[index[n], j] = 1
            for n, _ in r.get("rejected", []):
                if n in index:
                    grid[index[n], j] = -1
        ax.imshow(grid, aspect="auto", cmap="RdYlGn", vmin=-1, vmax=1, interpolation="nearest")
        ax.set(xlabel="round", ylabel="node", title="participation (green: aggregated, red: rejected)")
        ax.set_xticks(range(len(rounds)), rounds)
        ax.set_yticks(range(len(nodes)), [str(i) for i in range(len(nodes))])
    else:
        counts = {}
        for r in records:
            for n in r.get("nodes", []):
                counts[n] = counts.get(n, 0) + 1
        ax.hist(list(counts.values()) or [0], bins=30)
        ax.set(xlabel="rounds aggregated", ylabel="nodes", title=f"participation of {len(counts)} nodes")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def write_plots(records: list[dict[str, Any]], directory: str | Path, title: str) -> None:
    directory = Path(directory)
    learning_curves(records, directory / "learning_curves.png", x="round", title=title)
    participation_plot(records, directory / "participation.png")
