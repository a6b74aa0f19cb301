"""The privacy ledger: signed, hash-chained records of every privacy spend.

One JSON object per line. A node appends one entry per round it trains:
who (node key id, public key), which run and round, the mechanism
(privacy unit, mechanism name, where the noise was added and this node's share of
its variance, noise multiplier, sample rate, steps, clip norm = the release's L2
sensitivity, delta, accountant), epsilon after the round, the budget, the hash of the node's
previous entry (``prev_hash``; the first entry of a run points to ``GENESIS``)
and an Ed25519 signature over everything else. Removing, reordering or editing
an entry breaks the chain or a signature; :func:`verify_chain` finds it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.atomic import append_line_durable, atomic_write_bytes
from shared.errors import FedrecError, KeyFileError

VERSION = 2
GENESIS = "0" * 64
FIELDS = ("version", "run_id", "round", "seq", "node_key_id", "public_key", "unit", "mechanism", "noise",
          "noise_share", "noise_multiplier", "sample_rate", "steps", "clip_norm", "delta", "accountant", "epsilon",
          "epsilon_budget", "prev_hash")


def canonical(obj: dict[str, Any]) -> bytes:
    """Deterministic JSON bytes (sorted keys, no spaces)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")


def entry_hash(entry: dict[str, Any]) -> str:
    """SHA-256 of the whole entry, signature included (what the next entry's prev_hash names)."""
    return hashlib.sha256(canonical(entry)).hexdigest()


class SigningKey:
    """A node's Ed25519 key (PKCS8 PEM, mode 0600)."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self.private = private
        raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public_b64 = base64.b64encode(raw).decode()
        self.key_id = key_id(raw)

    @classmethod
    def load_or_create(cls, path: str | Path) -> SigningKey:
        """Load the key at ``path``, creating it (0600) on first use; refuse a world-readable key."""
        path = Path(path)
        if not path.exists():
            private = Ed25519PrivateKey.generate()
            pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another process created it first
                return cls.load_or_create(path)
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
            return cls(private)
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise KeyFileError(f"{path}: permissions {mode:04o} are too open for a signing key (chmod 600 {path})")
        try:
            private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"{path}: not a PEM private key ({exc})") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise KeyFileError(f"{path}: not an Ed25519 key")
        return cls(private)

    def sign(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` plus its base64 signature."""
        return {**body, "signature": base64.b64encode(self.private.sign(canonical(body))).decode()}


def key_id(raw_public: bytes) -> str:
    """Short id of a public key: first 16 hex chars of its SHA-256."""
    return hashlib.sha256(raw_public).hexdigest()[:16]


def signature_ok(entry: dict[str, Any]) -> bool:
    """True if the entry's signature verifies under its own public key, and the key id matches."""
    try:
        raw = base64.b64decode(entry["public_key"], validate=True)
        signature = base64.b64decode(entry["signature"], validate=True)
        body = {k: v for k, v in entry.items() if k != "signature"}
        Ed25519PublicKey.from_public_bytes(raw).verify(signature, canonical(body))
    except (KeyError, ValueError, TypeError, InvalidSignature):
        return False
    return key_id(raw) == entry.get("node_key_id")


def verify_chain(entries: list[dict[str, Any]]) -> list[str]:
    """Problems in one node's entries of one run, in order (empty list: intact)."""
    problems = []
    prev = GENESIS
    for i, entry in enumerate(entries):
        where = f"entry seq {entry.get('seq', '?')} (round {entry.get('round', '?')})"
        missing = [f for f in (*FIELDS, "signature") if f not in entry]
        if missing:
            problems.append(f"{where}: missing fields {missing}")
            continue
        if not signature_ok(entry):
            problems.append(f"{where}: signature does not verify (edited or forged)")
        if entry["seq"] != i:
            problems.append(f"{where}: expected seq {i} (an entry was removed or reordered)")
        if entry["prev_hash"] != prev:
            problems.append(f"{where}: prev_hash does not match the previous entry (removed, reordered or edited)")
        prev = entry_hash(entry)
    return problems


class NodeLedger:
    """A node's own append-only ledger file (JSONL)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def entries(self, run_id: str | None = None) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        rows = read_jsonl(self.path)
        return [r for r in rows if run_id is None or r.get("run_id") == run_id]

    def append(self, key: SigningKey, body: dict[str, Any]) -> dict[str, Any]:
        """Chain, sign and durably append one entry of ``body['run_id']``; return it."""
        previous = self.entries(body["run_id"])
        full = {**body, "version": VERSION, "seq": len(previous), "node_key_id": key.key_id,
                "public_key": key.public_b64, "prev_hash": entry_hash(previous[-1]) if previous else GENESIS}
        entry = key.sign(full)
        append_line_durable(self.path, json.dumps(entry, sort_keys=True), mode=0o600)
        return entry


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Parse a JSONL ledger; errors name the file and line."""
    rows = []
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FedrecError(f"{path}: ledger not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FedrecError(f"{path}: unreadable ledger ({exc})") from None
    for no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FedrecError(f"{path}: line {no}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise FedrecError(f"{path}: line {no}: not a JSON object")
        rows.append(row)
    return rows


def write_jsonl(path: str | Path, entries: Iterable[dict[str, Any]]) -> None:
    """Atomically (re)write a ledger file."""
    data = "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries)
    atomic_write_bytes(path, data.encode("utf-8"))
