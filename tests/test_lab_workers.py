"""The lab's jobs hosts against the real lab: TheSchwartz semantics, importer titles, stopping.

Everything goes through the fixture `workers_lab` (a `WorkersLab`): the running lab's LabConfig
(conftest's `lab`), whose MariaDB has TheSchwartz's schema and `dw_lab.import_run`, and whose jobs
hosts run the `dw-workers` service (a worker-manager each), plus a way to find a host's manager and
restart it the way the lab does (`lab.ctl`). Tests that stop or restart managers bring them back,
with every worker they want, in a `finally`.

The lab is shared: its job feeder keeps enqueuing jobs and imports, and other test files may run
at the same time. The tests find their own jobs by jobid and their own imports by a unique user
name, and direct grab tests use a function name no worker serves.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pymysql
import pytest

from dwops.inventory import Inventory
from lab import ctl, procs, services
from lab import jobs as schwartz
from lab.config import LabConfig, read_counters
from lab.workers import BORED_TITLE, MANAGER_TITLE, read_title
from tasks.importers import ImporterProcess, parse_importer_ps
from tasks.ssh import CommandResult, SshPool

pytestmark = pytest.mark.lab

SERVICE = "dw-workers"  # the worker-manager's service on every jobs host (lab/services.py)
ADMIN = "dfw-admin01"  # bin/importer-status and bin/restart-jobs live here
IMPORT_KINDS = set(schwartz.IMPORT_KINDS.values())


# -- the fixture -----------------------------------------------------------------------------------


def child_titles(parent: int) -> dict[int, str]:
    """The direct children of `parent` and their titles (their /proc cmdline)."""
    return {pid: read_title(pid) for pid in procs.children_by_parent().get(parent, [])
            if procs.pid_alive(pid)}


def worker_name(title: str) -> str | None:
    """The worker a child's title names (`content-importer [bored]` → content-importer); None
    while it has not set its title yet (it still shows `python -m lab.workers ...`)."""
    if not title or title.startswith(("/", "python")):
        return None
    return title.split(" ", 1)[0]


@dataclass
class WorkersLab:
    """The running lab's jobs hosts and their worker-managers (the `dw-workers` service).

    `start_manager(host)` (re)starts `host`'s manager through `lab.ctl`, as the host's init script
    does, and waits until it runs every worker it wants.
    """

    cfg: LabConfig
    hosts: list[str]

    def connect(self) -> pymysql.connections.Connection:
        return schwartz.connect(self.cfg)

    def counters(self, host: str) -> dict:
        return read_counters(self.cfg, f"workers-{host}")

    def pidfile(self, host: str) -> Path:
        return services.find(self.cfg, SERVICE, host).pidfile

    def manager_pid(self, host: str) -> int | None:
        """The pid of `host`'s running worker-manager, from the service's pidfile."""
        pid = procs.read_pid(self.pidfile(host))
        if pid and read_title(pid) == MANAGER_TITLE:
            return pid
        return None

    def importer_pids(self, host: str) -> set[int]:
        pid = self.manager_pid(host)
        assert pid, f"{host}: no worker-manager running"
        return {p for p, t in child_titles(pid).items() if worker_name(t) == "content-importer"}

    def ready(self, host: str) -> int | None:
        """The manager's pid once it runs every worker it wants, all titled, and has written its
        counters; else None."""
        pid = self.manager_pid(host)
        c = self.counters(host)
        if not pid or c.get("manager_pid") != pid or c.get("state") != "running":
            return None
        want = c.get("want") or {}
        names = [worker_name(t) for t in child_titles(pid).values()]
        if not want or None in names:
            return None
        if all(names.count(n) >= k for n, k in want.items()):
            return pid
        return None

    def wait_ready(self, host: str, timeout: float = 60.0) -> int:
        """Wait until `host`'s manager runs every worker it wants, all titled; return its pid."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.ready(host)
            if pid:
                return pid
            time.sleep(0.2)
        raise AssertionError(f"{host}: worker-manager not ready (pid {self.manager_pid(host)}): "
                             f"{self.counters(host)}")

    def start_manager(self, host: str) -> int:
        """Restart `host`'s worker-manager through lab.ctl and wait for all of its workers."""
        assert ctl.restart(self.cfg, SERVICE, host) == 0, f"could not start {SERVICE} on {host}"
        return self.wait_ready(host)

    def ensure_running(self) -> None:
        """Every jobs host's manager running with all of its workers (restarted where down)."""
        for host in self.hosts:
            if self.manager_pid(host) is None:
                self.start_manager(host)
        for host in self.hosts:
            self.wait_ready(host)


