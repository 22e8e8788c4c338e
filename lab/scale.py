"""The scaled lab: hundreds of extra SSH hosts on loopback, for fan-out benchmarks (issue #7).

`dwops lab scale up --hosts 200` starts N lightweight SSH servers, each a real Dropbear sshd on its
own loopback address (127.40.0.0/16, unused by the lab) with its own ed25519 host key, accepting
the lab's client key only (no passwords, no forwarding). Each also has its own RSA host key, not
listed anywhere: Dropbear 2022.83 with an ed25519 key alone still offers RSA signatures and
aborts the handshake of a client that prefers them (asyncssh does when it knows no key for the
host), so without it an unknown host would be a dropped connection instead of a refused key.
It writes:

- `known_hosts`: the lab's 13 host keys and every scaled host's ed25519 key;
- `inventory.toml`: the lab's inventory plus the scaled hosts (role `scale`), in the same schema,
  so `dwops status --inventory PATH` and `SshPool` work on all of them; every scaled host allows
  the fleet's read-only commands (`hostname`, `uptime`).

Why Dropbear and not OpenSSH's sshd: measured here, a Dropbear listener holds 2.7 MiB RSS (1.0
MiB PSS) against sshd's 9.1 MiB (1.5 MiB PSS), and a login costs about a third of one to sshd
(which re-executes itself and loads its config and keys for every connection): 200 of them start
in a second or two and serve a fan-out without the server side swamping the 2 cores.

Dropbear reads `~/.ssh/authorized_keys` of the user logging in (root) and has no option to point
it elsewhere. The servers therefore run in a private mount namespace (`unshare --mount
--propagation private`) where the scaled lab's own home folder is bind-mounted on /root: the
machine's /root is never touched, and the mount disappears with the servers. Every login runs
`scale-shell` (the forced command of both keys in that authorized_keys): for dwops's key, dwops's
SSH gate with the scaled hosts' allowlist (`hostname`, `uptime`); for the oracle key, any command
in a plain shell; `hostname` answers with the host's name.

One supervisor process (`python -m lab.scale serve ROOT`, in its own session) starts the servers
as its children and, on SIGTERM, stops and reaps them; `down` signals it, waits, and then kills by
pid anything of its process group still alive. Nothing listens outside 127.0.0.0/8.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

NET = "127.40"            # 127.40.0.0/16: no lab host, service or test uses it
MAX_HOSTS = 250 * 200     # 127.40.1.1 .. 127.40.200.250

SCALE_SHELL = """#!/bin/sh
# A login on a scaled lab host, the forced command of both keys in authorized_keys:
#   scale-shell ALLOWLIST  dwops's key: only the commands ALLOWLIST names, through dwops's SSH gate
#   scale-shell            the lab's oracle key: any command
# The host's name, for `hostname`, follows from the address the client reached (see host_address).
allowlist="$1"
set -- $SSH_CONNECTION
IFS=.
set -- $3
unset IFS
export DWOPS_LAB_HOST="$(printf 'scale-%03d' $(( ($3 - 1) * 250 + $4 )))" HOME="{home}" \\
    PATH="{bin}:/usr/local/bin:/usr/bin:/bin"
cd "{home}" || exit 1
if [ -n "$allowlist" ]; then
    {gate}
fi
if [ -n "$SSH_ORIGINAL_COMMAND" ]; then
    exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"
