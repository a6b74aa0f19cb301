"""The fedrec ClientApp (Flower message API). Thin: decode, call plain PyTorch, encode.

``train``: merge the received global arrays with this node's user embeddings,
train locally (DP-SGD when ``dp``), keep the user embeddings on the node, reply
with only the global part, one MetricRecord and — under DP — this node's signed
ledger chain of the run. ``evaluate``: reply with additive metric sums.
"""

from __future__ import annotations

import json
import logging

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.node import LocalNode
from client.node_data import resolve_node_data
from client.privacy_account import PrivacyAccount
from client.state import NodeStateStore, default_state_dir, users_fingerprint
from shared.config import RunConfig

app = ClientApp()
log = logging.getLogger("flwr")

REFUSED = 4001  # error code of a deliberate refusal (budget exhausted, wrong catalog, ...)


def _setup(msg: Message, context: Context) -> tuple[RunConfig, LocalNode, NodeStateStore, str, dict]:
    cfg = RunConfig.from_mapping(context.run_config)
    torch.set_num_threads(cfg.client_threads)
    nd = resolve_node_data(cfg, context.node_config)
    config = dict(msg.content["config"])
    state_dir = context.node_config.get("state-dir") or (
        f"{cfg.node_state_dir}/{nd.node_key}" if cfg.node_state_dir else default_state_dir(nd.node_key)
    )
    store = NodeStateStore(context.state, state_dir, str(config.get("run-key", context.run_id)))
    return cfg, LocalNode(cfg, nd.data, nd.value_range, nd.node_key), store, nd.catalog_hash, config


def _refuse(msg: Message, reason: str) -> Message:
    log.warning("node refuses %s: %s", msg.metadata.message_type, reason)
    return Message(Error(code=REFUSED, reason=reason), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg, node, store, catalog_hash, config = _setup(msg, context)
    if config.get("catalog-hash", catalog_hash) != catalog_hash:
        return _refuse(msg, f"item catalog differs: node has {catalog_hash[:16]}…")
    server_round = int(config["server-round"])
    account = None
    if cfg.dp and cfg.privacy_unit in ("user", "interaction"):
        account = PrivacyAccount(store, cfg, node.data, context.node_config.get("signing-key"))
        if reason := account.refusal():
            return _refuse(msg, reason)
    fingerprint = users_fingerprint(node.data.user_ids)
    outcome = node.train_round(
        msg.content["arrays"].to_torch_state_dict(), store.load_local(fingerprint), server_round,
        proximal_mu=float(config.get("proximal-mu", 0.0)), plan=account.plan if account else None,
    )
    content = RecordDict()
    metrics = {
        "num-examples": outcome.result.num_examples,
        "train-loss": outcome.result.loss,
        "train-seconds": outcome.result.seconds,
        "steps": outcome.result.steps,
    }
    if account is not None:  # record the spend before the update leaves the node
        entry = account.record(server_round, outcome.result.steps)
        metrics |= {"epsilon": entry["epsilon"], "delta": entry["delta"]}
        content["ledger"] = ConfigRecord({"entries": [json.dumps(e, sort_keys=True) for e in account.chain()]})
    store.save_local(outcome.local_part, fingerprint, server_round)
    content["arrays"] = ArrayRecord(outcome.global_part)
    content["metrics"] = MetricRecord(metrics)
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    _, node, store, catalog_hash, config = _setup(msg, context)
    if config.get("catalog-hash", catalog_hash) != catalog_hash:
        return _refuse(msg, f"item catalog differs: node has {catalog_hash[:16]}…")
    roles = [r for r in str(config.get("roles", "val")).split(",") if r]
    sums = node.evaluate(
        msg.content["arrays"].to_torch_state_dict(), store.load_local(users_fingerprint(node.data.user_ids)), roles,
        full_rank=bool(config.get("full-rank", True)),
    )
    sums["num-examples"] = int(sums.get(f"{roles[0]}-count", 0))
    return Message(RecordDict({"metrics": MetricRecord(sums)}), reply_to=msg)
