"""The lab's shape: which production host lives at which loopback address, and where its files are.

Everything the lab's processes need to find each other is in one JSON file, `lab.json`, written by
`dwops lab up` and read by every lab process (`--config PATH`). Addresses are all in 127.0.0.0/8;
each production host keeps its production ports on its own address.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, Field

PROJECT_DIR = Path(__file__).resolve().parent.parent


def state_dir() -> Path:
    """The project's state folder (`DWOPS_STATE_DIR`, default `<project>/.state`)."""
    return Path(os.environ.get("DWOPS_STATE_DIR") or PROJECT_DIR / ".state").resolve()


class LabHost(BaseModel):
    name: str
    address: str
    roles: list[str]


# The fleet of the production notes, one loopback address each. va-* hosts are in 127.10/16,
# dfw-* hosts in 127.20/16, managed services (Aurora, AWS) in 127.30/16.
HOSTS: list[LabHost] = [
    LabHost(name="va-admin01", address="127.10.0.10", roles=["admin"]),
    *[
        LabHost(name=f"va-web0{i}", address=f"127.10.0.{10 + i}", roles=["web"])
        for i in range(1, 7)
    ],
    LabHost(name="dfw-admin01", address="127.20.0.10", roles=["admin"]),
    LabHost(name="dfw-jobs01", address="127.20.0.21", roles=["jobs"]),
    LabHost(name="dfw-jobs02", address="127.20.0.22", roles=["jobs"]),
    LabHost(name="dfw-memc01", address="127.20.0.31", roles=["memcache"]),
    LabHost(name="dfw-memc02", address="127.20.0.32", roles=["memcache"]),
    LabHost(name="dfw-mail01", address="127.20.0.41", roles=["mail"]),
]


class Ports(BaseModel):
    ssh: int = int(os.environ.get("DWOPS_LAB_SSH_PORT", "22"))
    web: int = 80
    gearman: int = 7003
    ddlockd: int = 7002
    memcached: int = 11211
    mysql: int = 3306
    moto: int = 5000
    smtp: int = 25


class Database(BaseModel):
    """The Aurora stand-in (MariaDB)."""

    address: str = "127.30.0.10"
    user: str = "dw"
    password_file: str
    socket: str
    schwartz_db: str = "dw_schwartz"
    site_db: str = "dw_global"
    lab_db: str = "dw_lab"

    def password(self) -> str:
        return Path(self.password_file).read_text().strip()


class Aws(BaseModel):
    """The AWS stand-in (a moto server) and the ids of what the lab seeded in it."""

    address: str = "127.30.0.20"
    region: str = "us-east-1"
    credentials_file: str
    aurora_cluster: str = "dw-global"
    aurora_writer: str = "dw-global-1"
    aurora_reader: str = "dw-global-2"
    ses_identity: str = "dreamwidth.org"
    waf_ip_set: str = "dw-blocked-ips"
    load_balancer: str = "dw-web"
    target_group: str = "dw-web"
    # Filled in by seeding (ARNs and generated ids).
    target_group_arn: str = ""
    load_balancer_arn: str = ""
    cloudfront_distribution_id: str = ""
    waf_ip_set_id: str = ""

    def endpoint_url(self, ports: Ports) -> str:
        return f"http://{self.address}:{ports.moto}"


class Workload(BaseModel):
    """The lab's bounded load: it never targets anything but the lab's own loopback addresses."""

    traffic_rate: float = Field(20.0, description="user requests per second, all webs together")
    traffic_max_seconds: int = Field(12 * 3600, description="the generator stops by itself after this")
    target_refresh_seconds: float = Field(0.25, description="how often the 'ALB' re-reads its targets")
    job_rate: float = Field(0.5, description="TheSchwartz jobs enqueued per second")
    import_rate: float = Field(0.05, description="imports started per second")
    import_seconds_min: float = 5.0
    import_seconds_max: float = 40.0
    web_start_seconds: float = Field(1.5, description="how long a web takes to answer after a start")
    importers_per_host: int = 3


class LabConfig(BaseModel):
    state_dir: str
    project_dir: str
    python: str
    hosts: list[LabHost] = HOSTS
    ports: Ports = Ports()
    db: Database
    aws: Aws
    workload: Workload = Workload()
    # An address where nothing listens: the smarthost that makes the lab's outgoing mail defer.
    dead_relay: str = "127.20.0.99"

    # -- paths ---------------------------------------------------------------------------------
    @property
    def lab_dir(self) -> Path:
        return Path(self.state_dir) / "lab"

    def host_root(self, host: str) -> Path:
        """The host's own root folder: SSH commands run here, with its bin/ and etc/init.d/."""
        return self.lab_dir / "hosts" / host

    def fault_switch(self, host: str, name: str) -> Path:
        """A fault switch of the host: while the file `faults/NAME` exists in its root folder, the
        lab misbehaves on purpose (`restart-fails`: lab.ctl; `unhealthy`: lab.web)."""
        return self.host_root(host) / "faults" / name

    def host(self, name: str) -> LabHost:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(f"no lab host {name!r}")

    def hosts_with(self, role: str) -> list[LabHost]:
        return [h for h in self.hosts if role in h.roles]

    @property
    def counters_dir(self) -> Path:
        return self.lab_dir / "counters"

    @property
    def config_path(self) -> Path:
        return self.lab_dir / "lab.json"

    @property
    def aws_endpoint_url(self) -> str:
        return self.aws.endpoint_url(self.ports)

    def save(self) -> None:
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(self.model_dump_json(indent=2))
        tmp.replace(self.config_path)

    @classmethod
    def load(cls, path: str | Path | None = None) -> "LabConfig":
        path = Path(path) if path else state_dir() / "lab" / "lab.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: the lab is not set up (run `dwops lab up`)")
        return cls.model_validate(json.loads(path.read_text()))

    @classmethod
    def fresh(cls) -> "LabConfig":
        """The lab's configuration for this checkout, before anything is written."""
        import sys

        root = state_dir()
        lab = root / "lab"
        return cls(
            state_dir=str(root),
            project_dir=str(PROJECT_DIR),
            python=sys.executable,
            db=Database(
                password_file=str(lab / "secrets" / "db-password"),
                socket=str(lab / "mariadb" / "mysqld.sock"),
            ),
            aws=Aws(credentials_file=str(lab / "secrets" / "aws-credentials")),
        )


def write_counters(cfg: LabConfig, name: str, data: dict) -> None:
    """Atomically replace counters/<name>.json (read by `dwops lab status`)."""
    cfg.counters_dir.mkdir(parents=True, exist_ok=True)
    path = cfg.counters_dir / f"{name}.json"
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)


def read_counters(cfg: LabConfig, name: str) -> dict:
    path = cfg.counters_dir / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
