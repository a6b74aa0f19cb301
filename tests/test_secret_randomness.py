"""Privacy randomness is secret: the coordinator cannot rebuild the noise or the batches; non-private runs repeat."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from client.node import LocalNode
from client.privacy import plan_for
from server.loop import initial_model
from shared.config import RunConfig
from shared.datasets import synthetic_tables
from shared.interactions import InteractionData
from shared.secret_random import CSPRNGGaussian, SecretRandomness
from shared.seeding import numpy_rng, torch_generator
from tests.support import MODEL_AVERAGING, cfg_for, federate


# --- the generator itself ----------------------------------------------------------------------
def test_keystream_is_rfc_7539_chacha20():
    """Key 0, nonce 0, counter 0: the keystream's first 8 bytes are 76 b8 e0 ad a0 f1 3d 90 (RFC 7539, 2.3.2 / A.1)."""
    first = int.from_bytes(bytes.fromhex("76b8e0ada0f13d90"), "little")
    assert CSPRNGGaussian(bytes(32)).uniform(1)[0] == ((first >> 11) + 0.5) * 2.0**-53


def test_gaussian_has_the_planned_distribution():
    noise = SecretRandomness.fresh().gaussian((400_000,), 0.7, torch.float64).numpy()
    assert abs(noise.mean()) < 4 * 0.7 / math.sqrt(len(noise))
    assert noise.std() == pytest.approx(0.7, rel=0.01)
    assert stats.kstest(noise / 0.7, "norm").pvalue > 1e-3
    u = CSPRNGGaussian(b"k" * 32).uniform(200_000)
    assert u.min() > 0 and u.max() < 1 and stats.kstest(u, "uniform").pvalue > 1e-3


def test_fresh_sources_differ_and_zero_std_is_exactly_zero():
    a, b = SecretRandomness.fresh(), SecretRandomness.fresh()
    assert not torch.equal(a.gaussian((64,), 1.0), b.gaussian((64,), 1.0))
    assert a.numpy.integers(0, 2**62) != b.numpy.integers(0, 2**62)
    assert torch.count_nonzero(a.gaussian((10,), 0.0)) == 0


# --- the coordinator's view --------------------------------------------------------------------
@pytest.fixture(scope="module")
def node() -> LocalNode:
    cfg = RunConfig.from_mapping({**MODEL_AVERAGING,
                                  "dp.enabled": True, "model.name": "gmf", "federation.rounds": 2,
                                  "dp.target-epsilon": 4.0,
                                  "dp.sample-rate": 0.5, "train.user-epochs": 0, "seed": 7, "data.synthetic-users": 80,
                                  "data.synthetic-items": 120})
    data = InteractionData.from_tables(synthetic_tables(cfg.seed, cfg.data.synthetic_users, cfg.data.synthetic_items))
    return LocalNode(cfg, data, (1.0, 5.0), "partition-0")


def capture_noise(monkeypatch) -> list[torch.Tensor]:
    """Record every noise tensor the node adds (wrapping, not replacing, the secret source)."""
    seen: list[torch.Tensor] = []
    original = SecretRandomness.gaussian

    def recording(self, shape, std, dtype=torch.float32):
        out = original(self, shape, std, dtype)
        seen.append(out.clone())
        return out

    monkeypatch.setattr(SecretRandomness, "gaussian", recording)
    return seen


def public_generators(cfg: RunConfig, node_keys: list[str], rounds: range):
    """Every generator the coordinator can build from the run config, node names and rounds."""
    streams = ["dp-noise", "train", "users", "eval-users", "user-emb", "model-shell", "global-init", "sample-train"]
    for key in node_keys:
        for rnd in rounds:
            for stream in streams:
                for args in ((stream, key, rnd), (stream, key), (stream, rnd)):
                    yield torch_generator(cfg.seed, *args), numpy_rng(cfg.seed, *args)


def test_the_coordinator_cannot_rebuild_the_noise_a_node_added(node, monkeypatch):
    seen = capture_noise(monkeypatch)
    init, _ = initial_model(node.cfg)
    plan = plan_for(node.cfg, node.data)
    node.train_round(init, None, 1, plan=plan)
    assert len(seen) >= plan.steps_per_round and all(float(t.abs().sum()) > 0 for t in seen)
    std = plan.noise_multiplier * plan.clip_norm
    table = max(seen, key=torch.numel)  # the item embedding table's noise (120 x 32)
    added = table.flatten().double()
    bound = 5 / math.sqrt(added.numel())  # |correlation| of independent draws: ~N(0, 1/n)
    for gen, rng in public_generators(node.cfg, ["partition-0", "0", str(1000)], range(0, 3)):
        for guess in (torch.normal(0.0, std, tuple(table.shape), generator=gen).flatten().double(),
                      torch.from_numpy(rng.normal(0.0, std, tuple(table.shape)).ravel())):
            assert not torch.allclose(guess, added, atol=1e-6)
            assert abs(float(torch.corrcoef(torch.stack([guess, added]))[0, 1])) < bound


def test_poisson_batches_are_not_reproducible(node, monkeypatch):
    """With the noise switched off, two rounds from identical inputs still differ: the sampled batches do."""
    monkeypatch.setattr(SecretRandomness, "gaussian", lambda self, shape, std, dtype=torch.float32:
                        torch.zeros(tuple(shape), dtype=dtype))
    init, _ = initial_model(node.cfg)
    plan = plan_for(node.cfg, node.data)
    assert plan.sample_rate < 1
    a = node.train_round(init, None, 1, plan=plan).global_part
    b = node.train_round(init, None, 1, plan=plan).global_part
    assert any(not torch.equal(a[k], b[k]) for k in a)


def released(tmp_path, name: str, **extra) -> dict[str, np.ndarray]:
    cfg = cfg_for(tmp_path / name, **{"federation.rounds": 2, "sim.node-state-dir": str(tmp_path / name / "nodes"),
                                      "eval.every": 2, **extra})
    federate(cfg)
    return {k: v.numpy() for k, v in torch.load(tmp_path / name / "run" / "model.pt")["global"].items()}


def test_two_dp_runs_of_one_public_config_release_different_models(tmp_path):
    a, b = (released(tmp_path, f"dp{i}", **{"dp.enabled": True, "dp.target-epsilon": 4.0}) for i in (1, 2))
    assert any(not np.array_equal(a[k], b[k]) for k in a)


def test_two_non_private_runs_release_identical_models(tmp_path):
    a, b = (released(tmp_path, f"plain{i}") for i in (1, 2))
    assert all(np.array_equal(a[k], b[k]) for k in a)
