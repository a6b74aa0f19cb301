"""One contract suite run against every model (implicit and explicit) on generated data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus.validators import ModuleValidator

from shared import splits
from shared.config import RunConfig
from shared.datasets import synthetic_tables
from shared.evaluation import evaluate_ranking, evaluate_rating, score_all_items
from shared.interactions import InteractionData
from shared.losses import PerSampleBCE, PerSampleMSE
from shared.models import LOCAL_PREFIX, MODELS, build_model, global_state, local_state, merge_state
from simulations.centralized import train_centralized
from tests.support import MODEL_AVERAGING

# Per-model learning rates that reach a good fit in a few epochs on the small synthetic set.
SETTINGS = {
    "neumf": {"train.lr": 0.005},
    "gmf": {"train.lr": 0.01},
    "mlp": {"train.lr": 0.03, "model.mlp-layers": "64"},  # the seed DNN: one sigmoid hidden layer
}
SMALL = {**MODEL_AVERAGING,
         "data.synthetic-users": 300, "data.synthetic-items": 400, "train.epochs": 5, "eval.patience": 0,
         "eval.full-rank": False}


@pytest.fixture(scope="module")
def small_data() -> tuple[InteractionData, tuple[float, float]]:
    tables = synthetic_tables(42, 300, 400)
    return InteractionData.from_tables(tables), tuple(tables.manifest["value_range"])


class Popularity(torch.nn.Module):
    """Baseline: score = training popularity of the item."""

    def __init__(self, data: InteractionData) -> None:
        super().__init__()
        self.pop = torch.tensor(data.item_popularity(), dtype=torch.float32)
        self.n_items = data.n_items

    def forward(self, users, items):
        return self.pop[items]


def cfg_for(model: str, **extra) -> RunConfig:
    return RunConfig.from_mapping({"model.name": model, **SETTINGS[model], **SMALL, **extra})


@pytest.mark.parametrize("model", MODELS)
def test_local_global_split_is_exact_and_complete(model):
    m = build_model(cfg_for(model), 7, 11)
    full, glob, loc = m.state_dict(), global_state(m), local_state(m)
    assert set(glob) | set(loc) == set(full) and not set(glob) & set(loc)
    assert loc and all(k.startswith(LOCAL_PREFIX) for k in loc)
    assert not any(k.startswith(LOCAL_PREFIX) for k in glob)
    # the global part does not depend on the number of users: a coordinator model with 1 user matches it
    coordinator = build_model(cfg_for(model), 1, 11)
    assert {k: v.shape for k, v in global_state(coordinator).items()} == {k: v.shape for k, v in glob.items()}
    # merge moves exactly the requested part
    other = build_model(cfg_for(model), 7, 11)
    merge_state(other, global_part=glob)
    assert all(torch.equal(other.state_dict()[k], v) for k, v in glob.items())
    assert not all(torch.equal(other.state_dict()[k], v) for k, v in loc.items())
    merge_state(other, local_part=loc)
    assert all(torch.equal(other.state_dict()[k], v) for k, v in full.items())
    with pytest.raises(ValueError, match="missing"):
        merge_state(other, global_part={k: v for k, v in list(glob.items())[1:]})
    with pytest.raises(ValueError, match="shape"):
        merge_state(other, global_part={**glob, next(iter(glob)): torch.zeros(1)})


@pytest.mark.parametrize("item_bias", [False, True])
@pytest.mark.parametrize("model", MODELS)
def test_catalog_scorer_reproduces_forward_for_every_user_and_item(model, item_bias):
    m = build_model(cfg_for(model, **{"model.item-bias": item_bias}), 6, 50)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.5)  # away from the zero-initialised bias and tiny NCF init: a real check
        want = torch.cat([m(torch.tensor([u]), torch.arange(50).unsqueeze(0)) for u in range(6)]).numpy()
    got = np.concatenate([block for _, block in score_all_items(m, np.arange(6), chunk=4)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert got.shape == (6, 50) and got.dtype == np.float32


@pytest.mark.parametrize("model", MODELS)
def test_model_passes_opacus_validator_and_per_sample_loss_shape(model):
    m = build_model(cfg_for(model), 5, 9)
    assert ModuleValidator.validate(m, strict=False) == []
    logits = m(torch.arange(4), torch.randint(0, 9, (4, 6)))
    assert logits.shape == (4, 6)
    targets = torch.zeros(4, 6)
    assert PerSampleBCE("none")(logits, targets).shape == (4,)
    assert PerSampleMSE(1, 5, "none")(logits, targets + 3).shape == (4,)
    mask = torch.ones(4, 6)
    mask[:, 3:] = 0
    per = PerSampleBCE("none")(logits, targets, mask)
    assert torch.allclose(per, PerSampleBCE("none")(logits[:, :3], targets[:, :3]))


@pytest.mark.parametrize("model", MODELS)
def test_implicit_model_learns_well_above_popularity(model, small_data):
    data, vr = small_data
    pop = evaluate_ranking(Popularity(data), data, splits.VAL, full_rank=False).means()["hr10"]
    result = train_centralized(cfg_for(model), data=data, value_range=vr, show_progress=False)
    assert result.val["hr10"] > pop + 0.15, (model, result.val, pop)
    assert result.test["hr10"] > pop + 0.1
    # full-rank figures are computed for the test split: ranking against every unseen item can only be harder
    # than against 99 of them, and a random full ranking of 400 items scores ~10 / 400 = 0.025
    assert 0.2 < result.test["hr10_full"] <= result.test["hr10"]


@pytest.mark.parametrize("model", MODELS)
def test_explicit_model_beats_item_mean_baseline(model, small_data):
    data, vr = small_data
    # baseline: predict each item's mean training rating (global mean for unseen items)
    sums = np.bincount(data.train_items, weights=data.train_values, minlength=data.n_items)
    counts = np.bincount(data.train_items, minlength=data.n_items)
    item_mean = np.where(counts > 0, sums / np.maximum(counts, 1), data.train_values.mean())
    users, items, _ = data.held_out(splits.VAL)
    baseline = float(np.sqrt(np.mean((item_mean[items] - data.val_value[users]) ** 2)))
    # the sigmoid DNN learns slowly
    cfg = cfg_for(model, **{"model.task": "explicit", "train.epochs": 10 if model == "mlp" else 5})
    result = train_centralized(cfg, data=data, value_range=vr, show_progress=False)
    assert result.val["rmse"] < 0.97 * baseline, (model, result.val, baseline)
    direct = evaluate_rating(build_model(cfg_for(model), data.n_users, data.n_items), data, "val", vr)
    assert direct.count == len(users)


def test_training_is_deterministic_given_the_seed(small_data):
    data, vr = small_data
    cfg = cfg_for("gmf", **{"train.epochs": 2})
    a = train_centralized(cfg, data=data, value_range=vr, show_progress=False)
    b = train_centralized(cfg, data=data, value_range=vr, show_progress=False)
    assert a.val == b.val and a.test == b.test
    c = train_centralized(cfg_for("gmf", **{"train.epochs": 2, "seed": 7}), data=data, value_range=vr,
                          show_progress=False)
    assert c.val != a.val


def test_neumf_from_pretrained_fuses_the_two_towers():
    """NCF pretraining: the fused NeuMF scores alpha * GMF + (1 - alpha) * MLP logits exactly."""
    from shared.models.factory import neumf_from_pretrained

    base = {"model.embedding-dim": 8, "model.mlp-layers": "16,8"}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        gmf = build_model(RunConfig.from_mapping({**base, "model.name": "gmf"}), 5, 9)
        mlp = build_model(RunConfig.from_mapping({**base, "model.name": "mlp", "model.mlp-activation": "relu"}), 5, 9)
        neumf = build_model(RunConfig.from_mapping({**base, "model.name": "neumf"}), 5, 9)
        for p in [*gmf.parameters(), *mlp.parameters()]:
            torch.nn.init.normal_(p)
    neumf_from_pretrained(neumf, gmf, mlp, alpha=0.3)
    users, items = torch.arange(5), torch.randint(0, 9, (5, 4))
    expected = 0.3 * gmf(users, items) + 0.7 * mlp(users, items)
    assert torch.allclose(neumf(users, items), expected, atol=1e-5)
