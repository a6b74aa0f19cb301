"""PNG plots of run metrics (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def learning_curves(records: list[dict[str, Any]], path: str | Path, *, x: str, title: str) -> Path:
    """Train loss and validation HR/NDCG@10 per epoch/round."""
    fig, (ax_loss, ax_rank) = plt.subplots(1, 2, figsize=(10, 4))
    xs = [r[x] for r in records if r.get("train_loss") is not None]
    ax_loss.plot(xs, [r["train_loss"] for r in records if r.get("train_loss") is not None], marker="o")
    ax_loss.set(xlabel=x, ylabel="train loss", title="training loss")
    for key, style in (("hr10", "-o"), ("ndcg10", "-s"), ("hr10_full", "--o"), ("ndcg10_full", "--s")):
        pts = [(r[x], r["val"][key]) for r in records if r.get("val") and r["val"].get(key) is not None]
        if pts:
            ax_rank.plot(*zip(*pts, strict=True), style, label=f"val {key}")
    ax_rank.set(xlabel=x, ylabel="metric", title="validation ranking")
    ax_rank.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
