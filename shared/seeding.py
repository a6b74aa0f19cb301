"""Deterministic randomness derived from (seed, node, round, purpose), never global state."""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def derive(seed: int, *stream: int | str) -> int:
    """A 63-bit integer seed for the stream ``(seed, *stream)``."""
    text = ":".join(str(x) for x in (seed, *stream)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") >> 1


def numpy_rng(seed: int, *stream: int | str) -> np.random.Generator:
    """A NumPy generator for the stream ``(seed, *stream)``."""
    return np.random.default_rng(derive(seed, *stream))


def torch_generator(seed: int, *stream: int | str) -> torch.Generator:
    """A torch CPU generator for the stream ``(seed, *stream)``."""
    gen = torch.Generator()
    gen.manual_seed(derive(seed, *stream))
    return gen


class torch_seed:
    """Run a block (e.g. model construction) under a derived torch seed, restoring the global RNG after."""

    def __init__(self, seed: int, *stream: int | str) -> None:
        self._seed = derive(seed, *stream)
        self._fork = torch.random.fork_rng(devices=[])

    def __enter__(self) -> None:
        self._fork.__enter__()
        # the CPU generator only: torch.manual_seed also queues a lazy CUDA seeding that records a stack trace
        torch.random.default_generator.manual_seed(self._seed)

    def __exit__(self, *exc: object) -> None:
        self._fork.__exit__(*exc)
