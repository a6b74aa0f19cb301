"""Cold users: embeddings fitted at the node with the global part frozen (federated reconstruction)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from client.cold_start import ColdStartSettings, fit_cold_users
from client.recommender import NodeRecommender
from shared.config import RunConfig
from shared.datasets import synthetic_tables
from shared.interactions import InteractionData
from shared.models import build_model, global_state, merge_state
from simulations.benchmarks.cold_start import evaluate_cold, hold_out_users, revealed, train_global_part
from tests.support import MODEL_AVERAGING

CFG = {**MODEL_AVERAGING,
       "data.synthetic-users": 300, "data.synthetic-items": 200, "model.name": "gmf", "model.embedding-dim": 16,
       "train.lr": 0.02,
       "train.epochs": 8, "train.batch-size": 512, "eval.patience": 0, "eval.full-rank": False}


@pytest.fixture(scope="module")
def setup():
    """A GMF trained without a held-out 20 % of the users: (cfg, global part, all data, held-out rows, train data)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = RunConfig.from_mapping(CFG)
    data = InteractionData.from_tables(synthetic_tables(cfg.seed, cfg.data.synthetic_users, cfg.data.synthetic_items))
    held = hold_out_users(data, 0.2, seed=cfg.seed)
    known = data.subset(np.setdiff1d(np.arange(data.n_users), held))
    yield cfg, train_global_part(cfg, known, (1.0, 5.0)), data, held, known
    torch.set_num_threads(threads)


def test_reconstruction_beats_popularity_on_held_out_users(setup):
    cfg, global_part, data, held, known = setup
    assert len(held) == 60 and not set(data.user_ids[held]) & set(known.user_ids)
    rows = evaluate_cold(cfg, global_part, data, held, known.item_popularity())
    by = {(r["given"], r["method"]): r for r in rows}
    for n in (5, 10, 20):
        cold, pop = by[n, "reconstruction"], by[n, "popularity"]
        assert cold["hr10"] > pop["hr10"] + 0.1, n  # NCF protocol: 99 sampled negatives
        assert cold["ndcg10"] > pop["ndcg10"], n
    full = [(by[n, "reconstruction"]["hr10_full"], by[n, "popularity"]["hr10_full"]) for n in (5, 10, 20)]
    assert sum(c for c, _ in full) > sum(p for _, p in full)  # full ranking, summed over the three budgets
    assert by[20, "reconstruction"]["hr10"] > by[5, "reconstruction"]["hr10"]  # more interactions help


def test_fit_is_deterministic_and_touches_only_the_new_rows(setup):
    cfg, global_part, data, held, _ = setup
    frozen = {k: v.clone() for k, v in global_part.items()}
    shown = revealed(data, held[:3], 10, seed=cfg.seed)
    a = fit_cold_users(cfg, global_part, data.n_items, shown)
    b = fit_cold_users(cfg, global_part, data.n_items, shown)
    assert set(a) == {"user_emb.gmf.weight"} and a["user_emb.gmf.weight"].shape == (3, 16)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(frozen[k], global_part[k]) for k in frozen)
    # the fitted row moves away from its tiny initialisation towards the revealed items
    model = build_model(cfg, 3, data.n_items)
    merge_state(model, global_part=global_part, local_part=a)
    with torch.no_grad():
        scores = model(torch.arange(3), torch.arange(data.n_items).unsqueeze(0).expand(3, -1)).numpy()
    for u, items in enumerate(shown):
        assert scores[u, items].mean() > scores[u].mean()


def test_recommend_cold_excludes_the_given_items_and_keeps_the_model(setup):
    cfg, global_part, data, held, known = setup
    model = build_model(cfg, known.n_users, data.n_items)
    merge_state(model, global_part=global_part)
    rec = NodeRecommender.build(cfg, model, known, [f"{i:032x}" for i in range(data.n_items)])
    before = {k: v.clone() for k, v in global_state(rec.model).items()}
    given = revealed(data, held[:1], 10, seed=cfg.seed)[0]
    out = rec.recommend_cold(given, 30, diversity=0.3)
    assert (out.items >= 0).all() and not set(out.items[0]) & set(given)
    again = rec.recommend_cold(given[::-1], 30, diversity=0.3)
    np.testing.assert_array_equal(out.items, again.items)
    assert all(torch.equal(before[k], v) for k, v in global_state(rec.model).items())


@pytest.mark.parametrize("positives", [[np.array([], np.int64)], [np.array([0, 200])], [np.array([-1])], []])
def test_fit_refuses_bad_interactions(setup, positives):
    cfg, global_part, data, _, _ = setup
    with pytest.raises(ValueError):
        fit_cold_users(cfg, global_part, data.n_items, positives)


def test_settings_are_validated():
    with pytest.raises(ValueError):
        ColdStartSettings(steps=0)
    with pytest.raises(ValueError):
        ColdStartSettings(lr=-1.0)
