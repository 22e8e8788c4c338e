"""The lab's incoming-mail host dfw-mail01: a private instance of Debian's real Postfix.

Production's dfw-mail01 is a Postfix system (see the production notes, "Incoming Mail"). The lab
runs the same Postfix 3.7 binaries from Debian's `postfix` package, but as a separate instance
whose every file lives under the host's root folder (never `/etc/postfix`, never the system
service):

    <host_root>/etc/postfix/{main.cf,master.cf}   config_directory (`postfix -c DIR ...`)
    <host_root>/var/spool/postfix/                queue_directory (pid/master.pid lives here)
    <host_root>/var/lib/postfix/                  data_directory
    <host_root>/var/log/mail.log                  maillog_file, written by postlogd
    <host_root>/var/mail/                         mail_spool_directory for local delivery

The instance listens only on the host's loopback address, never looks anything up in DNS, has no
TLS, and relays all outgoing mail to `cfg.dead_relay`, where nothing listens: outgoing mail stays
in the deferred queue with "Connection refused", which is what the runbook's queue checks read.

Commands (all as root): `python -m lab.mail {write-config,start,stop,status,seed-deferred,queue}
--config PATH`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import argparse
import os
import pwd
import re
import shlex
import signal
import smtplib
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

if TYPE_CHECKING:
    from tasks.mail import QueuedMessage

from lab.config import LabConfig
from lab.procs import pid_alive, wait_gone
# The parser lives with the runbook's mail task; re-exported here for the lab's own commands.

HOST = "dfw-mail01"
LAB_DOMAIN = "lab.dreamwidth.org"
MYHOSTNAME = f"{HOST}.{LAB_DOMAIN}"

POSTFIX = "/usr/sbin/postfix"
POSTQUEUE = "/usr/sbin/postqueue"
DAEMON_DIRECTORY = "/usr/lib/postfix/sbin"
# Debian's stock master.cf (identical to /usr/share/postfix/master.cf.dist); our copy differs only
# in the chroot column.
DEBIAN_MASTER_CF = Path("/etc/postfix/master.cf")
DEBIAN_MASTER_CF_DIST = Path("/usr/share/postfix/master.cf.dist")

MAIL_OWNER = "postfix"
COMMAND_TIMEOUT = 60.0


class PostfixPathError(RuntimeError):
    """A folder of the instance that the postfix user cannot reach."""


@dataclass(frozen=True)
class MailPaths:
    """Where the instance's files are, all under the host's root folder."""

    root: Path
    config_dir: Path
    queue_dir: Path
    data_dir: Path
    log_file: Path
    mail_spool: Path

    @property
    def master_pidfile(self) -> Path:
        return self.queue_dir / "pid" / "master.pid"


def paths(cfg: LabConfig) -> MailPaths:
    """The instance's paths for this lab."""
    root = cfg.host_root(HOST)
    return MailPaths(
        root=root,
        config_dir=root / "etc" / "postfix",
        queue_dir=root / "var" / "spool" / "postfix",
        data_dir=root / "var" / "lib" / "postfix",
        log_file=root / "var" / "log" / "mail.log",
        mail_spool=root / "var" / "mail",
    )


# -- configuration (pure) ----------------------------------------------------------------------


