"""Fault injection for reliability runs: dropouts and hostile nodes, deterministic in (seed, node, round).

Dropouts (run config ``sim.fault-dropout``, ``sim.fault-mode``) act inside the ClientApp through :func:`fault_mod`:

- ``crash``: the node raises before it trains: no update and no privacy spend; the runtime turns the
  exception into an Error reply, which the coordinator records under ``failed``;
- ``late``: the node trains and records its spend, then its reply misses the round deadline. Under the
  Flower runtime it sleeps past ``federation.round-timeout``; under the in-process Grid (which sets
  :data:`VIRTUAL_CLOCK`) it raises :class:`MissedDeadline` and the Grid drops the reply, without waiting.

Which nodes fail: simulated nodes (``partition-id`` in node_config) — exactly ``round(fraction * n)`` of
the ``n`` partitions per round, a seeded permutation per (seed, round); other nodes — each with
probability ``fraction`` per (seed, node, round).

Hostile nodes (tests and benchmarks): :func:`hostile` wraps a ClientApp so that chosen partitions send
non-conforming, replayed or copied replies; :func:`poisoning` makes one partition promote a target item
with fake profiles and a boosted update (Fang et al. 2018 / Rong et al. 2022-style promotion attack).
"""

from __future__ import annotations

import contextvars
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MessageType
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from shared.config import RunConfig
from shared.seeding import derive, numpy_rng

VIRTUAL_CLOCK: contextvars.ContextVar[bool] = contextvars.ContextVar("fedrec_virtual_clock", default=False)
LATE_MARGIN = 5.0  # seconds a late node sleeps beyond round-timeout (the SuperLink is polled every 3 s)
ClientCall = Callable[[Message, Context], Message]


class InjectedCrash(RuntimeError):
    """A node crash injected by ``sim.fault-mode = "crash"``."""


class MissedDeadline(Exception):
    """A reply that arrives after the round deadline (in-process Grid: the reply is dropped)."""


def failing_partitions(seed: int, server_round: int, n: int, fraction: float) -> frozenset[int]:
    """The ``round(fraction * n)`` partitions that fail in ``server_round`` (same on every node)."""
    count = min(n, math.floor(fraction * n + 0.5))
    return frozenset(int(p) for p in numpy_rng(seed, "fault-dropout", server_round).permutation(n)[:count])


def node_fails(seed: int, fraction: float, node_config: Mapping[str, Any], node_id: int, server_round: int) -> bool:
    """Whether this node fails in ``server_round``."""
    if fraction <= 0:
        return False
    if "partition-id" in node_config:
        n = int(node_config.get("num-partitions", 1))
        return int(node_config["partition-id"]) in failing_partitions(seed, server_round, n, fraction)
    name = str(node_config.get("node-name") or node_config.get("data-path") or node_id)
    return derive(seed, "fault-dropout", name, server_round) / 2.0**63 < fraction


def miss_deadline(round_timeout: float, server_round: int) -> None:
    """Make the current reply late: raise under the in-process Grid, else sleep past the deadline."""
    if VIRTUAL_CLOCK.get():
        raise MissedDeadline(f"reply of round {server_round} arrives after the deadline")
    time.sleep(round_timeout + LATE_MARGIN)


def fault_mod(msg: Message, context: Context, call_next: ClientCall) -> Message:
    """ClientApp mod: apply ``sim.fault-dropout`` / ``sim.fault-mode`` to plain training instructions."""
    if msg.metadata.message_type != MessageType.TRAIN or RECORD_KEY_CONFIGS in msg.content.config_records:
        return call_next(msg, context)
    cfg = RunConfig.from_mapping(context.run_config)
    config = msg.content.config_records.get("config")
    if cfg.sim.fault_dropout <= 0 or config is None or "server-round" not in config:
        return call_next(msg, context)
    rnd = int(config["server-round"])
    if not node_fails(cfg.seed, cfg.sim.fault_dropout, context.node_config, context.node_id, rnd):
        return call_next(msg, context)
    if cfg.sim.fault_mode == "crash":
        raise InjectedCrash(f"fault injection: node crashed before training round {rnd}")
    reply = call_next(msg, context)  # trains and records its privacy spend
    miss_deadline(cfg.federation.round_timeout, rnd)
    return reply


# ----------------------------------------------------------------------------- hostile nodes
HOSTILE_KINDS = ("nan", "inf", "shape", "dtype", "keys", "huge", "replay", "copy")


def _numpy(record: ArrayRecord) -> OrderedDict[str, np.ndarray]:
    return OrderedDict((k, a.numpy().copy()) for k, a in record.items())


def tamper(arrays: OrderedDict[str, np.ndarray], kind: str) -> OrderedDict[str, np.ndarray]:
    """A non-conforming version of a reply's arrays (``nan``, ``inf``, ``shape``, ``dtype``, ``keys``, ``huge``)."""
    out = OrderedDict((k, v.copy()) for k, v in arrays.items())
    key = next(iter(out))
    if kind in ("nan", "inf"):
        out[key].flat[0] = np.nan if kind == "nan" else np.inf
    elif kind == "shape":
        out[key] = out[key][:-1]
    elif kind == "dtype":
        out[key] = out[key].astype(np.float64)
    elif kind == "keys":
        out["extra." + key] = out.pop(key)
    elif kind == "huge":
        out[key] = out[key] + 1e4
    else:
        raise ValueError(f"unknown tampering {kind!r}")
    return out


