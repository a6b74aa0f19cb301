"""Secret key files for pseudonymization and the re-identification map.

A key file is one line ``fedrec-key-v1 <kind> <64 hex chars>`` (32 random bytes),
created with mode 0600 and refused on load if group/other can read it. Kinds:

- ``user``: HMAC key for user pseudonyms; secret to the data owner.
- ``item``: HMAC key for item pseudonyms; shared by every data owner of one
  federation so that the item catalog agrees.
- ``owner``: AES-256-GCM key that encrypts the re-identification map.
"""

from __future__ import annotations

import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from shared.atomic import atomic_write_text
from shared.errors import KeyFileError

KEY_KINDS = ("user", "item", "owner")
_MAGIC = "fedrec-key-v1"
KEY_BYTES = 32


@dataclass(frozen=True)
class KeySet:
    """The three keys of a data owner."""

    user: bytes
    item: bytes
    owner: bytes


def key_path(directory: str | Path, kind: str) -> Path:
    """Where key ``kind`` lives inside a key directory."""
    return Path(directory) / f"{kind}.key"


def generate_keys(
    directory: str | Path, *, overwrite: bool = False, item_key_from: str | Path | None = None
) -> KeySet:
    """Create ``user.key``, ``item.key`` and ``owner.key`` (0600) in ``directory``.

    ``item_key_from`` copies the federation's shared item key instead of making
    a new one. Refuses to overwrite existing keys unless ``overwrite``.
    """
    directory = Path(directory)
    targets = [key_path(directory, kind) for kind in KEY_KINDS]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not overwrite:
        raise KeyFileError(f"refusing to overwrite existing key file(s): {', '.join(existing)} (use --force)")
    values = {kind: secrets.token_bytes(KEY_BYTES) for kind in KEY_KINDS}
    if item_key_from is not None:  # load before creating anything: a bad shared key leaves nothing behind
        values["item"] = load_key(item_key_from, "item")
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    for kind, value in values.items():
        write_key(key_path(directory, kind), kind, value)
    return KeySet(**values)


def write_key(path: str | Path, kind: str, value: bytes) -> None:
    """Write one key file atomically with mode 0600."""
    if kind not in KEY_KINDS or len(value) != KEY_BYTES:
        raise ValueError(f"bad key kind {kind!r} or length {len(value)}")
    atomic_write_text(path, f"{_MAGIC} {kind} {value.hex()}\n", mode=0o600)


def load_key(path: str | Path, kind: str) -> bytes:
    """Read and check one key file; errors name the file and what is wrong."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: key file not found (create keys with `fedrec data keygen`)") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"{path}: not a regular file")
    if st.st_mode & 0o077:
        raise KeyFileError(
            f"{path}: permissions {stat.S_IMODE(st.st_mode):04o} are too open; "
            f"a key must be readable by its owner only (chmod 600 {path})"
        )
    try:
        text = path.read_text(encoding="ascii").strip()
    except (UnicodeDecodeError, OSError) as exc:
        raise KeyFileError(f"{path}: unreadable key file ({exc})") from None
    parts = text.split()
    if len(parts) != 3 or parts[0] != _MAGIC:
        raise KeyFileError(f"{path}: not a fedrec key file (expected '{_MAGIC} <kind> <hex>')")
    if parts[1] != kind:
        raise KeyFileError(f"{path}: this is a '{parts[1]}' key, expected a '{kind}' key")
    try:
        value = bytes.fromhex(parts[2])
    except ValueError:
        raise KeyFileError(f"{path}: key material is not hex") from None
    if len(value) != KEY_BYTES:
        raise KeyFileError(f"{path}: key must be {KEY_BYTES} bytes, found {len(value)}")
    return value


def load_keys(directory: str | Path) -> KeySet:
    """Load all three keys from a key directory."""
    return KeySet(**{kind: load_key(key_path(directory, kind), kind) for kind in KEY_KINDS})
