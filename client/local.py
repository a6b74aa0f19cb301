"""One node's part of a round, without Flower messages: setup, local training, noisy-sum releases.

Node-local settings come from the node's ``node_config`` (``flower-supernode --node-config``): ``data-path``
(its prepared dataset), ``state-dir`` (its state: user rows, privacy account, ledger, signing key; default
``$FEDREC_CACHE_DIR/node-state/<node>``), ``threads`` (PyTorch threads, 1) and ``chunk-pairs`` (memory
bound of a DP step, 8192 scored pairs; the result is exactly the same), ``signing-key`` (ledger key).

The ClientApp (:mod:`client.app`) and the SecAgg+ client (:mod:`client.secagg`) both call these
plain functions, so there is one code path whatever the transport. A :class:`Refusal` is a
deliberate refusal to take part (budget exhausted, wrong catalog, ...); the caller turns it into
an Error reply.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from dataclasses import dataclass

import torch
from flwr.app import Context

from client.node import LocalNode
from client.node_data import resolve_node_data
from client.privacy import PlanError, PrivacyAccount
from client.state import NodeStateStore, default_state_dir, users_fingerprint
from shared.accounting import plan_noise, plan_noise_after
from shared.config import RunConfig
from shared.floor_vote import VOTE

REFUSED = 4001  # error code of a deliberate refusal (budget exhausted, wrong catalog, ...)


class Refusal(Exception):
    """A deliberate refusal to train; the reason goes back to the coordinator."""


@dataclass(frozen=True)
class LocalUpdate:
    """What one local training round releases: the global part, metrics, the node's ledger chain (DP)."""

    global_part: OrderedDict[str, torch.Tensor]
    metrics: dict[str, int | float]
    ledger: list[dict] | None


def node_setup(config: dict, context: Context) -> tuple[RunConfig, LocalNode, NodeStateStore, str, dict]:
    """Run config, this node's data and state store for a coordinator instruction's ``config``."""
    cfg = RunConfig.from_mapping(context.run_config)
    node_config = context.node_config
    torch.set_num_threads(int(node_config.get("threads", 1)))
    nd = resolve_node_data(cfg, node_config)
    state_dir = node_config.get("state-dir") or default_state_dir(nd.node_key)
    store = NodeStateStore(context.state, state_dir, str(config.get("run-key", context.run_id)))
    node = LocalNode(cfg, nd.data, nd.value_range, nd.node_key, chunk_pairs=int(node_config.get("chunk-pairs", 8192)))
    return cfg, node, store, nd.catalog_hash, config


def train_locally(config: dict, global_part: dict[str, torch.Tensor], context: Context) -> LocalUpdate:
    """One local round (DP-SGD when ``dp.enabled``), with or without secure aggregation; raises :class:`Refusal`."""
    cfg, node, store, catalog_hash, config = node_setup(config, context)
    if config.get("catalog-hash", catalog_hash) != catalog_hash:
        raise Refusal(f"item catalog differs: node has {catalog_hash[:16]}…")
    server_round = int(config["server-round"])
    if cfg.dp.enabled and cfg.dp.mechanism == "sgd":
        raise Refusal("dp-mechanism = sgd: this node only answers release instructions, not local training")
    account = None
    if cfg.dp.enabled and cfg.dp.unit in ("user", "interaction"):
        try:
            account = PrivacyAccount(store, cfg, node.data, context.node_config.get("signing-key"))
        except PlanError as exc:
            raise Refusal(f"no DP plan: {exc}") from None
        if reason := account.refusal():
            raise Refusal(reason)
    fingerprint = users_fingerprint(node.data.user_ids)
    outcome = node.train_round(
        global_part, store.load_local(fingerprint), server_round,
        proximal_mu=float(config.get("proximal-mu", 0.0)), plan=account.plan if account else None,
    )
    metrics = {
        "num-examples": outcome.result.num_examples,
        "train-loss": outcome.result.loss,
        "train-seconds": outcome.result.seconds,
        "steps": outcome.result.steps,
        "node-weight": 1,  # equal weights for node-level DP's average
    }
    chain = None
    if account is not None:  # record the spend before the update leaves the node
        entry = account.record(server_round, outcome.result.steps)
        metrics |= {"epsilon": entry["epsilon"], "delta": entry["delta"]}
        chain = account.chain()
    store.save_local(outcome.local_part, fingerprint, server_round)
    return LocalUpdate(outcome.global_part, metrics, chain)


