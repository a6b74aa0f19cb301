"""Per-sample gradient norms for Opacus's ghost clipping: the same values as Opacus 1.6's, with less work.

One user unit is a sequence of T scored pairs (``dp.max-interactions`` positives with their negatives: T = 576 at
64 x (1 + 8)), and on that shape Opacus's exact norm samplers dominate a DP release (cProfile of one
``LocalNode.release("gradient")`` on the node of ``simulations/benchmarks/round_cost.py``: 2.6 of its 3.1 s in
Opacus's norm hooks, 1.1 s of the rest in the user-row pass):

- ``nn.Linear``: the ghost norm builds two T x T Gram matrices per sample, O(T^2 (p + d)), where forming the
  per-sample gradient itself is O(T p d). :func:`linear_norm_sample` takes the cheaper of the two exact formulas
  per layer and call (the "mixed" ghost clipping of Bu et al., 2022), and the bias norm as ``||sum_t g_t||``.
- ``nn.Embedding``: the unique (sample, row) pairs are found with ``torch.unique(dim=0)``, a lexicographic sort of
  rows. :func:`embedding_norm_sample` encodes each pair as one int64 key and sorts those.

:func:`install` registers both in place of Opacus's (idempotent); :func:`client.privacy.dpsgd.make_private` calls
it, so every DP path uses them. ``tests/test_dp_norms.py`` checks them against Opacus's own samplers.
"""

from __future__ import annotations

import torch
from torch import nn


def linear_norm_sample(layer: nn.Linear, activations: list[torch.Tensor],
                       backprops: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradient norms of a Linear layer's weight and bias (activations ``(n, [T,] d)``)."""
    a = activations[0].to(backprops.dtype)
    g = backprops
    if g.dim() == 2:  # one position per sample: ||g a^T||_F = ||g|| ||a||
        out = {}
        if layer.weight.requires_grad:
            out[layer.weight] = g.norm(dim=1) * a.norm(dim=1)
        if layer.bias is not None and layer.bias.requires_grad:
            out[layer.bias] = g.norm(dim=1)
        return out
    g = g.reshape(g.shape[0], -1, g.shape[-1])
    a = a.reshape(a.shape[0], -1, a.shape[-1])
    t, p, d = g.shape[1], g.shape[2], a.shape[2]
    out = {}
    if layer.weight.requires_grad:
        if t * (p + d) < p * d:  # ghost norm: <g g^T, a a^T> over the T x T Grams
            ghost = (torch.bmm(g, g.transpose(1, 2)) * torch.bmm(a, a.transpose(1, 2))).sum(dim=(1, 2))
            out[layer.weight] = ghost.clamp(min=0).sqrt()
        else:  # the per-sample gradient (p x d) itself
            out[layer.weight] = torch.bmm(g.transpose(1, 2), a).flatten(1).norm(dim=1)
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = g.sum(dim=1).norm(dim=1)
    return out


def embedding_norm_sample(layer: nn.Embedding, activations: list[torch.Tensor],
                          backprops: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradient norms of an Embedding table: rows a sample looks up several times add up first."""
    ids = activations[0].reshape(activations[0].shape[0], -1).long()
    n, t = ids.shape
    g = backprops.reshape(n * t, -1)
    samples = torch.arange(n, device=ids.device).repeat_interleave(t)
    keys = samples * layer.num_embeddings + ids.reshape(-1)
    unique, inverse = torch.unique(keys, return_inverse=True)
    summed = torch.zeros(len(unique), g.shape[1], dtype=g.dtype, device=g.device).index_add_(0, inverse, g)
    squares = torch.zeros(n, dtype=g.dtype, device=g.device)
    squares.index_add_(0, torch.div(unique, layer.num_embeddings, rounding_mode="floor"), summed.pow(2).sum(dim=1))
    return {layer.weight: squares.sqrt()}


def install() -> None:
    """Use these samplers for ``nn.Linear`` and ``nn.Embedding`` in Opacus's ghost clipping."""
    from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import GradSampleHooksFastGradientClipping

    GradSampleHooksFastGradientClipping.NORM_SAMPLERS[nn.Linear] = linear_norm_sample
    GradSampleHooksFastGradientClipping.NORM_SAMPLERS[nn.Embedding] = embedding_norm_sample
