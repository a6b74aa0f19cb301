"""The fedrec ClientApp (Flower message API). Thin: decode, call plain PyTorch, encode.

``train``: merge the received global arrays with this node's user embeddings,
train locally (DP-SGD when ``dp.enabled``), keep the user embeddings on the node, reply
with only the global part, one MetricRecord and — under DP — this node's signed
ledger chain of the run (as float16 with ``transport.compression = "fp16"``; SecAgg+ stages go to
:mod:`client.secagg`, which reuses :func:`train_locally`). ``evaluate``: reply with additive metric sums.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from client.local import REFUSED, Refusal, node_setup, release_locally, train_locally
from client.secagg import handle_train
from client.state import users_fingerprint
from shared import sparse_rows
from shared.config import RunConfig

log = logging.getLogger("flwr")


def node_level_clipping(msg: Message, context: Context, call_next) -> Message:
    """Node-level DP: clip this node's update to the coordinator's ``clipping_norm`` (Flower's mod)."""
    config = msg.content.config_records.get("config")
    if msg.metadata.message_type == "train" and config is not None and "clipping_norm" in config:
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


app = ClientApp(mods=[node_level_clipping])

def _refuse(msg: Message, reason: str) -> Message:
    log.warning("node refuses %s: %s", msg.metadata.message_type, reason)
    return Message(Error(code=REFUSED, reason=reason), reply_to=msg)


def compress(arrays: dict[str, torch.Tensor], how: str) -> OrderedDict[str, torch.Tensor]:
    """``transport.compression``: "fp16" sends floating-point arrays as float16 (the coordinator upcasts)."""
    if how == "fp16":
        return OrderedDict((k, v.half() if v.is_floating_point() else v) for k, v in arrays.items())
    return OrderedDict(arrays)


@app.train()
def train(msg: Message, context: Context) -> Message:
    if RECORD_KEY_CONFIGS in msg.content.config_records:  # a SecAgg+ protocol stage: the legacy path
        return handle_train(msg, context)
    config = dict(msg.content["config"])
    local = release_locally if "release" in config else train_locally
    try:
        update = local(config, msg.content["arrays"].to_torch_state_dict(), context)
    except Refusal as exc:
        return _refuse(msg, str(exc))
    content = RecordDict()
    if update.ledger is not None:
        content["ledger"] = ConfigRecord({"entries": [json.dumps(e, sort_keys=True) for e in update.ledger]})
    transport = RunConfig.from_mapping(context.run_config).transport
    arrays = update.global_part
    if transport.item_updates == "sparse":  # rows compared before any compression
        received = msg.content["arrays"]
        # a model update is compared with the model sent; a release (a sum) with zeros: rows nobody touched
        reference = {k: received[k].numpy() if "release" not in config else np.zeros(()) for k in arrays}
        encoded = sparse_rows.encode({k: v.detach().numpy() for k, v in arrays.items()}, reference)
        arrays = OrderedDict((k, torch.from_numpy(v)) for k, v in encoded.items())
    content["arrays"] = ArrayRecord(compress(arrays, transport.compression))
    content["metrics"] = MetricRecord(update.metrics)
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    _, node, store, catalog_hash, config = node_setup(dict(msg.content["config"]), context)
    if config.get("catalog-hash", catalog_hash) != catalog_hash:
        return _refuse(msg, f"item catalog differs: node has {catalog_hash[:16]}…")
    roles = [r for r in str(config.get("roles", "val")).split(",") if r]
    global_part = msg.content["arrays"].to_torch_state_dict()
    fingerprint = users_fingerprint(node.data.user_ids)
    local = store.load_local(fingerprint)
    if local is None:  # never trained (a DP run that released its floor model): fit the rows locally, keep them
        local = node.fit_users(global_part)
        store.save_local(local, fingerprint, int(config.get("server-round", 0)))
    sums = node.evaluate(global_part, local, roles, full_rank=bool(config.get("full-rank", True)),
                         server_round=int(config.get("server-round", 0)), floor=bool(config.get("floor", False)))
    sums["num-examples"] = int(sums.get(f"{roles[0]}-count", 0))
    sums["node-weight"] = 1
    return Message(RecordDict({"metrics": MetricRecord(sums)}), reply_to=msg)
