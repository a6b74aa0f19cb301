"""Logits of users against the whole catalog, fast: what ``model.forward(users, all items)`` gives.

The item side is looked up once (not once per user block); for GMF the logits are one matrix product
``p_u · (q_i ∘ h) + b_i + b`` (float32, equal to ``forward`` up to rounding: :meth:`CatalogScorer.check`).
Serving (``client/recommender.py``) and full-rank evaluation (``shared/evaluation.py``) both score with it, so a
catalog of 10⁶ items costs one (B, d) x (d, 10⁶) product per block instead of 10⁶ embedding lookups per user.
"""

from __future__ import annotations

import numpy as np
import torch

from shared.models.base import Recommender
from shared.models.towers import GMF


class CatalogScorer:
    """``scorer(user_vectors) -> (B, n_items)`` float32 logits for a (frozen) model's current weights."""

    def __init__(self, model: Recommender) -> None:
        self.model = model
        with torch.no_grad():
            self.items = {name: t.weight.detach().unsqueeze(0) for name, t in model.item_emb.items()}
            item_bias = getattr(model, "item_bias", None)  # optional per-item logit offset
            self.offset = item_bias.weight.detach()[:, 0].numpy() if item_bias is not None else np.float32(0)
            self.gmf = None
            if isinstance(model, GMF):
                h = model.out.weight.detach()[0]
                self.gmf = (model.item_emb["gmf"].weight.detach() * h).T.contiguous().numpy()
                self.offset = (self.offset + model.out.bias.detach().numpy()).astype(np.float32)

    @torch.no_grad()
    def __call__(self, users: dict[str, torch.Tensor]) -> np.ndarray:
        if self.gmf is not None:
            return users["gmf"][:, 0, :].numpy() @ self.gmf + self.offset
        n = next(iter(users.values())).shape[0]
        items = {name: v.expand(n, -1, -1) for name, v in self.items.items()}
        return self.model.score(users, items).numpy() + self.offset

    @torch.no_grad()
    def rows(self, users: np.ndarray) -> np.ndarray:
        """Logits (len(users), n_items) for user rows of the model's own user tables."""
        index = torch.from_numpy(np.asarray(users, dtype=np.int64))
        return self({name: t.weight[index].unsqueeze(1) for name, t in self.model.user_emb.items()})

    @torch.no_grad()
    def check(self) -> None:
        """Raise ValueError unless the fast path reproduces ``model.forward`` for user row 0 (rtol/atol 1e-4)."""
        first = torch.zeros(1, dtype=torch.long)
        want = self.model(first, torch.arange(self.model.n_items).unsqueeze(0)).numpy()
        if not np.allclose(self.rows(np.zeros(1, np.int64)), want, rtol=1e-4, atol=1e-4):
            raise ValueError(f"fast scoring disagrees with {type(self.model).__name__}.forward "
                             "(shared/models/scoring.py)")
