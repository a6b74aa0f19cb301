"""Node-level DP (``dp.unit = "node"``): DP-FedAvg with client-side clipping and coordinator noise.

Each sampled node clips its update (new global part minus the received one) to
``dp.clip-norm`` (Flower's ``fixedclipping_mod``); the coordinator averages the
clipped updates with equal weights and adds Gaussian noise of std
``z * clip-norm / m`` (Flower's ``DifferentialPrivacyClientSideFixedClipping``,
McMahan et al. 2018). The guarantee protects *a whole node* (all of its users
together) and equals user-level DP only when every node holds one user
(cross-device). It holds against anyone who sees the released global models,
provided the coordinator adds the noise (central DP).

Accounting is fedrec's own and claims no sampling amplification: each round is
one Gaussian mechanism with the round's *effective* noise multiplier
``z * k / m`` for ``k`` aggregated nodes (fewer nodes than planned means less
noise relative to one node's influence), composed over rounds with the
configured accountant. The coordinator signs one ledger entry per round with its
own key, so ``fedrec audit`` checks it like a node chain. The noise comes from fresh OS entropy
through a ChaCha20 keystream (:mod:`shared.secret_random`), not from NumPy's global generator
that Flower's wrapper uses.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, Strategy

from shared.accounting import Segment, default_delta, epsilon, plan_noise
from shared.config import RunConfig
from shared.ledger import NodeLedger, SigningKey
from shared.secret_random import SecretRandomness

log = logging.getLogger("flwr")

LEDGER = "coordinator_ledger.jsonl"


def sampled_nodes(cfg: RunConfig) -> int:
    """Nodes aggregated per round as planned: ``federation.fraction-train`` of ``federation.min-nodes`` (>= 1)."""
    return max(int(cfg.federation.min_nodes * cfg.federation.fraction_train), 1)


class CentralDP:
    """The coordinator's node-level DP plan, account and signed ledger for one run."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path, run_key: str) -> None:
        self.cfg = cfg
        self.m = sampled_nodes(cfg)
        self.delta = cfg.dp.delta or default_delta(cfg.federation.min_nodes)
        self.noise_multiplier = plan_noise(cfg.dp.target_epsilon, self.delta, 1.0, cfg.federation.rounds,
                                           cfg.dp.accountant)
        self.key = SigningKey.load_or_create(Path(run_dir) / "coordinator.key")
        self.ledger = NodeLedger(Path(run_dir) / LEDGER)
        self.run_key = run_key

    def wrap(self, inner: Strategy) -> Strategy:
        """Flower's DP wrapper around the (equal-weight) inner strategy, with secret noise."""
        return SecretNoiseClientSideFixedClipping(
            inner, noise_multiplier=self.noise_multiplier, clipping_norm=self.cfg.dp.clip_norm,
            num_sampled_clients=self.m,
        )

    def history(self) -> list[Segment]:
        return [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in self.chain()]

    def refusal(self) -> str | None:
        """Why another round would exceed the budget (assuming all planned nodes answer), or None."""
        after = epsilon([*self.history(), (self.noise_multiplier, 1.0, 1)], self.delta, self.cfg.dp.accountant)
        if after > self.cfg.dp.target_epsilon * (1 + 1e-9):
            return (f"node-level privacy budget: epsilon would reach {after:.4f} > target "
                    f"{self.cfg.dp.target_epsilon:g} (delta={self.delta:.3g}, {self.cfg.dp.accountant})")
        return None

    def record(self, server_round: int, aggregated: int) -> dict[str, Any]:
        """One released noisy average over ``aggregated`` nodes: sign and append its spend."""
        z_eff = self.noise_multiplier * aggregated / self.m
        history = [*self.history(), (z_eff, 1.0, 1)]
        return self.ledger.append(self.key, {
            "run_id": self.run_key, "round": server_round, "unit": "node", "mechanism": "dp-fedavg",
            "noise": "central", "noise_share": 0.0, "noise_multiplier": z_eff,
            "sample_rate": 1.0, "steps": 1, "clip_norm": self.cfg.dp.clip_norm, "delta": self.delta,
            "accountant": self.cfg.dp.accountant, "epsilon": epsilon(history, self.delta, self.cfg.dp.accountant),
            "epsilon_budget": self.cfg.dp.target_epsilon,
        })

    def chain(self) -> list[dict[str, Any]]:
        return self.ledger.entries(self.run_key)


class SecretNoiseClientSideFixedClipping(DifferentialPrivacyClientSideFixedClipping):
    """Flower's DP-FedAvg wrapper; only the noise source differs (CSPRNG from OS entropy)."""

    def _add_noise_to_aggregated_arrays(self, aggregated_arrays: ArrayRecord) -> ArrayRecord:
        std = self.noise_multiplier * self.clipping_norm / self.num_sampled_clients
        randomness = SecretRandomness.fresh()
        noisy = {}
        for key, array in aggregated_arrays.items():
            value = array.numpy()
            if np.issubdtype(value.dtype, np.floating):
                value = value + randomness.gaussian(value.shape, std).numpy().astype(value.dtype)
            noisy[key] = Array(np.asarray(value))
        log.info("aggregate_train: central DP noise with %.4f stdev added (secret CSPRNG)", std)
        return ArrayRecord(noisy)
