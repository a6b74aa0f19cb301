"""Privacy randomness: fresh OS entropy, never anything the coordinator knows.

DP guarantees hold only if nobody who sees a released value can reproduce the randomness
that protects it. The run seed, node names and round numbers are all known to the
coordinator, so nothing here takes a seed: :meth:`SecretRandomness.fresh` draws 256 bits
from the operating system (``os.urandom``) for every DP round, keeps them in memory only,
and derives three independent streams from them:

- ``gaussian``: the DP noise. A ChaCha20 keystream (the ``cryptography`` package, i.e.
  OpenSSL) turned into 53-bit uniforms in (0, 1) and then into standard normals with
  Box-Muller in float64. As Opacus's ``secure_mode`` does (Holohan & Braghin 2021,
  method 3 of Sec. 5.1, against the floating-point attacks of Jin et al. 2021 / Mironov
  2012), every output is ``(g1 + g2 + g3 + g4) / 2`` of four such normals, so the
  low-order bits of the released float32 value do not reveal the noise;
- ``numpy``: a NumPy generator (PCG64 seeded with 128 fresh bits) for the user unit's
  interaction subsampling and negatives;
- ``torch``: a torch generator (seeded with 63 fresh bits) for Opacus's Poisson sampling.

The sampling streams are not cryptographic generators, but their seeds are secret and
their outputs never leave the node. Non-private code keeps using :mod:`shared.seeding`.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

_SCALE = 2.0**-53


class CSPRNGGaussian:
    """Gaussian noise from a ChaCha20 keystream keyed with 32 secret bytes."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a ChaCha20 key has 32 bytes")
        self._stream = Cipher(algorithms.ChaCha20(key, b"\0" * 16), mode=None).encryptor()

    def uniform(self, n: int) -> np.ndarray:
        """``n`` float64 uniforms in the open interval (0, 1), 53 random bits each."""
        raw = np.frombuffer(self._stream.update(bytes(8 * n)), dtype=np.uint64)
        out = (raw >> np.uint64(11)).astype(np.float64)
        out += 0.5
        out *= _SCALE
        return out

    def standard_normal(self, n: int) -> np.ndarray:
        """``n`` float64 N(0, 1) draws (Box-Muller; torch's vectorized float64 cos/sin)."""
        half = (n + 1) // 2
        u = self.uniform(2 * half)
        radius = torch.from_numpy(np.sqrt(-2.0 * np.log(u[:half])))
        angle = torch.from_numpy(u[half:]) * (2.0 * math.pi)
        return torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)]).numpy()[:n]

    def gaussian(self, shape: tuple[int, ...] | torch.Size, std: float, dtype: torch.dtype = torch.float32
                 ) -> torch.Tensor:
        """N(0, std^2) noise of ``shape``, each value the mean-preserving sum of four draws / 2."""
        n = math.prod(shape)
        if std == 0 or n == 0:
            return torch.zeros(tuple(shape), dtype=dtype)
        total = self.standard_normal(4 * n).reshape(4, n).sum(axis=0)
        return torch.from_numpy(total * (std / 2.0)).to(dtype).reshape(tuple(shape))


class SecretRandomness:
    """One DP round's secret randomness: noise, Poisson sampling and data subsampling streams."""

    def __init__(self, entropy: bytes) -> None:
        if len(entropy) < 32:
            raise ValueError("secret randomness needs at least 32 bytes of entropy")
        self.noise = CSPRNGGaussian(entropy[:32])
        seeds = [int(x) for x in np.frombuffer(self.noise._stream.update(bytes(24)), dtype=np.uint64)]
        self.numpy = np.random.default_rng(seeds[0] << 64 | seeds[1])  # subsampling and negatives
        self.torch = torch.Generator().manual_seed(seeds[2] >> 1)  # Opacus's Poisson sampler

    @classmethod
    def fresh(cls) -> SecretRandomness:
        """256 bits of OS entropy, held in memory only (the only constructor production code uses)."""
        return cls(os.urandom(32))

    def gaussian(self, shape: tuple[int, ...] | torch.Size, std: float, dtype: torch.dtype = torch.float32
                 ) -> torch.Tensor:
        """DP noise (see :class:`CSPRNGGaussian`)."""
        return self.noise.gaussian(shape, std, dtype)
