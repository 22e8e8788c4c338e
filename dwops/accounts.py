"""Accounts of the dwops API: who may call the Prefect server behind the proxy, and as what.

Prefect's open-source server has no users or roles. dwops puts a reverse proxy in front of it
(nginx, `dwops/proxy.py`) that authenticates every request per account and asks `dwops/policy.py`
what the account's role allows. This module keeps the accounts:

- `htpasswd`: `NAME:HASH` lines, read by nginx on every request. The hashes are bcrypt, made by
  Apache's `htpasswd` tool (apache2-utils), never by dwops's own code. The secret goes to the
  tool on its standard input, never on a command line.
- `accounts.json`: each account's role and, for an integration, the deployments it may run.

Secrets are 32 random URL-safe bytes, made here and shown once as `NAME:SECRET`; only their hash
is kept. (Their strength, not the hash's cost, is what makes guessing them hopeless, so the
hashes use htpasswd's default bcrypt cost: nginx checks one on every request.)
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
DEPLOYMENT = re.compile(r"^[a-z][a-z0-9-]{0,63}$")


class Role(str, Enum):
    OPERATOR = "operator"  # people: the UI and the API, runs, approvals, history; no secrets
    INTEGRATION = "integration"  # other systems: runs of their deployments, and those runs only
    WORKER = "worker"  # the admin hosts' workers and deploys: what a worker needs, secrets too


class AccountError(ValueError):
    """A refused account operation (bad name, unknown account, ...): exit 2, nothing changed."""


@dataclass(frozen=True)
class Account:
    name: str
    role: Role
    deployments: tuple[str, ...] = field(default=())  # an integration's grants

    def describe(self) -> str:
        grants = f" ({', '.join(self.deployments)})" if self.deployments else ""
        return f"{self.name}: {self.role.value}{grants}"


def validate(name: str, role: Role, deployments: tuple[str, ...]) -> Account:
    """The account, or AccountError saying what is wrong with it."""
    if not NAME.match(name):
        raise AccountError(f"bad account name {name!r}: lowercase letters, digits and '-', "
                           f"starting with a letter, at most 32")
    bad = [d for d in deployments if not DEPLOYMENT.match(d)]
    if bad:
        raise AccountError(f"bad deployment name(s): {', '.join(map(repr, bad))}")
    if role is Role.INTEGRATION and not deployments:
        raise AccountError("an integration account needs --deployments: the deployments it may "
                           "run (e.g. restart-webs,fleet-status)")
    if role is not Role.INTEGRATION and deployments:
        raise AccountError(f"--deployments is for integration accounts; a {role.value} account "
                           f"is not limited to deployments")
    return Account(name, role, tuple(dict.fromkeys(deployments)))


class AccountStore:
    """The accounts in a folder (0700): `htpasswd` for nginx, `accounts.json` for the policy."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.htpasswd = self.folder / "htpasswd"
        self.roles = self.folder / "accounts.json"

    def load(self) -> dict[str, Account]:
        try:
            raw = json.loads(self.roles.read_text())
        except FileNotFoundError:
            return {}
        return {name: Account(name, Role(a["role"]), tuple(a.get("deployments", ())))
                for name, a in raw.items()}

    def add(self, name: str, role: Role, deployments: tuple[str, ...] = ()) -> str:
        """Create the account; return its `NAME:SECRET`, which is not kept anywhere."""
        account = validate(name, role, deployments)
        accounts = self.load()
        if name in accounts:
            raise AccountError(f"account {name!r} exists already ({accounts[name].describe()}); "
                               f"remove it first to give it a new secret")
        secret = secrets.token_urlsafe(32)
        self._write_hash(name, secret)
        accounts[name] = account
        self._save(accounts)
        return f"{name}:{secret}"

    def remove(self, name: str) -> Account:
        accounts = self.load()
        if name not in accounts:
            raise AccountError(f"no account {name!r}")
        gone = accounts.pop(name)
        self._save(accounts)  # the role first: a half-removed account can do nothing
        subprocess.run(["htpasswd", "-D", str(self.htpasswd), name], check=True,
                       capture_output=True, text=True)
        return gone

    def verify(self, credential: str) -> Account | None:
        """The account whose `NAME:SECRET` this is, checked against its hash by Apache's
        htpasswd (as nginx checks it), or None."""
        name, _, secret = credential.partition(":")
        account = self.load().get(name)
        if account is None or not secret or not self.htpasswd.exists():
            return None
        check = subprocess.run(["htpasswd", "-v", "-i", str(self.htpasswd), name], input=secret,
                               capture_output=True, text=True)
        return account if check.returncode == 0 else None

    def _write_hash(self, name: str, secret: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        create = [] if self.htpasswd.exists() else ["-c"]
        out = subprocess.run(["htpasswd", *create, "-i", "-B", str(self.htpasswd), name],
                             input=secret, capture_output=True, text=True)
        if out.returncode:
            raise AccountError(f"htpasswd failed: {out.stderr.strip()}")
        os.chmod(self.htpasswd, 0o600)

    def _save(self, accounts: dict[str, Account]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = {n: {k: v for k, v in asdict(a).items() if k != "name"}
                for n, a in sorted(accounts.items())}
        for a in data.values():
            a["role"] = a["role"].value
            a["deployments"] = list(a["deployments"])
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".accounts-")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, self.roles)  # atomic: the gateway never reads half a file
