"""The files each lab host carries: SSH keys and sshd config, init scripts, admin tools.

Every script is a thin shell wrapper around `lab.ctl`, so a host's tools behave like the real
ones while acting only on the lab's processes.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from dwops.inventory import Inventory
from lab.config import LabConfig

SCRIPT = """#!/bin/sh
# {what}
exec {py} -m lab.ctl --config {conf} {args}
"""

LAB_SHELL = """#!/bin/sh
# A login on a lab host: commands run in the host's own root folder, with its bin/ first on PATH.
#   lab-shell HOST            the lab's oracle key: any command, or an interactive shell
#   lab-shell HOST ALLOWLIST  dwops's key: only the commands ALLOWLIST names, through dwops's
#                             SSH gate (dwops/allowlist.py), as on production's hosts
host="$1"
root="{hosts}/$host"
cd "$root" || exit 1
export HOME="$root" DWOPS_LAB_HOST="$host" PYTHONPATH="{project}" \\
    PATH="$root/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
if [ -n "$2" ]; then
    {gate}
fi
if [ -n "$SSH_ORIGINAL_COMMAND" ]; then
    exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"
fi
exec /bin/bash --noprofile --norc -i
"""

SSHD_CONFIG = """# sshd for lab host {host}: its own address and host key; key logins only.
ListenAddress {address}:{port}
HostKey {hostkey}
PidFile none
# Who may log in and what each key runs: dwops's key only its allowlist (a forced command).
AuthorizedKeysFile {authorized_keys}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# The lab's state folder may sit under a group-writable parent; the key file is root's alone.
StrictModes no
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
AllowTcpForwarding no
AllowAgentForwarding no
PermitTunnel no
PermitUserEnvironment no
# Many concurrent connections from fleet-wide fan-out must not be dropped.
MaxStartups 500:30:1000
MaxSessions 200
LogLevel VERBOSE
"""

AUTHORIZED_KEYS = """# Who may log in to lab host {host}, and what each key may run (written by `dwops lab up`).
# dwops's key: only the commands of this host's allowlist, checked by dwops's SSH gate.
restrict,command="{gated}" {client_key}
# The lab's oracle key (tests and lab tools that check a host's state): any command or a shell.
command="{open}" {oracle_key}
"""


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.chmod(tmp, mode)
        tmp.replace(path)  # sshd reads authorized_keys at every login: never half a file
    os.chmod(path, mode)


def _script(cfg: LabConfig, path: Path, what: str, args: str) -> None:
    _write(path, SCRIPT.format(what=what, py=cfg.python, conf=cfg.config_path, args=args), 0o755)


def _keygen(path: Path, comment: str) -> None:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                       check=True)
    os.chmod(path, 0o600)


def ssh_paths(cfg: LabConfig) -> dict[str, Path]:
    return {
        "client_key": cfg.lab_dir / "secrets" / "id_ed25519",  # dwops's: gated on every host
        "oracle_key": cfg.lab_dir / "secrets" / "oracle_ed25519",  # the lab's own checks: open
        "known_hosts": cfg.lab_dir / "ssh" / "known_hosts",
        "lab_shell": cfg.lab_dir / "bin" / "lab-shell",
        "gate": Path(cfg.project_dir) / "dwops" / "allowlist.py",
    }


# The hosts' own python3 runs the gate, as on production (not the project's environment, which
# may live under /root: the scaled lab's Dropbear servers see their own folder there).
HOST_PYTHON = "/usr/bin/python3"


def gate_command(cfg: LabConfig, allowlist: str, log: str) -> str:
    """A shell line that runs dwops's SSH gate on a lab host with ALLOWLIST and its log file (shell
    words), as production's forced command does (README, "Deploying for real")."""
    return f"exec {HOST_PYTHON} -IS {ssh_paths(cfg)['gate']} --log {log} {allowlist}"


def gate_paths(cfg: LabConfig, host: str) -> dict[str, Path]:
    """A host's authorized_keys, its allowlist and the gate's log, where production keeps them
    (relative to the host's root folder: /root/.ssh, /etc/dwops, /var/log)."""
    root = cfg.host_root(host)
    return {"authorized_keys": root / ".ssh" / "authorized_keys",
            "allowlist": root / "etc" / "dwops" / "allowlist",
            "log": root / "var" / "log" / "dwops-allowlist.log"}


