"""The lab's TheSchwartz client: enqueue, grab, complete and fail jobs like TheSchwartz 1.18.

This module is the lab's only TheSchwartz client (the lab's workers in `lab.workers` use it too).
It follows TheSchwartz's own SQL and semantics:

- enqueue (`TheSchwartz::insert`): map the function name to a `funcmap` row, creating it when
  missing, then insert a `job` row with `insert_time = run_after = now` and `grabbed_until = 0`.
- grab (`find_job_for_workers` + `_grab_a_job`): select up to 50 jobs of the worker's functions
  with `run_after <= UNIX_TIMESTAMP() AND grabbed_until <= UNIX_TIMESTAMP()`, shuffle them, and
  claim one with `UPDATE job SET grabbed_until = server_time + grab_for WHERE jobid = ? AND
  grabbed_until = <old value>`; a worker that updates no row lost the race and tries the next one,
  so two workers never run the same job.
- complete (`TheSchwartz::Job::completed`): delete the job (an `exitstatus` row only when the
  class keeps exit statuses, which none of the lab's classes do).
- fail (`TheSchwartz::Job::failed`): insert an `error` row; if `failures <= max_retries` (counting
  this one) set `run_after = now + retry_delay(failures)` (unchanged when the class gives no delay)
  and `grabbed_until = 0`, else drop the job.

Job arguments are JSON in the MEDIUMBLOB (Dreamwidth stores Storable-frozen Perl hashes).

Command line (every address comes from the lab config; nothing here targets anything else):

    python -m lab.jobs feed --config PATH
        the bounded job feeder: generic jobs at `workload.job_rate`/s and imports at
        `workload.import_rate`/s, stopping by itself after `workload.traffic_max_seconds` or on TERM
    python -m lab.jobs import --config PATH --user U --seconds S [--kind entries|comments|...]
        enqueue one content import and print its jobid
    python -m lab.jobs job --config PATH --func FUNCNAME [--arg JSON]
        enqueue one job of any function and print its jobid
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import signal
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql
import pymysql.cursors

from lab.config import LabConfig

log = logging.getLogger("lab.jobs")

SQL_DIR = Path(__file__).resolve().parent / "sql"

# TheSchwartz's batch size when it looks for jobs ($TheSchwartz::FIND_JOB_BATCH_SIZE).
FIND_JOB_BATCH_SIZE = 50

# Errors that mean "the database went away": callers reconnect and try again later.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    pymysql.err.OperationalError,
    pymysql.err.InterfaceError,
    ConnectionError,
    OSError,
)


# -- job classes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobClass:
    """A TheSchwartz worker class's policy: its `grab_for`, `max_retries` and `retry_delay`.

    `retry_delay(failures)` is Perl's `(DELAYS)[$failures] || default`, where `failures` counts the
    failure being recorded (TheSchwartz passes `$job->failures + 1`): with Dreamwidth's
    `(10, 30, 60, 300, 600)` the first failure waits 30 s and the fifth runs again at once.
    """

    funcname: str
    grab_for: int = 3600  # TheSchwartz::Worker defaults
    max_retries: int = 0
    retry_delays: tuple[int, ...] = ()
    retry_default: int = 0

    def retry_delay(self, failures: int) -> int:
        if 0 <= failures < len(self.retry_delays) and self.retry_delays[failures]:
            return self.retry_delays[failures]
        return self.retry_default


IMPORTER_PREFIX = "DW::Worker::ContentImporter::LiveJournal::"
_DW_RETRIES = (10, 30, 60, 300, 600)

# Importer kinds (the word in the busy title) by the last part of the class name.
IMPORT_KINDS: dict[str, str] = {
    "Entries": "entries",
    "Comments": "comments",
    "Userpics": "userpics",
    "Friends": "friends",
    "FriendGroups": "friendgroups",
    "Tags": "tags",
    "Bio": "bio",
    "Verify": "verify",
}
KIND_FUNCS: dict[str, str] = {kind: IMPORTER_PREFIX + part for part, kind in IMPORT_KINDS.items()}

# How long each importer holds its job: Entries.pm and Comments.pm re-lease their job at start.
IMPORT_LEASE_SECONDS: dict[str, int] = {"entries": 12 * 3600, "comments": 72 * 3600}

JOB_CLASSES: dict[str, JobClass] = {
    # DW::Worker::ContentImporter::LiveJournal: grab_for 600, max_retries 5.
    **{
        func: JobClass(func, grab_for=600, max_retries=5, retry_delays=_DW_RETRIES)
        for func in KIND_FUNCS.values()
    },
    # TheSchwartz::Worker::SendEmail
    "TheSchwartz::Worker::SendEmail": JobClass(
        "TheSchwartz::Worker::SendEmail",
        grab_for=500,
        max_retries=5 * 24,
        retry_delays=(300, 300, 900, 1800),
        retry_default=3600,
    ),
    # LJ::ESN workers (cgi-bin/LJ/ESN.pm)
    **{
        func: JobClass(func, grab_for=300, max_retries=5, retry_delays=_DW_RETRIES)
        for func in ("LJ::Worker::FiredEvent", "LJ::Worker::FindSubsByCluster",
                     "LJ::Worker::ProcessSub")
    },
    # bin/worker/lazy-cleanup
    "LJ::Worker::DeleteEntry": JobClass(
        "LJ::Worker::DeleteEntry",
        grab_for=180,
        max_retries=5 * 24,
        retry_delays=(300, 300, 900, 1800),
        retry_default=3600,
    ),
    # bin/worker/sphinx-copier: TheSchwartz::Worker defaults.
    "DW::Worker::Sphinx::Copier": JobClass("DW::Worker::Sphinx::Copier"),
}


def job_class(funcname: str) -> JobClass:
    """The policy of `funcname`; unknown functions get the lab's default (600 s, 5 retries)."""
    return JOB_CLASSES.get(
        funcname, JobClass(funcname, grab_for=600, max_retries=5, retry_delays=_DW_RETRIES)
    )


