"""The fleet as data: hosts, services, the commands each host allows, databases and AWS parts.

One schema serves production (`inventory/production.toml`) and the lab (written by `dwops lab
up`): code never hard-codes a hostname, port or command. `load_inventory` turns every problem in
a file into one `InventoryError` naming the file, the entry and what is wrong.

Commands are templates: `bin/restart-webs {delay}`, each placeholder a bare `{name}` standing as
its own shell word (`template_problems`). Only commands named here ever reach a remote
shell, and every value filled into a template is validated and `shlex.quote`d first.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import string
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from dwops.allowlist import BadAllowlist, pattern, render

HOST_NAME = r"^[a-z][a-z0-9-]{0,62}$"
COMMAND_NAME = r"^[a-z][a-z0-9_]{0,62}$"

INVENTORY_DIR = Path(__file__).resolve().parent.parent / "inventory"


class InventoryError(ValueError):
    """An inventory file that cannot be used, with the file, entry and problem named."""

    def __init__(self, path: str | Path, problems: list[tuple[str, str]]):
        self.path = str(path)
        self.problems = problems
        lines = [f"{self.path}: {entry or '(top level)'}: {problem}" for entry, problem in problems]
        super().__init__("bad inventory\n  " + "\n  ".join(lines))


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(Strict):
    """Where a secret lives. Only the reference is data; the value is read when needed.

    Exactly one of: `block` (a Prefect Secret block's name), `file` (a path readable only by the
    operator), `env` (an environment variable of the worker).
    """

    block: str | None = None
    file: str | None = None
    env: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "SecretRef":
        given = [k for k in ("block", "file", "env") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("a secret reference takes exactly one of block, file or env")
        return self

    def describe(self) -> str:
        if self.block:
            return f"Prefect Secret block {self.block!r}"
        if self.file:
            return f"file {self.file}"
        return f"environment variable {self.env}"


class SshDefaults(Strict):
    user: str = "root"
    port: int = Field(22, ge=1, le=65535)
    known_hosts: str = Field(description="known_hosts file: host keys are always verified")
    client_key: SecretRef = Field(description="the private key dwops logs in with")
    connect_timeout: float = Field(10.0, gt=0, le=120)
    command_timeout: float = Field(600.0, gt=0, le=7200)
    kex_algorithms: list[str] = Field(
        default_factory=lambda: ["curve25519-sha256", "curve25519-sha256@libssh.org"],
        description="preferred key exchange (OpenSSH's default sntrup761 costs twice the CPU)",
    )


CommandTemplate = Annotated[str, Field(min_length=1, max_length=500)]


class Host(Strict):
    address: str = Field(min_length=1, description="DNS name or IP address to reach the host at")
    roles: list[str] = Field(default_factory=list)
    ssh_user: str | None = None
    ssh_port: int | None = Field(None, ge=1, le=65535)
    commands: dict[str, CommandTemplate] = Field(
        default_factory=dict, description="name -> command template this host allows"
    )


class Service(Strict):
    """A daemon that runs on some hosts, with its port and the commands that manage it."""

    hosts: list[str] = Field(min_length=1)
    port: int | None = Field(None, ge=1, le=65535)
    commands: dict[str, CommandTemplate] = Field(default_factory=dict)
    health_path: str | None = None
    kind: str | None = Field(None, description="implementation, e.g. gearman 'perl' or 'c'")


class Database(Strict):
    address: str
    port: int = Field(3306, ge=1, le=65535)
    user: str
    password: SecretRef
    schwartz_db: str = "dw_schwartz"
    ssl_ca: str | None = Field(
        None, min_length=1,
        description="a PEM CA bundle (RDS: AWS's global bundle): the connection then requires "
                    "TLS and verifies the server's certificate and name against it")
    connect_timeout: float = Field(5.0, gt=0, le=60)
    read_timeout: float = Field(10.0, gt=0, le=300)


class Alb(Strict):
    load_balancer: str
    target_group: str = Field(description="target group name, resolved to its ARN at run time")
    target_type: Literal["ip", "instance"] = "ip"
    targets: dict[str, str] = Field(
        description="web host -> its target id in the group (address for 'ip', instance id)"
    )
    target_port: int = Field(80, ge=1, le=65535)


class Aws(Strict):
    region: str = Field(pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")
    endpoint_url: str | None = Field(
        None, description="only for a stand-in (the lab's moto server); production leaves it unset"
    )
    credentials: SecretRef | None = Field(
        None, description="an AWS credentials ini file; production uses the instance role"
    )
    aurora_cluster: str
    ses_region: str | None = None
    ses_identity: str
    cloudfront_distribution_id: str | None = None
    cloudfront_alias: str | None = Field(
        None, description="find the distribution by this alias when its id is not given"
    )
    waf_ip_set: str
    waf_ip_set_id: str | None = None
    waf_scope: Literal["REGIONAL", "CLOUDFRONT"] = "REGIONAL"
    alb: Alb


def _network(text: str) -> str:
    try:
        ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        raise ValueError(f"{text!r} is not a network (CIDR): {e}") from None
    return text


NeverBlockName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,62}$")]
Networks = Annotated[list[Annotated[str, AfterValidator(_network)]],
                     Field(min_length=1, max_length=100, description="CIDRs")]


class Inventory(Strict):
    name: str
    description: str = ""
    ssh: SshDefaults
    never_block: dict[NeverBlockName, Networks] = Field(
        default_factory=dict,
        description="name -> networks (CIDRs) block-address never blocks, whatever its "
                    "parameters: a block that covers or overlaps one is refused (production: "
                    "the admin and office networks)")
    commands: dict[str, CommandTemplate] = Field(
        default_factory=dict, description="read-only commands every host allows"
    )
    hosts: dict[str, Host]
    services: dict[str, Service]
    database: Database
    aws: Aws

    @model_validator(mode="after")
    def _cross_references(self) -> "Inventory":
        problems: list[tuple[str, str]] = []
        for name in self.hosts:
            if not re.match(HOST_NAME, name):
                problems.append((f"hosts.{name}", f"not a valid host name ({HOST_NAME})"))
        for sname, service in self.services.items():
            for h in service.hosts:
                if h not in self.hosts:
                    problems.append((f"services.{sname}.hosts", f"unknown host {h!r}"))
            for cname, template in service.commands.items():
                problems += _template_problems(f"services.{sname}.commands.{cname}", cname, template)
        for cname, template in self.commands.items():
            problems += _template_problems(f"commands.{cname}", cname, template)
        for hname, host in self.hosts.items():
            for cname, template in host.commands.items():
                problems += _template_problems(f"hosts.{hname}.commands.{cname}", cname, template)
        for h in self.aws.alb.targets:
            if h not in self.hosts:
                problems.append(("aws.alb.targets", f"unknown host {h!r}"))
        if problems:
            raise CrossReferenceProblems(problems)
        return self

    # -- questions the flows ask ---------------------------------------------------------------
    def hosts_for(self, service: str) -> list[str]:
        """The hosts a service runs on, in inventory order."""
        return list(self.service(service).hosts)

    def service(self, name: str) -> Service:
        try:
            return self.services[name]
        except KeyError:
            raise KeyError(f"inventory {self.name!r} has no service {name!r}") from None

    def host(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            raise KeyError(f"inventory {self.name!r} has no host {name!r}") from None

    def never_block_networks(self) -> list[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network]]:
        """(entry, network) for every network of `never_block`, in inventory order."""
        return [(entry, ipaddress.ip_network(cidr)) for entry, cidrs in self.never_block.items()
                for cidr in cidrs]

    def hosts_with_role(self, role: str) -> list[str]:
        return [n for n, h in self.hosts.items() if role in h.roles]

    def allowed_commands(self, host: str) -> dict[str, str]:
        """Every command `host` allows: the fleet's, its own, and `SERVICE.NAME` for each service it runs."""
        allowed = {**self.commands, **self.host(host).commands}
        for sname, service in self.services.items():
            if host in service.hosts:
                allowed.update({f"{sname}.{c}": t for c, t in service.commands.items()})
        return allowed

    def allowlist(self, host: str) -> str:
        """The allowlist file of `host`'s SSH gate (dwops/allowlist.py): every command the host
        allows (`allowed_commands`) and nothing else. Raises allowlist.BadAllowlist for a template
        the gate could not check exactly."""
        self.host(host)
        return render(self.allowed_commands(host), header=(
            f"dwops allowlist of {host} (inventory {self.name!r}): the only commands dwops's SSH key "
            f"may run there.\n"
            f"Written by `dwops inventory allowlist {host}`; enforced by dwops/allowlist.py, the "
            f"forced command of\n"
            f"dwops's key in authorized_keys. One command a line: NAME TEMPLATE; in a template, "
            f"{{name}} is one\n"
            f"shell-quoted word (shlex.quote), everything else must match as it is."))

    def command(self, host: str, name: str, **values: str | int | float) -> str:
        """The shell command for `name` on `host`, with `values` quoted into its template.

        Raises KeyError for a command the host does not allow and ValueError for missing or
        unexpected values: nothing outside the inventory ever reaches a shell.
        """
        allowed = self.allowed_commands(host)
        if name not in allowed:
            raise KeyError(
                f"{host} allows no command {name!r} (allowed: {', '.join(sorted(allowed)) or 'none'})"
            )
        template = allowed[name]
        wanted = _placeholders(template)
        if set(values) != wanted:
            raise ValueError(
                f"command {name!r} on {host} takes {sorted(wanted) or 'no values'}, got {sorted(values)}"
            )
        return template.format(**{k: shlex.quote(str(v)) for k, v in values.items()})

    def ssh_target(self, host: str) -> tuple[str, int, str]:
        """(address, port, user) to reach `host` over SSH."""
        h = self.host(host)
        return h.address, h.ssh_port or self.ssh.port, h.ssh_user or self.ssh.user