def main_cf(cfg: LabConfig) -> str:
    """main.cf of the lab's dfw-mail01: loopback only, no DNS, no TLS, relay to the dead relay."""
    p = paths(cfg)
    settings: list[tuple[str, str]] = [
        ("compatibility_level", "3.6"),
        # Where this instance keeps everything (never the system's /etc/postfix or /var/spool).
        ("queue_directory", str(p.queue_dir)),
        ("data_directory", str(p.data_dir)),
        ("mail_spool_directory", str(p.mail_spool)),
        ("syslog_name", f"postfix-{HOST}"),
        ("maillog_file", str(p.log_file)),
        ("maillog_file_prefixes", str(p.root)),
        # Identity and the lab domain.
        ("myhostname", MYHOSTNAME),
        ("mydomain", LAB_DOMAIN),
        ("myorigin", "$mydomain"),
        ("mydestination", "$myhostname, $mydomain, localhost"),
        ("append_dot_mydomain", "no"),
        ("biff", "no"),
        # Our own aliases only (none): never read the system's /etc/aliases.
        ("alias_maps", ""),
        ("alias_database", ""),
        # Listen on the host's own loopback address only, IPv4 only. Postfix refuses an
        # inet_interfaces address that no interface carries ("no local interface found for
        # 127.20.0.41": only 127.0.0.1 is configured on lo), so the address goes into master.cf's
        # smtpd service name (ADDR:PORT) instead, and inet_interfaces stays on loopback so that no
        # other inet service could ever bind a wider address.
        ("inet_interfaces", "loopback-only"),
        ("inet_protocols", "ipv4"),
        ("mynetworks", "127.0.0.0/8"),
        ("smtpd_relay_restrictions", "permit_mynetworks, reject_unauth_destination"),
        ("smtpd_banner", "$myhostname ESMTP $mail_name (lab)"),
        # Everything outgoing goes to a relay where nothing listens: it defers, it never leaves.
        ("relayhost", f"[{cfg.dead_relay}]:25"),
        # Never touch DNS: no MX/A lookups by the SMTP/LMTP clients, no client reverse lookups.
        ("smtp_dns_support_level", "disabled"),
        ("lmtp_dns_support_level", "disabled"),
        ("smtp_host_lookup", "native"),
        ("lmtp_host_lookup", "native"),
        ("smtpd_peername_lookup", "no"),
        # No TLS anywhere.
        ("smtpd_tls_security_level", "none"),
        ("smtp_tls_security_level", "none"),
        ("tls_random_source", ""),
    ]
    lines = [
        f"# main.cf of the lab's {HOST}, written by lab/mail.py: do not edit by hand.",
        "# A private Postfix instance: postfix -c " + str(p.config_dir) + " start|stop",
        "",
    ]
    lines += [f"{name} = {value}".rstrip() for name, value in settings]
    return "\n".join(lines) + "\n"


def master_cf(template: str, smtpd_listen: str) -> str:
    """Debian's master.cf with the chroot column (the 5th) set to `n` on every service line, and
    the SMTP server (`smtp inet ... smtpd`) listening on `smtpd_listen` ("ADDR:PORT") only.

    Comments and continuation lines (`-o ...`, `flags=...`, which start with whitespace) are kept
    as they are; the chroot column keeps its width, so the layout stays Debian's.
    """
    out = []
    for line in template.splitlines():
        if not line or line[0] in "# \t":
            out.append(line)
            continue
        parts = re.split(r"(\s+)", line)  # token, space, token, space, ...
        if len(parts) >= 15:  # eight columns at least
            parts[8] = "n"
            if parts[0] == "smtp" and parts[2] == "inet":
                parts[0] = smtpd_listen
                parts[1] = " " if len(smtpd_listen) >= 9 else " " * (10 - len(smtpd_listen))
        out.append("".join(parts))
    return "\n".join(out) + "\n"


def postqueue_wrapper(cfg: LabConfig) -> str:
    """A sh script that runs the real postqueue against this instance (the host's bin/postqueue)."""
    config_dir = shlex.quote(str(paths(cfg).config_dir))
    return (
        "#!/bin/sh\n"
        f"# postqueue of the lab's {HOST}: Debian's Postfix, a private instance under its host\n"
        "# root (never the system's /etc/postfix).\n"
        f'exec {POSTQUEUE} -c {config_dir} "$@"\n'
    )


# -- the postfix user must reach the instance's folders -----------------------------------------


def _postfix_ids() -> tuple[int, set[int]]:
    pw = pwd.getpwnam(MAIL_OWNER)
    return pw.pw_uid, set(os.getgrouplist(MAIL_OWNER, pw.pw_gid))


def untraversable_ancestor(path: Path, uid: int, gids: set[int]) -> Path | None:
    """The first folder on the way to `path` (inclusive) that uid/gids may not search, or None.

    Decided from the mode bits (no ACLs), the way the kernel does for a non-root user.
    """
    path = Path(path).resolve()
    for folder in [*reversed(path.parents), path]:
        try:
            st = folder.stat()
        except FileNotFoundError:
            return None  # the rest is ours to create
        if st.st_uid == uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid in gids:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            return folder
    return None


