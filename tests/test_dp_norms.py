"""The per-sample gradient norms of client.privacy.norms equal Opacus 1.6's own samplers (golden: Opacus)."""

from __future__ import annotations

import pytest
import torch
from opacus.grad_sample.embedding import compute_embedding_norm_sample
from opacus.grad_sample.linear import compute_linear_norm_sample
from torch import nn

from client.privacy.norms import embedding_norm_sample, install, linear_norm_sample


def _close(ours: dict, theirs: dict) -> None:
    assert ours.keys() == theirs.keys()
    for p in ours:
        assert torch.allclose(ours[p], theirs[p], rtol=1e-9, atol=1e-12), (ours[p], theirs[p])


@pytest.mark.parametrize("shape", [(7, 5, 3, 2), (7, 40, 3, 1), (7, 3, 16, 16), (7, None, 4, 3)])
def test_linear_norms_equal_opacus_on_both_formulas(shape):
    """(n, T, d, p): T (p + d) < p d takes the ghost norm, otherwise the per-sample gradient; T None: 2-D input."""
    n, t, d, p = shape
    layer = nn.Linear(d, p).double()
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, d, generator=gen, dtype=torch.float64) if t is None else \
        torch.randn(n, t, d, generator=gen, dtype=torch.float64)
    g = torch.randn(*a.shape[:-1], p, generator=gen, dtype=torch.float64)
    _close(linear_norm_sample(layer, [a], g), compute_linear_norm_sample(layer, [a], g))


def test_embedding_norms_equal_opacus_with_repeated_rows():
    """A sample that looks a row up several times: its gradient on the row is the sum, then the norm."""
    layer = nn.Embedding(11, 4).double()
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 11, (9, 30), generator=gen)
    ids[0] = 3  # one sample, one row, 30 times
    g = torch.randn(9, 30, 4, generator=gen, dtype=torch.float64)
    g[1] = 0.0  # a sample with no gradient (all positions masked)
    ours = embedding_norm_sample(layer, [ids], g)
    _close(ours, compute_embedding_norm_sample(layer, [ids], g))
    assert torch.isclose(ours[layer.weight][0], g[0].sum(dim=0).norm()) and ours[layer.weight][1] == 0


def test_install_puts_them_in_the_ghost_clipping_registry():
    from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import GradSampleHooksFastGradientClipping

    install()
    install()
    registry = GradSampleHooksFastGradientClipping.NORM_SAMPLERS
    assert registry[nn.Linear] is linear_norm_sample and registry[nn.Embedding] is embedding_norm_sample