def _placeholders(template: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}


def _template_problems(entry: str, name: str, template: str) -> list[tuple[str, str]]:
    problems = []
    if not re.match(COMMAND_NAME, name):
        problems.append((entry, "command names are lower_snake_case"))
    problems += [(entry, p) for p in template_problems(template)]
    if not problems:
        try:
            pattern(template)  # what the hosts' SSH gate must be able to check exactly
        except BadAllowlist as e:
            problems.append((entry, str(e)))
    return problems


PLACEHOLDER_NAME = re.compile(r"[a-z_][a-z0-9_]*")
WORD_BREAKS = ("", " ", "\t", "\n")  # what may stand right before and after a placeholder


def template_problems(template: str) -> list[str]:
    """What makes a command template unsafe or unusable (an empty list when it is fine).

    A value is filled in `shlex.quote`d, which keeps it one word only where the shell reads the
    quoted value as a word of its own. So the one placeholder form is a bare `{name}` standing
    as its own shell word: outside any quotes, with white space or the template's ends on both
    sides. Refused: `{x!r}` and `{x:>5}` (str.format would change the quoted text), `{x[0]}`,
    `{x.y}`, `{0}`, `{}`; `"{x}"`, `'{x}'` and `"a {x} b"` (inside quotes the quoting is literal
    text: `'{x}'` leaves the value unquoted); `--opt={x}`, `\\{x}`, `$({x})` (glued to other
    text). `{{` and `}}` are literal braces anywhere."""
    problems: list[str] = []
    quote = ""  # the quote the shell is inside at this point: "", "'" or '"'
    i = 0
    while i < len(template):
        c = template[i]
        if template.startswith(("{{", "}}"), i):
            i += 2
            continue
        if c == "{":
            end = template.find("}", i)
            if end < 0:
                return problems + [f"bad template {template!r}: unmatched '{{' (write '{{{{' "
                                   f"for a literal brace)"]
            shown = template[i:end + 1]
            if not PLACEHOLDER_NAME.fullmatch(template[i + 1:end]):
                problems.append(f"placeholder {shown} must be a plain name: a bare {{name}}, "
                                f"with no conversion, format spec, index or attribute")
            elif quote:
                problems.append(f"placeholder {shown} is inside {quote} quotes: a quoted "
                                f"placeholder would defeat the shell quoting of its value "
                                f"(write it bare, as its own word)")
            elif template[i - 1:i] not in WORD_BREAKS or template[end + 1:end + 2] not in WORD_BREAKS:
                problems.append(f"placeholder {shown} must stand as its own shell word (white "
                                f"space or the template's ends on both sides)")
            i = end + 1
            continue
        if c == "}":
            problems.append(f"bad template {template!r}: unmatched '}}' (write '}}}}' for a "
                            f"literal brace)")
        elif c == "\\" and quote != "'" and template[i + 1:i + 2] not in ("{", "}"):
            i += 1  # the next character is escaped (braces are str.format's, read first)
        elif c in "'\"" and quote in ("", c):
            quote = "" if quote else c
        i += 1
    if quote:
        problems.append(f"bad template {template!r}: unterminated {quote} quote")
    return problems