# -- connections ---------------------------------------------------------------------------------


def connect(cfg: LabConfig, *, timeout: float = 5.0) -> pymysql.connections.Connection:
    """A new autocommit connection to the lab's MariaDB, default database `dw_schwartz`.

    The lab's own tables are reached as `dw_lab.<table>` (see `lab_table`).
    """
    return pymysql.connect(
        host=cfg.db.address,
        port=cfg.ports.mysql,
        user=cfg.db.user,
        password=cfg.db.password(),
        database=cfg.db.schwartz_db,
        autocommit=True,
        connect_timeout=timeout,
        read_timeout=30,
        write_timeout=30,
        charset="utf8mb4",
    )


def lab_table(cfg: LabConfig, table: str) -> str:
    """The qualified name of one of the lab's own tables (`dw_lab`.`import_run`)."""
    return f"`{cfg.db.lab_db}`.`{table}`"


def server_time(conn: pymysql.connections.Connection) -> int:
    """The database's clock (TheSchwartz's `get_server_time`)."""
    with conn.cursor() as cur:
        cur.execute("SELECT UNIX_TIMESTAMP()")
        return int(cur.fetchone()[0])


# -- funcmap -------------------------------------------------------------------------------------


def funcname_to_id(conn: pymysql.connections.Connection, funcname: str) -> int:
    """The funcid of `funcname`, inserting its funcmap row when missing (like TheSchwartz)."""
    with conn.cursor() as cur:
        cur.execute("SELECT funcid FROM funcmap WHERE funcname = %s", (funcname,))
        row = cur.fetchone()
        if row:
            return int(row[0])
        # Two clients may race to insert: the unique key makes the loser's insert a no-op.
        cur.execute("INSERT IGNORE INTO funcmap (funcname) VALUES (%s)", (funcname,))
        cur.execute("SELECT funcid FROM funcmap WHERE funcname = %s", (funcname,))
        return int(cur.fetchone()[0])


# -- enqueue -------------------------------------------------------------------------------------


def encode_arg(arg: Any) -> bytes | None:
    if arg is None or isinstance(arg, bytes):
        return arg
    if isinstance(arg, str):
        return arg.encode()
    return json.dumps(arg, sort_keys=True).encode()


def decode_arg(blob: bytes | None) -> Any:
    """A job's arg: the JSON value it holds, or the raw bytes when it is not JSON."""
    if not blob:
        return {}
    try:
        return json.loads(blob)
    except (ValueError, UnicodeDecodeError):
        return blob


def insert_job(
    conn: pymysql.connections.Connection,
    funcname: str,
    arg: Any = None,
    *,
    uniqkey: str | None = None,
    run_after: int | None = None,
    priority: int | None = None,
    coalesce: str | None = None,
) -> int:
    """Insert one job as `TheSchwartz::insert` does; return its jobid."""
    funcid = funcname_to_id(conn, funcname)
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO job (funcid, arg, uniqkey, insert_time, run_after, grabbed_until,"
            " priority, `coalesce`)"
            " VALUES (%s, %s, %s, UNIX_TIMESTAMP(), COALESCE(%s, UNIX_TIMESTAMP()), 0, %s, %s)",
            (funcid, encode_arg(arg), uniqkey, run_after, priority, coalesce),
        )
        return int(cur.lastrowid)


