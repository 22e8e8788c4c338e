"""The lab's jobs hosts' workers: Dreamwidth's `bin/worker-manager` and its TheSchwartz workers.

    python -m lab.workers manager --host dfw-jobs01 --config PATH [--interval 1] [--pass-seconds 5]
    python -m lab.workers worker content-importer --host dfw-jobs01 --config PATH [--interval 1]
    python -m lab.workers conf --host dfw-jobs01 --config PATH [--force]

The manager (process title `worker-manager`) does what Dreamwidth's does:

- reads `etc/workers.conf` under the host's root: Dreamwidth's YAML, keys `all:` and short host
  names, each mapping a worker name to a process count; a host's count wins over `all`'s (Perl `||`,
  so a host cannot lower a worker to 0);
- every 5 s pass reaps dead children and starts at most one process per worker that has fewer
  than it wants;
- on TERM (or INT/QUIT) sends TERM to every child, waits up to 10 s, KILLs the rest and exits. An
  importer in the middle of an import is therefore killed after 10 s and its job stays grabbed
  until its lease runs out (12 h for entries, 72 h for comments).

The lab adds bookkeeping the real one does not have: when it reaps a child that died while its
import was running, it marks that `dw_lab.import_run` row `interrupted`; and every 2 s it writes
`counters/workers-<host>.json` (jobs_done, jobs_failed, imports_done, imports_failed,
imports_interrupted, children by worker, their titles). The totals count since the lab's first
worker-manager on the host, not since this one's start: a new manager carries on the totals its
predecessor left in that file (the stopping manager writes them last, after marking the imports it
KILLed), so the imports a restart interrupts stay counted after the restart.

Each worker is a child process (`python -m lab.workers worker NAME ...`) that runs
LJ::Worker::TheSchwartz's loop: grab a job of its functions (see `lab.jobs`), work it, and when
there is none sleep 1, 2, ... up to `--interval` seconds (5 in Dreamwidth, 1 by default in the lab).
TERM only sets a flag: the worker exits after its current job. Its process title is the worker's:

- `content-importer [bored]` while idle (every job end resets it), and Dreamwidth's busy titles
  while importing: `content-importer [entries: USER(ID)]`, `... post-prune`,
  `... getevents - A to B`, `content-importer [comments: USER(ID) meta-fetch from id N]`,
  `... body-fetch from id N`, `... posting N comments`, `... posting N/M comments [B]`,
  `content-importer [userpics: USER(ID)]`, and so on. An import's job arg is JSON
  `{"user": U, "userid": N, "seconds": S}`: it takes S seconds and is recorded in
  `dw_lab.import_run` (running → done). The entries importer re-leases its job for 12 h at
  start and the comments importer for 72 h (the real ones then refresh to 1 h inside their fetch
  loops; the lab keeps the long lease, as the production notes describe it).
- generic workers (send-email, sphinx-copier, esn-*, lazy-cleanup) take 50-200 ms per job, with
  their Dreamwidth titles (`send-email [idle]`, `send-email [DOMAIN]`, `sphinx-copier [bored]`,
  `sphinx-copier [USER(ID) - J, T]`) or, where Dreamwidth sets none, the worker's name.

Any job whose arg has `"fail": MESSAGE` fails (`"fail_times": N` only while it has failed fewer
than N times): an `error` row, then a retry after the class's delay, as TheSchwartz does.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, TypeVar

import pymysql

from lab import jobs as schwartz
from lab.config import LabConfig, read_counters, write_counters

log = logging.getLogger("lab.workers")

T = TypeVar("T")

BORED_TITLE = "content-importer [bored]"
MANAGER_TITLE = "worker-manager"
PASS_SECONDS = 5.0  # bin/worker-manager: `sleep 5` between reap/spawn passes
TERM_GRACE_SECONDS = 10.0  # bin/worker-manager: TERM, wait up to 10 s, then KILL
COUNTERS_EVERY = 2.0
LAB_IDLE_INTERVAL = 1.0  # Dreamwidth's workers back off up to 5 s; the lab stays livelier


# -- the workers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerSpec:
    """One kind of worker process (a script in Dreamwidth's bin/worker/)."""

    name: str
    funcs: tuple[str, ...]
    importer: bool = False
    idle_title: str | None = None  # None: the worker's name

    @property
    def title(self) -> str:
        return self.idle_title or self.name


_LJ = schwartz.IMPORTER_PREFIX
WORKERS: dict[str, WorkerSpec] = {
    w.name: w
    for w in [
        # bin/worker/content-importer: every LiveJournal importer class.
        WorkerSpec(
            "content-importer",
            tuple(_LJ + c for c in ("Bio", "Comments", "Entries", "FriendGroups", "Friends",
                                    "Tags", "Userpics")),
            importer=True,
            idle_title=BORED_TITLE,
        ),
        # bin/worker/content-importer-lite: the quick ones only.
        WorkerSpec(
            "content-importer-lite",
            tuple(_LJ + c for c in ("Bio", "FriendGroups", "Friends", "Tags", "Userpics")),
            importer=True,
            idle_title=BORED_TITLE,
        ),
        # bin/worker/content-importer-verify
        WorkerSpec("content-importer-verify", (_LJ + "Verify",), importer=True,
                   idle_title=BORED_TITLE),
        WorkerSpec("send-email", ("TheSchwartz::Worker::SendEmail",),
                   idle_title="send-email [idle]"),
        WorkerSpec("sphinx-copier", ("DW::Worker::Sphinx::Copier",),
                   idle_title="sphinx-copier [bored]"),
        WorkerSpec("esn-fired-event", ("LJ::Worker::FiredEvent",)),
        WorkerSpec("esn-process-sub", ("LJ::Worker::ProcessSub",)),
        WorkerSpec("esn-cluster-subs", ("LJ::Worker::FindSubsByCluster",)),
        WorkerSpec("lazy-cleanup", ("LJ::Worker::DeleteEntry",)),
    ]
}


# -- workers.conf ----------------------------------------------------------------------------------


class WorkersConfError(ValueError):
    pass


def parse_workers_conf(text: str) -> dict[str, dict[str, int]]:
    """Dreamwidth's `etc/workers.conf`: top-level `section:` keys, indented `worker: count` lines.

    Only this two-level YAML subset is understood; `#` starts a comment.
    """
    sections: dict[str, dict[str, int]] = {}
    current: dict[str, int] | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if not line.strip():
            continue
        if not line[0].isspace():
            m = re.fullmatch(r"([^\s:]+)\s*:", line)
            if not m:
                raise WorkersConfError(f"line {lineno}: expected 'section:', got {raw!r}")
            current = sections.setdefault(m.group(1), {})
            continue
        m = re.fullmatch(r"\s+([^\s:]+)\s*:\s*(\d+)", line)
        if not m or current is None:
            raise WorkersConfError(f"line {lineno}: expected '    worker: count', got {raw!r}")
        current[m.group(1)] = int(m.group(2))
    return sections


def workers_for_host(conf: dict[str, dict[str, int]], host: str) -> dict[str, int]:
    """The processes `host` runs, as bin/worker-manager's load_config computes them.

    `host` is the short host name (`dfw-jobs01.example` counts as `dfw-jobs01`).
    """
    short = host.split(".", 1)[0]
    everywhere, here = conf.get("all", {}), conf.get(short, {})
    return {job: here.get(job) or everywhere.get(job) or 0 for job in [*everywhere, *here]}


def load_workers_conf(path: Path, host: str) -> dict[str, int]:
    return workers_for_host(parse_workers_conf(Path(path).read_text()), host)


def render_workers_conf(cfg: LabConfig) -> str:
    """The lab's `etc/workers.conf`, the same file on every jobs host (like a shared checkout)."""
    importers = cfg.workload.importers_per_host
    return f"""\
# to run jobs on every server that runs a worker-manager, put
# the job name and the count here

all:
    content-importer: {importers}
    send-email: 1
    sphinx-copier: 1
    esn-fired-event: 1
    esn-process-sub: 1

# alternately, if you want to run jobs on a particular hostname, or
# alter how many jobs you run on a host, do it with the hostname

dfw-jobs01:
    esn-cluster-subs: 1

dfw-jobs02:
    lazy-cleanup: 1
"""


def workers_conf_path(cfg: LabConfig, host: str) -> Path:
    return cfg.host_root(host) / "etc" / "workers.conf"


def write_workers_conf(cfg: LabConfig, host: str, *, force: bool = False) -> Path:
    """Write the lab's workers.conf under `host`'s root unless one is there (or `force`)."""
    path = workers_conf_path(cfg, host)
    if force or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_workers_conf(cfg))
    return path


