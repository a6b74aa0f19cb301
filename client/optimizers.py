"""Adam and SGD for node training, without ``torch._dynamo``.

Every ``torch.optim`` optimizer imports ``torch._dynamo`` the first time it is built, stepped or zeroed
(``add_param_group``, ``zero_grad`` and ``step`` are wrapped in dynamo's ``disable``): +30 MB of resident memory
in a process that already imported torch, flwr and Opacus, 23 MB of a training ClientApp's peak on a real
SuperNode (docs/howto/edge-footprint.md), on a node that never compiles anything. These two classes are
``torch.optim.Optimizer`` subclasses (Opacus's ``DPOptimizer`` wraps them like any other) that override exactly
those three methods with the same arithmetic as torch's single-tensor CPU path, so a step gives the same
parameters bit for bit (``tests/test_node_memory.py`` checks both against ``torch.optim`` over many steps). Only
what fedrec uses is supported: Adam (betas, eps, L2 weight decay, no amsgrad) and SGD (momentum, L2 weight
decay, no dampening or Nesterov), dense gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch


class _NodeOptimizer(torch.optim.Optimizer):
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        params = param_group["params"]
        param_group["params"] = [params] if isinstance(params, torch.Tensor) else list(params)
        for p in param_group["params"]:
            if not isinstance(p, torch.Tensor) or not p.is_leaf:
                raise ValueError("can only optimize leaf tensors")
        for name, default in self.defaults.items():
            param_group.setdefault(name, default)
        known = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in known for p in param_group["params"]):
            raise ValueError("some parameters appear in more than one parameter group")
        self.param_groups.append(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().zero_()

    def _with_closure(self, closure: Callable[[], float] | None) -> float | None:
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()


class Adam(_NodeOptimizer):
    """``torch.optim.Adam`` (L2 ``weight_decay`` added to the gradient, no amsgrad), dynamo-free."""

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = self._with_closure(closure)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad if wd == 0 else p.grad.add(p, alpha=wd)
                state = self.state[p]
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(p, memory_format=torch.preserve_format),
                                 exp_avg_sq=torch.zeros_like(p, memory_format=torch.preserve_format))
                state["step"] += 1
                t = float(state["step"])
                state["exp_avg"].lerp_(grad, 1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (state["exp_avg_sq"].sqrt() / (1 - beta2**t) ** 0.5).add_(eps)
                p.addcdiv_(state["exp_avg"], denom, value=-(lr / (1 - beta1**t)))
        return loss


class SGD(_NodeOptimizer):
    """``torch.optim.SGD`` with ``momentum`` (no dampening, not Nesterov) and L2 ``weight_decay``, dynamo-free."""

    def __init__(self, params: Iterable, lr: float = 1e-3, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = self._with_closure(closure)
        for group in self.param_groups:
            lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad if wd == 0 else p.grad.add(p, alpha=wd)
                if momentum:
                    buf = self.state[p].get("momentum_buffer")
                    if buf is None:
                        buf = self.state[p]["momentum_buffer"] = torch.clone(grad).detach()
                    else:
                        buf.mul_(momentum).add_(grad)
                    grad = buf
                p.add_(grad, alpha=-lr)
        return loss
