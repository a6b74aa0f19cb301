"""Final recommendations at the node: exclusion, λ = 0 ≡ top-K, determinism, model sources, CLI, reveal."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from client.data_owner import PrepareOptions, prepare_dataset, reveal
from client.diversity import mmr_rerank, popularity_prior, unit_rows
from client.recommender import NodeRecommender, everything_seen
from client.serving.source import ModelSource
from client.state import users_fingerprint
from fedrec.cli import main as cli_main
from server.app import federated_run
from shared import metrics, prepared
from shared.config import RunConfig
from shared.datasets import synthetic_tables
from shared.errors import FedrecError
from shared.interactions import InteractionData
from shared.keys import generate_keys
from shared.models import build_model
from shared.pseudonyms import pseudonym
from shared.synthetic import SyntheticSpec, generate
from simulations.centralized import train_centralized
from simulations.client_app import app as client_app
from simulations.client_app import hand_over_partition
from simulations.inprocess import InProcessGrid, simulation_node_configs
from tests.support import MODEL_AVERAGING

SMALL = {**MODEL_AVERAGING,
         "data.synthetic-users": 160, "data.synthetic-items": 240, "train.epochs": 2, "eval.patience": 0,
         "eval.full-rank": False, "train.lr": 0.01}


@pytest.fixture(scope="module", autouse=True)
def quiet_machine(tmp_path_factory):
    """One torch thread (shared CI cores) and a private dataset cache for this module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDREC_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Centralized GMF and NeuMF runs on small synthetic data: {model: run dir}."""
    out = {}
    for model in ("gmf", "neumf"):
        out[model] = tmp_path_factory.mktemp(f"run-{model}")
        train_centralized(RunConfig.from_mapping({**SMALL, "model.name": model}), out[model], show_progress=False)
    return out


@pytest.fixture(scope="module")
def rec(runs):
    return ModelSource(run=runs["gmf"]).load()


def forward_scores(rec) -> np.ndarray:
    """``model.forward`` on every (user, item) pair: the reference the fast scorer must reproduce."""
    with torch.no_grad():
        items = torch.arange(rec.n_items).unsqueeze(0)
        return np.concatenate([rec.model(torch.tensor([u]), items).numpy() for u in range(rec.n_users)])


@pytest.mark.parametrize("model", ["gmf", "neumf", "neumf-item-bias", "mlp-item-bias"])
def test_top_k_equals_the_model_forward_ranking_with_seen_items_excluded(runs, model):
    if model in runs:
        rec = ModelSource(run=runs[model]).load()
    else:  # an untrained model with a random per-item offset (when the config has item-bias)
        name = model.removesuffix("-item-bias")
        known = RunConfig.keys()
        if "model.item-bias" not in known:
            pytest.skip("this checkout has no item-bias option")
        cfg = RunConfig.from_mapping({**SMALL, "model.name": name, "model.item-bias": True, "model.mlp-layers": "16,8"})
        data = InteractionData.from_tables(synthetic_tables(42, 160, 240))
        try:
            net = build_model(cfg, data.n_users, data.n_items)
        except AttributeError:  # the option exists but its module is not reachable yet
            net = None
        if getattr(net, "item_bias", None) is None:
            pytest.skip("item-bias is not usable in this checkout's models")
        torch.nn.init.normal_(net.item_bias.weight)
        rec = NodeRecommender.build(cfg, net, data, np.arange(data.n_items).astype(str))
    users = np.arange(rec.n_users)
    got = rec.recommend(users, 10)
    full = forward_scores(rec)
    expected = metrics.top_k(full, 10, rec.seen_indptr, rec.seen_items)
    np.testing.assert_array_equal(got.items, expected)
    np.testing.assert_allclose(got.scores, np.take_along_axis(full, expected, axis=1), rtol=1e-5, atol=1e-5)


def test_seen_means_train_validation_and_test_items():
    data = InteractionData.from_tables(synthetic_tables(42, 160, 240))
    indptr, items = everything_seen(data)
    for u in range(0, data.n_users, 7):
        own = set(data.train_items[data.train_indptr[u] : data.train_indptr[u + 1]])
        own |= {int(data.val_item[u]), int(data.test_item[u])} - {-1}
        assert set(items[indptr[u] : indptr[u + 1]]) == own


@pytest.mark.parametrize(("lam", "beta"), [(0.0, 0.0), (0.5, 0.0), (1.0, 0.0), (0.0, 1.0), (0.7, 0.5)])
def test_excluded_items_never_appear(rec, lam, beta):
    users = np.arange(rec.n_users)
    got = rec.recommend(users, 25, diversity=lam, popularity_penalty=beta).items
    assert (got >= 0).all() and all(len(set(row)) == 25 for row in got)
    seen = np.zeros((rec.n_users, rec.n_items), bool)
    seen[np.repeat(users, np.diff(rec.seen_indptr)), rec.seen_items] = True
    assert not seen[users[:, None], got].any()
    # without exclusion the trained model does put items the users already have on top
    assert seen[users[:, None], rec.recommend(users, 25, exclude_seen=False, diversity=lam).items].any()


def test_lists_run_out_with_padding_not_with_seen_items(rec):
    k = 1000  # more than the catalog minus each user's items
    got = rec.recommend(np.arange(5), k, diversity=0.3)
    for u in range(5):
        n_free = rec.n_items - len(np.unique(rec.seen_items[rec.seen_indptr[u] : rec.seen_indptr[u + 1]]))
        assert (got.items[u] >= 0).sum() == n_free and (got.items[u, n_free:] == -1).all()
        assert np.isnan(got.scores[u, n_free:]).all()


def test_lambda_zero_is_plain_top_k(rec):
    users = np.arange(rec.n_users)
    full = forward_scores(rec)
    pool = metrics.top_k(full, 100, rec.seen_indptr, rec.seen_items)
    pool_scores = np.take_along_axis(full, pool, axis=1)
    picked = mmr_rerank(pool, pool_scores, 10, lam=0.0, unit_vectors=rec.unit_vectors)
    np.testing.assert_array_equal(picked, np.broadcast_to(np.arange(10), picked.shape))
    np.testing.assert_array_equal(rec.recommend(users, 10, diversity=0.0).items, pool[:, :10])


def test_mmr_and_popularity_penalty_on_a_hand_made_pool():
    vectors = unit_rows(np.array([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0]]))  # item 1 duplicates item 0
    pool, scores = np.array([[0, 1, 2]]), np.array([[1.0, 0.9, 0.5]])
    assert mmr_rerank(pool, scores, 3, lam=0.0, unit_vectors=vectors).tolist() == [[0, 1, 2]]
    assert mmr_rerank(pool, scores, 3, lam=0.5, unit_vectors=vectors).tolist() == [[0, 2, 1]]
    popularity = popularity_prior(np.array([1000.0, 10.0, 10.0]))
    assert mmr_rerank(pool, scores, 3, lam=0.0, popularity=popularity, penalty=1.0).tolist()[0][0] == 1
    padded = mmr_rerank(np.array([[2, -1]]), np.array([[0.3, -np.inf]]), 3, lam=0.5, unit_vectors=vectors)
    assert padded.tolist() == [[0, -1, -1]]


def test_diversity_raises_intra_list_diversity_and_the_penalty_lowers_popularity(rec):
    users = np.arange(rec.n_users)
    vecs = rec.model.item_representation().numpy()
    plain, diverse = rec.recommend(users, 10).items, rec.recommend(users, 10, diversity=0.7).items
    assert metrics.intra_list_diversity(diverse, vecs).mean() > metrics.intra_list_diversity(plain, vecs).mean()
    novel = rec.recommend(users, 10, popularity_penalty=1.0).items
    assert rec.item_counts[novel].mean() < rec.item_counts[plain].mean()


def test_results_are_deterministic(runs):
    a, b = ModelSource(run=runs["neumf"]).load(), ModelSource(run=runs["neumf"]).load()
    users = np.arange(a.n_users)
    for kwargs in ({}, {"diversity": 0.4, "popularity_penalty": 0.2}):
        x, y = a.recommend(users, 10, **kwargs), b.recommend(users, 10, **kwargs)
        np.testing.assert_array_equal(x.items, y.items)
        np.testing.assert_array_equal(x.scores, y.scores)
    c1, c2 = a.recommend_cold(np.array([3, 5, 8]), 10), b.recommend_cold(np.array([8, 5, 3]), 10)
    np.testing.assert_array_equal(c1.items, c2.items)
    assert a.version == b.version


@pytest.mark.parametrize("bad", [{"k": 0}, {"k": 1001}, {"diversity": 1.5}, {"diversity": float("nan")},
                                 {"popularity_penalty": -0.1}])
def test_bad_options_are_refused(rec, bad):
    kwargs = {"k": 10} | bad
    with pytest.raises(ValueError):
        rec.recommend(np.arange(3), kwargs.pop("k"), **kwargs)


def _federate(cfg: RunConfig, node_configs):
    grid = InProcessGrid(client_app, node_configs, cfg.to_flower_config())
    return federated_run(cfg, grid, 1).execute()


def test_federated_simulation_run_dir_gives_each_node_its_own_users(tmp_path, monkeypatch):
    cfg = RunConfig.from_mapping({**SMALL, "model.name": "gmf", "data.partitions": 2, "federation.min-nodes": 2,
                                  "federation.rounds": 1, "federation.run-dir": str(tmp_path / "run"),
                                  "sim.node-state-dir": str(tmp_path / "nodes")})
    _federate(cfg, simulation_node_configs(2))
    seen_users = set()
    for pid in (0, 1):
        rec = ModelSource(run=tmp_path / "run", partition=pid, hand_over=hand_over_partition).load()
        stored = next((tmp_path / "nodes" / f"partition-{pid}").glob("*/user_emb.pt"))
        payload = torch.load(stored, weights_only=True)
        assert payload["users"] == users_fingerprint(rec.user_ids)
        assert torch.equal(rec.model.user_emb["gmf"].weight, payload["state"]["user_emb.gmf.weight"])
        assert rec.recommend(np.arange(rec.n_users), 5).items.min() >= 0
        seen_users |= set(rec.user_ids)
    assert len(seen_users) == 160
    assert run_cli(monkeypatch, "recommend", "--run", tmp_path / "run", "--k", 3, "--out", tmp_path / "all.csv") == 0
    frame = pd.read_csv(tmp_path / "all.csv")
    assert len(frame) == 160 * 3 and set(frame["user"]) == seen_users  # every node's users, each with its own rows
    with pytest.raises(FedrecError, match="--partition"):
        ModelSource(run=tmp_path / "run", hand_over=hand_over_partition).load()
    with pytest.raises(FedrecError, match="outside"):
        ModelSource(run=tmp_path / "run", partition=2, hand_over=hand_over_partition).load()


def test_serving_refits_users_like_evaluation_and_leaves_the_stored_rows(tmp_path):
    cfg = RunConfig.from_mapping({**SMALL, "model.name": "gmf", "data.partitions": 1, "federation.min-nodes": 1,
                                  "federation.rounds": 1, "federation.run-dir": str(tmp_path / "run"),
                                  "sim.node-state-dir": str(tmp_path / "nodes"), "eval.user-epochs": 2})
    _federate(cfg, simulation_node_configs(1))
    stored = next((tmp_path / "nodes" / "partition-0").glob("*/user_emb.pt"))
    before = stored.read_bytes()
    rec = ModelSource(run=tmp_path / "run", partition=0, hand_over=hand_over_partition).load()
    rows = torch.load(stored, weights_only=True)["state"]["user_emb.gmf.weight"]
    assert not torch.equal(rec.model.user_emb["gmf"].weight, rows)  # refitted to the served global part
    again = ModelSource(run=tmp_path / "run", partition=0, hand_over=hand_over_partition).load()
    assert torch.equal(rec.model.user_emb["gmf"].weight, again.model.user_emb["gmf"].weight)  # deterministic
    assert stored.read_bytes() == before


def test_deployment_layout_model_data_and_state_dir(tmp_path):
    data_dir = prepared.write(synthetic_tables(42, 160, 240), tmp_path / "node-data")
    cfg = RunConfig.from_mapping({**SMALL, "model.name": "gmf", "data.path": str(data_dir), "data.partitions": 1,
                                  "federation.min-nodes": 1, "federation.rounds": 1,
                                  "federation.run-dir": str(tmp_path / "run")})
    _federate(cfg, [{"data-path": str(data_dir), "state-dir": str(tmp_path / "state")}])
    rec = ModelSource(model=tmp_path / "run" / "model.pt", data=data_dir, state_dir=tmp_path / "state").load()
    assert rec.n_users == 160
    # without summary.json beside the model, the run key is found by scanning the state directory
    shutil.copy(tmp_path / "run" / "model.pt", tmp_path / "model.pt")
    again = ModelSource(model=tmp_path / "model.pt", data=data_dir, state_dir=tmp_path / "state").load()
    np.testing.assert_array_equal(again.recommend(np.arange(9), 5).items, rec.recommend(np.arange(9), 5).items)
    with pytest.raises(FedrecError, match="pass --run-key"):
        ModelSource(model=tmp_path / "model.pt", data=data_dir, state_dir=tmp_path / "empty").load()
    with pytest.raises(FedrecError, match="not both"):
        ModelSource(run=tmp_path / "run", model=tmp_path / "model.pt")


def run_cli(monkeypatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["fedrec", *map(str, args)])
    try:
        cli_main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.mark.parametrize("suffix", ["csv", "json", "parquet"])
def test_cli_recommend_writes_every_format(runs, tmp_path, monkeypatch, suffix):
    out = tmp_path / f"recs.{suffix}"
    users = tmp_path / "users.txt"
    rec = ModelSource(run=runs["gmf"]).load()
    users.write_text("\n".join(rec.user_ids[:3]) + "\n")
    assert run_cli(monkeypatch, "recommend", "--run", runs["gmf"], "--k", 4, "--users", users, "--out", out) == 0
    from client.data_owner import read_result

    frame = read_result(out)
    assert list(frame.columns) == ["user", "rank", "item", "score"] and len(frame) == 12
    assert list(frame["user"].unique()) == list(rec.user_ids[:3])
    expected = rec.item_ids[rec.recommend(np.arange(3), 4).items].ravel()
    assert list(frame["item"]) == list(expected)


@pytest.mark.parametrize("args", [["--out", "x.txt"], ["--k", "0"], ["--diversity", "2"], ["--users", "BAD"],
                                  ["--run", "missing"]])
def test_cli_recommend_refuses_bad_input_and_writes_nothing(runs, tmp_path, monkeypatch, args):
    (tmp_path / "BAD").write_text("0123456789abcdef0123456789abcdef\n")  # well-formed, unknown user
    monkeypatch.chdir(tmp_path)
    base = {"--run": str(runs["gmf"]), "--out": "out.csv"}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    assert run_cli(monkeypatch, "recommend", *[x for kv in base.items() for x in kv]) == 2
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "x.txt").exists()


def test_owner_reveals_recommendations_and_a_wrong_key_fails_cleanly(tmp_path, monkeypatch):
    raw = generate(SyntheticSpec(n_users=120, n_items=200, seed=3)).interactions.drop(columns=["line"])
    raw.to_csv(tmp_path / "log.csv", index=False)
    keys = generate_keys(tmp_path / "keys")
    prepare_dataset(tmp_path / "log.csv", PrepareOptions(keys=tmp_path / "keys", out=tmp_path / "ds"))
    cfg = RunConfig.from_mapping({**SMALL, "model.name": "gmf", "data.path": str(tmp_path / "ds"), "train.epochs": 1})
    train_centralized(cfg, tmp_path / "run", show_progress=False)
    assert run_cli(monkeypatch, "recommend", "--run", tmp_path / "run", "--k", 5, "--out", tmp_path / "r.csv") == 0
    n = reveal(tmp_path / "r.csv", dataset=tmp_path / "ds", keys_dir=tmp_path / "keys", out=tmp_path / "raw.csv")
    frame = pd.read_csv(tmp_path / "raw.csv", dtype=str)
    assert n == len(frame) == 120 * 5
    assert all(pseudonym(keys.user, u) == p for u, p in zip(frame["raw_user"], frame["user"], strict=True))
    assert all(pseudonym(keys.item, i) == p for i, p in zip(frame["raw_item"], frame["item"], strict=True))
    had = set(zip(raw["user"].astype(str), raw["item"].astype(str), strict=True))
    assert not had & set(zip(frame["raw_user"], frame["raw_item"], strict=True))  # nothing the user already has
    generate_keys(tmp_path / "other")
    with pytest.raises(FedrecError, match="wrong owner key"):
        reveal(tmp_path / "r.csv", dataset=tmp_path / "ds", keys_dir=tmp_path / "other", out=tmp_path / "bad.csv",
               reid_map=next((tmp_path / "keys" / "reid").glob("*.enc")))
    assert run_cli(monkeypatch, "data", "reveal", tmp_path / "r.csv", "--dataset", tmp_path / "ds", "--keys",
                   tmp_path / "other", "--out", tmp_path / "bad.csv", "--reid-map",
                   next((tmp_path / "keys" / "reid").glob("*.enc"))) == 2
    assert not (tmp_path / "bad.csv").exists()


@pytest.mark.data
def test_reveal_adds_movielens_titles(ml100k, tmp_path, monkeypatch):
    from shared.datasets import prepared_movielens

    monkeypatch.setenv("FEDREC_DATA_DIR", str(ml100k.parents[1]))
    monkeypatch.setenv("FEDREC_CACHE_DIR", str(tmp_path / "cache"))
    dataset = prepared_movielens("ml-100k")
    tables = prepared.read(dataset)
    keys = tmp_path / "cache" / "keys"
    from shared.keys import load_keys

    item_key = load_keys(keys).item
    toy_story, users = pseudonym(item_key, "1"), sorted(tables.interactions["user"].unique())[:2]
    pd.DataFrame({"user": users, "rank": [1, 1], "item": [toy_story] * 2}).to_csv(tmp_path / "r.csv", index=False)
    reveal(tmp_path / "r.csv", dataset=dataset, keys_dir=keys, out=tmp_path / "raw.json", titles=ml100k / "u.item")
    frame = pd.read_json(tmp_path / "raw.json", dtype=False)
    assert list(frame["raw_item"]) == ["1", "1"] and set(frame["title"]) == {"Toy Story (1995)"}


def test_approximate_top_k_keeps_exclusions_and_is_exact_on_a_small_catalog(runs):
    rec = ModelSource(run=runs["gmf"]).load()
    users = np.arange(rec.n_users)
    exact, approx = rec.recommend(users, 10).items, rec.recommend(users, 10, approximate=True).items
    for u in users:
        seen = set(rec.seen_items[rec.seen_indptr[u] : rec.seen_indptr[u + 1]])
        assert not seen & set(approx[u][approx[u] >= 0])
    np.testing.assert_array_equal(approx, exact)  # under 4,096 items the index probes every list
    with pytest.raises(ValueError, match="GMF"):
        ModelSource(run=runs["neumf"]).load().recommend(users[:1], 10, approximate=True)
    with pytest.raises(ValueError, match="diversity"):
        rec.recommend(users[:1], 10, diversity=0.5, approximate=True)


def test_cli_recommend_approximate_is_exact_on_a_small_catalog_and_refuses_what_it_cannot_rank(
        runs, tmp_path, monkeypatch):
    from client.data_owner import read_result

    exact, approx = tmp_path / "exact.csv", tmp_path / "approx.csv"
    assert run_cli(monkeypatch, "recommend", "--run", runs["gmf"], "--k", 5, "--out", exact) == 0
    assert run_cli(monkeypatch, "recommend", "--run", runs["gmf"], "--k", 5, "--approximate", "--out", approx) == 0
    a, e = read_result(approx), read_result(exact)  # under 4,096 items every list is probed: exact
    assert list(a["item"]) == list(e["item"])
    np.testing.assert_allclose(a["score"].astype(float), e["score"].astype(float), rtol=1e-4, atol=1e-5)
    refused = tmp_path / "refused.csv"
    assert run_cli(monkeypatch, "recommend", "--run", runs["neumf"], "--approximate", "--out", refused) == 2
    assert run_cli(monkeypatch, "recommend", "--run", runs["gmf"], "--approximate", "--diversity", "0.3",
                   "--out", refused) == 2
    assert not refused.exists()
