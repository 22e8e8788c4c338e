"""The lab hosts' own tools: init scripts and the admin hosts' bin/ commands.

Each lab host's `etc/init.d/*` and `bin/*` are two-line shell scripts that call this module, so
`ssh root@dfw-jobs01 etc/init.d/gearman-server restart` really stops and starts that host's
gearmand. Output and exit codes follow init-script conventions (status: 0 running, 3 stopped).

    python -m lab.ctl --config lab.json start|stop|restart|status SERVICE HOST [--no-wait]
    python -m lab.ctl --config lab.json restart-jobs | restart-memcache | restart-ddlockd
    python -m lab.ctl --config lab.json restart-webs [DELAY]
    python -m lab.ctl --config lab.json importer-status
    python -m lab.ctl --config lab.json freeze-importers|thaw-importers dw-workers HOST [--after S]
    python -m lab.ctl --config lab.json ps HOST -- PS-ARGS...

Fault switch: while the host has a file `faults/restart-fails` in its root folder
(`LabConfig.fault_switch`), every `restart` on that host fails the way Debian's init scripts do
when the configuration test fails: a message on stderr, exit 1, the running server left as it was.
Removing the file ends the fault.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from lab import procs, services
from lab.config import LabConfig

POSTFIX = "postfix"


def start(cfg: LabConfig, name: str, host: str, *, wait: bool = True) -> int:
    if name == POSTFIX:
        from lab import mail

        mail.start(cfg)
        print(f"Starting Postfix Mail Transport Agent: postfix on {host}.")
        return 0
    d = services.find(cfg, name, host)
    was = procs.read_pid(d.pidfile)
    if was:
        print(f"{name} on {host} is already running (pid {was}).")
        return 0
    env = dict(os.environ, **d.env)
    pid = procs.start(d.argv, d.pidfile, d.logfile, cwd=d.cwd, env=env)
    if wait and d.port and not procs.wait_port(d.address, d.port, d.start_timeout):
        print(f"{name} on {host} (pid {pid}) is not answering on {d.address}:{d.port}; "
              f"see {d.logfile}", file=sys.stderr)
        return 1
    print(f"Starting {name} on {host}: pid {pid}.")
    return 0


def stop(cfg: LabConfig, name: str, host: str) -> int:
    if name == POSTFIX:
        from lab import mail

        mail.stop(cfg)
        print(f"Stopping Postfix Mail Transport Agent: postfix on {host}.")
        return 0
    d = services.find(cfg, name, host)
    pid = procs.stop(d.pidfile, grace=d.stop_grace)
    print(f"Stopping {name} on {host}: " + (f"pid {pid} stopped." if pid else "not running."))
    return 0


def status(cfg: LabConfig, name: str, host: str) -> int:
    if name == POSTFIX:
        from lab import mail

        pid = mail.is_running(cfg)
    else:
        pid = procs.read_pid(services.find(cfg, name, host).pidfile)
    if pid:
        print(f"{name} on {host} is running (pid {pid}).")
        return 0
    print(f"{name} on {host} is not running.")
    return 3


def restart(cfg: LabConfig, name: str, host: str, *, wait: bool = True) -> int:
    fault = cfg.fault_switch(host, "restart-fails")
    if fault.exists():
        print(f"{name} on {host}: the configuration test failed ({fault}): not restarting.",
              file=sys.stderr)
        return 1
    stop(cfg, name, host)
    return start(cfg, name, host, wait=wait)


# -- a jobs host's content-importers, frozen while restart-workers decides --------------------------

THAW_AFTER_SECONDS = 120.0


def importer_pids(cfg: LabConfig, host: str) -> list[int]:
    """This host's content-importer processes (its worker-manager's children by title)."""
    from lab.workers import read_title  # local: lab.workers is heavy and imports this module's peers

    return sorted(pid for pid in host_pids(cfg, host)
                  if read_title(pid).startswith("content-importer"))


def signal_importers(cfg: LabConfig, host: str, sig: signal.Signals) -> int:
    """Send `sig` to every content-importer of `host` (`pkill -SIG -f '^content-importer'` on a
    real jobs host); print what was signalled."""
    pids = importer_pids(cfg, host)
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            continue
    print(f"{sig.name} sent to {len(pids)} content-importers on {host}: "
          f"{' '.join(map(str, pids)) or 'none'}")
    return 0


def freeze_importers(cfg: LabConfig, host: str, thaw_after: float = THAW_AFTER_SECONDS) -> int:
    """SIGSTOP every content-importer of `host`, and leave a dead man's thaw behind: SIGCONT
    `thaw_after` seconds later whatever happens to the caller, unless a thaw or a newer freeze
    came first (the freeze's token in `run/dwops-importers-frozen` tells; without it, one run's
    dead man would thaw the importers a later run holds)."""
    token = f"{os.getpid()}-{time.time_ns()}"
    marker = _freeze_marker(cfg, host)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(token)
    subprocess.Popen([cfg.python, "-m", "lab.ctl", "--config", str(cfg.config_path),
                      "thaw-importers", "dw-workers", host, "--after", str(thaw_after),
                      "--token", token],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True)
    return signal_importers(cfg, host, signal.SIGSTOP)


def thaw_importers(cfg: LabConfig, host: str, after: float = 0.0, token: str | None = None) -> int:
    """SIGCONT every content-importer of `host`; with `token` (a dead man's thaw), only if the
    freeze that left it is still the latest and nothing thawed since."""
    if after:
        time.sleep(after)
    marker = _freeze_marker(cfg, host)
    if token is not None:
        try:
            if marker.read_text() != token:
                return 0
        except FileNotFoundError:
            return 0
    marker.unlink(missing_ok=True)
    return signal_importers(cfg, host, signal.SIGCONT)


def _freeze_marker(cfg: LabConfig, host: str) -> Path:
    return cfg.host_root(host) / "run" / "dwops-importers-frozen"


# -- dfw-admin01 and va-admin01 tools, as the production notes describe them -------------------

def restart_jobs(cfg: LabConfig) -> int:
    """bin/restart-jobs: restart the worker manager on every jobs host, one after the other."""
    rc = 0
    for h in cfg.hosts_with("jobs"):
        rc |= restart(cfg, "dw-workers", h.name)
    return rc


def restart_memcache(cfg: LabConfig) -> int:
    """bin/restart-memcache: restart every memcached node (all of them, as the old tool did)."""
    rc = 0
    for h in cfg.hosts_with("memcache"):
        rc |= restart(cfg, "memcached", h.name)
    return rc


def restart_ddlockd(cfg: LabConfig) -> int:
    """bin/restart-ddlockd: start ddlockd where it is down. It never stops a running one."""
    rc = 0
    for h in cfg.hosts_with("jobs"):
        rc |= start(cfg, "ddlockd", h.name)
    return rc


def restart_webs(cfg: LabConfig, delay: float) -> int:
    """bin/restart-webs DELAY: bounce each web, DELAY seconds apart; 0 bounces all at once."""
    webs = [h.name for h in cfg.hosts_with("web")]
    if delay == 0:
        results: dict[str, int] = {}
        threads = [threading.Thread(target=lambda w=w: results.__setitem__(w, restart(cfg, "apache2", w)))
                   for w in webs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return max(results.values(), default=0)
    for i, w in enumerate(webs):
        rc = restart(cfg, "apache2", w)
        if rc:
            return rc
        if i < len(webs) - 1:
            time.sleep(delay)
    return 0


def host_pids(cfg: LabConfig, host: str) -> set[int]:
    """Every process that belongs to `host`: its daemons and all their descendants."""
    roots = {pid for d in services.daemons(cfg) if d.host == host
             if (pid := procs.read_pid(d.pidfile))}
    if host == "dfw-mail01":
        from lab import mail

        if pid := mail.is_running(cfg):
            roots.add(pid)
    return procs.descendants(roots)


def ps(cfg: LabConfig, host: str, args: list[str]) -> int:
    """`ps` as seen on `host`: the real ps, showing only that host's processes."""
    out = subprocess.run(["/bin/ps", *args], capture_output=True, text=True)
    mine = host_pids(cfg, host)
    lines = out.stdout.splitlines()
    for n, line in enumerate(lines):
        first = line.split(None, 1)[0] if line.strip() else ""
        if not first.isdigit() or int(first) in mine:
            print(line)
    sys.stderr.write(out.stderr)
    return out.returncode


def importer_status(cfg: LabConfig) -> int:
    """bin/importer-status: the `ps` lines of every content-importer on the jobs hosts."""
    for h in cfg.hosts_with("jobs"):
        mine = host_pids(cfg, h.name)
        out = subprocess.run(["/bin/ps", "-ww", "-eo", "pid,tty,stat,bsdtime,args", "--no-headers"],
                             capture_output=True, text=True, check=True)
        for line in out.stdout.splitlines():
            fields = line.split(None, 4)
            if len(fields) == 5 and int(fields[0]) in mine and fields[4].startswith("content-importer"):
                print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lab.ctl")
    ap.add_argument("--config", required=True)
    ap.add_argument("action")
    ap.add_argument("rest", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    cfg = LabConfig.load(a.config)
    rest = [r for r in a.rest if r != "--no-wait"]
    wait = "--no-wait" not in a.rest
    try:
        if a.action in ("start", "stop", "restart", "status"):
            name, host = rest
            if a.action == "start":
                return start(cfg, name, host, wait=wait)
            if a.action == "restart":
                return restart(cfg, name, host, wait=wait)
            return {"stop": stop, "status": status}[a.action](cfg, name, host)
        if a.action in ("freeze-importers", "thaw-importers"):
            _name, host, *more = rest  # `etc/init.d/dw-workers freeze-importers` on a jobs host
            after = float(more[more.index("--after") + 1]) if "--after" in more else None
            token = more[more.index("--token") + 1] if "--token" in more else None
            if a.action == "freeze-importers":
                return freeze_importers(cfg, host, after or THAW_AFTER_SECONDS)
            return thaw_importers(cfg, host, after or 0.0, token)
        if a.action == "restart-jobs":
            return restart_jobs(cfg)
        if a.action == "restart-memcache":
            return restart_memcache(cfg)
        if a.action == "restart-ddlockd":
            return restart_ddlockd(cfg)
        if a.action == "restart-webs":
            delay = float(rest[0]) if rest else 5.0
            if delay < 0:
                print("restart-webs: DELAY must be 0 or more seconds", file=sys.stderr)
                return 2
            return restart_webs(cfg, delay)
        if a.action == "importer-status":
            return importer_status(cfg)
        if a.action == "ps":
            host, *args = rest
            return ps(cfg, host, [x for x in args if x != "--"])
    except (KeyError, ValueError) as e:
        print(f"lab.ctl: {e}", file=sys.stderr)
        return 2
    print(f"lab.ctl: unknown action {a.action!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
