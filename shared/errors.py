"""Errors fedrec reports to users.

Every error that can be caused by user input derives from :class:`FedrecError`.
The CLI prints its message (no traceback) and exits with status 2.
"""

from __future__ import annotations


class FedrecError(Exception):
    """A user-facing error with a clear message."""


class DataError(FedrecError):
    """Bad input data: names the source file, the 1-based line and the field."""

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.source = source
        self.line = line
        self.field = field
        self.detail = message
        where = []
        if source is not None:
            where.append(str(source))
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field '{field}'")
        prefix = ": ".join([", ".join(where)]) + ": " if where else ""
        super().__init__(f"{prefix}{message}")


class ConfigError(FedrecError):
    """A bad configuration value: names the key."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"config '{key}': {message}")


class KeyFileError(FedrecError):
    """A missing, malformed or badly protected key file."""
