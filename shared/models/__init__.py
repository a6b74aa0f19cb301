"""Recommender models (plain PyTorch) and the local/global parameter split."""

from shared.models.base import LOCAL_PREFIX, Recommender, global_state, local_state, merge_state
from shared.models.factory import MODELS, build_model, init_items_from_metadata

__all__ = [
    "LOCAL_PREFIX",
    "MODELS",
    "Recommender",
    "build_model",
    "global_state",
    "init_items_from_metadata",
    "local_state",
    "merge_state",
]
