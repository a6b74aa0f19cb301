"""The empirical privacy audit (one training run, canary users): honest runs stay under their claim, broken ones don't.

Steinke, Nasr & Jagielski (2023): a 95 %-confidence lower bound on the epsilon of the mechanism that produced
the updates node 0 released. An honest DP-SGD run must never be caught above its claimed epsilon; the same
run with its noise switched off, or with per-user clipping switched off, keeps claiming the planned epsilon in
its ledger, and the audit must catch it.
"""

from __future__ import annotations

import numpy as np
import pytest

from shared.config import RunConfig
from shared.datasets import synthetic_tables
from shared.interactions import InteractionData
from simulations.canaries import draw_canaries, with_canaries
from simulations.privacy_audit import empirical_epsilon
from tests.support import MODEL_AVERAGING

# the most powerful audit setting tried: SGD (updates linear in the noisy clipped sums), a clip norm below every
# user's gradient norm, q = 1, one canary user per distinct rare item, 400 canaries
AUDIT = {**MODEL_AVERAGING,
         "data.path": "synthetic", "data.synthetic-users": 300, "data.synthetic-items": 2000, "data.partitions": 2,
         "federation.min-nodes": 2, "model.name": "gmf", "model.embedding-dim": 16, "train.optimizer": "sgd",
         "train.lr": 0.5, "dp.sample-rate": 1.0,
         "dp.clip-norm": 0.01, "federation.rounds": 6, "eval.every": 6, "eval.patience": 0, "eval.full-rank": False,
         "dp.unit": "user"}
CANARIES = 400


def audited(tmp_path, epsilon: float, breakage: str | None = None) -> dict:
    cfg = RunConfig.from_mapping({**AUDIT, "dp.enabled": True, "dp.target-epsilon": epsilon})
    return empirical_epsilon(cfg, canaries=CANARIES, breakage=breakage, work_dir=tmp_path)


@pytest.mark.parametrize("epsilon", [1.0, 8.0])
def test_an_honest_run_is_never_caught_above_its_claim(tmp_path, epsilon):
    r = audited(tmp_path, epsilon)
    assert 0 < r["claimed_epsilon"] <= epsilon and r["delta"] == 1e-5
    assert r["epsilon_lower_bound"] <= r["claimed_epsilon"], r


@pytest.mark.parametrize("breakage", ["no-noise", "no-clipping"])
def test_a_broken_mechanism_is_caught_above_its_claim(tmp_path, breakage):
    r = audited(tmp_path, 1.0, breakage)
    assert r["claimed_epsilon"] <= 1.0  # the ledger still claims the planned mechanism ...
    assert r["epsilon_lower_bound"] > r["claimed_epsilon"], r  # ... and the canaries show it is not


def test_canaries_are_inserted_as_drawn():
    data = InteractionData.from_tables(synthetic_tables(1, 60, 400))
    rng = np.random.default_rng(0)
    users = draw_canaries(data, "user", 50, k=2, secret=rng)
    items = np.concatenate(users.items)
    assert len(set(items.tolist())) == 100  # no item shared between canaries
    assert data.item_popularity()[items].max() <= np.median(data.item_popularity())
    grown = with_canaries(data, users)
    assert grown.n_users == data.n_users + users.included.sum()
    assert all(grown.user_ids[: data.n_users] == data.user_ids)
    assert grown.n_train == data.n_train + 2 * users.included.sum()
    inter = draw_canaries(data, "interaction", 30, secret=rng)
    grown = with_canaries(data, inter)
    for c in np.flatnonzero(inter.included):
        u = inter.users[c]
        assert inter.items[c][0] in grown.train_items[grown.train_indptr[u] : grown.train_indptr[u + 1]]
    with pytest.raises(ValueError, match="distinct rare items"):
        draw_canaries(data, "user", 1000, k=1, secret=rng)


def test_the_default_mechanism_is_audited_on_the_released_model(tmp_path):
    """Noise on the sum (here the coordinator's): the released global model is what an adversary sees; honest
    stays under the claim, the same run without noise is caught above it."""
    default = {"data.path": "synthetic", "data.synthetic-users": 1000, "data.synthetic-items": 2000,
               "data.partitions": 2,
               "federation.min-nodes": 2, "model.name": "gmf", "model.embedding-dim": 16, "dp.noise": "central",
               "dp.target-epsilon": 2.0,
               "federation.rounds": 6, "eval.every": 6, "eval.full-rank": False,
               "dp.floor-below": 1000.0}  # rho = 2 x ~1000 users: a small federation that still trains
    honest = empirical_epsilon(RunConfig.from_mapping(default), canaries=CANARIES, work_dir=tmp_path / "honest")
    assert honest["rounds"] >= 1 and honest["epsilon_lower_bound"] <= honest["claimed_epsilon"] <= 2.0, honest
    broken = empirical_epsilon(RunConfig.from_mapping(default), canaries=CANARIES, breakage="no-noise",
                               work_dir=tmp_path / "broken")
    assert broken["epsilon_lower_bound"] > broken["claimed_epsilon"], broken
