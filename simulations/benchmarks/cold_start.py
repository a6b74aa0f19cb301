"""Cold users: HR@10 of federated reconstruction vs popularity for users the model never saw.

Protocol: a seeded share of the users (with >= 20 training interactions) is held
out; a model is trained on the other users only. Each held-out user then reveals
``n`` of their training interactions (a seeded random sample; 5, 10, 20): the node
fits their embedding with the global part frozen (:mod:`client.cold_start`) and
ranks their held-out test item (ML-1M: NCF's test item) against

- every item except the ``n`` revealed ones (full ranking, HR@10 / NDCG@10), and
- the user's 99 sampled test negatives (NCF protocol).

Popularity (training users' interaction counts) ranks under the same rules.

    python -m simulations.benchmarks.cold_start --data-dir ../shared/data --out /tmp/cold.json [--dataset ml-100k]

Models: ML-1M uses the benchmarks' GMF settings (:data:`simulations.benchmarks.ML1M_GMF`, trained here on
the known users only, about a minute); ML-100K uses :data:`ML100K_GMF`.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from client.cold_start import DEFAULT_SETTINGS, ColdStartSettings, fit_cold_users
from shared import metrics
from shared.config import RunConfig
from shared.evaluation import score_all_items
from shared.interactions import InteractionData
from shared.models import build_model, merge_state
from shared.seeding import numpy_rng
from simulations.benchmarks import NONPRIVATE, benchmark_parser

GIVEN = (5, 10, 20)
# ML-100K: the ML-1M settings with NCF's batch 256, lr 0.005 and 20 epochs (about 0.5 s per epoch on one core)
ML100K_GMF = {**NONPRIVATE,
              "model.name": "gmf", "model.embedding-dim": 32, "train.negatives": 4, "train.lr": 0.005,
              "train.batch-size": 256, "train.epochs": 20,
              "eval.patience": 0, "eval.full-rank": False, "seed": 42}


def hold_out_users(data: InteractionData, share: float, *, seed: int, min_train: int = 20) -> np.ndarray:
    """Sorted rows of a seeded ``share`` of the users with >= ``min_train`` training items and a test item."""
    eligible = np.flatnonzero((data.train_counts() >= min_train) & (data.test_item >= 0))
    n = max(1, round(share * data.n_users))
    return np.sort(numpy_rng(seed, "cold-holdout").choice(eligible, size=min(n, len(eligible)), replace=False))


def revealed(data: InteractionData, users: np.ndarray, n: int, *, seed: int) -> list[np.ndarray]:
    """For each user, ``n`` of their training items (seeded sample, the same draw for every method)."""
    out = []
    for u in users:
        items = data.train_items[data.train_indptr[u] : data.train_indptr[u + 1]]
        out.append(np.sort(numpy_rng(seed, "cold-reveal", n, int(u)).choice(items, size=min(n, len(items)),
                                                                            replace=False)))
    return out


def _ranks(scores: np.ndarray, data: InteractionData, users: np.ndarray, given: list[np.ndarray]):
    excl_ptr = np.r_[0, np.cumsum([len(g) for g in given])].astype(np.int64)
    excl = np.concatenate(given).astype(np.int64)
    pos = data.test_item[users]
    full = metrics.full_ranks(scores, pos, excl_ptr, excl)
    negs = data.test_negatives[users]
    rows = np.arange(len(users))[:, None]
    neg_scores = np.where(negs >= 0, scores[rows, np.maximum(negs, 0)], -np.inf)
    sampled = metrics.sampled_ranks(scores[np.arange(len(users)), pos], neg_scores, negs >= 0)
    return full, sampled


def _summary(full: np.ndarray, sampled: np.ndarray, k: int = 10) -> dict[str, float]:
    return {"hr10_full": float(metrics.hit_rate(full, k).mean()), "ndcg10_full": float(metrics.ndcg(full, k).mean()),
            "hr10": float(metrics.hit_rate(sampled, k).mean()), "ndcg10": float(metrics.ndcg(sampled, k).mean())}


def evaluate_cold(cfg: RunConfig, global_part: dict[str, torch.Tensor], data: InteractionData, users: np.ndarray,
                  popularity: np.ndarray, *, given: tuple[int, ...] = GIVEN,
                  settings: ColdStartSettings = DEFAULT_SETTINGS, batch: int = 256) -> list[dict[str, Any]]:
    """One row per (n given, method) with HR@10 / NDCG@10 (full and sampled) over ``users``."""
    rows = []
    for n in given:
        shown = revealed(data, users, n, seed=cfg.seed)
        t0 = time.perf_counter()
        parts = []
        for s in range(0, len(users), batch):
            local = fit_cold_users(cfg, global_part, data.n_items, shown[s : s + batch], settings=settings,
                                   stream=f"cold-eval-{n}-{s}")
            b = len(shown[s : s + batch])
            model = build_model(cfg, b, data.n_items)
            merge_state(model, global_part=global_part, local_part=local)
            parts.append(np.concatenate([block for _, block in score_all_items(model, np.arange(b))]))
        fit_seconds = time.perf_counter() - t0
        cold = _summary(*_ranks(np.concatenate(parts), data, users, shown))
        pop_scores = np.broadcast_to(popularity.astype(np.float32), (len(users), data.n_items))
        pop = _summary(*_ranks(np.ascontiguousarray(pop_scores), data, users, shown))
        rows.append({"given": n, "method": "reconstruction", "users": len(users), **cold,
                     "fit_ms_per_user": 1000 * fit_seconds / len(users)})
        rows.append({"given": n, "method": "popularity", "users": len(users), **pop})
    return rows


def train_global_part(cfg: RunConfig, data: InteractionData, value_range: tuple[float, float], *,
                      show_progress: bool = False) -> dict[str, torch.Tensor]:
    """Train ``cfg`` centrally on ``data`` (the known users) and return the global part of the model."""
    import tempfile

    from shared.models import LOCAL_PREFIX
    from shared.rundir import load_model_payload
    from simulations.centralized import train_centralized

    with tempfile.TemporaryDirectory(prefix="fedrec-cold-") as tmp:
        train_centralized(cfg, tmp, data=data, value_range=value_range, show_progress=show_progress)
        state = load_model_payload(f"{tmp}/model.pt")["state"]
    return {k: v for k, v in state.items() if not k.startswith(LOCAL_PREFIX)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from shared.datasets import load_tables
    from simulations.benchmarks import ML1M_GMF, print_table, use_data_dir, write_json

    parser = benchmark_parser(__doc__)
    parser.add_argument("--dataset", default="ml-1m", choices=("ml-100k", "ml-1m"))
    parser.add_argument("--share", type=float, default=0.1, help="share of users held out (default 0.1)")
    parser.add_argument("--epochs", type=int, default=0, help="training epochs (default: 20 on ML-100K, 10 on ML-1M)")
    args = parser.parse_args(argv)
    use_data_dir(args.data_dir)
    torch.set_num_threads(1)  # shared machines: one thread is faster than oversubscribed cores
    settings = dict(ML1M_GMF) if args.dataset == "ml-1m" else ML100K_GMF | {"data.path": "movielens:ml-100k"}
    cfg = RunConfig.from_mapping(settings | ({"train.epochs": args.epochs} if args.epochs else {}))
    tables = load_tables(cfg.data.path, seed=cfg.seed)
    data = InteractionData.from_tables(tables)
    held = hold_out_users(data, args.share, seed=cfg.seed)
    train_data = data.subset(np.setdiff1d(np.arange(data.n_users), held))
    print(f"{args.dataset}: {len(held)} held-out users, training GMF on {train_data.n_users} users "
          f"for {cfg.train.epochs} epochs")
    t0 = time.perf_counter()
    global_part = train_global_part(cfg, train_data, tuple(tables.manifest["value_range"]), show_progress=True)
    train_seconds = time.perf_counter() - t0
    rows = evaluate_cold(cfg, global_part, data, held, train_data.item_popularity())
    cols = ["given", "method", "users", "hr10_full", "ndcg10_full", "hr10", "ndcg10", "fit_ms_per_user"]
    print_table(rows, cols, f"cold users on {args.dataset} (full ranking and 99 sampled negatives)")
    doc = {"dataset": args.dataset, "held_out_users": len(held), "train_users": train_data.n_users,
           "model": {k: v for k, v in cfg.to_flower_config().items() if k in settings or k == "epochs"},
           "cold_start": DEFAULT_SETTINGS.__dict__, "train_seconds": train_seconds, "rows": rows}
    write_json(args.out, doc)
    return doc


if __name__ == "__main__":
    main()
