"""Personal parameters: a node's own view of the global model (``model.personalization = "dual"``).

PFedRec's dual personalization (Zhang et al., IJCAI 2023) gives every client its own score function and its own
fine-tuned copy of the item embeddings; the server averages only the shared item side. fedrec's user embeddings
are already the personal score function (for GMF ``h · (p_u ∘ q_i)`` is a per-user linear score of ``q_i``), so
"dual" adds the item side: after local training the node keeps its **offset** from the model it received,

    offset = trained global part − received global part,

for every global tensor (only the changed rows of the item tables: the items its users' training touched), and
evaluates and serves with ``current global part + offset``. The node still sends its whole trained global part as
before (that is what the coordinator averages); the offset is a function of the node's own data and the models it
received, lives in the node state beside the user embeddings (keys ``personal.<global key>``, rows as
``@rows``/``@values``) and is never sent: the wire-privacy test checks it byte for byte. Under DP the offset is
post-processing of the node's own data on the node: it costs no privacy budget because it is never released.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
import torch

from shared import sparse_rows

PREFIX = "personal."

Tensors = OrderedDict[str, torch.Tensor]


def split(local_part: Mapping[str, torch.Tensor] | None) -> tuple[Tensors | None, Tensors]:
    """(user rows, personal offsets) of a node's stored local part; either may be empty."""
    if local_part is None:
        return None, OrderedDict()
    users = OrderedDict((k, v) for k, v in local_part.items() if not k.startswith(PREFIX))
    personal = OrderedDict((k, v) for k, v in local_part.items() if k.startswith(PREFIX))
    return users or None, personal


def offsets(trained: Mapping[str, torch.Tensor], received: Mapping[str, torch.Tensor]) -> Tensors:
    """The node's offset from ``received``, keyed ``personal.<key>``; item tables keep only their changed rows."""
    deltas = {k: (trained[k].detach().float() - received[k].float()).numpy() for k in received}
    encoded = sparse_rows.encode(deltas, {k: np.zeros(()) for k in deltas})
    return OrderedDict((PREFIX + k, torch.from_numpy(np.ascontiguousarray(v))) for k, v in encoded.items())


def view(global_part: Mapping[str, torch.Tensor], personal: Mapping[str, torch.Tensor],
         scale: float = 1.0) -> Tensors:
    """``global_part + scale · offset``: the node's personal model (``global_part`` itself when there is no offset).

    Raises ValueError when the stored offset does not fit ``global_part`` (another model or catalog).
    """
    if not personal:
        return OrderedDict(global_part)
    if stray := [k for k in personal if not k.startswith(PREFIX)]:
        raise ValueError(f"not personal offsets: {stray}")
    arrays = {k[len(PREFIX):]: v.numpy() for k, v in personal.items()}
    zeros = {k: np.zeros(tuple(v.shape), np.float32) for k, v in global_part.items()}
    dense, problem = sparse_rows.decode(arrays, zeros)
    if not problem and set(dense) != set(global_part):
        problem = f"keys differ: {sorted(set(dense) ^ set(zeros))}"
    if not problem and (bad := [k for k, v in dense.items() if np.shape(v) != zeros[k].shape]):
        problem = f"shapes differ: {bad}"
    if problem:
        raise ValueError(f"personal offsets do not fit the global model: {problem}")
    return OrderedDict((k, (v + scale * torch.from_numpy(np.asarray(dense[k], np.float32)))
                        .to(v.dtype)) for k, v in global_part.items())
