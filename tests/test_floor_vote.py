"""The floor model's DP validation vote (shared.floor_vote): the sums, the winner, the sensitivity, the fit."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from client.node import LocalNode
from client.privacy import plan_for
from client.privacy.releases import vote_release
from shared import floor_vote
from shared.config import RunConfig
from shared.datasets import synthetic_tables
from shared.evaluation import evaluate_ranking
from shared.interactions import InteractionData
from shared.models import build_model, global_state
from shared.secret_random import SecretRandomness
from tests.test_dp_releases import RELEASES

CFG = RunConfig.from_mapping({**RELEASES, "model.item-init": "genres"})


@pytest.fixture(scope="module")
def node() -> LocalNode:
    return LocalNode(CFG, InteractionData.from_tables(synthetic_tables(5, 200, 400)), (0.0, 1.0), "node-a")


def floor_part(node: LocalNode, weight: float = 1.0) -> dict[str, torch.Tensor]:
    """A floor model's global part: the node's initial model with a unit output layer, scaled by ``weight``."""
    torch.manual_seed(0)
    state = dict(global_state(build_model(CFG, node.data.n_users, node.data.n_items)))
    state["out.weight"] = torch.full_like(state["out.weight"], weight)
    state["out.bias"] = torch.zeros_like(state["out.bias"])
    state["item_emb.gmf.weight"] = torch.randn_like(state["item_emb.gmf.weight"]) / 8 ** 0.5  # ~unit rows, as genres
    state["item_bias.weight"] = torch.linspace(-1, 1, len(state["item_bias.weight"])).reshape(-1, 1)
    return state


def test_the_winner_is_the_largest_noisy_sum_and_popularity_scores_zero():
    assert floor_vote.contribution(np.array([[1, 1, 0, 0, 1], [0, 1, 1, 0, 0]])).tolist() == [1, 0, -1, 0]
    assert floor_vote.winner(np.array([3.0, 7.5, -1.0, 2.0])) == 0.5
    assert floor_vote.winner(np.array([-3.0, -0.5, -1.0, -2.0])) == 0.0  # all worse than DP popularity
    # the margin: a lead over popularity counts only above margin x noise std (the rest falls back to a = 0)
    assert floor_vote.winner(np.array([3.0, 7.5, -1.0, 2.0]), noise_std=2.0, margin=2.0) == 0.5
    assert floor_vote.winner(np.array([3.0, 7.5, -1.0, 2.0]), noise_std=4.0, margin=2.0) == 0.0
    assert floor_vote.winner(np.array([3.0, 7.5, -1.0, 2.0]), noise_std=4.0, margin=0.5) == 0.5
    assert floor_vote.noise_std("central", 2.0, 3.0, 9, 0.0) == pytest.approx(6.0)
    assert floor_vote.noise_std("local", 2.0, 3.0, 9, 1.0) == pytest.approx(18.0)  # each node adds it all
    assert floor_vote.noise_std("distributed", 2.0, 3.0, 9, 1 / 9) == pytest.approx(6.0)  # shares add up to it
    assert floor_vote.sensitivity() == pytest.approx(math.sqrt(len(floor_vote.WEIGHTS) - 1))


@given(st.lists(st.integers(-10**5, 10**5), min_size=2, max_size=50, unique=True))
def test_item_biases_rank_exactly_as_the_noisy_counts(sixteenths):
    """Negative noisy counts keep their order (no ties): at a = 0 the floor is DP popularity itself."""
    counts = np.array(sixteenths) / 16.0  # noisy counts, at least 1/16 apart
    biases = floor_vote.item_biases(counts)
    assert np.array_equal(np.argsort(biases, kind="stable"), np.argsort(counts, kind="stable"))
    assert len(np.unique(biases)) == len(counts) and abs(biases.mean()) < 1e-9


def test_without_noise_the_vote_is_the_difference_of_the_validation_hit_counts(node):
    """The noise-free release equals HR@10 sums from the evaluation code at each weight, minus popularity's."""
    plan = replace(plan_for(CFG, node.data), noise="central", share=0.0, vote_multiplier=1.0)
    rows = node.fit_users(floor_part(node))
    votes = vote_release(node.model(floor_part(node), rows), node.data, plan, CFG, SecretRandomness.fresh())
    hits = [evaluate_ranking(node.model(floor_part(node, w), rows), node.data, "val", full_rank=False).hr
            for w in floor_vote.WEIGHTS]
    assert votes.tolist() == pytest.approx([h - hits[0] for h in hits[1:]])
    assert len(set(hits)) > 1  # the weights rank differently on this data: the comparison is not vacuous


def test_one_user_moves_the_vote_by_at_most_its_sensitivity(node):
    """Per-user contributions lie in {-1, 0, 1}^(m-1): adding or removing one user is bounded by sqrt(m - 1)."""
    plan = replace(plan_for(CFG, node.data), noise="central", share=0.0, vote_multiplier=1.0)
    model = node.model(floor_part(node), node.fit_users(floor_part(node)))
    data = node.data
    full = vote_release(model, data, plan, CFG, SecretRandomness.fresh())
    for user in range(0, data.n_users, 7):
        alone = replace(data, val_item=np.where(np.arange(data.n_users) == user, data.val_item, -1))
        one = vote_release(model, alone, plan, CFG, SecretRandomness.fresh())
        assert set(one.tolist()) <= {-1.0, 0.0, 1.0}
        assert torch.linalg.vector_norm(one) <= floor_vote.sensitivity() + 1e-12
    assert float(full.abs().sum()) > 0


def test_the_floor_rows_are_fitted_at_weight_one_whatever_the_weight_voted(node):
    """A node that fits after the vote fits the same rows as the voters did: the weight only scales serving."""
    at_one = node.fit_users(floor_part(node, 1.0))
    torch.manual_seed(0)
    at_half = node.fit_users(floor_part(node, 0.5))
    assert all(torch.equal(at_one[k], at_half[k]) for k in at_one)
    assert floor_vote.unit_weight({"out.weight": torch.tensor([[0.25, 0.25, 0.0]])})["out.weight"].tolist() == \
        [[1.0, 1.0, 0.0]]


def test_a_small_node_fits_for_enough_steps_and_a_silo_for_the_usual_passes():
    from client.node import FIT_EPOCHS, FIT_STEPS, fit_passes

    assert fit_passes(100_000, 256) == FIT_EPOCHS  # an ML-1M silo: ~390 steps a pass
    assert fit_passes(100, 256) == FIT_STEPS  # one user: a pass is one step
    assert fit_passes(300, 256) == FIT_STEPS // 2 and fit_passes(0, 256) == FIT_STEPS


def test_a_dp_als_node_evaluates_the_floor_with_its_fitted_rows_and_a_pass_with_the_exact_solve(node):
    """DP-ALS re-solves its users exactly against trained item factors, but the floor model's rows are the fitted
    ones (the iALS solve against the genre vectors ignores the DP biases: 0.389 on ML-1M against 0.559)."""
    als = LocalNode(CFG.with_overrides({"dp.mechanism": "als"}), node.data, (0.0, 1.0), "node-a")
    part = floor_part(node, 0.5)
    rows = node.fit_users(part)
    as_floor = als.evaluate(part, rows, ["val"], full_rank=False, floor=True)
    assert as_floor == node.evaluate(part, rows, ["val"], full_rank=False)  # the sgd node's floor evaluation
    assert als.evaluate(part, rows, ["val"], full_rank=False) != as_floor  # a pass's model: solved, not fitted