def load_inventory(path: str | Path) -> Inventory:
    """Read and validate an inventory TOML file, or raise InventoryError naming every problem.

    Only a regular file of at most MAX_INVENTORY_BYTES is read: the path can come from a run's
    parameters, and `/dev/zero` or a FIFO must be refused, not read until memory runs out."""
    path = Path(path)
    try:
        if not path.is_file():
            why = "not a regular file" if path.exists() else "file not found"
            raise InventoryError(path, [("", why)])
        with path.open("rb") as f:
            raw = f.read(MAX_INVENTORY_BYTES + 1)
    except OSError as e:
        raise InventoryError(path, [("", f"cannot read: {e.strerror}")]) from None
    if len(raw) > MAX_INVENTORY_BYTES:
        raise InventoryError(path, [("", f"larger than {MAX_INVENTORY_BYTES} bytes")])
    try:
        data = tomllib.loads(raw.decode())
    except UnicodeDecodeError:
        raise InventoryError(path, [("", "not UTF-8 text")]) from None
    except tomllib.TOMLDecodeError as e:
        raise InventoryError(path, [("", f"not valid TOML: {e}")]) from None
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise InventoryError(path, [("", TOO_DEEP)]) from None
    try:
        return Inventory.model_validate(data)
    except ValidationError as e:
        raise InventoryError(path, [p for err in e.errors() for p in _describe(err)]) from None
    except RecursionError:
        raise InventoryError(path, [("", TOO_DEEP)]) from None