def enqueue_job(cfg: LabConfig, funcname: str, arg: Any = None, **kw: Any) -> int:
    """Enqueue one job of `funcname` with `arg` (a JSON-able value) in the lab; return its jobid."""
    conn = connect(cfg)
    try:
        return insert_job(conn, funcname, arg, **kw)
    finally:
        conn.close()


def import_arg(user: str, userid: int, seconds: float, **extra: Any) -> dict[str, Any]:
    return {"user": user, "userid": int(userid), "seconds": float(seconds), **extra}


def enqueue_import(
    cfg: LabConfig, user: str, userid: int, seconds: float, kind: str = "entries", **extra: Any
) -> int:
    """Enqueue a content import of `kind` for `user` that will take `seconds`; return its jobid.

    `extra` goes into the job's arg (e.g. `fail="message"` makes the import fail at its end).
    """
    if kind not in KIND_FUNCS:
        raise ValueError(f"unknown import kind {kind!r}; one of {sorted(KIND_FUNCS)}")
    return enqueue_job(cfg, KIND_FUNCS[kind], import_arg(user, userid, seconds, **extra))


def userid_for(user: str) -> int:
    """The lab's userid of `user`: the number in `userNNNN`, else a stable hash."""
    m = re.fullmatch(r"user0*(\d+)", user)
    if m:
        return int(m.group(1))
    return zlib.crc32(user.encode()) % 1_000_000 + 1


# -- grab, complete, fail ------------------------------------------------------------------------


@dataclass
class Job:
    """A grabbed job (a row of `job` plus its function name)."""

    jobid: int
    funcid: int
    funcname: str
    arg: Any
    uniqkey: str | None
    insert_time: int | None
    run_after: int
    grabbed_until: int
    priority: int | None
    coalesce: str | None

    @property
    def job_class(self) -> JobClass:
        return job_class(self.funcname)


_JOB_COLUMNS = (
    "jobid, funcid, arg, uniqkey, insert_time, run_after, grabbed_until, priority, `coalesce`"
)


def grab_job(
    conn: pymysql.connections.Connection,
    funcids: dict[str, int],
    *,
    grab_for: int | None = None,
) -> Job | None:
    """Claim one runnable job of the functions in `funcids` (funcname → funcid), or None.

    TheSchwartz's `find_job_for_workers`: up to 50 runnable jobs, shuffled, each tried with a
    conditional UPDATE on its old `grabbed_until`; the job's class decides `grab_for` unless given.
    """
    if not funcids:
        return None
    names = {fid: name for name, fid in funcids.items()}
    placeholders = ", ".join(["%s"] * len(names))
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT {_JOB_COLUMNS} FROM job WHERE funcid IN ({placeholders})"
            " AND run_after <= UNIX_TIMESTAMP() AND grabbed_until <= UNIX_TIMESTAMP()"
            f" LIMIT {FIND_JOB_BATCH_SIZE}",
            tuple(names),
        )
        rows = list(cur.fetchall())
    random.shuffle(rows)
    for row in rows:
        job = Job(
            jobid=int(row[0]),
            funcid=int(row[1]),
            funcname=names[int(row[1])],
            arg=decode_arg(row[2]),
            uniqkey=row[3],
            insert_time=row[4],
            run_after=int(row[5]),
            grabbed_until=int(row[6]),
            priority=row[7],
            coalesce=row[8],
        )
        lease = grab_for if grab_for is not None else job.job_class.grab_for
        new_until = server_time(conn) + (lease or 1)
        if new_until == job.grabbed_until:
            continue  # would not look grabbed to anyone else: TheSchwartz skips it too
        with conn.cursor() as cur:
            n = cur.execute(
                "UPDATE job SET grabbed_until = %s WHERE jobid = %s AND grabbed_until = %s",
                (new_until, job.jobid, job.grabbed_until),
            )
        if n == 1:
            job.grabbed_until = new_until
            return job
        # lost the race for this job: another worker grabbed it first
    return None


def set_grabbed_until(conn: pymysql.connections.Connection, job: Job, seconds: int) -> int:
    """Re-lease `job` for `seconds` from now (`$job->grabbed_until(time() + S); $job->save`)."""
    until = server_time(conn) + seconds
    with conn.cursor() as cur:
        cur.execute("UPDATE job SET grabbed_until = %s WHERE jobid = %s", (until, job.jobid))
    job.grabbed_until = until
    return until


