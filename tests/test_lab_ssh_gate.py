"""Least privilege on the hosts: dwops's SSH key runs only the inventory's commands, on every lab host.

Each host's authorized_keys gives dwops's key a forced command, dwops's SSH gate
(dwops/allowlist.py), with the host's allowlist from the inventory; `restrict` refuses it a pty
and every forwarding. The lab's oracle key (its own checks) stays open. That every allowed
command still works is what the flow tests show (they run through the same gate); the pure
tests of the gate and the allowlists are tests/test_allowlist.py.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import asyncssh
import pytest

from dwops.allowlist import REFUSED
from dwops.inventory import Inventory
from lab.config import LabConfig
from lab.hostfiles import gate_paths
from tasks.ssh import SshPool

PROBE_FILE = Path("/tmp/dwops-gate-probe")
# What dwops's key must never run: each a request sent as it is, to every host.
PROBES = [
    "id",
    "cat /etc/passwd",
    "cat etc/ssh/ssh_host_ed25519_key",  # in the host's root folder; no command names it
    "cat .ssh/authorized_keys",
    "hostname; id",
    "hostname && id",
    "hostname | id",
    "hostname $(id)",
    "hostname `id`",
    "hostname\nid",
    "hostname #",
    f"uptime >{PROBE_FILE}",
    "/bin/sh",
    "exec /bin/bash -i",
]


def _log_lines(lab: LabConfig, host: str) -> list[str]:
    path = gate_paths(lab, host)["log"]
    return path.read_text().splitlines() if path.exists() else []


async def _probe_every_host(inv: Inventory) -> dict[str, tuple[tuple, dict, object]]:
    """Per host: the connection's (address, port), each probe's result, and `hostname` after."""
    async def one(pool: SshPool, host: str):
        conn = await pool.connection(host)
        results = {p: await conn.run(p, check=False, timeout=30) for p in PROBES}
        control = await conn.run("hostname", check=False, timeout=30)
        return conn.get_extra_info("sockname")[:2], results, control

    async with SshPool(inv) as pool:
        done = await asyncio.gather(*(one(pool, h) for h in inv.hosts))
    return dict(zip(inv.hosts, done))


def test_dwops_key_runs_nothing_but_the_allowlist_on_every_host(lab: LabConfig,
                                                              lab_inventory: Inventory):
    PROBE_FILE.unlink(missing_ok=True)
    before = {h: len(_log_lines(lab, h)) for h in lab_inventory.hosts}
    probed = asyncio.run(_probe_every_host(lab_inventory))
    assert len(probed) == len(lab.hosts) == 13
    host_key = {h: (lab.host_root(h) / "etc/ssh/ssh_host_ed25519_key").read_text().splitlines()[1]
                for h in probed}
    for host, ((address, port), results, control) in probed.items():
        for probe, r in results.items():
            out, err = str(r.stdout), str(r.stderr)
            assert r.exit_status == REFUSED, (host, probe, r.exit_status, out, err)
            assert out == "", (host, probe, out)
            # (sshd runs the forced command through root's login shell: its own start-up lines,
            # if any, may come first)
            assert "dwops allowlist: refused: not a command this host allows" in err, \
                (host, probe, err)
            assert "uid=" not in out + err and "root:x:" not in out + err
            assert host_key[host] not in out + err
        assert control.exit_status == 0 and str(control.stdout).strip() == host  # a live control
        # Every decision is on record in the host's gate log, with the client's address and port.
        new = _log_lines(lab, host)[before[host]:]
        mine = [line for line in new if f" {address} {port}: " in line]
        assert [line.split("]", 1)[1].split()[0] for line in mine] == \
            ["refused"] * len(PROBES) + ["allowed"], (host, mine)
        assert mine[-1].endswith(f"allowed {address} {port}: hostname: 'hostname'")
    assert not PROBE_FILE.exists()


def test_no_interactive_shell_for_dwops_key_on_any_host(lab: LabConfig, lab_inventory: Inventory):
    """A pty is refused (`restrict`), and a shell without one is refused by the gate."""
    async def one(pool: SshPool, host: str):
        conn = await pool.connection(host)
        with pytest.raises(asyncssh.ChannelOpenError, match="(?i)pty"):
            await conn.create_process(term_type="xterm")
        shell = await conn.create_process()  # a shell request, no command
        shell.stdin.write("id\n")
        shell.stdin.write_eof()
        done = await shell.wait(check=False, timeout=30)
        return done

    async def go():
        async with SshPool(lab_inventory) as pool:
            return await asyncio.gather(*(one(pool, h) for h in lab_inventory.hosts))

    for host, done in zip(lab_inventory.hosts, asyncio.run(go())):
        assert done.exit_status == REFUSED and str(done.stdout) == "", (host, done.stdout)
        assert "refused: no interactive logins with this key" in str(done.stderr), host


@pytest.mark.parametrize("host", ["va-admin01", "va-web03", "dfw-jobs01", "dfw-mail01"])
def test_openssh_client_gets_no_shell_with_dwops_key(lab: LabConfig, lab_inventory: Inventory,
                                                     host: str):
    """`ssh HOST` with dwops's key, as a person would try it: with a pty forced (`-tt`) the login
    ends at the refused pty; without one the gate refuses the shell. No prompt, nothing run."""
    def login(*tty: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ssh", *tty, "-F", "/dev/null", "-o", "BatchMode=yes", "-o",
             "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={lab_inventory.ssh.known_hosts}",
             "-o", "IdentitiesOnly=yes", "-i", lab_inventory.ssh.client_key.file,
             f"root@{lab.host(host).address}"],
            input="id\nexit\n", capture_output=True, text=True, timeout=30)

    forced = login("-tt")
    assert forced.returncode == 255 and forced.stdout == "", (forced.returncode, forced.stdout)
    assert "PTY allocation request failed" in forced.stderr and "uid=" not in forced.stderr
    plain = login()
    assert plain.returncode == REFUSED and plain.stdout == "", (plain.returncode, plain.stdout)
    assert "refused: no interactive logins with this key" in plain.stderr
    assert "uid=" not in plain.stderr


def test_the_oracle_key_keeps_its_access_on_every_host(lab: LabConfig, oracle_inventory: Inventory):
    async def go():
        async with SshPool(oracle_inventory) as pool:
            async def one(host: str):
                return await (await pool.connection(host)).run("id -u; pwd", check=False)
            return await asyncio.gather(*(one(h) for h in oracle_inventory.hosts))

    for host, r in zip(oracle_inventory.hosts, asyncio.run(go())):
        assert r.exit_status == 0, (host, r.stderr)
        assert str(r.stdout).split() == ["0", str(lab.host_root(host))], host


def test_each_host_holds_its_own_allowlist_and_keys(lab: LabConfig, lab_inventory: Inventory):
    for h in lab.hosts:
        gate = gate_paths(lab, h.name)
        assert gate["allowlist"].read_text() == lab_inventory.allowlist(h.name)
        keys = [line for line in gate["authorized_keys"].read_text().splitlines()
                if line and not line.startswith("#")]
        assert len(keys) == 2
        dwops_line = next(k for k in keys if k.endswith(" dwops-lab"))
        assert dwops_line.startswith("restrict,command=")
        assert f' {h.name} {gate["allowlist"]}"' in dwops_line
        assert (gate["authorized_keys"].stat().st_mode & 0o777) == 0o600
