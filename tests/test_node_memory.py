"""The node's dynamo-free Adam and SGD (`client/optimizers.py`) step exactly as `torch.optim` does."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from client.optimizers import SGD, Adam


def _params() -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(50, 8, generator=g)), torch.nn.Parameter(torch.randn(8, generator=g)),
            torch.nn.Parameter(torch.randn(3, generator=g))]


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize(("ours", "theirs", "extra"), [
    (Adam, torch.optim.Adam, {}),
    (SGD, torch.optim.SGD, {"momentum": 0.9}),
    (SGD, torch.optim.SGD, {}),
])
def test_steps_are_bit_identical_to_torch_optim(ours, theirs, extra, weight_decay):
    mine, ref = _params(), _params()
    def groups(ps):
        return [{"params": ps[:1]}, {"params": ps[1:], "lr": 0.3}]
    a = ours(groups(mine), lr=0.05, weight_decay=weight_decay, **extra)
    b = theirs(groups(ref), lr=0.05, weight_decay=weight_decay, **extra)
    g = torch.Generator().manual_seed(1)
    for step in range(40):
        a.param_groups[0]["lr"] = b.param_groups[0]["lr"] = 0.05 * 0.97**step  # as train.lr-decay rewrites it
        for i, (p, q) in enumerate(zip(mine, ref, strict=True)):
            if i == 2 and step % 3 == 0:  # a parameter without a gradient this step is left alone
                p.grad = q.grad = None
                continue
            grad = torch.randn(p.shape, generator=g)
            grad[torch.rand(p.shape, generator=g) < 0.5] = 0.0  # rows a batch did not touch
            p.grad, q.grad = grad.clone(), grad.clone()
        a.step()
        b.step()
        a.zero_grad()
        b.zero_grad()
    for p, q in zip(mine, ref, strict=True):
        assert torch.equal(p, q)
        assert p.grad is None


def test_a_parameter_in_two_groups_is_refused():
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="more than one parameter group"):
        Adam([{"params": [p]}, {"params": [p]}])


def test_node_training_plain_and_dp_never_imports_torch_dynamo():
    """torch.optim imports torch._dynamo (+30 MB beside torch and Opacus) on its first use; node training must not."""
    code = """
import sys
from client.privacy import plan_for, train_private
from client.trainer import TrainSettings, train_epochs
from shared.config import RunConfig
from shared.datasets import synthetic_tables
from shared.interactions import InteractionData
from shared.models import build_model
from shared.secret_random import SecretRandomness
import numpy as np
data = InteractionData.from_tables(synthetic_tables(1, 30, 40))
for extra in ({"dp.enabled": False}, {"dp.enabled": True, "dp.mechanism": "local-sgd", "dp.noise": "local"}):
    cfg = RunConfig.from_mapping({"model.name": "neumf", "federation.rounds": 1, **extra})
    model = build_model(cfg, data.n_users, data.n_items)
    s = TrainSettings.from_config(cfg)
    if cfg.dp.enabled:
        train_private(model, data, s, plan_for(cfg, data), cfg, randomness=SecretRandomness.fresh())
    else:
        train_epochs(model, data, s, epochs=1, rng=np.random.default_rng(0))
print("opacus" in sys.modules, "torch._dynamo" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"], out.stdout + out.stderr

