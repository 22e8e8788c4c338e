"""Read a secret from where the inventory says it lives. Values are never logged or returned in
errors: an error names only the reference (`Prefect Secret block 'dwops-ssh-key'`)."""

from __future__ import annotations

import os
from pathlib import Path

from dwops.inventory import SecretRef


class SecretUnavailable(RuntimeError):
    """A secret reference that does not resolve (missing block, file or variable)."""


def read_secret(ref: SecretRef) -> str:
    """The secret's value, stripped of surrounding white space."""
    if ref.file:
        try:
            return Path(ref.file).expanduser().read_text().strip()
        except OSError as e:
            raise SecretUnavailable(f"cannot read {ref.describe()}: {e.strerror}") from None
    if ref.env:
        value = os.environ.get(ref.env)
        if not value:
            raise SecretUnavailable(f"{ref.describe()} is not set")
        return value.strip()
    from prefect.blocks.system import Secret

    try:
        return str(Secret.load(ref.block).get()).strip()
    except Exception as e:  # noqa: BLE001 - any failure to load is reported by name only
        raise SecretUnavailable(f"cannot load {ref.describe()}: {type(e).__name__}") from None
