"""The encrypted re-identification map (pseudonym -> raw id), owner key only.

File format: ``b"FEDREC-REID-1\\n" || nonce (12 bytes) || AES-256-GCM(ciphertext+tag)``
over a JSON document ``{"users": {pseudonym: raw}, "items": {pseudonym: raw}}``.
The dataset's catalog hash is bound as associated data, so a map cannot be
swapped onto another dataset. A wrong key fails the GCM tag check.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.atomic import atomic_write_bytes
from shared.errors import FedrecError

_MAGIC = b"FEDREC-REID-1\n"
_NONCE = 12


@dataclass(frozen=True)
class ReidentificationMap:
    """Pseudonym -> raw id for users and items."""

    users: dict[str, str]
    items: dict[str, str]

    def save(self, path: str | Path, owner_key: bytes, *, bound_to: str) -> None:
        """Encrypt with ``owner_key`` and write atomically (0600)."""
        payload = json.dumps({"users": self.users, "items": self.items}, sort_keys=True).encode("utf-8")
        nonce = os.urandom(_NONCE)
        sealed = AESGCM(owner_key).encrypt(nonce, payload, _MAGIC + bound_to.encode("ascii"))
        atomic_write_bytes(path, _MAGIC + nonce + sealed, mode=0o600)

    @classmethod
    def load(cls, path: str | Path, owner_key: bytes, *, bound_to: str) -> ReidentificationMap:
        """Decrypt; a wrong key, a tampered file or another dataset's map is a clean error."""
        path = Path(path)
        try:
            blob = path.read_bytes()
        except OSError as exc:
            raise FedrecError(f"{path}: cannot read re-identification map ({exc.strerror})") from None
        if not blob.startswith(_MAGIC) or len(blob) < len(_MAGIC) + _NONCE + 16:
            raise FedrecError(f"{path}: not a fedrec re-identification map")
        nonce = blob[len(_MAGIC) : len(_MAGIC) + _NONCE]
        try:
            payload = AESGCM(owner_key).decrypt(
                nonce, blob[len(_MAGIC) + _NONCE :], _MAGIC + bound_to.encode("ascii")
            )
        except InvalidTag:
            raise FedrecError(
                f"{path}: cannot decrypt the re-identification map: wrong owner key, "
                "a map of another dataset, or a modified file"
            ) from None
        data = json.loads(payload)
        return cls(users=data["users"], items=data["items"])
