"""Secrets in the site file: literal, ``env:NAME`` or ``file:PATH``.

A site engineer keeps passwords and tokens out of the TOML that gets copied
around: ``token = "env:CENTRAL_TOKEN"`` reads the environment,
``password = "file:/etc/gateway/mqtt.pass"`` reads a file (relative paths are
relative to the site file; a file other users may read is refused). The value
is held as a pydantic ``SecretStr``, which prints as ``**********`` in logs,
errors, reprs and API output.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import SecretStr

SECRET_KEYS = frozenset({"password", "token", "signing_secret", "secret"})
"""Config keys whose values are never echoed in an error message."""


def resolve_secret(reference: str, base_dir: Path) -> SecretStr:
    """Turn a secret reference into its value; ValueError names what is missing."""
    if reference.startswith("env:"):
        name = reference[4:]
        value = os.environ.get(name)
        if not value:
            raise ValueError(f"environment variable {name} is not set or empty")
        return SecretStr(value)
    if reference.startswith("file:"):
        path = Path(reference[5:])
        if not path.is_absolute():
            path = base_dir / path
        _check_private(path)
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"cannot read secret file {path}: {exc.strerror}") from exc
        except UnicodeDecodeError:
            raise ValueError(f"secret file {path} is not UTF-8 text") from None
        if not value:
            raise ValueError(f"secret file {path} is empty")
        return SecretStr(value)
    return SecretStr(reference)


def _check_private(path: Path) -> None:
    """A secret file others can read is a leaked secret: refuse it, as ssh does a key.

    Allowed: owner read/write, and group read (``0640``, for a root-owned file the
    service reads through its group); nothing for other users, no group write.
    """
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        return  # reading it reports why
    if mode & 0o027:
        raise ValueError(
            f"secret file {path} is open to other users (mode {mode:04o}): "
            f"chmod 600 {path} (or 640 with the gateway's group)"
        )