@pytest.fixture(scope="module")
def workers_lab(lab: LabConfig) -> Iterator[WorkersLab]:
    """The running lab's jobs hosts, every worker-manager up with all of its workers."""
    wl = WorkersLab(lab, [h.name for h in lab.hosts_with("jobs")])
    for host in wl.hosts:
        wl.wait_ready(host)
    yield wl
    wl.ensure_running()


# -- helpers ---------------------------------------------------------------------------------------


def ps_importers() -> list[ImporterProcess]:
    """The importers `ps` shows; `-ww` because without a terminal ps cuts lines at 80 columns."""
    out = subprocess.run(["ps", "-ww", "-e", "-o", "pid,tty,stat,bsdtime,args"],
                         capture_output=True, text=True, check=True, timeout=10).stdout
    return parse_importer_ps(out)


def query(conn: pymysql.connections.Connection, sql: str, args: tuple = ()) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return list(cur.fetchall())


def wait_for(what: str, fn: Callable[[], object], timeout: float, every: float = 0.2) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def job_row(conn: pymysql.connections.Connection, jobid: int) -> tuple | None:
    rows = query(conn, "SELECT jobid, CAST(run_after AS SIGNED), CAST(grabbed_until AS SIGNED),"
                       " UNIX_TIMESTAMP() FROM job WHERE jobid = %s", (jobid,))
    return rows[0] if rows else None


def import_runs(wl: WorkersLab, conn: pymysql.connections.Connection, jobid: int) -> list[dict]:
    table = schwartz.lab_table(wl.cfg, "import_run")
    with conn.cursor(pymysql.cursors.DictCursor) as cur:
        cur.execute(f"SELECT *, TIMESTAMPDIFF(MICROSECOND, started_at, finished_at) / 1e6 AS took"
                    f" FROM {table} WHERE jobid = %s ORDER BY id", (jobid,))
        return list(cur.fetchall())


