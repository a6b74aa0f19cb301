"""The fedrec ClientApp (Flower message API). Thin: decode, call plain PyTorch, encode.

``train``: merge the received global arrays with this node's user embeddings,
train locally, keep the user embeddings on the node, reply with only the global
part and one MetricRecord. ``evaluate``: reply with additive metric sums.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.node import LocalNode
from client.node_data import resolve_node_data
from client.state import NodeStateStore, users_fingerprint
from shared.config import RunConfig

app = ClientApp()

REFUSED = 4001  # error code of a deliberate refusal (wrong catalog, ...)


def _setup(msg: Message, context: Context) -> tuple[LocalNode, NodeStateStore, str, dict]:
    cfg = RunConfig.from_mapping(context.run_config)
    torch.set_num_threads(cfg.client_threads)
    nd = resolve_node_data(cfg, context.node_config)
    config = dict(msg.content["config"])
    state_dir = context.node_config.get("state-dir") or (
        f"{cfg.node_state_dir}/{nd.node_key}" if cfg.node_state_dir else None
    )
    store = NodeStateStore(context.state, state_dir, str(config.get("run-key", context.run_id)))
    return LocalNode(cfg, nd.data, nd.value_range, nd.node_key), store, nd.catalog_hash, config


def _refuse(msg: Message, reason: str) -> Message:
    return Message(Error(code=REFUSED, reason=reason), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    node, store, catalog_hash, config = _setup(msg, context)
    if config.get("catalog-hash", catalog_hash) != catalog_hash:
        return _refuse(msg, f"item catalog differs: node has {catalog_hash[:16]}…")
    fingerprint = users_fingerprint(node.data.user_ids)
    outcome = node.train_round(
        msg.content["arrays"].to_torch_state_dict(), store.load_local(fingerprint), int(config["server-round"]),
        proximal_mu=float(config.get("proximal-mu", 0.0)),
    )
    store.save_local(outcome.local_part, fingerprint, int(config["server-round"]))
    metrics = MetricRecord({
        "num-examples": outcome.result.num_examples,
        "train-loss": outcome.result.loss,
        "train-seconds": outcome.result.seconds,
        "steps": outcome.result.steps,
    })
    return Message(RecordDict({"arrays": ArrayRecord(outcome.global_part), "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    node, store, catalog_hash, config = _setup(msg, context)
    if config.get("catalog-hash", catalog_hash) != catalog_hash:
        return _refuse(msg, f"item catalog differs: node has {catalog_hash[:16]}…")
    roles = [r for r in str(config.get("roles", "val")).split(",") if r]
    sums = node.evaluate(
        msg.content["arrays"].to_torch_state_dict(), store.load_local(users_fingerprint(node.data.user_ids)), roles,
        full_rank=bool(config.get("full-rank", True)),
    )
    sums["num-examples"] = int(sums.get(f"{roles[0]}-count", 0))
    return Message(RecordDict({"metrics": MetricRecord(sums)}), reply_to=msg)
