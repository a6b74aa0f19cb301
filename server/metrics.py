"""Turn summed evaluation metrics into means, per role."""

from __future__ import annotations

import math
from collections.abc import Mapping

ROLES = ("val", "test")


def role_means(sums: Mapping[str, float], role: str, k: int, task: str) -> dict[str, float] | None:
    """Means for one role from the summed node metrics (None if no node evaluated it)."""
    count = sums.get(f"{role}-count", 0)
    if not count:
        return None
    if task == "explicit":
        return {"rmse": math.sqrt(sums[f"{role}-sse"] / count), "mae": sums[f"{role}-sae"] / count,
                "count": int(count)}
    out = {f"hr{k}": sums[f"{role}-hr-sum"] / count, f"ndcg{k}": sums[f"{role}-ndcg-sum"] / count,
           "count": int(count)}
    full = sums.get(f"{role}-full-count", 0)
    if full:
        out |= {
            f"hr{k}_full": sums[f"{role}-hr-full-sum"] / full,
            f"ndcg{k}_full": sums[f"{role}-ndcg-full-sum"] / full,
            f"ild{k}": sums[f"{role}-ild-sum"] / full,
        }
    return out


def selection_score(val: Mapping[str, float] | None, k: int, task: str) -> float | None:
    """Early-stopping score, higher is better: HR@k (implicit) or -RMSE (explicit)."""
    if val is None:
        return None
    return -val["rmse"] if task == "explicit" else val[f"hr{k}"]