# release -> the mechanisms using it
RELEASES = {"frequency": ("sgd", "als"), "gradient": ("sgd",), "als": ("als",), VOTE: ("sgd", "als")}


def release_locally(config: dict, global_part: dict[str, torch.Tensor], context: Context) -> LocalUpdate:
    """This node's share of a noisy-sum release (``config["release"]``: frequency, gradient, als,
    floor-vote); raises Refusal."""
    cfg, node, store, catalog_hash, config = node_setup(config, context)
    if config.get("catalog-hash", catalog_hash) != catalog_hash:
        raise Refusal(f"item catalog differs: node has {catalog_hash[:16]}…")
    kind = str(config.get("release"))
    if not cfg.dp.enabled or cfg.dp.mechanism not in RELEASES.get(kind, ()):
        raise Refusal(f"release {kind!r} does not belong to dp-mechanism = {cfg.dp.mechanism} (dp = {cfg.dp.enabled})")
    try:
        account = PrivacyAccount(store, cfg, node.data, context.node_config.get("signing-key"))
    except PlanError as exc:
        raise Refusal(f"no DP plan: {exc}") from None
    frequency = kind == "frequency"
    rounds = 0 if config.get("final") else int(config.get("planned-rounds", account.plan.planned_rounds))
    if (not frequency or config.get("final")) and (reason := account.adopt_rounds(rounds, cfg.federation.rounds)):
        raise Refusal(reason)
    plan = account.plan
    segment = plan.frequency_segment() if frequency else plan.segment(1)
    if frequency and config.get("final"):  # no training after all: the rest of the budget on the item counts
        try:  # ... less the floor vote's share, reserved here and persisted with this spend
            reserved = list(account.history)
            if cfg.dp.floor_vote_share > 0:
                z_vote = plan_noise(cfg.dp.floor_vote_share * plan.target_epsilon, plan.delta, 1.0, 1, plan.accountant)
                account.plan = plan = dataclasses.replace(plan, vote_multiplier=z_vote)
                reserved.append(plan.vote_segment())
            z = plan_noise_after(reserved, plan.target_epsilon, plan.delta, 1.0, 1, plan.accountant)
        except ValueError as exc:
            raise Refusal(f"no budget left for a final frequency release: {exc}") from None
        plan = dataclasses.replace(plan, frequency_multiplier=z)
        segment = plan.frequency_segment()
    elif kind == VOTE:
        if plan.vote_multiplier <= 0:
            raise Refusal("no floor vote was planned (it is planned with the final frequency release)")
        segment = plan.vote_segment()
    if reason := account.refusal(segment):
        raise Refusal(reason)
    if plan.noise == "distributed" and int(config.get("secagg-levels", 0)) < plan.secagg_levels:
        raise Refusal(f"SecAgg+ quantization of {config.get('secagg-levels')} levels is coarser than the "
                      f"{plan.secagg_levels} this node's planned sensitivity assumes")
    fingerprint = users_fingerprint(node.data.user_ids)
    start = time.perf_counter()
    arrays, local, sensitivity = node.release(kind, global_part, store.load_local(fingerprint), plan)
    entry = account.record(int(config["server-round"]), 1, segment=segment, mechanism=kind, sensitivity=sensitivity)
    if local is not None:
        store.save_local(local, fingerprint, int(config["server-round"]))
    metrics = {"num-examples": 1, "train-loss": 0.0, "train-seconds": time.perf_counter() - start, "steps": 1,
               "node-weight": 1, "epsilon": entry["epsilon"], "delta": entry["delta"],
               "noise-multiplier": segment[0]}
    return LocalUpdate(arrays, metrics, account.chain())
