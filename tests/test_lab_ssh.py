"""SSH into every lab host: real sshd, host keys verified, commands only from the inventory."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from dwops.errors import Unavailable
from dwops.inventory import Inventory, load_inventory
from lab.config import LabConfig
from tasks.common import attempt
from tasks.ssh import HostKeyRejected, SshConfigError, SshPool, SshUnavailable


def run(coro):
    return asyncio.run(coro)


async def _everywhere(inv: Inventory, name: str) -> dict:
    async with SshPool(inv) as pool:
        return await pool.run_everywhere(list(inv.hosts), name)


def test_every_host_answers_as_itself_in_its_own_root(lab_inventory: Inventory, lab: LabConfig):
    results = run(_everywhere(lab_inventory, "hostname"))
    assert set(results) == {h.name for h in lab.hosts}
    for host, r in results.items():
        assert not isinstance(r, Exception), r
        assert r.exit_status == 0 and r.stdout.strip() == host


def test_commands_run_in_the_hosts_root_folder(oracle_inventory: Inventory, lab: LabConfig):
    async def go():
        async with SshPool(oracle_inventory) as pool:  # any command: the lab's oracle key
            conn = await pool.connection("dfw-admin01")
            return await conn.run("pwd; ls bin", check=True)

    done = run(go())
    lines = str(done.stdout).split()
    assert lines[0] == str(lab.host_root("dfw-admin01"))
    assert {"restart-jobs", "importer-status", "restart-memcache", "restart-ddlockd"} <= set(lines)


def test_a_changed_host_key_is_refused(lab_inventory: Inventory, lab: LabConfig, tmp_path: Path):
    # known_hosts that names dfw-jobs01's address with another host's key.
    known = Path(lab_inventory.ssh.known_hosts).read_text().splitlines()
    jobs01 = lab.host("dfw-jobs01").address
    web01_key = next(line for line in known if line.startswith(lab.host("va-web01").address + " "))
    forged = [line for line in known if not line.startswith(jobs01 + " ")]
    forged.append(jobs01 + " " + web01_key.split(" ", 1)[1])
    (tmp_path / "known_hosts").write_text("\n".join(forged) + "\n")
    inv = lab_inventory.model_copy(update={"ssh": lab_inventory.ssh.model_copy(
        update={"known_hosts": str(tmp_path / "known_hosts")})})

    async def go():
        async with SshPool(inv) as pool:
            await pool.run("dfw-jobs01", "hostname")

    with pytest.raises(HostKeyRejected, match="dfw-jobs01"):
        run(go())


def test_an_unknown_host_key_is_refused(lab_inventory: Inventory, tmp_path: Path):
    (tmp_path / "known_hosts").write_text("")
    inv = lab_inventory.model_copy(update={"ssh": lab_inventory.ssh.model_copy(
        update={"known_hosts": str(tmp_path / "known_hosts")})})

    async def go():
        async with SshPool(inv) as pool:
            await pool.run("va-web03", "hostname")

    with pytest.raises(HostKeyRejected):
        run(go())


def test_a_missing_known_hosts_file_is_a_configuration_error_never_retried(tmp_path: Path):
    """Production's inventory (no lab needed: nothing gets as far as connecting), with a
    known_hosts path that does not exist and a client key of its own."""
    import asyncssh

    key = tmp_path / "id_ed25519"
    key.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    production = load_inventory(Path(__file__).resolve().parent.parent / "inventory" /
                                "production.toml")
    missing = tmp_path / "no-such-dir" / "known_hosts"
    inv = production.model_copy(update={"ssh": production.ssh.model_copy(update={
        "known_hosts": str(missing), "client_key": {"file": str(key)}})})
    tries = 0

    async def go():
        nonlocal tries
        async with SshPool(inv) as pool:
            async def once():
                nonlocal tries
                tries += 1
                return await pool.run("va-web01", "hostname")

            with pytest.raises(SshConfigError) as e:
                await attempt(once, attempts=3, delay=0)
            return e.value, await pool.run_everywhere(["va-web01", "dfw-jobs01"], "hostname",
                                                      attempts=3)

    error, everywhere = run(go())
    assert tries == 1 and not isinstance(error, Unavailable)
    assert str(error) == (f"va-web01: configuration error: cannot read the known_hosts file "
                          f"{missing} (ssh.known_hosts: No such file or directory); host keys "
                          f"are always verified, so nothing connects without it")
    assert all(isinstance(r, SshConfigError) and str(missing) in str(r)
               for r in everywhere.values()), everywhere


def test_only_inventory_commands_run(lab_inventory: Inventory):
    async def go():
        async with SshPool(lab_inventory) as pool:
            await pool.run("va-web01", "rm_everything")

    with pytest.raises(KeyError, match="allows no command"):
        run(go())
    # Values are quoted into templates: a metacharacter is an argument, never shell syntax.
    cmd = lab_inventory.command("va-admin01", "restart_webs", delay="5; touch /tmp/pwned")
    assert cmd == "bin/restart-webs '5; touch /tmp/pwned'"


def test_a_host_with_no_sshd_is_unavailable_not_a_crash(lab_inventory: Inventory):
    hosts = dict(lab_inventory.hosts)
    hosts["va-web01"] = hosts["va-web01"].model_copy(update={"address": "127.10.0.250"})
    inv = lab_inventory.model_copy(update={"hosts": hosts})
    results = run(_everywhere(inv, "hostname"))
    assert isinstance(results["va-web01"], SshUnavailable)
    assert results["va-web02"].stdout.strip() == "va-web02"


def test_openssh_client_with_strict_host_key_checking(lab: LabConfig, lab_inventory: Inventory):
    """A client that is not dwops: OpenSSH's, with StrictHostKeyChecking=yes."""
    key = lab_inventory.ssh.client_key.file
    for host in ("va-admin01", "dfw-mail01"):
        out = subprocess.run(
            ["ssh", "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
             "-o", f"UserKnownHostsFile={lab_inventory.ssh.known_hosts}", "-o", "IdentitiesOnly=yes",
             "-i", key, f"root@{lab.host(host).address}", "hostname"],
            capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == host


def test_openssh_client_refuses_a_host_it_does_not_know(lab: LabConfig, lab_inventory: Inventory,
                                                         tmp_path: Path):
    (tmp_path / "empty").write_text("")
    out = subprocess.run(
        ["ssh", "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
         "-o", f"UserKnownHostsFile={tmp_path / 'empty'}", "-o", "IdentitiesOnly=yes",
         "-i", lab_inventory.ssh.client_key.file, f"root@{lab.host('va-web02').address}", "hostname"],
        capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "Host key verification failed" in out.stderr


def test_fifty_concurrent_sessions_are_not_dropped(lab_inventory: Inventory):
    """sshd's MaxStartups is raised: a burst of fresh connections all get through."""
    async def go():
        pools = [SshPool(lab_inventory) for _ in range(50)]
        try:
            return await asyncio.gather(*(p.run("dfw-admin01", "hostname") for p in pools),
                                        return_exceptions=True)
        finally:
            await asyncio.gather(*(p.close() for p in pools))

    results = run(go())
    failed = [r for r in results if isinstance(r, Exception)]
    assert not failed, failed[:3]
