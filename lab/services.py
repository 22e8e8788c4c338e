"""Every daemon of the lab: which host it belongs to, how it starts, where its pid and log go.

The registry is pure data computed from the lab's config. `lab.ctl` (called by the hosts'
init scripts) and `dwops lab up|down|status` both act through it, so a service started over SSH
and one started by `lab up` are the same process in the same place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lab.config import LabConfig

# Pseudo-hosts for what production buys as managed services or what only the lab has.
AURORA = "aurora"
AWS = "aws"
WORKLOAD = "workload"


@dataclass(frozen=True)
class Daemon:
    name: str  # e.g. "gearman"
    host: str  # production host name, or a pseudo-host above
    argv: list[str]
    pidfile: Path
    logfile: Path
    address: str | None = None  # where it listens, if it does
    port: int | None = None
    cwd: Path | None = None
    start_timeout: float = 20.0
    stop_grace: float = 15.0
    env: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.name}@{self.host}"


def run_dir(cfg: LabConfig, host: str) -> Path:
    return cfg.host_root(host) / "var" / "run"


def log_dir(cfg: LabConfig, host: str) -> Path:
    return cfg.host_root(host) / "var" / "log"


def mariadb_dir(cfg: LabConfig) -> Path:
    return cfg.lab_dir / "mariadb"


def daemons(cfg: LabConfig) -> list[Daemon]:
    """Every lab daemon, in start order (stop in reverse)."""
    py = cfg.python
    conf = str(cfg.config_path)
    p = cfg.ports
    out: list[Daemon] = []

    def d(name: str, host: str, argv: list[str], *, address: str | None = None,
          port: int | None = None, pidfile: Path | None = None, **kw) -> None:
        out.append(Daemon(
            name=name, host=host, argv=argv,
            pidfile=pidfile or run_dir(cfg, host) / f"{name}.pid",
            logfile=log_dir(cfg, host) / f"{name}.log",
            address=address, port=port, cwd=cfg.host_root(host), **kw,
        ))

    mdir = mariadb_dir(cfg)
    d("mariadb", AURORA, [
        "/usr/sbin/mariadbd", "--no-defaults", "--user=root",
        f"--datadir={mdir / 'data'}", f"--bind-address={cfg.db.address}", f"--port={p.mysql}",
        f"--socket={cfg.db.socket}", f"--pid-file={mdir / 'mysqld.pid'}",
        "--innodb-log-file-size=8M", "--innodb-buffer-pool-size=128M", "--skip-name-resolve",
        "--max-connections=500", "--performance-schema=OFF",
    ], address=cfg.db.address, port=p.mysql, pidfile=mdir / "mysqld.pid", stop_grace=30)
    d("moto", AWS, [str(Path(py).parent / "moto_server"), "-H", cfg.aws.address, "-p", str(p.moto)],
      address=cfg.aws.address, port=p.moto)
    for h in cfg.hosts_with("memcache"):
        d("memcached", h.name, ["/usr/bin/memcached", "-l", h.address, "-p", str(p.memcached),
                                "-u", "root", "-m", "64", "-c", "1024"],
          address=h.address, port=p.memcached)
    for h in cfg.hosts_with("jobs"):
        # The real Perl gearmand, kept from opening its stray all-interfaces listener.
        d("gearman", h.name, ["/usr/bin/perl", "-I", str(Path(__file__).parent / "perl"),
                              "-MDwopsLabLoopback", "/usr/bin/gearmand",
                              "--listen", h.address, "--port", str(p.gearman)],
          address=h.address, port=p.gearman)
        d("ddlockd", h.name, [py, "-m", "lab.ddlockd", "--listen", h.address, "--port", str(p.ddlockd)],
          address=h.address, port=p.ddlockd)
    for h in cfg.hosts:
        d("sshd", h.name, ["/usr/sbin/sshd", "-D", "-e", "-f",
                           str(cfg.host_root(h.name) / "etc" / "ssh" / "sshd_config")],
          address=h.address, port=p.ssh)
    for h in cfg.hosts_with("web"):
        d("apache2", h.name, [py, "-m", "lab.web", "--host", h.name, "--config", conf],
          address=h.address, port=p.web, stop_grace=10)
    gearman_servers = ",".join(f"{h.address}:{p.gearman}" for h in cfg.hosts_with("jobs"))
    for h in cfg.hosts_with("jobs"):
        d("dw-workers", h.name, [py, "-m", "lab.workers", "manager", "--host", h.name, "--config", conf],
          stop_grace=20)
        d("gearman-worker", h.name, [py, "-m", "lab.gearman_worker", "--servers", gearman_servers,
                                     "--function", "dw_userpic_resize",
                                     "--title", "gearman-worker [userpic-resize]"])
    d("metrics", AWS, [py, "-m", "lab.aws", "metrics", "--config", conf])
    d("jobs-feed", WORKLOAD, [py, "-m", "lab.jobs", "feed", "--config", conf])
    d("traffic", WORKLOAD, [py, "-m", "lab.traffic", "--config", conf])
    return out


def find(cfg: LabConfig, name: str, host: str) -> Daemon:
    for daemon in daemons(cfg):
        if daemon.name == name and daemon.host == host:
            return daemon
    raise KeyError(f"the lab runs no {name} on {host}")