TOO_DEEP = "arrays or tables nested too deeply to read (an inventory needs a few levels)"


MAX_INVENTORY_BYTES = 1_000_000


class CrossReferenceProblems(ValueError):
    """Problems found across an inventory's entries, each as (entry, problem)."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{entry}: {problem}" for entry, problem in problems))


def _describe(err: dict) -> list[tuple[str, str]]:
    entry = ".".join(str(p) for p in err["loc"])
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, CrossReferenceProblems):
        return list(cause.problems)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key (a typo?)"
    return [(entry, msg)]


# Set by `dwops run` (an operator running a flow on their own machine): inventory paths allowed.
PATHS_ALLOWED = "DWOPS_INVENTORY_PATHS"


def resolve_inventory(name_or_path: str) -> Inventory:
    """`lab` (the running lab's inventory), `production`, or a path to a TOML file.

    A path is taken only from `dwops run` on the operator's own machine, or when it is the
    worker's own `DWOPS_INVENTORY`: a run triggered through the API must not make a worker read
    whatever file its caller names."""
    if name_or_path == "lab":
        from lab.config import state_dir

        path = state_dir() / "lab" / "inventory.toml"
        if not path.exists():
            raise InventoryError(path, [("", "the lab is not up: run `dwops lab up` first")])
        return load_inventory(path)
    if name_or_path == "production":
        return load_inventory(INVENTORY_DIR / "production.toml")
    if os.environ.get(PATHS_ALLOWED) != "allow" and name_or_path != os.environ.get("DWOPS_INVENTORY"):
        raise InventoryError(name_or_path, [("", "not an inventory name (lab or production); a "
                                                 "path is taken only by `dwops run` on your own "
                                                 "machine or as the worker's DWOPS_INVENTORY")])
    return load_inventory(name_or_path)