def hostile(app: ClientCall, how: Mapping[int, str]) -> ClientCall:
    """Wrap a ClientApp: partition ``p`` sends a bad training reply of kind ``how[p]`` (see HOSTILE_KINDS).

    ``replay`` re-sends the node's own update of the first round it trained; ``copy`` sends the latest
    update another node sent (this round or earlier). Both send an honest update when there is none yet.
    """
    unknown = set(how.values()) - set(HOSTILE_KINDS)
    if unknown:
        raise ValueError(f"unknown hostile kinds {sorted(unknown)}")
    first: dict[int, OrderedDict[str, np.ndarray]] = {}
    latest: dict[int, OrderedDict[str, np.ndarray]] = {}

    def call(msg: Message, ctx: Context) -> Message:
        reply = app(msg, ctx)
        if msg.metadata.message_type != MessageType.TRAIN or reply.has_error():
            return reply
        pid = int(ctx.node_config["partition-id"])
        arrays = _numpy(reply.content["arrays"])
        first.setdefault(pid, arrays)
        kind = how.get(pid)
        others = [v for p, v in latest.items() if p != pid]
        if kind is None or (kind == "replay" and first[pid] is arrays) or (kind == "copy" and not others):
            latest[pid] = arrays
            return reply
        sent = first[pid] if kind == "replay" else others[-1] if kind == "copy" else tamper(arrays, kind)
        latest[pid] = sent
        reply.content["arrays"] = ArrayRecord(OrderedDict((k, Array(v)) for k, v in sent.items()))
        return reply

    return call


# ----------------------------------------------------------------------------- model poisoning
def fake_profiles(n_users: int, n_items: int, target: int, fillers: np.ndarray, per_user: int,
                  rng: np.random.Generator):
    """``n_users`` fake users who each interacted with ``target`` and ``per_user`` filler items."""
    from shared.interactions import InteractionData
    from shared.prepared import N_NEGATIVES

    pool = fillers[fillers != target]
    rows = [np.sort(np.r_[target, rng.choice(pool, size=min(per_user, len(pool)), replace=False)])
            for _ in range(n_users)]
    counts = np.array([len(r) for r in rows])
    none = np.full(n_users, -1, np.int64)
    return InteractionData(
        user_ids=np.array([f"fake-{u:06d}" for u in range(n_users)], dtype=object), n_items=n_items,
        train_indptr=np.r_[0, np.cumsum(counts)], train_items=np.concatenate(rows).astype(np.int64),
        train_values=np.ones(int(counts.sum()), np.float32), val_item=none, val_value=np.zeros(n_users, np.float32),
        test_item=none.copy(), test_value=np.zeros(n_users, np.float32),
        val_negatives=np.full((n_users, N_NEGATIVES), -1, np.int64),
        test_negatives=np.full((n_users, N_NEGATIVES), -1, np.int64),
    )


def poisoned_update(cfg: RunConfig, global_part: Mapping[str, torch.Tensor], node_data, target: int,
                    server_round: int, *, boost: float, focus: bool = True, fake_users: int = 64,
                    fillers: int = 8) -> OrderedDict:
    """Train on fake profiles that all hold ``target`` (fillers: the node's popular items), scale the update
    by ``boost``, and keep it just under ``federation.max-update-norm`` so the coordinator's norm check passes."""
    from client.node import LocalNode

    rng = numpy_rng(cfg.seed, "poison", server_round)
    popular = np.argsort(-node_data.item_popularity(), kind="stable")[: max(4 * fillers, 20)]
    data = fake_profiles(fake_users, node_data.n_items, target, popular, fillers, rng)
    outcome = LocalNode(cfg, data, (1.0, 5.0), "attacker").train_round(dict(global_part), None, server_round)
    delta = {k: (outcome.global_part[k] - global_part[k]) * boost for k in global_part}
    if focus:  # spend the whole norm budget on the target's rows of the item tables
        for k, d in delta.items():
            keep = torch.zeros_like(d)
            if k.startswith(("item_emb.", "item_bias.")):
                keep[target] = d[target]
            delta[k] = keep
    norm = math.sqrt(sum(float((d.double() ** 2).sum()) for d in delta.values()))
    scale = min(1.0, 0.95 * cfg.federation.max_update_norm / max(norm, 1e-12))
    return OrderedDict((k, (global_part[k] + scale * delta[k]).to(global_part[k].dtype)) for k in global_part)


def poisoning(app: ClientCall, partition: int, target: int, *, boost: float = 10.0) -> ClientCall:
    """Wrap a ClientApp: ``partition`` replaces its honest update with :func:`poisoned_update`."""
    from client.node_data import resolve_node_data

    def call(msg: Message, ctx: Context) -> Message:
        reply = app(msg, ctx)
        if (msg.metadata.message_type != MessageType.TRAIN or reply.has_error()
                or int(ctx.node_config["partition-id"]) != partition):
            return reply
        cfg = RunConfig.from_mapping(ctx.run_config)
        node = resolve_node_data(cfg, ctx.node_config)
        sent = msg.content["arrays"].to_torch_state_dict()
        update = poisoned_update(cfg, sent, node.data, target, int(msg.content["config"]["server-round"]),
                                 boost=boost)
        reply.content["arrays"] = ArrayRecord(update)
        return reply

    return call