# -- process titles --------------------------------------------------------------------------------


def set_title(title: str) -> None:
    """Set this process's title (what `ps -o args` shows), like Perl's `$0 = ...`."""
    try:
        import setproctitle
    except ImportError:  # pragma: no cover - the lab group installs it
        return
    setproctitle.setproctitle(title)


def read_title(pid: int) -> str:
    """Another process's title (its /proc cmdline), '' if it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def importer_title(kind: str, user: str, userid: int, suffix: str = "") -> str:
    """Dreamwidth's importer title: `content-importer [KIND: USER(ID)]` plus an optional step."""
    return f"content-importer [{kind}: {user}({userid}){' ' + suffix if suffix else ''}]"


def import_title_steps(kind: str, seconds: float) -> list[tuple[float, str]]:
    """When an import of `kind` lasting `seconds` shows which title suffix: (offset s, suffix).

    Follows the steps of Dreamwidth's Entries.pm (plain, `post-prune`, `getevents - A to B` per
    100 items from 0 to the remote's max jitemid) and Comments.pm (`meta-fetch from id N` per
    10000, then per 500 bodies `body-fetch from id N`, `posting K comments` and
    `posting ID/MAX comments [K]`); other kinds show their plain title throughout.
    """
    s = max(float(seconds), 0.0)
    steps: list[tuple[float, str]] = [(0.0, "")]
    if kind == "entries":
        maxid = max(1, int(s * 25))
        steps.append((0.1 * s, "post-prune"))
        batches = [(a, min(a + 99, maxid)) for a in range(0, maxid + 1, 100)]
        span = 0.8 * s / len(batches)
        steps += [(0.2 * s + i * span, f"getevents - {a} to {b}") for i, (a, b) in
                  enumerate(batches)]
    elif kind == "comments":
        total = max(20, int(s * 60))
        metas = list(range(1, total + 1, 10000))
        for i, first in enumerate(metas):
            steps.append((0.05 * s + i * 0.1 * s / len(metas), f"meta-fetch from id {first}"))
        batches = [(a, min(a + 499, total)) for a in range(1, total + 1, 500)]
        span = 0.85 * s / len(batches)
        for i, (a, b) in enumerate(batches):
            t0, count = 0.15 * s + i * span, b - a + 1
            steps.append((t0, f"body-fetch from id {a}"))
            steps.append((t0 + 0.3 * span, f"posting {count} comments"))
            for j in range(3):
                done = a + (count - 1) * j // 2
                steps.append((t0 + (0.4 + 0.2 * j) * span,
                              f"posting {done}/{total} comments [{count}]"))
    return steps


