"""Per-sample losses with Opacus's contract.

Each criterion takes logits ``(B, T)``, targets ``(B, T)`` and an optional
``weight`` mask ``(B, T)`` (0 for padding) and returns, with
``reduction="none"``, one loss per sample ``(B,)``: the weighted mean over that
sample's T scored pairs. A sample is whatever the privacy unit is (one
interaction with its negatives, or one user's padded interactions).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class _PerSample(nn.Module):
    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in ("none", "mean", "sum"):
            raise ValueError(f"reduction must be none/mean/sum, got {reduction!r}")
        self.reduction = reduction

    def _reduce(self, elementwise: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        if weight is None:
            per_sample = elementwise.mean(dim=-1)
        else:
            per_sample = (elementwise * weight).sum(dim=-1) / weight.sum(dim=-1).clamp(min=1.0)
        if self.reduction == "none":
            return per_sample
        return per_sample.sum() if self.reduction == "sum" else per_sample.mean()


class PerSampleBCE(_PerSample):
    """Binary cross-entropy on logits (implicit feedback: 1 positive, k sampled negatives)."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        return self._reduce(F.binary_cross_entropy_with_logits(logits, target, reduction="none"), weight)


class PerSampleMSE(_PerSample):
    """Squared error of ``lo + (hi - lo) * sigmoid(logit)`` against ratings (explicit feedback)."""

    def __init__(self, lo: float, hi: float, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.lo, self.hi = float(lo), float(hi)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return self.lo + (self.hi - self.lo) * torch.sigmoid(logits)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        return self._reduce((self.predict(logits) - target) ** 2, weight)
