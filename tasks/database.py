"""The Aurora databases over SQL (pymysql): the only module that talks MySQL to them.

What it reads, with the account of `inventory.database` (production: SELECT on dw_schwartz and
PROCESS, nothing else):

- TheSchwartz's queue (`dw_schwartz`, schema of TheSchwartz 1.18): one GROUP BY over `job` joined
  to `funcmap`, every job in exactly one state, judged on the DATABASE's clock (the job columns
  hold its UNIX_TIMESTAMP(), and the workers grab by it, so the reading machine's clock never
  matters):
    ready    run_after <= now AND grabbed_until <= now   (what a worker would grab now)
    grabbed  grabbed_until > now                          (a worker holds it, or its lease is on)
    delayed  run_after > now AND grabbed_until <= now    (a retry waiting for its delay)
  `ready` is what dw-ops' Nagios check counted (warn 150, crit 300).
- TheSchwartz's `error` table: failures per function over the last hour.
- `SHOW GLOBAL STATUS`, twice, `window` seconds apart: threads running and connected, queries/s.

The connection contract: a new connection per read, closed at its end, with explicit connect,
read and write timeouts (`inventory.database`; the write timeout is the read timeout). The
password is read through `read_secret` when connecting and is never logged or put in an error.
With `database.ssl_ca` (RDS), TLS is required: the server's certificate and name are verified
against that CA bundle, and a server without TLS is refused, never read in the clear.
Reads run in a thread (`asyncio.to_thread`): pymysql is blocking.

Errors: `DatabaseUnavailable` (an `Unavailable`: refused, reset, gone away, timed out, too many
connections; safe to retry a read) and `DatabaseRefused` (wrong password, missing privilege,
unknown database, no TLS where it is required: retrying will not help), of which
`DatabaseMisconfigured` is the inventory's settings that cannot be used (a CA file that cannot
be read): nothing reached the server. The `check_*` tasks turn both into CRIT lines.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pymysql
from prefect import get_run_logger, task
from prefect.exceptions import MissingContextError

from dwops.errors import Unavailable
from dwops.health import Check, Thresholds, Verdict, graded, unreachable
from dwops.inventory import Inventory
from dwops.secrets import SecretUnavailable, read_secret
from tasks.common import READ, attempt

# MySQL / MariaDB error numbers that mean "the server is not there for us right now".
TRANSIENT_ERRORS = frozenset({
    1040,  # ER_CON_COUNT_ERROR: too many connections
    1053,  # ER_SERVER_SHUTDOWN
    1205,  # ER_LOCK_WAIT_TIMEOUT
    1213,  # ER_LOCK_DEADLOCK
    1927,  # ER_CONNECTION_KILLED (MariaDB)
    2002,  # CR_CONNECTION_ERROR (socket)
    2003,  # CR_CONN_HOST_ERROR: cannot connect (refused, timed out)
    2006,  # CR_SERVER_GONE_ERROR
    2013,  # CR_SERVER_LOST: lost connection during query (read timeout included)
    2055,  # CR_SERVER_LOST_EXTENDED
})

# How many statements and threads one read of SHOW GLOBAL STATUS adds itself (see read_db_load).
OWN_QUERIES_PER_SAMPLE = 1
OWN_THREADS = 1


class DatabaseUnavailable(Unavailable):
    """The database did not answer (refused, reset, gone away, timed out): transient."""

    def __init__(self, address: str, port: int, reason: str) -> None:
        super().__init__(f"mysql {address}:{port}", reason)
        self.address = address
        self.port = port


class DatabaseRefused(RuntimeError):
    """The database answered but refused us (access denied, missing privilege, unknown database,
    password not readable): not transient, never retried."""

    def __init__(self, address: str, port: int, reason: str, *, reached: bool = True) -> None:
        super().__init__(f"mysql {address}:{port} refused: {reason}")
        self.address = address
        self.port = port
        self.reason = reason
        self.reached = reached  # False when we never got as far as the server (no password)


class DatabaseMisconfigured(DatabaseRefused):
    """The inventory's database settings cannot be used (`ssl_ca` names a file that cannot be
    read as a CA bundle): nothing was sent to the server; not transient, never retried."""

    def __init__(self, address: str, port: int, reason: str) -> None:
        DatabaseRefused.__init__(self, address, port, reason, reached=False)
        RuntimeError.__init__(self, f"mysql {address}:{port}: configuration error: {reason}")


# -- what the reads return -----------------------------------------------------------------------


@dataclass(frozen=True)
class FunctionQueue:
    """One TheSchwartz function's jobs, each in exactly one state (see the module's docstring)."""

    function: str
    total: int
    ready: int
    grabbed: int
    delayed: int
    oldest_ready_seconds: int | None = None  # how long the longest-waiting ready job has waited


@dataclass(frozen=True)
class GlobalStatus:
    """The counters of `SHOW GLOBAL STATUS` that judge load."""

    threads_running: int
    threads_connected: int
    questions: int  # statements sent by clients since start (a counter)
    uptime: int  # seconds since the server started


@dataclass(frozen=True)
class DbLoad:
    """Load over a window: threads now (without the reader's own), statements per second."""

    threads_running: int
    threads_connected: int
    queries_per_second: float | None  # None when the server restarted within the window


# -- SQL ------------------------------------------------------------------------------------------

SERVER_TIME_SQL = "SELECT UNIX_TIMESTAMP()"

# One row per function that has jobs (aliases quoted: `delayed` is a reserved word). %(now)s is
# the database's own UNIX_TIMESTAMP(), read just before on the same connection.
# Dreamwidth's content-importers' TheSchwartz functions (DW::Worker::ContentImporter::LiveJournal::
# Entries, ::Comments, ::Userpics, ...): the jobs a restart must not take from a busy importer.
IMPORT_FUNCTIONS_LIKE = "DW::Worker::ContentImporter::%"

GRABBED_IMPORTS_SQL = """
SELECT j.jobid AS `jobid`
  FROM job j JOIN funcmap f ON f.funcid = j.funcid
 WHERE f.funcname LIKE %(like)s AND j.grabbed_until > UNIX_TIMESTAMP()
 ORDER BY j.jobid
"""

SCHWARTZ_QUEUE_SQL = """
SELECT f.funcname AS `function`,
       COUNT(*) AS `total`,
       SUM(j.run_after <= %(now)s AND j.grabbed_until <= %(now)s) AS `ready`,
       SUM(j.grabbed_until > %(now)s) AS `grabbed`,
       SUM(j.run_after > %(now)s AND j.grabbed_until <= %(now)s) AS `delayed`,
       MIN(CASE WHEN j.run_after <= %(now)s AND j.grabbed_until <= %(now)s
                THEN j.run_after END) AS `oldest_ready_run_after`
  FROM job j JOIN funcmap f ON f.funcid = j.funcid
 GROUP BY f.funcname
 ORDER BY f.funcname
"""

# Errors since a moment of the database's clock; an error whose funcid has no funcmap row (0 is
# the column's default) is named by its number.
SCHWARTZ_ERRORS_SQL = """
SELECT COALESCE(f.funcname, CONCAT('funcid ', e.funcid)) AS `function`, COUNT(*) AS `errors`
  FROM error e LEFT JOIN funcmap f ON f.funcid = e.funcid
 WHERE e.error_time >= UNIX_TIMESTAMP() - %(since)s
 GROUP BY e.funcid, f.funcname
 ORDER BY `function`
"""

GLOBAL_STATUS_SQL = "SHOW GLOBAL STATUS"

QUEUE_COLUMNS = ("function", "total", "ready", "grabbed", "delayed", "oldest_ready_run_after")


# -- pure functions -------------------------------------------------------------------------------


def _as_row(row: Mapping[str, Any] | Sequence[Any], columns: Sequence[str]) -> dict[str, Any]:
    if isinstance(row, Mapping):
        missing = [c for c in columns if c not in row]
        if missing:
            raise ValueError(f"row {dict(row)!r} lacks {', '.join(missing)}")
        return {c: row[c] for c in columns}
    if len(row) != len(columns):
        raise ValueError(f"row {tuple(row)!r} has {len(row)} columns, expected {len(columns)}")
    return dict(zip(columns, row))


def _count(value: Any, what: str) -> int:
    """A COUNT/SUM cell (int, Decimal, or text from a recording) as an int; NULL counts 0."""
    if value is None:
        return 0
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: not a number: {value!r}") from None
    if n < 0:
        raise ValueError(f"{what}: negative: {value!r}")
    return n


def parse_schwartz_queue(
    rows: Iterable[Mapping[str, Any] | Sequence[Any]], now: int
) -> list[FunctionQueue]:
    """Rows of SCHWARTZ_QUEUE_SQL (mappings or tuples in QUEUE_COLUMNS order), read at database
    time `now`, as one FunctionQueue per function, sorted by name. No rows: an empty queue."""
    out = []
    for raw in rows:
        row = _as_row(raw, QUEUE_COLUMNS)
        function = row["function"]
        if isinstance(function, bytes):
            function = function.decode()
        if not isinstance(function, str) or not function:
            raise ValueError(f"row {row!r}: no function name")
        total, ready, grabbed, delayed = (
            _count(row[c], f"{function} {c}") for c in ("total", "ready", "grabbed", "delayed"))
        if ready + grabbed + delayed != total:
            raise ValueError(f"{function}: ready {ready} + grabbed {grabbed} + delayed {delayed}"
                             f" != total {total}")
        oldest = row["oldest_ready_run_after"]
        oldest_seconds = None if oldest is None else max(0, int(now) - _count(oldest, function))
        out.append(FunctionQueue(function, total, ready, grabbed, delayed, oldest_seconds))
    return sorted(out, key=lambda q: q.function)


def parse_schwartz_errors(rows: Iterable[Mapping[str, Any] | Sequence[Any]]) -> dict[str, int]:
    """Rows of SCHWARTZ_ERRORS_SQL as {function: errors}."""
    out: dict[str, int] = {}
    for raw in rows:
        row = _as_row(raw, ("function", "errors"))
        name = row["function"].decode() if isinstance(row["function"], bytes) else row["function"]
        out[str(name)] = out.get(str(name), 0) + _count(row["errors"], str(name))
    return out


def parse_global_status(rows: Iterable[Mapping[str, Any] | Sequence[Any]]) -> GlobalStatus:
    """`SHOW GLOBAL STATUS` rows (`(Variable_name, Value)` pairs or mappings with those keys)."""
    values: dict[str, Any] = {}
    for row in rows:
        if isinstance(row, Mapping):
            name, value = row.get("Variable_name"), row.get("Value")
        else:
            if len(row) != 2:
                raise ValueError(
                    f"SHOW GLOBAL STATUS row {tuple(row)!r} is not a (name, value) pair")
            name, value = row
        if name is None:
            raise ValueError(f"SHOW GLOBAL STATUS row {row!r} has no Variable_name")
        values[str(name).lower()] = value
    wanted = ("threads_running", "threads_connected", "questions", "uptime")
    missing = [w for w in wanted if w not in values]
    if missing:
        raise ValueError(f"SHOW GLOBAL STATUS lacks {', '.join(missing)}"
                         f" ({len(values)} variables read)")
    return GlobalStatus(*(_count(values[w], w) for w in wanted))


def db_load_between(
    a: GlobalStatus, b: GlobalStatus, seconds: float, *, own_queries: int = 0, own_threads: int = 0
) -> DbLoad:
    """Load from two samples `seconds` apart: threads as of `b`, statements per second between.

    `own_queries` (statements the reader itself sent in between) and `own_threads` (its own
    connection, counted in both thread figures) are left out. A server that restarted in between
    (uptime went backwards, or its counter did) has no rate: None.
    """
    restarted = b.uptime < a.uptime or b.questions < a.questions
    qps = None
    if not restarted and seconds > 0:
        qps = max(0, b.questions - a.questions - own_queries) / seconds
    return DbLoad(
        threads_running=max(0, b.threads_running - own_threads),
        threads_connected=max(0, b.threads_connected - own_threads),
        queries_per_second=qps,
    )


# -- judging --------------------------------------------------------------------------------------


def judge_schwartz(
    host: str,
    queue: list[FunctionQueue] | Unavailable | DatabaseRefused,
    errors: dict[str, int] | Unavailable | DatabaseRefused,
    thresholds: Thresholds,
) -> Check:
    """Ready jobs graded like dw-ops' Nagios check (warn/crit at schwartz_ready_warn/crit); errors
    in the last hour at or above schwartz_errors_hour_warn make it at least WARN."""
    for reading in (queue, errors):
        if isinstance(reading, Unavailable):
            return unreachable("schwartz", host, reading.reason)
        if isinstance(reading, DatabaseRefused):
            return Check("schwartz", host, Verdict.CRIT, f"refused: {reading.reason}",
                         {"reachable": reading.reached})
    assert isinstance(queue, list) and isinstance(errors, dict)
    ready = sum(q.ready for q in queue)
    error_count = sum(errors.values())
    ages = [q.oldest_ready_seconds for q in queue if q.oldest_ready_seconds is not None]
    queue_verdict = graded(ready, thresholds.schwartz_ready_warn, thresholds.schwartz_ready_crit)
    error_verdict = (Verdict.WARN if error_count >= thresholds.schwartz_errors_hour_warn
                     else Verdict.OK)
    verdict = max(queue_verdict, error_verdict, key=lambda v: v.rank)
    busiest = sorted(queue, key=lambda q: (-q.ready, q.function))[:3]
    reason = (f"{ready} jobs ready (warn {thresholds.schwartz_ready_warn},"
              f" crit {thresholds.schwartz_ready_crit})")
    if ready:
        reason += ": " + ", ".join(f"{q.function} {q.ready}" for q in busiest if q.ready)
    reason += f"; {error_count} errors in the last hour"
    if error_verdict is not Verdict.OK:
        reason += f" (warn {thresholds.schwartz_errors_hour_warn}): " + ", ".join(
            f"{f} {n}" for f, n in sorted(errors.items(), key=lambda x: -x[1])[:3])
    figures = {
        "ready": ready,
        "total": sum(q.total for q in queue),
        "grabbed": sum(q.grabbed for q in queue),
        "delayed": sum(q.delayed for q in queue),
        "oldest_ready_seconds": max(ages) if ages else None,
        "errors_last_hour": error_count,
        "functions": {q.function: {"total": q.total, "ready": q.ready, "grabbed": q.grabbed,
                                   "delayed": q.delayed} for q in queue},
        "errors_by_function": dict(errors),
    }
    return Check("schwartz", host, verdict, reason, figures)


def judge_db_load(host: str, load: DbLoad | Unavailable | DatabaseRefused,
                  thresholds: Thresholds) -> Check:
    """Threads running (other than the reader) graded at aurora_threads_running_warn/crit."""
    if isinstance(load, Unavailable):
        return unreachable("aurora-sql", host, load.reason)
    if isinstance(load, DatabaseRefused):
        return Check("aurora-sql", host, Verdict.CRIT, f"refused: {load.reason}",
                     {"reachable": load.reached})
    verdict = graded(load.threads_running, thresholds.aurora_threads_running_warn,
                     thresholds.aurora_threads_running_crit)
    qps = None if load.queries_per_second is None else round(load.queries_per_second, 1)
    reason = (f"{load.threads_running} threads running"
              f" (warn {thresholds.aurora_threads_running_warn},"
              f" crit {thresholds.aurora_threads_running_crit}),"
              f" {load.threads_connected} connected, "
              + (f"{qps} queries/s" if qps is not None else "restarted during the sample"))
    return Check("aurora-sql", host, verdict, reason,
                 {"threads_running": load.threads_running,
                  "threads_connected": load.threads_connected, "qps": qps})


# -- reads ----------------------------------------------------------------------------------------


def tls_context(inventory: Inventory) -> ssl.SSLContext | None:
    """TLS for the database: None without `database.ssl_ca`, else a context that trusts only
    that CA bundle and verifies the server's certificate and host name (given to pymysql, it
    makes TLS required). DatabaseMisconfigured when the file cannot be used."""
    db = inventory.database
    if db.ssl_ca is None:
        return None
    try:
        return ssl.create_default_context(cafile=db.ssl_ca)
    except OSError as e:  # FileNotFoundError, PermissionError, ssl.SSLError (no PEM in it)
        raise DatabaseMisconfigured(db.address, db.port,
                                    f"database.ssl_ca: cannot use {db.ssl_ca} as a CA bundle "
                                    f"({e.strerror or e})") from None


def _connect(inventory: Inventory, database: str | None) -> pymysql.connections.Connection:
    db = inventory.database
    tls = tls_context(inventory)
    try:
        password = read_secret(db.password)
    except SecretUnavailable as e:
        raise DatabaseRefused(db.address, db.port, f"no password ({e})",
                              reached=False) from None
    try:
        return pymysql.connect(
            host=db.address, port=db.port, user=db.user, password=password, database=database,
            connect_timeout=db.connect_timeout, read_timeout=db.read_timeout,
            write_timeout=db.read_timeout, autocommit=True, charset="utf8mb4",
            cursorclass=pymysql.cursors.DictCursor, **({"ssl": tls} if tls else {}),
        )
    except pymysql.MySQLError as e:
        raise _translate(inventory, e) from None
    except OSError as e:  # before pymysql wraps it (e.g. name resolution)
        raise DatabaseUnavailable(db.address, db.port, f"{type(e).__name__}: {e}") from None


def _translate(inventory: Inventory, e: Exception) -> Exception:
    """pymysql's error as DatabaseUnavailable (transient) or DatabaseRefused; never the password."""
    db = inventory.database
    code = e.args[0] if e.args and isinstance(e.args[0], int) else None
    message = str(e.args[1]) if len(e.args) > 1 else str(e)
    if isinstance(e, pymysql.err.InterfaceError) or code in TRANSIENT_ERRORS:
        reason = f"({code}) {message}" if code else f"{type(e).__name__}: {message}"
        return DatabaseUnavailable(db.address, db.port, reason)
    if isinstance(e, pymysql.err.OperationalError):
        return DatabaseRefused(db.address, db.port, f"({code}) {message}")
    return e  # a ProgrammingError and the like: our bug, raised as it is


def _run(inventory: Inventory, database: str | None, work: Any) -> Any:
    """Open a connection, run `work(cursor)`, close; pymysql errors translated."""
    conn = _connect(inventory, database)
    try:
        with conn.cursor() as cur:
            return work(cur)
    except pymysql.MySQLError as e:
        raise _translate(inventory, e) from None
    finally:
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - closing a broken connection
            pass


def _read_schwartz_queue_sync(inventory: Inventory) -> list[FunctionQueue]:
    def work(cur: Any) -> list[FunctionQueue]:
        cur.execute(SERVER_TIME_SQL)
        now = int(next(iter(cur.fetchone().values())))
        cur.execute(SCHWARTZ_QUEUE_SQL, {"now": now})
        return parse_schwartz_queue(cur.fetchall(), now)

    return _run(inventory, inventory.database.schwartz_db, work)


def _read_grabbed_imports_sync(inventory: Inventory) -> frozenset[int]:
    def work(cur: Any) -> frozenset[int]:
        cur.execute(GRABBED_IMPORTS_SQL, {"like": IMPORT_FUNCTIONS_LIKE})
        return frozenset(int(r["jobid"]) for r in cur.fetchall())

    return _run(inventory, inventory.database.schwartz_db, work)


def _read_schwartz_errors_sync(inventory: Inventory, since_seconds: int) -> dict[str, int]:
    def work(cur: Any) -> dict[str, int]:
        cur.execute(SCHWARTZ_ERRORS_SQL, {"since": int(since_seconds)})
        return parse_schwartz_errors(cur.fetchall())

    return _run(inventory, inventory.database.schwartz_db, work)


def _read_db_load_sync(inventory: Inventory, window: float) -> DbLoad:
    def work(cur: Any) -> DbLoad:
        cur.execute(GLOBAL_STATUS_SQL)
        a = parse_global_status(cur.fetchall())
        started = time.monotonic()
        time.sleep(window)
        cur.execute(GLOBAL_STATUS_SQL)
        b = parse_global_status(cur.fetchall())
        return db_load_between(a, b, time.monotonic() - started,
                               own_queries=OWN_QUERIES_PER_SAMPLE, own_threads=OWN_THREADS)

    return _run(inventory, None, work)


async def read_schwartz_queue(inventory: Inventory) -> list[FunctionQueue]:
    """Read TheSchwartz's queue per function, on the database's clock. Read-only; safe to retry."""
    return await asyncio.to_thread(_read_schwartz_queue_sync, inventory)


async def read_grabbed_imports(inventory: Inventory) -> frozenset[int]:
    """The jobids of content-import jobs grabbed right now (`grabbed_until` in the future on the
    database's clock): imports being worked, and imports an earlier kill left grabbed until their
    lease ends. Read-only; safe to retry."""
    return await asyncio.to_thread(_read_grabbed_imports_sync, inventory)


async def read_schwartz_errors(inventory: Inventory, since_seconds: int = 3600) -> dict[str, int]:
    """Read TheSchwartz's job failures per function over the last `since_seconds` (database
    clock). Read-only; safe to retry."""
    return await asyncio.to_thread(_read_schwartz_errors_sync, inventory, since_seconds)


async def read_db_load(inventory: Inventory, window: float = 1.0) -> DbLoad:
    """Read SHOW GLOBAL STATUS twice, `window` seconds apart, on one connection: the load.

    The reader's own share is left out: its connection (1 thread, running while it reads) and the
    second SHOW (1 statement: MySQL counts a statement in `Questions` before it reports, as
    SHOW SESSION STATUS shows). Read-only; safe to retry.
    """
    return await asyncio.to_thread(_read_db_load_sync, inventory, window)


# -- the fleet-status tasks -----------------------------------------------------------------------


def _logger() -> logging.Logger | logging.LoggerAdapter:
    """The run's logger, or this module's outside a flow or task run (a test calling `.fn`)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


async def _reading(read: Any) -> Any:
    """The read's value, or the Unavailable / DatabaseRefused it ended with (retried once)."""
    try:
        return await attempt(read)
    except (Unavailable, DatabaseRefused) as e:
        return e


@task(name="check-schwartz", **READ)
async def check_schwartz(inventory: Inventory, thresholds: Thresholds) -> list[Check]:
    """Read TheSchwartz's queue and last hour's errors and judge them. Read-only.

    An unreachable database is a CRIT line, never a raise.
    """
    queue, errors = await asyncio.gather(
        _reading(lambda: read_schwartz_queue(inventory)),
        _reading(lambda: read_schwartz_errors(inventory, 3600)),
    )
    check = judge_schwartz(inventory.database.address, queue, errors, thresholds)
    _logger().info("%s %s %s: %s", check.system, check.host, check.verdict.value, check.reason)
    return [check]


@task(name="check-db-load", **READ)
async def check_db_load(inventory: Inventory, thresholds: Thresholds,
                        window: float = 1.0) -> list[Check]:
    """Read the database's load over `window` seconds and judge it. Read-only.

    An unreachable database is a CRIT line, never a raise.
    """
    load = await _reading(lambda: read_db_load(inventory, window))
    check = judge_db_load(inventory.database.address, load, thresholds)
    _logger().info("%s %s %s: %s", check.system, check.host, check.verdict.value, check.reason)
    return [check]
