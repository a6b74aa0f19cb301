"""DP-SGD on the node: accountants, equivalence, clipping, budget guard, persistence."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from flwr.app import RecordDict
from torch.utils.data import DataLoader

from client.privacy import PrivacyAccount, make_private, plan_for, refusal
from client.privacy.samples import UserSamples, identity_collate
from client.state import NodeStateStore
from client.trainer import TrainSettings, make_criterion
from shared.accounting import default_delta, epsilon, independent_epsilon, plan_noise
from shared.config import RunConfig
from shared.datasets import synthetic_tables
from shared.interactions import InteractionData
from shared.models import build_model
from shared.secret_random import SecretRandomness
from shared.seeding import numpy_rng, torch_generator, torch_seed

# One clipped, noised update per node (the noise added by each node; DP-FedAvg style).
LOCAL_SGD = {"dp.enabled": True, "dp.mechanism": "local-sgd", "dp.noise": "local"}


# --- golden values of the privacy math ---------------------------------------------------------
def test_golden_epsilon_rdp_both_implementations():
    from opacus.accountants import RDPAccountant

    # Opacus's own golden value (its accountant test): RDP, sigma=1.5, q=0.04, 2250 steps, delta=1e-5, default orders
    acc = RDPAccountant()
    acc.history = [(1.5, 0.04, 2250)]
    assert acc.get_epsilon(1e-5) == pytest.approx(7.32911117143, abs=1e-9)
    # fedrec's accountant (integer orders): Opacus and Google dp-accounting agree to float precision
    ours, google = epsilon([(1.5, 0.04, 2250)], 1e-5, "rdp"), independent_epsilon([(1.5, 0.04, 2250)], 1e-5, "rdp")
    assert ours == pytest.approx(7.32994, abs=1e-4) and google == pytest.approx(ours, rel=1e-9)
    for history, delta in (([(0.7, 0.1, 40)], 0.008), ([(0.9, 0.1, 300)], 3e-6), ([(0.5, 0.2, 40)], 0.008)):
        assert independent_epsilon(history, delta, "rdp") == pytest.approx(epsilon(history, delta, "rdp"), rel=1e-9)


def test_golden_epsilon_prv_and_pld_agree():
    prv = epsilon([(1.5, 0.04, 2250)], 1e-5, "prv")
    pld = independent_epsilon([(1.5, 0.04, 2250)], 1e-5, "prv")
    assert prv == pytest.approx(6.779, abs=5e-3) and pld == pytest.approx(6.769, abs=5e-3)
    assert abs(prv - pld) / pld < 0.01


def test_composition_of_segments_and_full_batch():
    # composing two segments equals one segment of the same mechanism with the summed steps
    assert epsilon([(1.0, 0.1, 30), (1.0, 0.1, 70)], 1e-5) == pytest.approx(epsilon([(1.0, 0.1, 100)], 1e-5))
    # q = 1 is the plain Gaussian mechanism composed `steps` times; both implementations agree
    a, b = epsilon([(4.0, 1.0, 50)], 1e-4), independent_epsilon([(4.0, 1.0, 50)], 1e-4)
    assert abs(a - b) / b < 0.01
    assert epsilon([], 1e-5) == 0.0 and epsilon([(0.0, 0.1, 5)], 1e-5) == math.inf


@pytest.mark.parametrize(("eps", "q", "steps"), [(1.0, 0.1, 100), (8.0, 1.0, 50), (2.0, 0.02, 1000)])
def test_plan_noise_meets_the_target_without_overshoot(eps, q, steps):
    z = plan_noise(eps, 1e-5, q, steps)
    assert epsilon([(z, q, steps)], 1e-5) <= eps
    assert epsilon([(z * 0.97, q, steps)], 1e-5) > eps * 0.99  # and is not wastefully large


def test_default_delta():
    assert default_delta(1000) == 1e-5 and default_delta(10_000) == 1e-5
    assert default_delta(10**6) == pytest.approx(1e-7)  # never above 1/n
    assert all(default_delta(n) < 1 / n for n in (1, 2, 604, 10**5, 10**7))


# --- Opacus wiring -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data() -> InteractionData:
    return InteractionData.from_tables(synthetic_tables(42, 120, 200))


def private_step(model, dataset, *, z, clip, batch, n):
    settings = TrainSettings(task="implicit", lr=0.1, optimizer="sgd")
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loader = DataLoader(dataset, batch_size=batch, collate_fn=identity_collate, generator=torch_generator(0, "l"))
    return make_private(model, opt, loader, make_criterion(settings), noise_multiplier=z, clip_norm=clip,
                        randomness=SecretRandomness.fresh()), n


def test_zero_noise_unbounded_clipping_equals_plain_training(data):
    cfg = RunConfig.from_mapping({"model.name": "gmf"})
    with torch_seed(0, "m"):
        plain = build_model(cfg, data.n_users, data.n_items)
    private = build_model(cfg, data.n_users, data.n_items)
    private.load_state_dict(plain.state_dict())
    dataset = UserSamples(data, max_interactions=16, k=2, rng=numpy_rng(0, "d"))
    batch = dataset.__getitems__(list(range(0, data.n_users, 2)))  # a fixed batch of 60 users
    parts, _ = private_step(private, dataset, z=0.0, clip=1e9, batch=len(batch[0]), n=data.n_users)
    crit = make_criterion(TrainSettings())
    opt = torch.optim.SGD(plain.parameters(), lr=0.1)
    users, items, targets, mask = batch
    crit(plain(users, items), targets, mask).backward()
    opt.step()
    parts.criterion(parts.module(users, items), targets, mask).backward()
    parts.optimizer.step()
    for (name, a), b in zip(plain.state_dict().items(), private.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_clipping_bounds_each_users_contribution(data):
    """A user with 500 interactions moves the model no more than one with 5: at most C each."""
    cfg = RunConfig.from_mapping({"model.name": "gmf"})
    heavy = InteractionData(
        user_ids=np.array(["a", "b"], dtype=object), n_items=600,
        train_indptr=np.array([0, 500, 505]), train_items=np.r_[np.arange(500), np.arange(5)],
        train_values=np.ones(505, np.float32), val_item=np.full(2, -1), val_value=np.zeros(2, np.float32),
        test_item=np.full(2, -1), test_value=np.zeros(2, np.float32),
        val_negatives=np.full((2, 99), -1), test_negatives=np.full((2, 99), -1))
    clip = 0.01
    raw, clipped = {}, {}
    for user in (0, 1):
        dataset = UserSamples(heavy, max_interactions=600, k=4, rng=numpy_rng(0, "d"))
        users, items, targets, mask = dataset.__getitems__([user])
        with torch_seed(0, "m"):
            model = build_model(cfg, 2, 600)
        make_criterion(TrainSettings())(model(users, items), targets, mask).backward()
        raw[user] = float(torch.cat([p.grad.flatten() for p in model.parameters()]).norm())
        with torch_seed(0, "m"):
            model = build_model(cfg, 2, 600)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        parts, _ = private_step(model, dataset, z=0.0, clip=clip, batch=1, n=2)
        parts.criterion(parts.module(users, items), targets, mask).backward()
        parts.optimizer.step()
        # SGD lr 0.1 and expected batch size 1: the update is 0.1 * (this user's clipped gradient)
        delta = torch.cat([(model.state_dict()[k] - before[k]).flatten() for k in before])
        clipped[user] = float(delta.norm() / 0.1)
    assert raw[0] > 2 * clip and raw[1] > 2 * clip  # both users' raw gradients exceed C ...
    assert clipped[0] == pytest.approx(clip, rel=1e-3) and clipped[1] == pytest.approx(clip, rel=1e-3)  # ... both = C


# --- budget -------------------------------------------------------------------------------------
def test_plan_covers_the_run_and_the_guard_refuses_beyond_it(data):
    cfg = RunConfig.from_mapping({**LOCAL_SGD, "federation.rounds": 4, "dp.target-epsilon": 2.0,
                                  "dp.sample-rate": 0.2})
    plan = plan_for(cfg, data)
    history = []
    for _ in range(4):
        assert refusal(history, plan) is None
        history.append(plan.segment())
        assert epsilon(history, plan.delta) <= 2.0
    reason = refusal(history, plan)
    assert reason and "privacy budget" in reason and "user-level" in reason


def test_a_restarted_node_does_not_forget_spent_budget(tmp_path, data):
    cfg = RunConfig.from_mapping({**LOCAL_SGD, "federation.rounds": 3, "dp.target-epsilon": 1.0})
    first = PrivacyAccount(NodeStateStore(RecordDict(), tmp_path, "run1"), cfg, data)
    for rnd in (1, 2):
        first.record(rnd, first.plan.steps_per_round)
    spent = first.spent()
    # a restart: fresh in-memory state, same disk
    again = PrivacyAccount(NodeStateStore(RecordDict(), tmp_path, "run1"), cfg, data)
    assert again.spent() == pytest.approx(spent) and len(again.history) == 2
    assert again.plan == first.plan and again.key.key_id == first.key.key_id
    again.record(3, again.plan.steps_per_round)
    assert again.refusal() is not None  # the planned 3 rounds are spent
    entries = [json.loads(x) for x in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    assert [e["seq"] for e in entries] == [0, 1, 2] and max(e["epsilon"] for e in entries) <= 1.0
    # a new run on the same node starts its own account
    other = PrivacyAccount(NodeStateStore(RecordDict(), tmp_path, "run2"), cfg, data)
    assert other.spent() == 0.0 and other.refusal() is None


def test_empty_poisson_batches_still_take_a_noisy_step(data):
    """A node with few users often samples nobody; the step must still release noise, not crash."""
    from client.privacy import train_private

    tiny = data.subset(np.arange(3))
    empty = UserSamples(tiny, max_interactions=8, k=2, rng=numpy_rng(0)).__getitems__([])
    assert [tuple(t.shape) for t in empty] == [(0,), (0, 24), (0, 24), (0, 24)]
    cfg = RunConfig.from_mapping({**LOCAL_SGD, "model.name": "gmf", "dp.sample-rate": 0.2,
                                  "train.local-epochs": 10, "federation.rounds": 1, "train.user-epochs": 0})
    plan = plan_for(cfg, tiny)
    with torch_seed(0, "m"):
        model = build_model(cfg, tiny.n_users, tiny.n_items)
    before = model.item_emb["gmf"].weight.clone()
    _, steps = train_private(model, tiny, TrainSettings.from_config(cfg), plan, cfg,
                             randomness=SecretRandomness.fresh())
    assert steps == plan.steps_per_round == 30
    # every item row moved (noise reaches all of them), including items no user has
    moved = (model.item_emb["gmf"].weight != before).all(dim=1)
    assert bool(moved.all())


def test_physical_chunks_give_exactly_the_one_pass_clipped_sum(data):
    """Memory-bounded DP steps: chunking a Poisson batch changes nothing but peak memory."""
    from client.privacy.dpsgd import _clipped_sum_in_chunks

    grads = []
    for chunk_pairs in (10**9, 3 * 48):  # one pass; 3 users (48 pairs each) per chunk
        with torch_seed(0, "m"):
            model = build_model(RunConfig.from_mapping({"model.name": "gmf"}), data.n_users, data.n_items)
        dataset = UserSamples(data, max_interactions=16, k=2, rng=numpy_rng(0, "d"))
        parts, _ = private_step(model, dataset, z=0.0, clip=0.01, batch=40, n=data.n_users)
        batch = dataset.__getitems__(list(range(40)))
        loss = _clipped_sum_in_chunks(parts, batch, chunk_pairs)
        grads.append((loss, [p.grad.clone() for p in model.parameters()]))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-5)
    for a, b in zip(grads[0][1], grads[1][1], strict=True):
        assert torch.allclose(a, b, atol=1e-7)