# -- a worker process ------------------------------------------------------------------------------


class Reporter:
    """Tells the manager what happened, one word a line on an inherited pipe (optional)."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def __call__(self, event: str) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, event.encode() + b"\n")
        except OSError:
            self.fd = None  # the manager is gone; keep working


class Worker:
    """One TheSchwartz worker process (LJ::Worker::TheSchwartz's `schwartz_work` loop)."""

    def __init__(
        self,
        cfg: LabConfig,
        spec: WorkerSpec,
        host: str,
        *,
        interval: float = LAB_IDLE_INTERVAL,
        report: Reporter | None = None,
    ) -> None:
        self.cfg = cfg
        self.spec = spec
        self.host = host
        self.interval = interval
        self.report = report or Reporter(None)
        self.quit = False
        self.conn: pymysql.connections.Connection | None = None
        self.funcids: dict[str, int] = {}
        self.rng = random.Random()

    # signals: TERM only sets a flag
    def on_term(self, _signum: int, _frame: Any) -> None:
        self.quit = True

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self.on_term)
        signal.signal(signal.SIGINT, self.on_term)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    # database
    def db(self) -> pymysql.connections.Connection:
        if self.conn is None:
            self.conn = schwartz.connect(self.cfg)
            self.funcids = {}
        if not self.funcids:
            self.funcids = {f: schwartz.funcname_to_id(self.conn, f) for f in self.spec.funcs}
        return self.conn

    def drop_db(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
        self.conn, self.funcids = None, {}

    def with_db(self, what: str, fn: Callable[[pymysql.connections.Connection], T],
                patience: float = 60.0) -> T | None:
        """Run `fn(conn)`, reconnecting through outages for up to `patience` s; None if it never
        worked (the job then keeps its lease and is retried once that runs out)."""
        deadline = time.monotonic() + patience
        while True:
            try:
                return fn(self.db())
            except schwartz.CONNECTION_ERRORS as e:
                self.drop_db()
                if time.monotonic() >= deadline:
                    log.error("%s: giving up after database errors: %s", what, e)
                    return None
                log.warning("%s: database error (%s); retrying", what, e)
                time.sleep(1.0)

    # the loop
    def nap(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.quit and time.monotonic() < end:
            time.sleep(min(0.1, max(0.0, end - time.monotonic())))

    def run(self) -> int:
        set_title(self.spec.title)
        log.info("%s worker started for %s", self.spec.name, ", ".join(self.spec.funcs))
        sleep = 0.0
        while not self.quit:
            try:
                did_work = self.work_once()
            except schwartz.CONNECTION_ERRORS as e:
                log.warning("database unavailable: %s", e)
                self.drop_db()
                did_work = False
            if self.quit:
                break
            if did_work:
                sleep = max(0.0, sleep - 1)
            else:
                set_title(self.spec.title)  # schwartz_on_idle
                sleep = min(sleep + 1, self.interval)
                self.nap(sleep)
        log.info("%s worker exiting", self.spec.name)
        self.drop_db()
        return 0

    def work_once(self) -> bool:
        conn = self.db()
        job = schwartz.grab_job(conn, self.funcids)
        if job is None:
            return False
        try:
            if self.spec.importer:
                self.run_import(job)
            else:
                self.run_generic(job)
        except schwartz.CONNECTION_ERRORS:
            raise
        except Exception as e:  # TheSchwartz's work_safely: a dying job is a failed job
            log.exception("job %d died", job.jobid)
            message = f"died: {e}"
            self.with_db("fail job", lambda c: schwartz.fail_job(c, job, message))
            self.report("job_failed")
        finally:
            if self.spec.importer:
                set_title(BORED_TITLE)
        return True

    def should_fail(self, job: schwartz.Job) -> str | None:
        """The failure a job's arg asks for, if it is due (`fail`, `fail_times`)."""
        arg = job.arg if isinstance(job.arg, dict) else {}
        message = arg.get("fail")
        if not message:
            return None
        times = arg.get("fail_times")
        if times is not None:
            failures = self.with_db("count failures",
                                    lambda c: schwartz.job_failures(c, job.jobid)) or 0
            if failures >= int(times):
                return None
        return str(message)

    # generic jobs
    def run_generic(self, job: schwartz.Job) -> None:
        arg = job.arg if isinstance(job.arg, dict) else {}
        if self.spec.name == "send-email":
            rcpts = arg.get("rcpts") or []
            domain = rcpts[0].rsplit("@", 1)[-1] if rcpts else "example.com"
            set_title(f"send-email [{domain}]")
        elif self.spec.name == "sphinx-copier":
            set_title(f"sphinx-copier [{arg.get('user', 'system')}({arg.get('userid', 0)})"
                      f" - {arg.get('jitemid', 0)}, {arg.get('jtalkid', 0)}]")
        time.sleep(self.rng.uniform(0.05, 0.2))
        failure = self.should_fail(job)
        if failure:
            self.with_db("fail job", lambda c: schwartz.fail_job(c, job, failure))
            self.report("job_failed")
        else:
            self.with_db("complete job", lambda c: schwartz.complete_job(c, job))
            self.report("job_done")
        if self.spec.name == "sphinx-copier":
            set_title("sphinx-copier [bored]")

    # imports
    def run_import(self, job: schwartz.Job) -> None:
        arg = job.arg if isinstance(job.arg, dict) else {}
        kind = schwartz.IMPORT_KINDS.get(job.funcname.rsplit("::", 1)[-1], "entries")
        user = str(arg.get("user") or "system")
        userid = int(arg.get("userid") or schwartz.userid_for(user))
        seconds = float(arg.get("seconds") or 0)
        lease = schwartz.IMPORT_LEASE_SECONDS.get(kind)
        if lease:
            self.with_db("lease", lambda c: schwartz.set_grabbed_until(c, job, lease))
        set_title(importer_title(kind, user, userid))
        table = schwartz.lab_table(self.cfg, "import_run")

        def record(c: pymysql.connections.Connection) -> int:
            with c.cursor() as cur:
                cur.execute(
                    f"INSERT INTO {table} (jobid, host, pid, username, userid, kind,"
                    " planned_seconds, started_at, status)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, NOW(3), 'running')",
                    (job.jobid, self.host, os.getpid(), user, userid, kind, seconds),
                )
                return int(cur.lastrowid)

        run_id = self.with_db("record import", record)
        log.info("import %s of %s(%d) for %.1fs (job %d)", kind, user, userid, seconds, job.jobid)
        start = time.monotonic()
        for offset, suffix in import_title_steps(kind, seconds):
            wait = start + offset - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # TERM does not stop an import: only the manager's KILL does
            set_title(importer_title(kind, user, userid, suffix))
        wait = start + seconds - time.monotonic()
        if wait > 0:
            time.sleep(wait)

        failure = self.should_fail(job)
        status, detail = ("failed", failure[:255]) if failure else ("done", None)

        def finish(c: pymysql.connections.Connection) -> None:
            if run_id is not None:
                with c.cursor() as cur:
                    cur.execute(
                        f"UPDATE {table} SET status = %s, finished_at = NOW(3), detail = %s"
                        " WHERE id = %s",
                        (status, detail, run_id),
                    )
            if failure:
                schwartz.fail_job(c, job, failure)
            else:
                schwartz.complete_job(c, job)

        self.with_db("finish import", finish, patience=300.0)
        self.report("import_failed" if failure else "import_done")
        self.report("job_failed" if failure else "job_done")
        log.info("import %s of %s(%d) %s", kind, user, userid, status)


# -- the manager -----------------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    report_fd: int
    buffer: bytes = b""


@dataclass
class Totals:
    jobs_done: int = 0
    jobs_failed: int = 0
    imports_done: int = 0
    imports_failed: int = 0
    imports_interrupted: int = 0
    spawned: int = 0
    reaped: int = 0

    def count(self, event: str) -> None:
        attr = {"job_done": "jobs_done", "job_failed": "jobs_failed",
                "import_done": "imports_done", "import_failed": "imports_failed"}.get(event)
        if attr:
            setattr(self, attr, getattr(self, attr) + 1)

    def resume(self, previous: dict) -> None:
        """Carry on from the totals a previous manager wrote (its counters file's values)."""
        for f in fields(self):
            value = previous.get(f.name)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                setattr(self, f.name, value)


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


@dataclass
class Manager:
    """Dreamwidth's bin/worker-manager for one lab host."""

    cfg: LabConfig
    config_path: Path
    host: str
    interval: float = LAB_IDLE_INTERVAL
    pass_seconds: float = PASS_SECONDS
    grace_seconds: float = TERM_GRACE_SECONDS
    want: dict[str, int] = field(default_factory=dict)
    kids: dict[int, Child] = field(default_factory=dict)
    totals: Totals = field(default_factory=Totals)
    stopping: bool = False
    state: str = "starting"
    conn: pymysql.connections.Connection | None = None
    pending_marks: list[tuple[int, str]] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    _last_counters: float = 0.0

    # config
    def load_config(self) -> dict[str, int]:
        path = workers_conf_path(self.cfg, self.host)
        if not path.exists():
            raise SystemExit(f"no jobs configured in {path}")
        want: dict[str, int] = {}
        for name, count in load_workers_conf(path, self.host).items():
            if name not in WORKERS:
                log.warning("workers.conf: no worker %r here; skipped", name)
                continue
            if count > 0:
                want[name] = count
        if not want:
            raise SystemExit(f"no jobs configured in {path}")
        return want

    # signals
    def on_term(self, _signum: int, _frame: Any) -> None:
        self.stopping = True

    def install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(sig, self.on_term)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    # children
    def have(self, name: str) -> int:
        return sum(1 for c in self.kids.values() if c.name == name)

    def start_worker(self, name: str) -> None:
        r, w = os.pipe()
        os.set_blocking(r, False)
        argv = [
            self.cfg.python if Path(self.cfg.python).exists() else sys.executable,
            "-m", "lab.workers", "worker", name,
            "--host", self.host,
            "--config", str(self.config_path),
            "--interval", str(self.interval),
            "--report-fd", str(w),
        ]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (self.cfg.project_dir, env.get("PYTHONPATH")) if p
        )
        try:
            proc = subprocess.Popen(argv, pass_fds=(w,), env=env, cwd=self.cfg.project_dir,
                                    stdin=subprocess.DEVNULL)
        except OSError as e:
            log.error("could not start %s: %s", name, e)
            os.close(r)
            return
        finally:
            os.close(w)
        self.kids[proc.pid] = Child(name, proc, r)
        self.totals.spawned += 1
        log.info("started %s as pid %d", name, proc.pid)

    def spawn_children(self) -> None:
        """At most one new process per worker per pass (bin/worker-manager's spawn_children)."""
        for name, count in self.want.items():
            if self.have(name) < count:
                self.start_worker(name)

    def read_reports(self) -> None:
        for child in self.kids.values():
            self._drain(child)

    def _drain(self, child: Child) -> None:
        while True:
            try:
                data = os.read(child.report_fd, 4096)
            except BlockingIOError:
                return
            except OSError:
                return
            if not data:
                return
            child.buffer += data
            *lines, child.buffer = child.buffer.split(b"\n")
            for line in lines:
                self.totals.count(line.decode(errors="replace").strip())

    def reap_children(self) -> None:
        for pid, child in list(self.kids.items()):
            rc = child.proc.poll()
            if rc is None:
                continue
            self._drain(child)
            os.close(child.report_fd)
            del self.kids[pid]
            self.totals.reaped += 1
            log.info("reaped %d %s (%s)", pid, child.name, describe_exit(rc))
            if WORKERS[child.name].importer:
                self.pending_marks.append((pid, describe_exit(rc)))
        self.mark_interrupted()

    # import_run bookkeeping
    def db(self) -> pymysql.connections.Connection:
        if self.conn is None:
            self.conn = schwartz.connect(self.cfg)
        else:
            self.conn.ping(reconnect=True)  # the database may have restarted since
        return self.conn

    def mark_interrupted(self) -> None:
        """Mark the running import of each reaped importer `interrupted` (retried while the
        database is unavailable)."""
        if not self.pending_marks:
            return
        table = schwartz.lab_table(self.cfg, "import_run")
        while self.pending_marks:
            pid, how = self.pending_marks[0]
            try:
                with self.db().cursor() as cur:
                    n = cur.execute(
                        f"UPDATE {table} SET status = 'interrupted', finished_at = NOW(3),"
                        " detail = %s WHERE host = %s AND pid = %s AND status = 'running'",
                        (f"worker pid {pid} {how} during the import", self.host, pid),
                    )
            except schwartz.CONNECTION_ERRORS as e:
                log.warning("cannot mark imports of pid %d yet: %s", pid, e)
                self.conn = None
                return
            self.pending_marks.pop(0)
            if n:
                self.totals.imports_interrupted += n
                log.warning("import of pid %d interrupted (%s)", pid, how)

    def mark_orphans(self) -> None:
        """At start: imports of this host still `running` whose process is gone were interrupted
        (e.g. the previous manager and its workers were KILLed together)."""
        from lab.procs import pid_alive

        table = schwartz.lab_table(self.cfg, "import_run")
        try:
            with self.db().cursor() as cur:
                cur.execute(f"SELECT DISTINCT pid FROM {table} WHERE host = %s AND status ="
                            " 'running'", (self.host,))
                pids = [int(r[0]) for r in cur.fetchall()]
        except schwartz.CONNECTION_ERRORS as e:
            log.warning("cannot check for orphaned imports: %s", e)
            self.conn = None
            return
        for pid in pids:
            if not pid_alive(pid) or not read_title(pid).startswith("content-importer ["):
                self.pending_marks.append((pid, "was gone when the worker-manager started"))
        self.mark_interrupted()

    # counters
    def resume_totals(self) -> None:
        """Start from the totals in this host's counters file, which the previous manager wrote
        last as it stopped (after marking the imports it KILLed), so that a restart does not
        forget what it interrupted."""
        previous = read_counters(self.cfg, f"workers-{self.host}")
        if previous.get("host") == self.host:
            self.totals.resume(previous)
            log.info("carrying on the previous manager's totals: %s", self.totals)

    def write_counters(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_counters < COUNTERS_EVERY:
            return
        self._last_counters = now
        children: dict[str, list[int]] = {name: [] for name in self.want}
        titles: dict[str, str] = {}
        for pid, child in sorted(self.kids.items()):
            children.setdefault(child.name, []).append(pid)
            titles[str(pid)] = read_title(pid)
        data = {
            "host": self.host,
            "manager_pid": os.getpid(),
            "state": self.state,
            "started": self.started,
            "updated": time.time(),
            "want": self.want,
            "children": children,
            "titles": titles,
            "busy_importers": sum(1 for t in titles.values()
                                  if t.startswith("content-importer [") and t != BORED_TITLE),
            **self.totals.__dict__,
        }
        try:
            write_counters(self.cfg, f"workers-{self.host}", data)
        except OSError as e:
            log.warning("cannot write counters: %s", e)

    # main loop
    def run(self) -> int:
        set_title(MANAGER_TITLE)
        self.install_signals()
        self.want = self.load_config()
        log.info("worker-manager for %s: %s", self.host,
                 ", ".join(f"{n}={c}" for n, c in self.want.items()))
        self.resume_totals()
        self.mark_orphans()
        self.state = "running"
        while not self.stopping:
            self.reap_children()
            self.spawn_children()
            next_pass = time.monotonic() + self.pass_seconds
            while not self.stopping and time.monotonic() < next_pass:
                time.sleep(0.2)
                self.read_reports()
                self.reap_children()  # reaping early only makes interrupted imports show sooner
                self.write_counters()
        return self.terminate()

    def terminate(self) -> int:
        """TERM every child, wait up to 10 s, KILL the rest (bin/worker-manager's terminate)."""
        self.state = "stopping"
        log.info("terminating %d children", len(self.kids))
        for pid in list(self.kids):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + self.grace_seconds
        while self.kids and time.monotonic() < deadline:
            self.read_reports()
            self.reap_children()
            self.write_counters()
            time.sleep(0.25)
        for pid, child in list(self.kids.items()):
            log.warning("killing %d %s (%s)", pid, child.name, read_title(pid))
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for child in list(self.kids.values()):
            try:
                child.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.reap_children()
        deadline = time.monotonic() + 5  # give a restarting database a moment for the marks
        while self.pending_marks and time.monotonic() < deadline:
            time.sleep(0.5)
            self.mark_interrupted()
        for pid, how in self.pending_marks:
            log.error("could not mark the import of pid %d (%s) interrupted", pid, how)
        self.state = "stopped"
        self.write_counters(force=True)
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
        log.info("worker-manager exiting")
        return 0


# -- command line ----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lab.workers",
                                description="the lab's worker-manager and TheSchwartz workers")
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("manager", help="run a jobs host's worker-manager")
    m.add_argument("--host", required=True)
    m.add_argument("--config", required=True)
    m.add_argument("--interval", type=float, default=LAB_IDLE_INTERVAL,
                   help="the workers' longest idle sleep (Dreamwidth: 5)")
    m.add_argument("--pass-seconds", type=float, default=PASS_SECONDS)
    w = sub.add_parser("worker", help="run one worker process")
    w.add_argument("name", choices=sorted(WORKERS))
    w.add_argument("--host", required=True)
    w.add_argument("--config", required=True)
    w.add_argument("--interval", type=float, default=LAB_IDLE_INTERVAL)
    w.add_argument("--report-fd", type=int, default=None)
    c = sub.add_parser("conf", help="write the host's etc/workers.conf if missing")
    c.add_argument("--host", required=True)
    c.add_argument("--config", required=True)
    c.add_argument("--force", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s {args.cmd}[%(process)d] %(levelname)s %(message)s",
    )
    cfg = LabConfig.load(args.config)
    config_path = Path(args.config).resolve()
    if args.cmd == "manager":
        return Manager(cfg, config_path, args.host, interval=args.interval,
                       pass_seconds=args.pass_seconds).run()
    if args.cmd == "worker":
        worker = Worker(cfg, WORKERS[args.name], args.host, interval=args.interval,
                        report=Reporter(args.report_fd))
        worker.install_signals()
        return worker.run()
    if args.cmd == "conf":
        print(write_workers_conf(cfg, args.host, force=args.force))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