def write_ssh(cfg: LabConfig) -> None:
    """Client and oracle keys, one host key and sshd_config per host, and known_hosts."""
    paths = ssh_paths(cfg)
    (cfg.lab_dir / "secrets").mkdir(parents=True, exist_ok=True)
    os.chmod(cfg.lab_dir / "secrets", 0o700)
    _keygen(paths["client_key"], "dwops-lab")
    _keygen(paths["oracle_key"], "dwops-lab-oracle")
    gate = gate_command(cfg, '"$2"', '"$root/var/log/dwops-allowlist.log"')
    _write(paths["lab_shell"], LAB_SHELL.format(hosts=cfg.lab_dir / "hosts", project=cfg.project_dir,
                                                gate=gate), 0o755)
    known = []
    for h in cfg.hosts:
        etc = cfg.host_root(h.name) / "etc" / "ssh"
        hostkey = etc / "ssh_host_ed25519_key"
        _keygen(hostkey, f"root@{h.name}")
        _write(etc / "sshd_config", SSHD_CONFIG.format(
            host=h.name, address=h.address, port=cfg.ports.ssh, hostkey=hostkey,
            authorized_keys=gate_paths(cfg, h.name)["authorized_keys"]))
        kind, key = Path(f"{hostkey}.pub").read_text().split()[:2]
        where = h.address if cfg.ports.ssh == 22 else f"[{h.address}]:{cfg.ports.ssh}"
        known.append(f"{where} {kind} {key}\n")
    _write(paths["known_hosts"], "".join(known))
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation folder


def write_gates(cfg: LabConfig, inventory: Inventory) -> None:
    """Each host's allowlist (from the inventory: the commands it allows, nothing else) and its
    authorized_keys: dwops's key restricted to that allowlist, the oracle key open. sshd reads
    both at every login, so a running lab applies them at once."""
    paths = ssh_paths(cfg)
    for h in cfg.hosts:
        gate = gate_paths(cfg, h.name)
        _write(gate["allowlist"], inventory.allowlist(h.name))
        gate["log"].parent.mkdir(parents=True, exist_ok=True)
        _write(gate["authorized_keys"], AUTHORIZED_KEYS.format(
            host=h.name,
            gated=_option(f"{paths['lab_shell']} {h.name} {gate['allowlist']}"),
            client_key=Path(f"{paths['client_key']}.pub").read_text().strip(),
            open=_option(f"{paths['lab_shell']} {h.name}"),
            oracle_key=Path(f"{paths['oracle_key']}.pub").read_text().strip()), 0o600)
        os.chmod(gate["authorized_keys"].parent, 0o700)


def _option(command: str) -> str:
    """`command` as the value of an authorized_keys command="..." option."""
    return command.replace('"', '\\"')


def write_host_tools(cfg: LabConfig) -> None:
    """Each host's bin/ and etc/init.d/, as the production notes name them."""
    for h in cfg.hosts:
        root = cfg.host_root(h.name)
        for sub in ("bin", "etc/init.d", "var/run", "var/log"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        # Every host's `ps` shows only its own processes, as on a separate machine.
        _script(cfg, root / "bin" / "ps", f"ps on {h.name}: the real ps, limited to this host",
                f'ps {h.name} -- "$@"')
        _write(root / "bin" / "hostname", f"#!/bin/sh\necho {h.name}\n", 0o755)
        init = root / "etc" / "init.d"
        if "web" in h.roles:
            _script(cfg, init / "apache2", "apache2 init script", f'"$1" apache2 {h.name} --no-wait')
            _script(cfg, root / "bin" / "bounce-apache", "restart this web server (dw-ops)",
                    f"restart apache2 {h.name} --no-wait")
        if "jobs" in h.roles:
            _script(cfg, init / "gearman-server", "Gearman::Server (Perl gearmand) init script",
                    f'"$1" gearman {h.name}')
            _write(init / "ddlockd", DDLOCKD_INIT.format(py=cfg.python, conf=cfg.config_path,
                                                         host=h.name), 0o755)
            _script(cfg, init / "dw-workers", "worker-manager init script",
                    f'"$1" dw-workers {h.name}')
            from lab.workers import write_workers_conf

            write_workers_conf(cfg, h.name, force=True)
        if "memcache" in h.roles:
            _script(cfg, init / "memcached", "memcached init script", f'"$1" memcached {h.name}')
        if "mail" in h.roles:
            _script(cfg, init / "postfix", "Postfix init script", f'"$1" postfix {h.name}')
            from lab import mail

            _write(root / "bin" / "postqueue", mail.postqueue_wrapper(cfg), 0o755)
            _write(root / "bin" / "mailq", "#!/bin/sh\nexec postqueue -p\n", 0o755)
    admin = cfg.host_root("dfw-admin01") / "bin"
    _script(cfg, admin / "restart-jobs", "restart the job workers on every jobs host", "restart-jobs")
    _script(cfg, admin / "importer-status", "ps lines of every content-importer", "importer-status")
    _script(cfg, admin / "restart-memcache", "restart every memcached node", "restart-memcache")
    _script(cfg, admin / "restart-ddlockd", "start ddlockd where it is down (never restarts)",
            "restart-ddlockd")
    _script(cfg, cfg.host_root("va-admin01") / "bin" / "restart-webs",
            "restart the webs one by one, DELAY (default 5) seconds apart; 0 = all at once",
            'restart-webs "$@"')


DDLOCKD_INIT = """#!/bin/sh
# ddlockd init script. A lock daemon is only ever started: a restart would drop every lock.
case "$1" in
    start|status|stop)
        exec {py} -m lab.ctl --config {conf} "$1" ddlockd {host} ;;
    *)
        echo "Usage: $0 {{start|status|stop}} (ddlockd is never restarted: it would drop every lock)" >&2
        exit 2 ;;
esac
"""
