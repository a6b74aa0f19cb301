"""One canary-audited federation: the claimed (epsilon, delta) of a node beside the measured lower bound.

:func:`empirical_epsilon` partitions the run's data as the simulation does, inserts canaries
(:mod:`simulations.canaries`) into node 0, hands every node its data in-process, runs the real
coordinator loop and ClientApp over the in-process Grid, records every update node 0
releases (what the coordinator sees), and plays the one-run guessing game on the canaries.
The auditor sees what the adversary of the mechanism sees: node 0's own updates when every node
adds its noise (model averaging, local noise), the released global model's steps when the noise is
on the sum (noisy-sum releases, central or distributed noise). The canaries' inclusion coins come
from OS entropy, as privacy randomness must.
"""

from __future__ import annotations

import math
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import MessageType

from client.node_data import NodeData, register_dataset
from shared.config import RunConfig
from shared.datasets import load_tables
from shared.interactions import InteractionData
from shared.one_run_audit import audit_scores
from simulations.canaries import broken, canary_scores, draw_canaries, with_canaries
from simulations.partitioners import partition_users

NONPRIVATE_DELTA = 1e-5  # the delta at which a non-private run's lower bound is stated


def empirical_epsilon(cfg: RunConfig, *, canaries: int, items_per_canary: int = 1, breakage: str | None = None,
                      work_dir: Path | None = None, confidence: float = 0.95) -> dict[str, Any]:
    """Train once with ``canaries`` canaries in node 0; return its claimed epsilon and the audited lower bound."""
    from client.app import app as client_app
    from simulations.inprocess import InProcessGrid
    from simulations.server_app import federated_run

    work = Path(work_dir or tempfile.mkdtemp(prefix="fedrec-audit-"))
    cfg = cfg.with_overrides({"federation.run-dir": str(work / "run"), "sim.node-state-dir": str(work / "nodes"),
                              "model.item-bias": True})
    tables = load_tables(cfg.data.path, seed=cfg.seed, synthetic_users=cfg.data.synthetic_users,
                         synthetic_items=cfg.data.synthetic_items)
    data = InteractionData.from_tables(tables)
    parts = partition_users(data, cfg.data.partitioner, cfg.data.partitions, seed=cfg.seed,
                            alpha=cfg.data.dirichlet_alpha)
    unit = cfg.dp.unit if cfg.dp.unit in ("user", "interaction") else "user"
    secret = np.random.default_rng(int.from_bytes(os.urandom(16), "big"))
    node0 = data.subset(parts[0])
    drawn = draw_canaries(node0, unit, canaries, k=items_per_canary, secret=secret)
    tag = uuid.uuid4().hex[:8]
    value_range = tuple(tables.manifest["value_range"])
    for i, part in enumerate(parts):
        node_data = with_canaries(node0, drawn) if i == 0 else data.subset(part)
        register_dataset(f"audit-{tag}-{i}", NodeData(node_data, value_range, tables.catalog.content_hash,
                                                       f"partition-{i}"))
    updates: list[dict[str, np.ndarray]] = []
    claim: dict[str, float] = {}
    releases = cfg.dp.enabled and cfg.dp.mechanism in ("sgd", "als")  # the world sees the noisy sums' model updates

    def watch(app):
        def call(msg, ctx):
            reply = app(msg, ctx)
            if ctx.node_id != 1000 or msg.metadata.message_type != MessageType.TRAIN or reply.has_error():
                return reply
            if "metrics" in reply.content:
                metrics = reply.content["metrics"]
                claim.update({k: float(metrics[k]) for k in ("epsilon", "delta") if k in metrics})
            if not releases:  # model averaging: the coordinator sees node 0's own (noisy) update
                sent = {k: a.numpy() for k, a in msg.content["arrays"].items()}
                updates.append({k: a.numpy() - sent[k] for k, a in reply.content["arrays"].items()})
            return reply
        return call

    configs = [{"dataset": f"audit-{tag}-{i}", "state-dir": str(work / "nodes" / f"partition-{i}")}
               for i in range(len(parts))]
    grid = InProcessGrid(watch(client_app), configs, cfg.to_flower_config())
    run = federated_run(cfg, grid, 1)
    if releases:  # noise on the sum (central or distributed): audit the released global model's steps
        one_round = run._train_round

        def recorded(rnd, arrays, *args):
            record, new = one_round(rnd, arrays, *args)
            updates.append({k: new[k].numpy() - arrays[k].numpy() for k in arrays})
            return record, new

        run._train_round = recorded
    with broken(breakage):
        summary = run.execute()
    scores = canary_scores(updates, drawn)
    delta = claim.get("delta", NONPRIVATE_DELTA)
    result = audit_scores(scores, drawn.included, delta=delta, confidence=confidence, rng=secret)
    return {
        "data": cfg.data.path, "unit": unit, "dp": cfg.dp.enabled, "breakage": breakage or "none",
        "claimed_epsilon": claim.get("epsilon", math.inf),
        "target_epsilon": cfg.dp.target_epsilon if cfg.dp.enabled else math.inf,
        "delta": delta, "accountant": cfg.dp.accountant if cfg.dp.enabled else None, "epsilon_lower_bound":
        result.epsilon_lower_bound, "confidence": confidence, "canaries": drawn.m,
        "included": int(drawn.included.sum()), "guesses": result.r, "correct": result.v,
        "rounds": len(updates), "test_hr10": (summary.test or {}).get("hr10"),
    }