fi
echo "no interactive logins on a scaled lab host" >&2
exit 1
"""

AUTHORIZED_KEYS = """# Who may log in to the scaled lab's hosts, and what each key may run (lab.scale).
restrict,command="{shell} {allowlist}" {client_key}
restrict,command="{shell}" {oracle_key}
"""


def default_root() -> Path:
    from lab.config import state_dir

    return state_dir() / "lab" / "scale"


def host_name(i: int) -> str:
    return f"scale-{i + 1:03d}"


def host_address(i: int, net: str = NET) -> str:
    return f"{net}.{1 + i // 250}.{1 + i % 250}"


# -- files ----------------------------------------------------------------------------------------

def _keygen(key: Path, kind: str = "ed25519") -> str:
    """A Dropbear host key (kept across runs); its public half as `TYPE BASE64`."""
    if not key.exists():
        tmp = key.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        size = ["-s", "2048"] if kind == "rsa" else []
        subprocess.run(["dropbearkey", "-t", kind, *size, "-f", str(tmp)], check=True,
                       capture_output=True)
        tmp.replace(key)
    os.chmod(key, 0o600)
    out = subprocess.run(["dropbearkey", "-y", "-f", str(key)], check=True, capture_output=True,
                         text=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("ssh-"))
    return " ".join(line.split()[:2])


def _write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    tmp.replace(path)


def prepare(count: int, root: Path | None = None, net: str = NET) -> dict:
    """Keys, known_hosts, authorized_keys, the login shell and the inventory for `count` hosts.

    Returns the spec the supervisor reads (also written as ROOT/spec.json)."""
    from dwops.inventory import load_inventory
    from lab import hostfiles
    from lab.config import LabConfig

    if not 1 <= count <= MAX_HOSTS:
        raise ValueError(f"--hosts must be between 1 and {MAX_HOSTS}")
    if not net.startswith("127."):
        raise ValueError(f"scaled hosts must be on loopback, not {net}")
    root = Path(root or default_root())
    cfg = LabConfig.load()
    lab_ssh = hostfiles.ssh_paths(cfg)
    home = root / "home"
    (home / ".ssh").mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    os.chmod(home, 0o700)
    os.chmod(home / ".ssh", 0o700)
    _write(root / "bin" / "hostname", '#!/bin/sh\necho "$DWOPS_LAB_HOST"\n', 0o755)
    shell = root / "bin" / "scale-shell"
    gate = hostfiles.gate_command(cfg, '"$allowlist"', str(root / "allowlist.log"))
    _write(shell, SCALE_SHELL.format(home=home, bin=root / "bin", gate=gate), 0o755)
    (root / "keys").mkdir(exist_ok=True)
    (root / "run").mkdir(exist_ok=True)
    port = cfg.ports.ssh
    hosts = [{"name": host_name(i), "address": host_address(i, net), "port": port,
              "key": str(root / "keys" / f"{host_name(i)}.ed25519"),
              "rsa_key": str(root / "keys" / f"{host_name(i)}.rsa"),
              "pidfile": str(root / "run" / f"{host_name(i)}.pid")} for i in range(count)]
    with ThreadPoolExecutor(4) as pool:
        pubs = list(pool.map(lambda h: _keygen(Path(h["key"])), hosts))
        list(pool.map(lambda h: _keygen(Path(h["rsa_key"]), "rsa"), hosts))
    known = [Path(lab_ssh["known_hosts"]).read_text().rstrip("\n")]
    for h, pub in zip(hosts, pubs):
        where = h["address"] if port == 22 else f"[{h['address']}]:{port}"
        known.append(f"{where} {pub}")
    _write(root / "known_hosts", "\n".join(known) + "\n", 0o644)
    spec = {"root": str(root), "home": str(home), "shell": str(shell), "hosts": hosts,
            "log": str(root / "dropbear.log")}
    _write(root / "spec.json", json.dumps(spec, indent=1), 0o644)
    write_gate(root, load_inventory(write_inventory(cfg, root, hosts)), hosts, {
        "client_key": Path(f"{lab_ssh['client_key']}.pub").read_text().strip(),
        "oracle_key": Path(f"{lab_ssh['oracle_key']}.pub").read_text().strip()})
    return spec


def write_gate(root: Path, inventory, hosts: list[dict], keys: dict[str, str]) -> None:
    """The scaled hosts' allowlist and authorized_keys: dwops's key gated by that allowlist, the
    lab's oracle key open. They share one authorized_keys, so one allowlist (the first host's),
    which holds every scaled host's commands: they run no service, only the fleet's reads."""
    if len({tuple(inventory.allowed_commands(h["name"]).items()) for h in hosts}) != 1:
        raise RuntimeError("the scaled hosts allow different commands; they share one allowlist")
    allowlist = root / "allowlist"
    _write(allowlist, inventory.allowlist(hosts[0]["name"]), 0o644)
    _write(root / "home" / ".ssh" / "authorized_keys", AUTHORIZED_KEYS.format(
        shell=root / "bin" / "scale-shell", allowlist=allowlist, **keys), 0o600)


def write_inventory(cfg, root: Path, hosts: list[dict]) -> Path:
    """The lab's inventory plus the scaled hosts (role `scale`), with the scaled known_hosts."""
    import tomllib

    from dwops.inventory import load_inventory

    data = tomllib.loads((cfg.lab_dir / "inventory.toml").read_text())
    data["name"] = "lab-scale"
    data["description"] = f"the dwops lab plus {len(hosts)} scaled SSH hosts (dwops lab scale)"
    data["ssh"]["known_hosts"] = str(root / "known_hosts")
    data["ssh"]["connect_timeout"] = 10.0
    for h in hosts:
        data["hosts"][h["name"]] = {"address": h["address"], "roles": ["scale"]}
    path = root / "inventory.toml"
    _write(path, to_toml(data), 0o644)
    load_inventory(path)  # the same loader as every other inventory
    return path