def unique_user(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


async def importer_status(pool: SshPool) -> list[ImporterProcess]:
    """`bin/importer-status` on dfw-admin01, parsed."""
    r = await pool.run(ADMIN, "importer_status", timeout=30)
    assert r.exit_status == 0, f"importer-status: {r.exit_status}: {r.stderr}"
    return parse_importer_ps(r.stdout)


def assert_every_importer(wl: WorkersLab, seen: list[ImporterProcess]) -> None:
    """`seen` shows each content-importer of every jobs host (as many as workers.conf wants,
    the lab's importers_per_host), once, each bored or busy with a known kind of import."""
    by_pid = {p.pid: p for p in seen}
    assert len(by_pid) == len(seen), f"an importer listed twice: {seen}"
    expected: set[int] = set()
    for host in wl.hosts:
        pids = wl.importer_pids(host)
        assert len(pids) == wl.counters(host)["want"]["content-importer"] \
            == wl.cfg.workload.importers_per_host, f"{host}: importers {pids}"
        expected |= pids
    assert set(by_pid) == expected, f"importer-status shows {sorted(by_pid)}, hosts run " \
                                    f"{sorted(expected)}: {seen}"
    for p in seen:
        if p.bored:
            assert p.title == BORED_TITLE and p.user is None
        else:
            assert p.state in IMPORT_KINDS and p.user and p.userid is not None, p


@pytest.fixture
def conn(workers_lab: WorkersLab) -> Iterator[pymysql.connections.Connection]:
    c = workers_lab.connect()
    yield c
    c.close()


# -- TheSchwartz semantics (direct, on a function no worker serves) -------------------------------


def test_a_job_is_grabbed_once_and_completion_deletes_it(workers_lab: WorkersLab, conn) -> None:
    func = f"Lab::Test::Grab::{uuid.uuid4().hex[:8]}"
    jobid = schwartz.insert_job(conn, func, {"n": 1})
    funcids = {func: schwartz.funcname_to_id(conn, func)}
    run_after, grabbed_until = query(
        conn, "SELECT run_after - UNIX_TIMESTAMP(), grabbed_until FROM job WHERE jobid = %s",
        (jobid,))[0]
    assert abs(run_after) <= 1 and grabbed_until == 0

    other = workers_lab.connect()
    try:
        job = schwartz.grab_job(conn, funcids)
        assert job is not None and job.jobid == jobid and job.arg == {"n": 1}
        assert schwartz.grab_job(other, funcids) is None  # grabbed: nobody else gets it
        _, _, until, now = job_row(conn, jobid)
        assert 599 <= until - now <= 600  # grab_for 600
        schwartz.complete_job(conn, job)
        assert job_row(conn, jobid) is None
        assert schwartz.grab_job(other, funcids) is None
    finally:
        other.close()
        query(conn, "DELETE FROM funcmap WHERE funcname = %s", (func,))


def test_concurrent_grabbers_never_share_a_job(workers_lab: WorkersLab, conn) -> None:
    import threading

    func = f"Lab::Test::Race::{uuid.uuid4().hex[:8]}"
    jobids = {schwartz.insert_job(conn, func, {"i": i}) for i in range(60)}
    funcid = schwartz.funcname_to_id(conn, func)
    got: list[list[int]] = [[] for _ in range(6)]

    def grabber(i: int) -> None:
        c = workers_lab.connect()
        try:
            while (job := schwartz.grab_job(c, {func: funcid})) is not None:
                got[i].append(job.jobid)
                schwartz.complete_job(c, job)
        finally:
            c.close()

    threads = [threading.Thread(target=grabber, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    everything = [j for g in got for j in g]
    assert sorted(everything) == sorted(jobids)  # each job exactly once
    assert query(conn, "SELECT COUNT(*) FROM job WHERE funcid = %s", (funcid,))[0][0] == 0
    query(conn, "DELETE FROM funcmap WHERE funcid = %s", (funcid,))


def test_failures_follow_dreamwidths_retry_schedule(workers_lab: WorkersLab, conn) -> None:
    """(10, 30, 60, 300, 600)[failures]: 30, 60, 300, 600 s, then at once; the 6th drops it."""
    func = f"Lab::Test::Retry::{uuid.uuid4().hex[:8]}"
    jobid = schwartz.insert_job(conn, func, {})
    funcids = {func: schwartz.funcname_to_id(conn, func)}
    job = schwartz.grab_job(conn, funcids)
    assert job is not None
    for n, delay in enumerate([30, 60, 300, 600, None], 1):
        out = schwartz.fail_job(conn, job, f"failure {n}")
        assert out.failures == n and out.retried
        _, run_after, grabbed_until, now = job_row(conn, jobid)
        assert grabbed_until == 0
        if delay is None:  # no delay: run_after stays as it was when grabbed, in the past
            assert run_after == job.run_after <= now
        else:
            assert delay - 1 <= run_after - now <= delay
            # let the delay pass, then grab it again as a worker would
            query(conn, "UPDATE job SET run_after = UNIX_TIMESTAMP() - 1 WHERE jobid = %s",
                  (jobid,))
            job = schwartz.grab_job(conn, funcids)
            assert job is not None and job.jobid == jobid
    out = schwartz.fail_job(conn, job, "failure 6")
    assert (out.failures, out.retried) == (6, False)
    assert job_row(conn, jobid) is None
    messages = [r[0] for r in query(conn, "SELECT message FROM error WHERE jobid = %s"
                                          " ORDER BY error_time, message", (jobid,))]
    assert sorted(messages) == sorted(f"failure {n}" for n in range(1, 7))
    assert query(conn, "SELECT COUNT(*) FROM exitstatus WHERE jobid = %s", (jobid,))[0][0] == 0
    query(conn, "DELETE FROM error WHERE jobid = %s", (jobid,))
    query(conn, "DELETE FROM funcmap WHERE funcname = %s", (func,))


# -- the running workers ---------------------------------------------------------------------------


SEND_EMAIL = "TheSchwartz::Worker::SendEmail"


def done_counts(wl: WorkersLab) -> int:
    return sum(int(wl.counters(h).get("jobs_done", 0)) for h in wl.hosts)


def test_worker_completes_a_job_once(workers_lab: WorkersLab, conn) -> None:
    before = done_counts(workers_lab)
    jobid = schwartz.enqueue_job(workers_lab.cfg, SEND_EMAIL,
                                 {"rcpts": [f"{unique_user('mail')}@example.com"]})
    wait_for("the job to be completed", lambda: job_row(conn, jobid) is None, 30)
    assert query(conn, "SELECT COUNT(*) FROM error WHERE jobid = %s", (jobid,))[0][0] == 0
    wait_for("the managers to count it", lambda: done_counts(workers_lab) > before, 10)


def test_worker_failure_writes_error_and_reschedules(workers_lab: WorkersLab, conn) -> None:
    """On a function the lab's jobs hosts serve (send-email: every jobs host runs it)."""
    assert any("send-email" in workers_lab.counters(h).get("want", {})
               for h in workers_lab.hosts), "no jobs host runs send-email"
    message = f"lab test failure {uuid.uuid4().hex[:8]}"
    jobid = schwartz.enqueue_job(workers_lab.cfg, SEND_EMAIL,
                                 {"rcpts": [f"{unique_user('fail')}@example.com"],
                                  "fail": message, "fail_times": 1})
    try:
        rows = wait_for(
            "an error row",
            lambda: query(conn, "SELECT error_time, message, funcid FROM error WHERE jobid = %s",
                          (jobid,)),
            30,
        )
        error_time, got_message, funcid = rows[0]
        assert got_message == message
        assert funcid == schwartz.funcname_to_id(conn, SEND_EMAIL)
        _, run_after, grabbed_until, _ = job_row(conn, jobid)
        assert grabbed_until == 0
        # TheSchwartz::Worker::SendEmail: (300, 300, 900, 1800)[1]
        assert schwartz.job_class(SEND_EMAIL).retry_delay(1) == 300
        assert 299 <= run_after - error_time <= 301
        # let the delay pass: a worker grabs it again and (fail_times=1) completes it
        with conn.cursor() as cur:
            assert cur.execute("UPDATE job SET run_after = UNIX_TIMESTAMP() - 1"
                               " WHERE jobid = %s AND grabbed_until = 0", (jobid,)) == 1
        wait_for("the retried job to complete", lambda: job_row(conn, jobid) is None, 30)
        assert len(query(conn, "SELECT 1 FROM error WHERE jobid = %s", (jobid,))) == 1
    finally:
        query(conn, "DELETE FROM job WHERE jobid = %s", (jobid,))
        query(conn, "DELETE FROM error WHERE jobid = %s", (jobid,))


def test_importer_title_turns_busy_then_bored(workers_lab: WorkersLab, conn) -> None:
    user = unique_user("labtitle")
    jobid = schwartz.enqueue_import(workers_lab.cfg, user, 4321, 6, "entries")
    try:
        def busy() -> ImporterProcess | None:
            return next((p for p in ps_importers() if p.user == user), None)

        proc = wait_for("an importer to pick up the import", busy, 90, every=0.1)
        assert proc.state == "entries" and proc.userid == 4321 and not proc.bored
        assert proc.title.startswith(f"content-importer [entries: {user}(4321)")
        progress = {proc.progress}
        deadline = time.monotonic() + 30
        while (p := busy()) is not None:
            assert p.pid == proc.pid and time.monotonic() < deadline, p
            progress.add(p.progress)
            time.sleep(0.1)
        assert "post-prune" in progress
        assert any(s.startswith("getevents - 0 to ") for s in progress)

        def bored_again() -> ImporterProcess | None:
            p = next((p for p in ps_importers() if p.pid == proc.pid), None)
            assert p is not None, f"importer {proc.pid} is gone"
            return p if p.bored else None

        # Bored as soon as the import ends; should it grab a queued import of the feeder at
        # once, it must be bored again when that one ends.
        after = wait_for("the importer to be bored", bored_again, 60, every=0.1)
        assert after.title == BORED_TITLE

        run = wait_for("the import_run row", lambda: [
            r for r in import_runs(workers_lab, conn, jobid) if r["status"] == "done"], 10)[0]
        assert (run["username"], run["userid"], run["kind"], run["pid"]) == (user, 4321, "entries",
                                                                             proc.pid)
        assert run["host"] in workers_lab.hosts
        assert proc.pid in workers_lab.importer_pids(run["host"])
        assert 5.5 <= float(run["took"]) <= 9
        assert job_row(conn, jobid) is None  # completed → deleted
    finally:
        query(conn, "DELETE FROM job WHERE jobid = %s", (jobid,))


def test_importer_status_over_ssh_shows_every_importer_and_a_busy_import(
        workers_lab: WorkersLab, lab_inventory: Inventory, conn) -> None:
    """`bin/importer-status` on dfw-admin01, over SSH: every importer of both jobs hosts, bored
    or busy, and an import of ours as busy with its user."""
    user, userid = unique_user("labstatus"), 2468
    jobid: int | None = None

    async def go() -> tuple[list[ImporterProcess], list[ImporterProcess]]:
        nonlocal jobid
        async with SshPool(lab_inventory) as pool:
            before = await importer_status(pool)
            jobid = schwartz.enqueue_import(workers_lab.cfg, user, userid, 3, "entries")
            deadline = time.monotonic() + 90
            while True:
                seen = await importer_status(pool)
                if any(p.user == user for p in seen):
                    return before, seen
                assert time.monotonic() < deadline, f"importer-status never showed {user}: {seen}"
                await asyncio.sleep(0.1)

    try:
        before, seen = asyncio.run(go())
        assert_every_importer(workers_lab, before)
        assert_every_importer(workers_lab, seen)
        mine = [p for p in seen if p.user == user]
        assert len(mine) == 1, mine
        p = mine[0]
        assert (p.state, p.user, p.userid, p.bored) == ("entries", user, userid, False)
        assert p.title.startswith(f"content-importer [entries: {user}({userid})")
        run = wait_for("the import to be done", lambda: [
            r for r in import_runs(workers_lab, conn, jobid) if r["status"] == "done"], 15)[0]
        assert (run["pid"], run["username"], run["userid"]) == (p.pid, user, userid)
    finally:
        if jobid is not None:
            query(conn, "DELETE FROM job WHERE jobid = %s", (jobid,))


def start_import(wl: WorkersLab, conn, user: str, userid: int) -> tuple[int, dict]:
    """Enqueue a 300 s entries import and wait until an importer runs it (its busy title on)."""
    jobid = schwartz.enqueue_import(wl.cfg, user, userid, 300, "entries")
    try:
        run = wait_for("the import to start",
                       lambda: [r for r in import_runs(wl, conn, jobid)
                                if r["status"] == "running"], 90)[0]
        pid = int(run["pid"])
        wait_for("its busy title", lambda: any(p.pid == pid and p.user == user
                                               for p in ps_importers()), 10)
    except BaseException:
        query(conn, "DELETE FROM job WHERE jobid = %s", (jobid,))
        raise
    return jobid, run


def assert_interrupted_and_leased(wl: WorkersLab, conn, jobid: int, user: str) -> dict:
    """The import of `jobid` is recorded interrupted (KILLed), its job still grabbed for the
    entries importer's 12 h, and no importer shows it any more."""
    run = wait_for("the row to be marked", lambda: [
        r for r in import_runs(wl, conn, jobid) if r["status"] == "interrupted"], 10)[0]
    assert run["finished_at"] is not None and "SIGKILL" in (run["detail"] or "")
    # the job stays grabbed until the entries importer's 12 h lease runs out
    _, _, grabbed_until, now = job_row(conn, jobid)
    assert 12 * 3600 - 60 <= grabbed_until - now <= 12 * 3600
    assert not any(p.user == user for p in ps_importers())
    return run


def test_stopping_the_manager_kills_a_busy_import_after_10s(workers_lab: WorkersLab, conn) -> None:
    user = unique_user("labkill")
    jobid, run = start_import(workers_lab, conn, user, 5150)
    host, pid = run["host"], int(run["pid"])
    manager = workers_lab.manager_pid(host)
    stopper = threading.Thread(target=ctl.stop, args=(workers_lab.cfg, SERVICE, host))
    try:
        assert manager, f"no worker-manager found for {host}"
        sent = time.monotonic()
        stopper.start()  # lab.ctl.stop: TERM, as the init script's stop does
        assert procs.wait_gone(pid, 20), "the importer outlived the manager's 10 s grace"
        took = time.monotonic() - sent
        assert 9.5 <= took <= 12.5, f"importer died {took:.1f}s after TERM"
        assert procs.wait_gone(manager, 10), "the worker-manager did not exit"
        assert_interrupted_and_leased(workers_lab, conn, jobid, user)
    finally:
        if stopper.ident is not None:
            stopper.join(30)
        workers_lab.start_manager(host)
        query(conn, "DELETE FROM job WHERE jobid = %s", (jobid,))


def test_restart_jobs_over_ssh_interrupts_an_import_and_the_managers_count_it(
        workers_lab: WorkersLab, lab_inventory: Inventory, conn) -> None:
    """The notes' restart: `bin/restart-jobs` on dfw-admin01 restarts every jobs host's manager;
    an import it interrupts is recorded and counted, its job keeps its 12 h lease, and all the
    importers come back."""
    wl = workers_lab
    user = unique_user("labrestart")
    jobid, run = start_import(wl, conn, user, 6060)
    host = run["host"]
    table = schwartz.lab_table(wl.cfg, "import_run")
    try:
        old = {h: wl.manager_pid(h) for h in wl.hosts}
        counted = {h: int(wl.counters(h).get("imports_interrupted", 0)) for h in wl.hosts}
        since = query(conn, "SELECT NOW(3)")[0][0]

        async def restart() -> CommandResult:
            async with SshPool(lab_inventory) as pool:
                return await pool.run(ADMIN, "restart_jobs", timeout=120)

        r = asyncio.run(restart())
        assert r.exit_status == 0, f"restart-jobs: {r.exit_status}: {r.stdout}{r.stderr}"
        assert_interrupted_and_leased(wl, conn, jobid, user)
        new = {h: wl.wait_ready(h) for h in wl.hosts}
        assert all(new[h] != old[h] for h in wl.hosts), (old, new)

        # Each host's counters count what its stopping manager interrupted, ours included.
        marked = dict(query(conn, f"SELECT host, COUNT(*) FROM {table} WHERE status ="
                                  " 'interrupted' AND finished_at >= %s GROUP BY host", (since,)))
        assert marked.get(host, 0) >= 1
        for h in wl.hosts:
            assert wl.counters(h)["imports_interrupted"] - counted[h] == marked.get(h, 0), \
                (h, counted, marked, wl.counters(h))

        async def status() -> list[ImporterProcess]:
            async with SshPool(lab_inventory) as pool:
                return await importer_status(pool)

        after = asyncio.run(status())
        assert_every_importer(wl, after)
        assert not any(p.user == user for p in after)
    finally:
        wl.ensure_running()
        query(conn, "DELETE FROM job WHERE jobid = %s", (jobid,))
