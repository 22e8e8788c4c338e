"""Bring the whole lab up, take it down, and say what is running: `dwops lab up|down|status`.

`up` is idempotent: what runs already is left alone, what is missing is created or started.
`down` stops every daemon in reverse order and then sweeps any process still running from the
lab's folder, so nothing is left behind.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from lab import hostfiles, procs, services
from lab.config import LabConfig, read_counters, state_dir

Say = Callable[[str], None]
DEFERRED_MAIL = 5


def _quiet(_: str) -> None:
    pass


# -- set-up ---------------------------------------------------------------------------------------

def load_or_create() -> LabConfig:
    path = state_dir() / "lab" / "lab.json"
    if path.exists():
        cfg = LabConfig.load(path)
        fresh = LabConfig.fresh()
        # The checkout or interpreter may have moved; everything else stays as it was seeded.
        cfg = cfg.model_copy(update={"python": fresh.python, "project_dir": fresh.project_dir})
    else:
        cfg = LabConfig.fresh()
    cfg.save()
    return cfg


def write_secrets(cfg: LabConfig) -> None:
    secrets_dir = cfg.lab_dir / "secrets"
    secrets_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(secrets_dir, 0o700)
    for name in ("db-password", "dwops-db-password"):
        path = secrets_dir / name
        if not path.exists():
            path.write_text(secrets.token_urlsafe(24) + "\n")
        os.chmod(path, 0o600)
    from lab import aws

    aws.write_credentials(cfg)


def check_loopback(cfg: LabConfig) -> None:
    """Every lab address must be bindable on this machine (Linux routes all of 127/8 to lo)."""
    for addr in [h.address for h in cfg.hosts] + [cfg.db.address, cfg.aws.address]:
        if not addr.startswith("127."):
            raise RuntimeError(f"lab address {addr} is not in 127.0.0.0/8")
        with socket.socket() as s:
            try:
                s.bind((addr, 0))
            except OSError as e:
                raise RuntimeError(f"cannot bind lab address {addr}: {e}") from None


def mariadb_client(cfg: LabConfig, sql: str, database: str | None = None) -> str:
    """Run SQL as the database's root over its private socket (secrets go on stdin, not argv)."""
    argv = ["mariadb", "--no-defaults", "-S", cfg.db.socket, "-u", "root", "--batch", "-N"]
    if database:
        argv.append(database)
    out = subprocess.run(argv, input=sql, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"mariadb: {out.stderr.strip()}")
    return out.stdout


def init_mariadb(cfg: LabConfig, say: Say) -> None:
    data = services.mariadb_dir(cfg) / "data"
    if (data / "mysql").exists():
        return
    say("initialising the Aurora stand-in's data folder")
    data.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=root",
                    "--skip-test-db", "--auth-root-authentication-method=socket"],
                   check=True, capture_output=True)


def bootstrap_databases(cfg: LabConfig, say: Say) -> None:
    """Databases, users and schemas: TheSchwartz's, the site's and the lab's own records."""
    sql_dir = Path(__file__).parent / "sql"
    pw = cfg.db.password()
    dwops_pw = (cfg.lab_dir / "secrets" / "dwops-db-password").read_text().strip()
    db = cfg.db
    mariadb_client(cfg, f"""
        CREATE DATABASE IF NOT EXISTS {db.schwartz_db};
        CREATE DATABASE IF NOT EXISTS {db.site_db};
        CREATE DATABASE IF NOT EXISTS {db.lab_db};
        CREATE USER IF NOT EXISTS '{db.user}'@'%' IDENTIFIED BY '{pw}';
        ALTER USER '{db.user}'@'%' IDENTIFIED BY '{pw}';
        GRANT ALL ON {db.schwartz_db}.* TO '{db.user}'@'%';
        GRANT ALL ON {db.site_db}.* TO '{db.user}'@'%';
        GRANT ALL ON {db.lab_db}.* TO '{db.user}'@'%';
        GRANT PROCESS ON *.* TO '{db.user}'@'%';
        CREATE USER IF NOT EXISTS 'dwops'@'%' IDENTIFIED BY '{dwops_pw}';
        ALTER USER 'dwops'@'%' IDENTIFIED BY '{dwops_pw}';
        GRANT SELECT ON {db.schwartz_db}.* TO 'dwops'@'%';
        GRANT PROCESS ON *.* TO 'dwops'@'%';
    """)
    for database, filename, probe in [(db.schwartz_db, "schwartz.sql", "job"),
                                      (db.lab_db, "lab.sql", "import_run"),
                                      (db.site_db, "site.sql", "user")]:
        have = mariadb_client(cfg, f"SELECT COUNT(*) FROM information_schema.tables "
                                   f"WHERE table_schema='{database}' AND table_name='{probe}'")
        if have.strip() == "0":
            say(f"creating {database} from lab/sql/{filename}")
            mariadb_client(cfg, (sql_dir / filename).read_text(), database)