def to_toml(data: dict) -> str:
    """A TOML document from nested dicts (each written as its own table) of strings, numbers,
    booleans and lists of those."""
    lines: list[str] = []

    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"cannot write {type(v).__name__} as TOML")

    def table(prefix: str, d: dict) -> None:
        plain = {k: v for k, v in d.items() if not isinstance(v, dict)}
        nested = {k: v for k, v in d.items() if k not in plain}
        if prefix:
            lines.append(f"[{prefix}]")
        lines.extend(f"{json.dumps(k)} = {value(v)}" for k, v in plain.items())
        lines.append("")
        for k, v in nested.items():
            table(f"{prefix}.{json.dumps(k)}" if prefix else json.dumps(k), v)

    table("", data)
    return "\n".join(lines)


# -- the supervisor -------------------------------------------------------------------------------

def serve(root: Path) -> int:
    """Run inside the private mount namespace: start every server, stop and reap them on TERM."""
    spec = json.loads((root / "spec.json").read_text())
    subprocess.run(["mount", "--bind", spec["home"], "/root"], check=True)
    stopping = False

    def on_signal(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    children: list[subprocess.Popen] = []
    with open(spec["log"], "ab") as log, open(os.devnull, "rb") as null:
        for h in spec["hosts"]:
            if stopping:
                break
            children.append(subprocess.Popen(
                ["dropbear", "-F", "-E", "-s", "-j", "-k", "-m", "-T", "3",
                 "-p", f"{h['address']}:{h['port']}", "-r", h["key"], "-r", h["rsa_key"],
                 "-P", h["pidfile"]],
                stdin=null, stdout=log, stderr=log, close_fds=True))
    _write(root / "pids.json", json.dumps([c.pid for c in children]), 0o644)
    while not stopping:
        time.sleep(0.2)
        if all(c.poll() is not None for c in children):
            break
    for c in children:
        if c.poll() is None:
            c.terminate()
    deadline = time.monotonic() + 5
    for c in children:
        try:
            c.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            c.kill()
            c.wait()
    return 0


# -- up / down / status ---------------------------------------------------------------------------

def _supervisor_pidfile(root: Path) -> Path:
    return root / "supervisor.pid"


def listening(addresses: set[tuple[str, int]] | None = None, net: str | None = None
              ) -> set[tuple[str, int]]:
    """TCP listeners on this machine (from /proc/net/tcp), as (address, port); only those in
    `addresses`, or whose address starts with `net`, when given."""
    found = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            hexaddr, hexport = fields[1].split(":")
            addr = ".".join(str(int(hexaddr[i:i + 2], 16)) for i in (6, 4, 2, 0))
            found.add((addr, int(hexport, 16)))
    if addresses is not None:
        found &= addresses
    if net is not None:
        found = {a for a in found if a[0].startswith(net + ".")}
    return found


def up(count: int, root: Path | None = None, net: str = NET, timeout: float = 60.0) -> Path:
    """Start `count` scaled hosts (stopping any already running under `root` first) and wait
    until every one listens. Returns the inventory's path."""
    from lab import procs
    from lab.config import PROJECT_DIR

    root = Path(root or default_root())
    down(root)
    spec = prepare(count, root, net)
    pidfile = _supervisor_pidfile(root)
    (root / "pids.json").unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(PROJECT_DIR))
    procs.start(["unshare", "--mount", "--propagation", "private", "--",
                 sys.executable, "-m", "lab.scale", "serve", str(root)],
                pidfile, root / "supervisor.log", cwd=PROJECT_DIR, env=env)
    wanted = {(h["address"], h["port"]) for h in spec["hosts"]}
    deadline = time.monotonic() + timeout
    try:
        while True:
            missing = wanted - listening(wanted)
            if not missing:
                return root / "inventory.toml"
            if not procs.read_pid(pidfile):
                raise RuntimeError(f"the scaled lab's supervisor exited; see {root}/supervisor.log "
                                   f"and {spec['log']}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(missing)} of {count} scaled hosts not listening after "
                                   f"{timeout:g} s, e.g. {sorted(missing)[:3]}; see {spec['log']}")
            time.sleep(0.1)
    except BaseException:
        down(root)
        raise