def check_traversable(cfg: LabConfig) -> None:
    """Fail with a clear error if the postfix user cannot reach the instance's folders."""
    uid, gids = _postfix_ids()
    p = paths(cfg)
    for target in (p.queue_dir, p.data_dir, p.log_file.parent):
        bad = untraversable_ancestor(target, uid, gids)
        if bad is not None:
            raise PostfixPathError(
                f"the postfix user cannot traverse {bad} (mode {stat.filemode(bad.stat().st_mode)},"
                f" owner uid {bad.stat().st_uid}) on the way to {target}: Postfix's daemons run as"
                f" '{MAIL_OWNER}' and need search (x) permission on every folder above their"
                " queue and data directories. Use a state directory under a traversable path"
                " (DWOPS_STATE_DIR) or chmod o+x that folder."
            )


# -- changing state -----------------------------------------------------------------------------


def write_config(cfg: LabConfig) -> MailPaths:
    """Write main.cf and master.cf and create the instance's folders. Safe to repeat.

    A running instance keeps its old configuration until it is restarted.
    """
    p = paths(cfg)
    template_path = DEBIAN_MASTER_CF if DEBIAN_MASTER_CF.exists() else DEBIAN_MASTER_CF_DIST
    p.root.mkdir(parents=True, exist_ok=True)
    for folder in (p.config_dir, p.queue_dir, p.log_file.parent):
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o755)
    check_traversable(cfg)
    pw = pwd.getpwnam(MAIL_OWNER)
    p.data_dir.mkdir(parents=True, exist_ok=True)
    os.chown(p.data_dir, pw.pw_uid, pw.pw_gid)
    os.chmod(p.data_dir, 0o700)
    p.mail_spool.mkdir(parents=True, exist_ok=True)
    os.chmod(p.mail_spool, 0o1777)
    _write(p.config_dir / "main.cf", main_cf(cfg))
    listen = f"{cfg.host(HOST).address}:{cfg.ports.smtp}"
    _write(p.config_dir / "master.cf", master_cf(template_path.read_text(), listen))
    return p


def _write(path: Path, text: str) -> None:
    if path.exists() and path.read_text() == text:
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o644)
    tmp.replace(path)


