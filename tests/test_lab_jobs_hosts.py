"""dfw-jobs01/02: gearman on 7003 and ddlockd on 7002, and the init scripts that manage them."""

from __future__ import annotations

import asyncio
import time

import pytest

from dwops.inventory import Inventory
from lab.config import LabConfig
from lab.gearman_worker import submit_background
from tasks.ddlockd import DdlockdConnection, read_ddlockd_status
from tasks.gearman import read_gearman_status, read_gearman_version, read_gearman_workers
from tasks.ssh import SshPool

from test_lab_services import raw


def run(coro):
    return asyncio.run(coro)


def jobs_hosts(lab: LabConfig):
    return lab.hosts_with("jobs")


def test_gearman_is_the_perl_server_with_the_lab_worker_registered(lab: LabConfig):
    for h in jobs_hosts(lab):
        version = run(read_gearman_version(h.address, lab.ports.gearman))
        assert version.kind == "perl" and version.version.startswith("1.13")
        status = {q.function: q for q in run(read_gearman_status(h.address, lab.ports.gearman))}
        assert status["dw_userpic_resize"].workers >= 1
        workers = run(read_gearman_workers(h.address, lab.ports.gearman))
        assert any("dw_userpic_resize" in w.functions for w in workers)


def test_gearman_answers_status_on_a_raw_socket(lab: LabConfig):
    h = jobs_hosts(lab)[0]
    reply = raw(h.address, lab.ports.gearman, b"status\n", b".\n").decode()
    rows = reply.splitlines()
    assert rows[-1] == "."
    assert all(len(r.split("\t")) == 4 for r in rows[:-1])


def _status_pid(lab_inventory: Inventory, host: str, service: str) -> int:
    async def go():
        async with SshPool(lab_inventory) as pool:
            return await pool.run(host, f"{service}.status")

    r = run(go())
    assert r.exit_status == 0, r.stdout + r.stderr
    return int(r.stdout.split("pid ")[1].split(")")[0])


def test_gearman_restart_over_ssh_loses_its_in_memory_queue(lab: LabConfig, lab_inventory: Inventory):
    h = jobs_hosts(lab)[1]
    for i in range(7):
        submit_background(h.address, lab.ports.gearman, "dw_lab_unworked", f"job {i}".encode())
    queued = {q.function: q for q in run(read_gearman_status(h.address, lab.ports.gearman))}
    assert queued["dw_lab_unworked"].total == 7
    before = _status_pid(lab_inventory, h.name, "gearman")

    async def restart():
        async with SshPool(lab_inventory) as pool:
            return await pool.run(h.name, "gearman.restart")

    assert run(restart()).exit_status == 0
    after = _status_pid(lab_inventory, h.name, "gearman")
    assert after != before
    queued = {q.function: q for q in run(read_gearman_status(h.address, lab.ports.gearman))}
    assert "dw_lab_unworked" not in queued  # the background jobs are gone with the old process
    # The lab's gearman worker reconnects by itself.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        queued = {q.function: q for q in run(read_gearman_status(h.address, lab.ports.gearman))}
        if queued.get("dw_userpic_resize") and queued["dw_userpic_resize"].workers:
            break
        time.sleep(0.3)
    assert queued["dw_userpic_resize"].workers >= 1


def test_ddlockd_status_and_locks_on_both_jobs_hosts(lab: LabConfig):
    async def go(address: str):
        before = await read_ddlockd_status(address, lab.ports.ddlockd)
        async with DdlockdConnection(address, lab.ports.ddlockd) as a, \
                DdlockdConnection(address, lab.ports.ddlockd) as b:
            assert await a.trylock("lab-test lock")
            assert not await b.trylock("lab-test lock")  # taken by another connection
            assert not await a.trylock("lab-test lock")  # not re-entrant
        # a closed: its lock is released
        async with DdlockdConnection(address, lab.ports.ddlockd) as c:
            assert await c.trylock("lab-test lock")
            assert await c.releaselock("lab-test lock")
            assert not await c.releaselock("lab-test lock")
        after = await read_ddlockd_status(address, lab.ports.ddlockd)
        return before, after

    for h in jobs_hosts(lab):
        before, after = run(go(h.address))
        assert after.successes == before.successes + 2
        assert after.failures == before.failures + 2


def test_ddlockd_raw_protocol(lab: LabConfig):
    h = jobs_hosts(lab)[0]
    assert raw(h.address, lab.ports.ddlockd, b"noop\r\n", b"\r\n") == b"OK \r\n"
    status = raw(h.address, lab.ports.ddlockd, b"status\r\n", b"\n\n").decode()
    assert status.startswith("STATUS: OK\nSUCCESSES: ")


def test_restart_ddlockd_only_starts_a_daemon_that_is_down(lab: LabConfig, lab_inventory: Inventory,
                                                           oracle_inventory: Inventory):
    jobs01, jobs02 = (h.name for h in jobs_hosts(lab))
    pid01 = _status_pid(lab_inventory, jobs01, "ddlockd")

    async def go():
        async with SshPool(lab_inventory) as pool, SshPool(oracle_inventory) as by_hand:
            # Stop jobs02's ddlockd by hand (as a crash would; no inventory command stops it:
            # the oracle key), then the admin tool.
            stop = await by_hand.connection(jobs02)
            await stop.run("etc/init.d/ddlockd stop", check=True)
            refused = await stop.run("etc/init.d/ddlockd restart")
            down = await pool.run(jobs02, "ddlockd.status")
            fixed = await pool.run("dfw-admin01", "restart_ddlockd")
            again = await pool.run("dfw-admin01", "restart_ddlockd")
            return refused, down, fixed, again

    refused, down, fixed, again = run(go())
    assert refused.exit_status != 0 and "never restarted" in refused.stderr
    assert down.exit_status == 3
    assert fixed.exit_status == 0
    assert _status_pid(lab_inventory, jobs01, "ddlockd") == pid01  # the running one untouched
    pid02 = _status_pid(lab_inventory, jobs02, "ddlockd")
    assert again.exit_status == 0
    assert _status_pid(lab_inventory, jobs02, "ddlockd") == pid02  # idempotent
    assert run(read_ddlockd_status(lab.host(jobs02).address, lab.ports.ddlockd)).successes == 0


@pytest.mark.parametrize("host", ["dfw-jobs01", "dfw-jobs02"])
def test_ps_on_a_jobs_host_shows_only_that_hosts_processes(lab: LabConfig, lab_inventory: Inventory,
                                                          host: str):
    async def go():
        async with SshPool(lab_inventory) as pool:
            return await pool.run(host, "workers.ps")

    r = run(go())
    assert r.exit_status == 0
    lines = r.stdout.splitlines()
    assert lines[0].split()[:4] == ["PID", "TT", "STAT", "TIME"]
    titles = [line.split(None, 4)[4] for line in lines[1:]]
    assert any(t.startswith("worker-manager") for t in titles)
    importers = [t for t in titles if t.startswith("content-importer")]
    assert len(importers) == lab.workload.importers_per_host
    assert not any("memcached" in t or "mariadbd" in t for t in titles)