def pids(root: Path | None = None) -> list[int]:
    """The supervisor's and the servers' pids that are alive."""
    from lab import procs

    root = Path(root or default_root())
    sup = procs.read_pid(_supervisor_pidfile(root))
    return ([sup] if sup else []) + server_pids(root)


def server_pids(root: Path | None = None) -> list[int]:
    """The running servers' pids, in host order (the supervisor's children)."""
    from lab import procs

    root = Path(root or default_root())
    try:
        children = json.loads((root / "pids.json").read_text())
    except (FileNotFoundError, ValueError):
        return []
    return [p for p in children if procs.pid_alive(p) and _is_ours(p, root)]


def _is_ours(pid: int, root: Path) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return str(root).encode() in f.read()
    except OSError:
        return False


def down(root: Path | None = None) -> list[int]:
    """Stop the supervisor (which stops and reaps its servers), then kill any server left, by
    pid. Returns the pids that were running."""
    from lab import procs

    root = Path(root or default_root())
    running = pids(root)
    sup = procs.read_pid(_supervisor_pidfile(root))
    if sup:
        procs.stop(_supervisor_pidfile(root), grace=10)
    for pid in pids(root):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        procs.wait_gone(pid, 5)
    (root / "pids.json").unlink(missing_ok=True)
    return running


def status(root: Path | None = None) -> dict:
    """How many scaled hosts are set up, running and listening; their memory."""
    root = Path(root or default_root())
    try:
        spec = json.loads((root / "spec.json").read_text())
    except FileNotFoundError:
        return {"root": str(root), "hosts": 0, "running": 0, "listening": 0}
    wanted = {(h["address"], h["port"]) for h in spec["hosts"]}
    alive = pids(root)
    return {"root": str(root), "hosts": len(spec["hosts"]), "running": len(alive),
            "listening": len(listening(wanted)), "inventory": str(root / "inventory.toml"),
            "known_hosts": str(root / "known_hosts"), **memory(root)}


def memory(root: Path | None = None) -> dict:
    """RSS and PSS of the servers (not the supervisor), in bytes, total and per server."""
    root = Path(root or default_root())
    try:
        children = json.loads((root / "pids.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}
    rss = pss = n = 0
    for pid in children:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                fields = {ln.split(":")[0]: int(ln.split()[1]) * 1024 for ln in f if ":" in ln
                          and ln.split()[1].isdigit()}
        except OSError:
            continue
        rss += fields.get("Rss", 0)
        pss += fields.get("Pss", 0)
        n += 1
    if not n:
        return {}
    return {"servers": n, "rss_bytes": rss, "pss_bytes": pss,
            "rss_per_server": rss // n, "pss_per_server": pss // n}


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        sys.exit(serve(Path(sys.argv[2])))
    sys.exit("usage: python -m lab.scale serve ROOT")