def _postfix(cfg: LabConfig, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    config_dir = str(paths(cfg).config_dir)
    return subprocess.run(
        [POSTFIX, "-c", config_dir, *args],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=check,
        env=_clean_env(),
    )


def _clean_env() -> dict[str, str]:
    # MAIL_CONFIG from the caller would point the commands at another instance.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAIL_")}
    env.setdefault("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    return env


def _pidfile_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def is_running(cfg: LabConfig) -> int | None:
    """The master pid of this instance (from the queue's pid/master.pid) if it runs, else None."""
    pid = _pidfile_pid(paths(cfg).master_pidfile)
    if pid is None or not pid_alive(pid):
        return None
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None
    return pid if comm == "master" else None


def start(cfg: LabConfig) -> int:
    """Write the config and start the instance unless it runs; return the master pid."""
    pid = is_running(cfg)
    if pid:
        return pid
    p = write_config(cfg)
    proc = _postfix(cfg, "start", check=False)
    pid = _wait_master(cfg, timeout=15)
    if pid is None:
        raise RuntimeError(
            f"postfix -c {p.config_dir} start failed (exit {proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()} — see {p.log_file}"
        )
    return pid


def _wait_master(cfg: LabConfig, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = is_running(cfg)
        if pid:
            return pid
        time.sleep(0.05)
    return is_running(cfg)


def _session_members(sid: int) -> list[int]:
    """Live Postfix daemons in session `sid` (the master leads its instance's session).

    Only processes whose executable is one of Postfix's daemons count, so a stale pid that now
    belongs to some other session leader never gets its processes killed.
    """
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            exe = os.readlink(f"/proc/{entry}/exe")
        except (OSError, IndexError):
            continue
        # fields after the comm: state ppid pgrp session ...
        if (
            len(fields) > 3
            and int(fields[3]) == sid
            and exe.startswith(DAEMON_DIRECTORY + "/")
            and pid_alive(int(entry))
        ):
            found.append(int(entry))
    return found


def stop(cfg: LabConfig) -> int | None:
    """Stop the instance (`postfix stop`), leaving none of its processes; return the old master pid.

    Does nothing when it is not running. Postfix's master is the leader of its own session, so
    any daemon still alive after the master is gone (or left by a master that died) is found by
    session id and killed.
    """
    pid = is_running(cfg)
    if pid is not None:
        _postfix(cfg, "stop", check=False)
        if not wait_gone(pid, 10):
            os.kill(pid, signal.SIGKILL)
            wait_gone(pid, 5)
    session = pid or _pidfile_pid(paths(cfg).master_pidfile)
    if session:
        deadline = time.monotonic() + 5
        while _session_members(session) and time.monotonic() < deadline:
            time.sleep(0.1)
        for child in _session_members(session):
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return pid


def read_queue(cfg: LabConfig) -> list["QueuedMessage"]:
    """The instance's queue via the real `postqueue -c DIR -j`. Safe to repeat."""
    from tasks.mail import parse_postqueue_json  # imported here: lab.ctl stays free of prefect

    return parse_postqueue_json(postqueue(cfg, "-j"))


def postqueue(cfg: LabConfig, *args: str) -> str:
    """Run `postqueue -c DIR ARGS` and return its output (e.g. `-p`, `-j`)."""
    proc = subprocess.run(
        [POSTQUEUE, "-c", str(paths(cfg).config_dir), *args],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        env=_clean_env(),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"postqueue {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def seed_deferred(
    cfg: LabConfig, n: int = 5, *, domain: str = "example.net", timeout: float = 30.0
) -> list[str]:
    """Submit `n` messages over SMTP to outside recipients and wait until they are deferred.

    The messages go to user@`domain`, which only the dead relay could take: Postfix keeps them in
    the deferred queue with a delay_reason ("connect to DEAD_RELAY...: Connection refused").
    Returns their queue ids. Each call adds `n` more messages.
    """
    host = cfg.host(HOST)
    queue_ids: list[str] = []
    with smtplib.SMTP(host.address, cfg.ports.smtp, local_hostname="lab-seed", timeout=10) as smtp:
        smtp.ehlo()
        for i in range(n):
            msg = EmailMessage()
            msg["From"] = f"lab-seed@{LAB_DOMAIN}"
            msg["To"] = f"user{i + 1}@{domain}"
            msg["Subject"] = f"lab deferred mail {i + 1}/{n}"
            msg.set_content("A message for the lab's dead relay: it stays deferred.\n")
            code, reply = smtp.mail(msg["From"])
            _expect(code, reply, "MAIL FROM")
            code, reply = smtp.rcpt(msg["To"])
            _expect(code, reply, "RCPT TO")
            code, reply = smtp.data(msg.as_bytes())
            _expect(code, reply, "DATA")
            m = re.search(r"queued as (\S+)", reply.decode(errors="replace"))
            if m:
                queue_ids.append(m.group(1))
    _wait_deferred(cfg, set(queue_ids), timeout)
    return queue_ids


def _expect(code: int, reply: bytes, step: str) -> None:
    if code >= 400:
        raise RuntimeError(f"SMTP {step} refused: {code} {reply.decode(errors='replace')}")


def _wait_deferred(cfg: LabConfig, queue_ids: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        deferred = {
            m.queue_id
            for m in read_queue(cfg)
            if m.queue_name == "deferred" and all(r.delay_reason for r in m.recipients)
        }
        if queue_ids <= deferred:
            return
        if time.monotonic() > deadline:
            missing = ", ".join(sorted(queue_ids - deferred))
            raise TimeoutError(f"messages not deferred after {timeout:.0f} s: {missing}")
        time.sleep(0.2)


# -- command line -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.mail", description=__doc__.split("\n")[0])
    parser.add_argument(
        "command", choices=["write-config", "start", "stop", "status", "seed-deferred", "queue"]
    )
    parser.add_argument("--config", required=True, help="the lab's lab.json")
    parser.add_argument("-n", type=int, default=5, help="seed-deferred: how many messages")
    args = parser.parse_args(argv)
    cfg = LabConfig.load(args.config)
    if args.command == "write-config":
        print(write_config(cfg).config_dir)
    elif args.command == "start":
        print(f"postfix ({HOST}) running: master pid {start(cfg)}")
    elif args.command == "stop":
        pid = stop(cfg)
        print(f"postfix ({HOST}) stopped (was pid {pid})" if pid else "postfix was not running")
    elif args.command == "status":
        pid = is_running(cfg)
        print(f"postfix ({HOST}) running: master pid {pid}" if pid else "postfix is not running")
        return 0 if pid else 3
    elif args.command == "seed-deferred":
        print("\n".join(seed_deferred(cfg, args.n)))
    elif args.command == "queue":
        sys.stdout.write(postqueue(cfg, "-j"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