def write_inventory(cfg: LabConfig) -> Path:
    """The lab's inventory: production's schema, the lab's addresses, keys and commands."""
    from lab import aws as aws_mod

    ssh = hostfiles.ssh_paths(cfg)
    p = cfg.ports
    lines = [
        "# The lab's inventory, written by `dwops lab up`. Same schema as production.toml.",
        'name = "lab"',
        'description = "the dwops lab: the production fleet replicated on loopback addresses"',
        "",
        "[ssh]",
        'user = "root"',
        f"port = {p.ssh}",
        f'known_hosts = "{ssh["known_hosts"]}"',
        f'client_key = {{ file = "{ssh["client_key"]}" }}',
        "connect_timeout = 5.0",
        "command_timeout = 300.0",
        "",
        "[commands]",
        'hostname = "hostname"',
        'uptime = "uptime"',
        "",
        "# block-address never blocks these (production: the admin and office networks)",
        "[never_block]",
        *[f'{h.name} = ["{h.address}/32"]' for h in cfg.hosts_with("admin")],
        "",
    ]
    host_commands = {
        "va-admin01": {"restart_webs": "bin/restart-webs {delay}"},
        "dfw-admin01": {"restart_jobs": "bin/restart-jobs", "importer_status": "bin/importer-status",
                        "restart_memcache": "bin/restart-memcache",
                        "restart_ddlockd": "bin/restart-ddlockd"},
    }
    for h in cfg.hosts:
        lines += [f"[hosts.{h.name}]", f'address = "{h.address}"', f"roles = {json.dumps(h.roles)}"]
        for cname, command in host_commands.get(h.name, {}).items():
            lines.append(f'commands.{cname} = "{command}"')
        lines.append("")

    def service(name: str, role: str, port: int | None, commands: dict[str, str], **extra) -> None:
        lines.append(f"[services.{name}]")
        lines.append(f"hosts = {json.dumps([h.name for h in cfg.hosts_with(role)])}")
        if port:
            lines.append(f"port = {port}")
        for k, v in extra.items():
            lines.append(f"{k} = {json.dumps(v)}")
        for cname, command in commands.items():
            lines.append(f'commands.{cname} = "{command}"')
        lines.append("")

    service("web", "web", p.web, {"restart": "bin/bounce-apache",
                                  "status": "etc/init.d/apache2 status"},
            health_path="/admin/healthy")
    service("gearman", "jobs", p.gearman, {a: f"etc/init.d/gearman-server {a}"
                                           for a in ("start", "stop", "restart", "status")},
            kind="perl")
    service("ddlockd", "jobs", p.ddlockd, {a: f"etc/init.d/ddlockd {a}" for a in ("start", "status")})
    service("workers", "jobs", None, {"ps": "ps -ww -eo pid,tty,stat,bsdtime,args",
                                      "status": "etc/init.d/dw-workers status",
                                      "freeze_importers": "etc/init.d/dw-workers freeze-importers",
                                      "thaw_importers": "etc/init.d/dw-workers thaw-importers"})
    service("memcached", "memcache", p.memcached, {a: f"etc/init.d/memcached {a}"
                                                   for a in ("restart", "status")})
    service("mail", "mail", p.smtp, {"queue": "postqueue -j", "queue_summary": "postqueue -p"})
    a = cfg.aws
    targets = ", ".join(f'{h.name} = "{h.address}"' for h in cfg.hosts_with("web"))
    lines += [
        "[database]",
        f'address = "{cfg.db.address}"',
        f"port = {p.mysql}",
        'user = "dwops"',
        f'password = {{ file = "{cfg.lab_dir / "secrets" / "dwops-db-password"}" }}',
        f'schwartz_db = "{cfg.db.schwartz_db}"',
        "",
        "[aws]",
        f'region = "{a.region}"',
        f'endpoint_url = "{cfg.aws_endpoint_url}"',
        f'credentials = {{ file = "{a.credentials_file}" }}',
        f'aurora_cluster = "{a.aurora_cluster}"',
        f'ses_identity = "{a.ses_identity}"',
        f'cloudfront_distribution_id = "{a.cloudfront_distribution_id}"',
        f'waf_ip_set = "{a.waf_ip_set}"',
        f'waf_ip_set_id = "{a.waf_ip_set_id}"',
        f'waf_scope = "{aws_mod.WAF_SCOPE}"',
        "",
        "[aws.alb]",
        f'load_balancer = "{a.load_balancer}"',
        f'target_group = "{a.target_group}"',
        'target_type = "ip"',
        f"target_port = {p.web}",
        f"targets = {{ {targets} }}",
        "",
    ]
    path = cfg.lab_dir / "inventory.toml"
    path.write_text("\n".join(lines))
    from dwops.inventory import load_inventory

    load_inventory(path)  # the lab's inventory must pass the same loader as production's
    return path


