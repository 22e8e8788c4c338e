"""The scaled lab (`dwops lab scale`): extra real SSH hosts with their own host keys, reached by
dwops's pool with host keys verified, and nothing left running or listening afterwards.

Five hosts on 127.41.x.x under a temporary root, through the same code as the benchmark's 200
(`lab.scale.up`/`down`), so the lab and any scaled lab of the benchmark are left as they were.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from dwops.inventory import Inventory, SecretRef, load_inventory
from lab import procs, scale
from lab.config import LabConfig
from tasks.ssh import HostKeyRejected, SshAuthFailed, SshPool

NET = "127.41"  # this file's own addresses (the benchmark's scaled lab uses 127.40)
COUNT = 5


@pytest.fixture(scope="module")
def scaled(lab: LabConfig, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("scale")
    root_before = os.stat("/root")
    try:
        path = scale.up(COUNT, root=root, net=NET)
        yield root, load_inventory(path)
    finally:
        stopped = scale.down(root)
    # Everything it ran is gone, nothing listens, and the machine's /root was never touched.
    assert len(stopped) == COUNT + 1  # the supervisor and one server per host
    assert not [p for p in stopped if procs.pid_alive(p)]
    assert scale.pids(root) == []
    assert scale.listening(net=NET) == set()
    after = os.stat("/root")
    assert (after.st_ino, after.st_dev) == (root_before.st_ino, root_before.st_dev)


def _with(inv: Inventory, **ssh) -> Inventory:
    return inv.model_copy(update={"ssh": inv.ssh.model_copy(update=ssh)})


def test_every_scaled_host_is_a_real_sshd_on_its_own_address(scaled):
    root, inv = scaled
    hosts = inv.hosts_with_role("scale")
    assert len(hosts) == COUNT
    wanted = {(inv.hosts[h].address, inv.ssh.port) for h in hosts}
    assert all(a.startswith(f"{NET}.") for a, _ in wanted)
    assert scale.listening(wanted) == wanted
    assert len(scale.pids(root)) == COUNT + 1
    # Each has its own host key, and known_hosts lists the lab's hosts and every scaled host.
    known = Path(inv.ssh.known_hosts).read_text().splitlines()
    keys = {line.split()[0]: line.split()[2] for line in known}
    assert len({keys[a if p == 22 else f"[{a}]:{p}"] for a, p in wanted}) == COUNT
    assert len(known) == len(inv.hosts)
    # The lab's own /root is not where the servers read their authorized_keys from.
    mounts = Path("/proc/self/mounts").read_text().split("\n")
    assert not [m for m in mounts if m.split(" ")[1:2] == ["/root"]]


def test_dwops_runs_a_command_on_every_scaled_host(scaled):
    _, inv = scaled
    hosts = inv.hosts_with_role("scale")

    async def go():
        # Two set-ups at a time: the pool's bound on connections in progress is exercised.
        async with SshPool(inv, max_connecting=2) as pool:
            return await pool.run_everywhere(hosts, "hostname")

    results = asyncio.run(go())
    assert set(results) == set(hosts)
    for host, r in results.items():
        assert not isinstance(r, Exception), r
        assert r.exit_status == 0 and r.stdout.strip() == host


def test_an_unknown_or_changed_host_key_is_refused(scaled, lab_inventory: Inventory,
                                                   tmp_path: Path):
    _, inv = scaled
    # The lab's known_hosts does not list the scaled hosts.
    unknown = _with(inv, known_hosts=lab_inventory.ssh.known_hosts)
    # scale-002's address with scale-001's key.
    lines = Path(inv.ssh.known_hosts).read_text().splitlines()
    a1, a2 = inv.hosts["scale-001"].address, inv.hosts["scale-002"].address
    key1 = next(line for line in lines if line.split()[0] in (a1, f"[{a1}]:{inv.ssh.port}"))
    forged = [line for line in lines if line.split()[0] not in (a2, f"[{a2}]:{inv.ssh.port}")]
    forged.append(line_for(a2, inv.ssh.port, key1))
    (tmp_path / "forged").write_text("\n".join(forged) + "\n")
    changed = _with(inv, known_hosts=str(tmp_path / "forged"))

    async def go(i: Inventory, host: str):
        async with SshPool(i) as pool:
            return await pool.run(host, "hostname")

    with pytest.raises(HostKeyRejected, match="scale-003"):
        asyncio.run(go(unknown, "scale-003"))
    with pytest.raises(HostKeyRejected, match="scale-002"):
        asyncio.run(go(changed, "scale-002"))
    assert asyncio.run(go(changed, "scale-001")).stdout.strip() == "scale-001"  # live control


def line_for(address: str, port: int, known_line: str) -> str:
    where = address if port == 22 else f"[{address}]:{port}"
    return where + " " + known_line.split(" ", 1)[1]


def test_only_the_labs_client_key_logs_in(scaled, tmp_path: Path):
    _, inv = scaled
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    stranger = _with(inv, client_key=SecretRef(file=str(other)))

    async def go():
        async with SshPool(stranger) as pool:
            return await pool.run("scale-004", "hostname")

    with pytest.raises(SshAuthFailed, match="scale-004"):
        asyncio.run(go())
    # OpenSSH's client, strict host key checking, the lab's key: the same host answers.
    out = subprocess.run(
        ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
         "-o", f"UserKnownHostsFile={inv.ssh.known_hosts}", "-o", "IdentitiesOnly=yes",
         "-i", inv.ssh.client_key.file, "-p", str(inv.ssh.port),
         f"root@{inv.hosts['scale-004'].address}", "uptime"],
        capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "load average" in out.stdout


def test_dwops_key_runs_only_the_allowlist_on_the_scaled_hosts(scaled, lab: LabConfig):
    """Dropbear enforces the same gate: dwops's key runs `hostname` and `uptime` (the fan-out
    benchmark's command) and nothing else; the lab's oracle key runs anything."""
    from dwops.allowlist import REFUSED
    from lab.hostfiles import ssh_paths

    root, inv = scaled
    hosts = inv.hosts_with_role("scale")
    oracle = _with(inv, client_key=SecretRef(file=str(ssh_paths(lab)["oracle_key"])))

    async def go(i: Inventory, commands: list[str]) -> dict:
        async with SshPool(i) as pool:
            async def one(host: str) -> list:
                conn = await pool.connection(host)
                return [await conn.run(c, check=False, timeout=30) for c in commands]
            return dict(zip(hosts, await asyncio.gather(*(one(h) for h in hosts))))

    probes = ["id", "cat /etc/passwd", "uptime; id", "uptime && id", "hostname $(id)", ""]
    logged = len((root / "allowlist.log").read_text())  # earlier tests logged in too
    for host, results in asyncio.run(go(inv, ["uptime", "hostname", *probes])).items():
        up, name, *refused = results
        assert up.exit_status == 0 and "load average" in up.stdout, (host, up.stderr)
        assert name.stdout.strip() == host
        for probe, r in zip(probes, refused):
            assert r.exit_status == REFUSED and r.stdout == "", (host, probe, r.stdout)
            assert "dwops allowlist: refused" in r.stderr, (host, probe, r.stderr)
    log = (root / "allowlist.log").read_text()[logged:]
    assert log.count(" refused ") == len(hosts) * len(probes)
    assert log.count(" allowed ") == len(hosts) * 2
    for host, (r,) in asyncio.run(go(oracle, ["id -u"])).items():
        assert r.exit_status == 0 and r.stdout.strip() == "0", (host, r.stderr)
