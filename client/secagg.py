"""Secure aggregation (SecAgg+) on the node: Flower's legacy ``secaggplus_mod`` around a NumPyClient.

In flwr 1.42 SecAgg+ exists only in the legacy stack, so this is the one module on the
node that uses it. With ``transport.secure-aggregation = true`` the coordinator sends four
protocol stages as TRAIN messages carrying ``secaggplus_configs``; the ClientApp's
train handler passes them here. ``secaggplus_mod`` answers setup, key sharing and
unmasking itself; in the "collect masked vectors" stage it calls the NumPyClient's
``fit``, which runs the very same :func:`client.local.train_locally` as the plain path
(DP-SGD, privacy account and signed ledger, user embeddings kept in node state), then
quantizes, weights and masks the global part before it leaves the node. What the
node sends in the clear is what it sends without SecAgg minus the update: its
metrics and ledger chain.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict

import numpy as np
import torch
from flwr.app import Context, Error, Message
from flwr.client import NumPyClient
from flwr.client.message_handler.message_handler import handle_legacy_message_from_msgtype
from flwr.client.mod import secaggplus_mod

from client.local import REFUSED, Refusal, node_setup, release_locally, train_locally
from shared.secure_sum import release_unit, scale

log = logging.getLogger("flwr")
CLIPPING_RANGE = 8.0  # SecAggPlusWorkflow's default: parameters are clipped to +-8 before quantization
LEDGER_KEY = "ledger"  # fit metric: the node's ledger chain of the run, one JSON entry per line


class FedrecNumPyClient(NumPyClient):
    """The legacy face of a fedrec node: ``fit`` = one local round on the named global arrays."""

    def __init__(self, context: Context) -> None:
        self.context = context

    def fit(self, parameters: list[np.ndarray], config: dict) -> tuple[list[np.ndarray], int, dict]:
        keys = str(config.get("array-keys", "")).split(",")
        if len(keys) != len(parameters):
            raise Refusal(f"expected {len(keys)} global arrays, got {len(parameters)}")
        if "release" in config:
            return self._release(parameters, keys, config)
        cfg, node, *_ = node_setup(dict(config), self.context)
        if node.data.n_train > cfg.transport.secagg_max_weight:  # checked before any privacy is spent
            raise Refusal(f"num-examples {node.data.n_train} exceeds transport.secagg-max-weight "
                          f"{cfg.transport.secagg_max_weight:g}")
        global_part = OrderedDict((k, torch.from_numpy(np.array(a))) for k, a in zip(keys, parameters, strict=True))
        update = train_locally(dict(config), global_part, self.context)
        # float64: SecAgg+ computes (value * n / max_weight + 8) * Q / 16 in the arrays' dtype, and float32
        # resolves only ~1e-6 near 8, coarser than the (up to 2^30-level) quantization the coordinator asks for
        arrays = [update.global_part[k].detach().numpy().astype(np.float64) for k in keys]
        peak = max((float(np.abs(a).max()) for a in arrays if a.size), default=0.0)
        if peak > CLIPPING_RANGE:
            log.warning("secure aggregation clips parameters to +-%g; this update reaches %.3g", CLIPPING_RANGE, peak)
        metrics: dict = dict(update.metrics)
        if update.ledger is not None:
            metrics[LEDGER_KEY] = "\n".join(json.dumps(e, sort_keys=True) for e in update.ledger)
        return arrays, int(update.metrics["num-examples"]), metrics


    def _release(self, parameters: list[np.ndarray], keys: list[str], config: dict):
        """A noisy-sum release under distributed noise: divided by the public scale S into SecAgg+'s range and
        sent with weight 1, so that the coordinator's mean times k * S is the sum over the k included nodes."""
        cfg, *_ = node_setup(dict(config), self.context)
        global_part = OrderedDict((k, torch.from_numpy(np.array(a))) for k, a in zip(keys, parameters, strict=True))
        update = release_locally(dict(config), global_part, self.context)
        factor = 1.0 / scale(cfg.transport.secagg_max_users, release_unit(cfg, str(config["release"])))
        arrays = [v.detach().numpy().astype(np.float64) * factor for v in update.global_part.values()]
        metrics: dict = dict(update.metrics)
        if update.ledger is not None:
            metrics[LEDGER_KEY] = "\n".join(json.dumps(e, sort_keys=True) for e in update.ledger)
        return arrays, 1, metrics


def _fit(msg: Message, context: Context) -> Message:
    return handle_legacy_message_from_msgtype(lambda ctx: FedrecNumPyClient(ctx).to_client(), msg, context)


def handle_train(msg: Message, context: Context) -> Message:
    """Answer one SecAgg+ stage (the ClientApp's train handler delegates here); a refusal is an error reply."""
    try:
        return secaggplus_mod(msg, context, _fit)
    except Refusal as exc:  # the protocol treats the node as dropped out this round
        log.warning("node refuses secure-aggregation round: %s", exc)
        return Message(Error(code=REFUSED, reason=str(exc)), reply_to=msg)