def complete_job(conn: pymysql.connections.Connection, job: Job) -> None:
    """`$job->completed`: the job is done and leaves the queue."""
    with conn.cursor() as cur:
        cur.execute("DELETE FROM job WHERE jobid = %s", (job.jobid,))


def job_failures(conn: pymysql.connections.Connection, jobid: int) -> int:
    """How many times the job failed so far (its `error` rows, like `$job->failures`)."""
    with conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM error WHERE jobid = %s", (jobid,))
        return int(cur.fetchone()[0])


@dataclass(frozen=True)
class FailOutcome:
    failures: int
    retried: bool
    run_after: int | None  # the new run_after when retried


def fail_job(
    conn: pymysql.connections.Connection, job: Job, message: str, *, permanent: bool = False
) -> FailOutcome:
    """`$job->failed($msg)` (or `permanent_failure`): record an error, then retry or drop it."""
    cls = job.job_class
    failures = job_failures(conn, job.jobid) + 1  # include this one
    retry = not permanent and cls.max_retries >= failures
    message = (message or "")[:255]
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO error (error_time, jobid, message, funcid)"
            " VALUES (UNIX_TIMESTAMP(), %s, %s, %s)",
            (job.jobid, message, job.funcid),
        )
        if retry:
            delay = cls.retry_delay(failures)
            if delay:
                cur.execute(
                    "UPDATE job SET run_after = UNIX_TIMESTAMP() + %s, grabbed_until = 0"
                    " WHERE jobid = %s",
                    (delay, job.jobid),
                )
            else:
                cur.execute("UPDATE job SET grabbed_until = 0 WHERE jobid = %s", (job.jobid,))
            cur.execute("SELECT run_after FROM job WHERE jobid = %s", (job.jobid,))
            row = cur.fetchone()
            return FailOutcome(failures, True, int(row[0]) if row else None)
        cur.execute("DELETE FROM job WHERE jobid = %s", (job.jobid,))
        return FailOutcome(failures, False, None)


# -- the job feeder ------------------------------------------------------------------------------

# Generic jobs the feeder sends, by the worker that runs them, with their weights.
FEED_GENERIC: dict[str, tuple[str, float]] = {
    "send-email": ("TheSchwartz::Worker::SendEmail", 4.0),
    "esn-fired-event": ("LJ::Worker::FiredEvent", 2.0),
    "esn-process-sub": ("LJ::Worker::ProcessSub", 2.0),
    "esn-cluster-subs": ("LJ::Worker::FindSubsByCluster", 1.0),
    "sphinx-copier": ("DW::Worker::Sphinx::Copier", 1.5),
    "lazy-cleanup": ("LJ::Worker::DeleteEntry", 0.5),
}
FEED_IMPORT_KINDS: dict[str, float] = {
    "entries": 4.0,
    "comments": 3.0,
    "userpics": 1.0,
    "friends": 0.5,
    "friendgroups": 0.5,
    "tags": 0.5,
    "bio": 0.5,
}
# A small share of generic jobs fail once before they succeed, so `error` is never empty.
FEED_FAIL_ONCE_FRACTION = 0.02
MAIL_DOMAINS = ("example.com", "example.net", "example.org", "dreamwidth.org")


def served_workers(cfg: LabConfig) -> set[str]:
    """The worker names that some jobs host's workers.conf runs (so the feeder never piles up
    jobs that no worker takes)."""
    from lab.workers import load_workers_conf  # local: lab.workers imports this module

    names: set[str] = set()
    for host in cfg.hosts_with("jobs"):
        path = cfg.host_root(host.name) / "etc" / "workers.conf"
        try:
            names.update(n for n, c in load_workers_conf(path, host.name).items() if c > 0)
        except FileNotFoundError:
            continue
    return names


def generic_arg(funcname: str, rng: random.Random) -> dict[str, Any]:
    userid = rng.randint(1, 9999)
    user = f"user{userid:04d}"
    if funcname == "TheSchwartz::Worker::SendEmail":
        arg: dict[str, Any] = {
            "rcpts": [f"{user}@{rng.choice(MAIL_DOMAINS)}"],
            "env_from": "dw_null@dreamwidth.org",
            "data": "Subject: lab notification\r\n\r\nhello\r\n",
        }
    elif funcname == "DW::Worker::Sphinx::Copier":
        arg = {"userid": userid, "user": user, "jitemid": rng.randint(1, 500), "source": "lab"}
    else:
        arg = {"userid": userid, "user": user}
    if rng.random() < FEED_FAIL_ONCE_FRACTION:
        arg.update(fail="lab: transient failure", fail_times=1)
    return arg