# -- up / down / status ----------------------------------------------------------------------------

def up(say: Say = _quiet) -> LabConfig:
    cfg = load_or_create()
    check_loopback(cfg)
    write_secrets(cfg)
    hostfiles.write_ssh(cfg)
    from lab import mail

    mail.write_config(cfg)
    hostfiles.write_host_tools(cfg)
    init_mariadb(cfg, say)
    by_name = {}
    for d in services.daemons(cfg):
        by_name.setdefault(d.name, []).append(d)
    # The database and AWS first: everything else reads them.
    _start(cfg, by_name.pop("mariadb"), say)
    bootstrap_databases(cfg, say)
    _start(cfg, by_name.pop("moto"), say)
    from lab import aws

    cfg = aws.seed(cfg)
    cfg.save()
    from dwops.inventory import load_inventory

    hostfiles.write_gates(cfg, load_inventory(write_inventory(cfg)))
    _stop_stale_sshds(cfg, say)  # started again below, with their new config
    (cfg.lab_dir / "ssh" / "authorized_keys").unlink(missing_ok=True)  # the old, shared one
    for group in by_name.values():
        _start(cfg, group, say)
    if not mail.is_running(cfg):
        say("starting postfix on dfw-mail01")
        mail.start(cfg)
    # Some deferred mail, as production's queue has: topped up to five, never grown by a re-run.
    queued = sum(1 for line in mail.postqueue(cfg, "-j").splitlines() if line.strip())
    if queued < DEFERRED_MAIL:
        mail.seed_deferred(cfg, n=DEFERRED_MAIL - queued)
    return cfg


def _stop_stale_sshds(cfg: LabConfig, say: Say) -> None:
    """Stop each running sshd whose sshd_config changed after it started (its pidfile's time):
    sshd reads its config only when it starts."""
    for d in services.daemons(cfg):
        config = cfg.host_root(d.host) / "etc" / "ssh" / "sshd_config"
        if (d.name == "sshd" and procs.read_pid(d.pidfile)
                and config.stat().st_mtime > d.pidfile.stat().st_mtime):
            say(f"restarting {d.key}: its sshd_config changed")
            procs.stop(d.pidfile, grace=d.stop_grace)


def _start(cfg: LabConfig, group: list[services.Daemon], say: Say) -> None:
    started = []
    for d in group:
        if procs.read_pid(d.pidfile):
            continue
        say(f"starting {d.key}")
        env = dict(os.environ, **d.env)
        procs.start(d.argv, d.pidfile, d.logfile, cwd=d.cwd, env=env)
        started.append(d)
    for d in started:
        if d.port and not procs.wait_port(d.address, d.port, d.start_timeout + 10):
            raise RuntimeError(f"{d.key} is not answering on {d.address}:{d.port}; see {d.logfile}")


