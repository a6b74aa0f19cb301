"""A Ray-free, in-process Flower Grid: the real ClientApp and coordinator loop, no runtime.

Each simulated node has its own ``Context`` (state persists across rounds, as in
Flower). Messages go through ``ClientApp.__call__`` exactly as the SuperNode runs
them, after a protobuf round trip each way (as through a SuperLink: no node shares
an object with the coordinator or another node); a ClientApp exception becomes an
``Error`` reply, as in the runtime; a reply that misses the round deadline
(:class:`simulations.faults.MissedDeadline`, raised instead of sleeping: the Grid
sets :data:`simulations.faults.VIRTUAL_CLOCK`) is never delivered. Used
by fast tests and by benchmarks with thousands of nodes, where a Ray actor pool
on two cores costs more than the training itself. It relies on two internals
(``TaskIdentity`` and ``Metadata.__dict__``), so it is pinned to flwr 1.42.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from simulations.faults import VIRTUAL_CLOCK, MissedDeadline

CLIENT_EXCEPTION = 500


class InProcessGrid(Grid):
    """A Grid whose nodes are ClientApp calls in this process."""

    def __init__(
        self,
        client_app: ClientApp,
        node_configs: list[Mapping[str, Any]],
        run_config: Mapping[str, Any],
        *,
        run_id: int = 1,
        tap: Callable[[Message], None] | None = None,
        drop: Callable[[Message], bool] | None = None,
    ) -> None:
        self.client_app = client_app
        self.contexts = {
            1000 + i: Context(run_id=run_id, node_id=1000 + i, node_config=dict(nc), state=RecordDict(),
                              run_config=dict(run_config))
            for i, nc in enumerate(node_configs)
        }
        self.tap = tap  # sees every reply a node sends (wire inspection)
        self.drop = drop  # drop(instruction) -> True simulates a node that never answers
        self.late: list[tuple[int, int]] = []  # (node, round) of replies that missed the deadline
        self._ids = itertools.count(1)
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, 0, 1

    # Grid API used by strategies -------------------------------------------------
    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = f"m{next(self._ids)}"
            if self.drop is not None and self.drop(msg):
                continue
            context = self.contexts[msg.metadata.dst_node_id]
            token = VIRTUAL_CLOCK.set(True)
            try:
                reply = self.client_app(_wire(msg), context)
            except MissedDeadline:
                self.late.append((msg.metadata.dst_node_id, int(msg.content["config"]["server-round"])))
                continue
            except Exception as exc:  # the runtime turns ClientApp exceptions into Error replies
                reply = Message(Error(code=CLIENT_EXCEPTION, reason=f"{exc.__class__.__name__}: {exc}"), reply_to=msg)
            finally:
                VIRTUAL_CLOCK.reset(token)
            reply = _wire(reply)
            if self.tap is not None:
                self.tap(reply)
            replies.append(reply)
        return replies

    # Unused parts of the Grid contract ----------------------------------------------
    def set_run(self, run_id: int) -> None:  # pragma: no cover - not used in-process
        pass

    @property
    def run(self):  # pragma: no cover
        raise NotImplementedError

    def create_message(self, *args, **kwargs):  # pragma: no cover
        raise NotImplementedError

    def push_messages(self, messages):  # pragma: no cover
        raise NotImplementedError

    def pull_messages(self, message_ids):  # pragma: no cover
        raise NotImplementedError


def _wire(msg: Message) -> Message:
    """The message as the other side decodes it from the SuperLink's protobuf."""
    return message_from_proto(message_to_proto(msg))


def simulation_node_configs(n: int) -> list[dict[str, Any]]:
    """node_config of ``n`` simulated SuperNodes, as Flower's simulation engine sets it."""
    return [{"partition-id": i, "num-partitions": n} for i in range(n)]
