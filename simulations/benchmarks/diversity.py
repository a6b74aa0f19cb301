"""Accuracy vs diversity of MMR re-ranking (and of a popularity penalty) on ML-1M.

The model is the benchmarks' cached ML-1M GMF (:data:`simulations.benchmarks.ML1M_GMF`).
For every ML-1M user, NCF's test item is ranked with the user's train and
validation items excluded (``InteractionData.seen_for("test")``):

- full ranking: the re-ranked top-10 over the whole catalog → HR@10, NDCG@10,
  intra-list diversity (mean pairwise cosine distance of item vectors),
  catalog coverage@10 and novelty (mean self-information);
- sampled (NCF): the test item and its 99 published negatives, re-ranked by the
  same MMR → HR@10, NDCG@10.

Writes FILE.json, FILE.png (curves over λ) and prints a table.

    python -m simulations.benchmarks.diversity --data-dir ../shared/data --out /tmp/diversity.json
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from client.diversity import mmr_rerank, popularity_prior
from client.recommender import NodeRecommender
from shared import metrics
from shared.evaluation import score_pairs
from shared.interactions import InteractionData

LAMBDAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
PENALTIES = (0.1, 0.25, 0.5)


def _position_metrics(lists: np.ndarray, positives: np.ndarray, k: int = 10) -> tuple[float, float]:
    """HR@k and NDCG@k of one held-out item per user given final lists (U, k)."""
    hit = lists == positives[:, None]
    found = hit.any(axis=1)
    rank = hit.argmax(axis=1)
    return float(found.mean()), float(np.where(found, 1.0 / np.log2(rank + 2.0), 0.0).mean())


def evaluate_setting(rec: NodeRecommender, data: InteractionData, lam: float, beta: float, k: int = 10,
                     ) -> dict[str, Any]:
    """Full-ranking and sampled figures of one (λ, β) setting over the users with a test item."""
    users, pos, negs = data.held_out("test")
    item_vecs = rec.model.item_representation().numpy()
    pop_fraction = rec.item_counts / max(data.n_users, 1)
    lists = rec.recommend(users, k, diversity=lam, popularity_penalty=beta).items
    hr_full, ndcg_full = _position_metrics(lists, pos, k)
    cand = np.concatenate([pos[:, None], negs], axis=1)
    scores = score_pairs(rec.model, users, cand)
    order = np.lexsort((cand, -scores), axis=1)  # best first, ties by lower item row
    pool = np.take_along_axis(cand, order, axis=1)
    pool_scores = np.take_along_axis(scores, order, axis=1)
    picked = mmr_rerank(pool, pool_scores, k, lam=lam, unit_vectors=rec.unit_vectors,
                        popularity=popularity_prior(rec.item_counts), penalty=beta)
    sampled = np.where(picked >= 0, np.take_along_axis(pool, np.maximum(picked, 0), axis=1), -1)
    hr, ndcg = _position_metrics(sampled, pos, k)
    return {"lambda": lam, "penalty": beta, "hr10_full": hr_full, "ndcg10_full": ndcg_full, "hr10": hr,
            "ndcg10": ndcg, "ild10": float(metrics.intra_list_diversity(lists, item_vecs).mean()),
            "coverage10": metrics.catalog_coverage(lists, data.n_items),
            "novelty10": float(metrics.novelty(lists, np.clip(pop_fraction, 0, 1)).mean())}


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Left: accuracy, ILD and coverage over λ. Right: the HR@10-vs-ILD trade-off curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mmr = [r for r in rows if r["penalty"] == 0]
    lam = [r["lambda"] for r in mmr]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, style in (("hr10_full", "-o"), ("ndcg10_full", "-s"), ("hr10", "--o"), ("ndcg10", "--s"),
                       ("ild10", ":^"), ("coverage10", ":v")):
        left.plot(lam, [r[key] for r in mmr], style, label=key)
    left.set(xlabel="MMR λ (0 = plain top-10)", ylabel="value", title="metrics over λ", ylim=(0, 1.2))
    left.legend(fontsize=8, loc="upper center", ncol=3)
    right.plot([r["ild10"] for r in mmr], [r["hr10_full"] for r in mmr], "-o", label="MMR (full ranking)")
    for r in mmr:
        right.annotate(f"{r['lambda']:.1f}", (r["ild10"], r["hr10_full"]), fontsize=7, xytext=(3, 3),
                       textcoords="offset points")
    pen = [r for r in rows if r["penalty"] > 0]
    if pen:
        right.plot([r["ild10"] for r in pen], [r["hr10_full"] for r in pen], "s", label="popularity penalty β")
    right.set(xlabel="intra-list diversity @10", ylabel="HR@10 (full ranking)", title="accuracy vs diversity")
    right.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from client.serving.source import ModelSource
    from shared.datasets import load_tables
    from simulations.benchmarks import ML1M_GMF, benchmark_parser, print_table, trained_run, use_data_dir, write_json

    parser = benchmark_parser(__doc__)
    args = parser.parse_args(argv)
    use_data_dir(args.data_dir)
    torch.set_num_threads(1)  # shared machines: one thread is faster than oversubscribed cores
    run = trained_run("ml1m-gmf", ML1M_GMF)
    rec = ModelSource(run=run).load()
    data = InteractionData.from_tables(load_tables("movielens:ml-1m", seed=ML1M_GMF["seed"]))
    rec = rec.with_exclusion(*data.seen_for("test"))
    rows = []
    for lam, beta in [(x, 0.0) for x in LAMBDAS] + [(0.0, b) for b in PENALTIES]:
        t0 = time.perf_counter()
        rows.append(evaluate_setting(rec, data, lam, beta) | {"seconds": time.perf_counter() - t0})
    cols = ["lambda", "penalty", "hr10_full", "ndcg10_full", "hr10", "ndcg10", "ild10", "coverage10", "novelty10",
            "seconds"]
    print_table(rows, cols, f"MMR / popularity-penalty re-ranking on ML-1M ({data.n_users} users, GMF)")
    out = Path(args.out)
    png = plot(rows, out.with_suffix(".png"), "ML-1M, GMF: accuracy vs diversity (MMR over item-embedding cosine)")
    doc = {"dataset": "ml-1m", "model": ML1M_GMF, "users": len(data.held_out("test")[0]), "rows": rows,
           "plot": str(png)}
    write_json(out, doc)
    return doc


if __name__ == "__main__":
    main()