def _weighted(rng: random.Random, choices: dict[str, float]) -> str:
    keys = list(choices)
    return rng.choices(keys, weights=[choices[k] for k in keys])[0]


def feed(cfg: LabConfig, *, seed: int | None = None) -> dict[str, int]:
    """Enqueue the lab's background jobs until `traffic_max_seconds` pass or TERM/INT arrives.

    Arrivals are Poisson at `job_rate` (generic) and `import_rate` (imports, random length in
    [`import_seconds_min`, `import_seconds_max`]). Survives database outages (it waits and
    reconnects). Returns what it enqueued.
    """
    w = cfg.workload
    rng = random.Random(seed)
    stop = {"flag": False}

    def on_signal(signum: int, _frame: Any) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    counts = {"jobs": 0, "imports": 0, "db_errors": 0}
    started = time.monotonic()
    deadline = started + w.traffic_max_seconds
    next_job = started + (rng.expovariate(w.job_rate) if w.job_rate > 0 else float("inf"))
    next_import = started + (
        rng.expovariate(w.import_rate) if w.import_rate > 0 else float("inf")
    )
    served: set[str] = set()
    served_at = 0.0
    conn: pymysql.connections.Connection | None = None
    log.info("feeding jobs at %.2f/s and imports at %.3f/s for at most %ds",
             w.job_rate, w.import_rate, w.traffic_max_seconds)
    while not stop["flag"] and time.monotonic() < deadline:
        now = time.monotonic()
        if now - served_at > 30:
            served, served_at = served_workers(cfg), now
        due = min(next_job, next_import)
        if due > now:
            time.sleep(min(due - now, 0.25))
            continue
        try:
            if conn is None:
                conn = connect(cfg)
            if next_job <= now:
                workers = [n for n in FEED_GENERIC if n in served] or []
                if workers:
                    name = _weighted(rng, {n: FEED_GENERIC[n][1] for n in workers})
                    funcname = FEED_GENERIC[name][0]
                    insert_job(conn, funcname, generic_arg(funcname, rng))
                    counts["jobs"] += 1
                next_job = now + rng.expovariate(w.job_rate)
            if next_import <= now:
                if served & {"content-importer", "content-importer-lite"}:
                    kind = _weighted(rng, FEED_IMPORT_KINDS)
                    userid = rng.randint(1, 9999)
                    seconds = round(rng.uniform(w.import_seconds_min, w.import_seconds_max), 1)
                    insert_job(conn, KIND_FUNCS[kind],
                               import_arg(f"user{userid:04d}", userid, seconds))
                    counts["imports"] += 1
                next_import = now + rng.expovariate(w.import_rate)
        except CONNECTION_ERRORS as e:
            counts["db_errors"] += 1
            log.warning("database unavailable (%s); retrying in 2 s", e)
            if conn is not None:
                try:
                    conn.close()
                except Exception:
                    pass
            conn = None
            time.sleep(2)
    if conn is not None:
        conn.close()
    log.info("feeder stopping: %s", counts)
    return counts


# -- command line --------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lab.jobs", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("feed", help="run the bounded job feeder")
    f.add_argument("--config", required=True)
    f.add_argument("--seed", type=int, default=None)
    i = sub.add_parser("import", help="enqueue one content import")
    i.add_argument("--config", required=True)
    i.add_argument("--user", required=True)
    i.add_argument("--userid", type=int, default=None)
    i.add_argument("--seconds", type=float, required=True)
    i.add_argument("--kind", default="entries", choices=sorted(KIND_FUNCS))
    i.add_argument("--fail", default=None, help="make the import fail with this message")
    j = sub.add_parser("job", help="enqueue one job")
    j.add_argument("--config", required=True)
    j.add_argument("--func", required=True)
    j.add_argument("--arg", default="{}", help="the job's arg, JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s"
    )
    cfg = LabConfig.load(args.config)
    if args.cmd == "feed":
        feed(cfg, seed=args.seed)
        return 0
    if args.cmd == "import":
        userid = args.userid if args.userid is not None else userid_for(args.user)
        extra = {"fail": args.fail} if args.fail else {}
        print(enqueue_import(cfg, args.user, userid, args.seconds, args.kind, **extra))
        return 0
    if args.cmd == "job":
        print(enqueue_job(cfg, args.func, json.loads(args.arg)))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