def down(say: Say = _quiet) -> list[str]:
    """Stop everything the lab runs; return what was stopped. Leaves the data in place."""
    path = state_dir() / "lab" / "lab.json"
    stopped: list[str] = []
    if path.exists():
        cfg = LabConfig.load(path)
        for d in reversed(services.daemons(cfg)):
            pid = procs.read_pid(d.pidfile)
            if pid:
                say(f"stopping {d.key} (pid {pid})")
                procs.stop(d.pidfile, grace=d.stop_grace)
                stopped.append(d.key)
        from lab import mail

        if mail.is_running(cfg):
            say("stopping postfix@dfw-mail01")
            mail.stop(cfg)
            stopped.append("postfix@dfw-mail01")
    # Anything else started from the lab's folder (an orphaned worker, a session's child).
    lab_dir = str(state_dir() / "lab")
    for pid in procs.processes_under(lab_dir):
        say(f"sweeping stray process {pid}")
        try:
            os.kill(pid, 9)
            stopped.append(f"stray pid {pid}")
        except ProcessLookupError:
            pass
    return stopped


def status() -> dict:
    """The lab's ground truth: hosts, services with pids and up/down, paths, counters."""
    cfg = LabConfig.load()
    ssh = hostfiles.ssh_paths(cfg)
    p = cfg.ports
    svc = []
    for d in services.daemons(cfg):
        pid = procs.read_pid(d.pidfile)
        answering = _answers(d.address, d.port) if d.port else None
        svc.append({"name": d.name, "host": d.key.split("@", 1)[1],
                    "address": d.address, "port": d.port, "pid": pid,
                    "up": bool(pid) and answering is not False})
    from lab import mail

    mpid = mail.is_running(cfg)
    mail_host = cfg.hosts_with("mail")[0]
    svc.append({"name": "postfix", "host": mail_host.name, "address": mail_host.address,
                "port": p.smtp, "pid": mpid, "up": bool(mpid) and _answers(mail_host.address, p.smtp)})
    counters = {name: read_counters(cfg, name) for name in _counter_names(cfg)}
    return {
        "lab_dir": str(cfg.lab_dir),
        "hosts": [{"name": h.name, "address": h.address, "ssh_port": p.ssh, "roles": h.roles}
                  for h in cfg.hosts],
        "services": svc,
        "all_up": all(s["up"] for s in svc),
        "inventory": str(cfg.lab_dir / "inventory.toml"),
        "known_hosts": str(ssh["known_hosts"]),
        "client_key": str(ssh["client_key"]),
        "oracle_key": str(ssh["oracle_key"]),
        "aws_endpoint": cfg.aws_endpoint_url,
        "aws_region": cfg.aws.region,
        "aws": {k: v for k, v in cfg.aws.model_dump().items() if k != "credentials_file"},
        "database": {
            "dsn": f"mysql://{cfg.db.user}@{cfg.db.address}:{p.mysql}/{cfg.db.schwartz_db}",
            "address": cfg.db.address, "port": p.mysql, "user": cfg.db.user,
            "password_file": cfg.db.password_file, "socket": cfg.db.socket,
            "databases": [cfg.db.schwartz_db, cfg.db.site_db, cfg.db.lab_db],
        },
        "counters": counters,
    }


def _counter_names(cfg: LabConfig) -> list[str]:
    if not cfg.counters_dir.exists():
        return []
    return sorted(p.stem for p in cfg.counters_dir.glob("*.json"))


def _answers(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1.0):
            return True
    except OSError:
        return False


def wipe(say: Say = _quiet) -> None:
    """Stop the lab and delete its state (data, keys, logs)."""
    down(say)
    lab_dir = state_dir() / "lab"
    if lab_dir.exists():
        say(f"removing {lab_dir}")
        shutil.rmtree(lab_dir)


def wait_until_up(timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = status()
        if st["all_up"] or time.monotonic() > deadline:
            return st
        time.sleep(0.5)
