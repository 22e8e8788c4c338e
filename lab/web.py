"""The lab's web server for one va-web host: Dreamwidth pages read through memcached to MariaDB.

    python -m lab.web --host va-web01 --config PATH

A real HTTP/1.1 server (stdlib `ThreadingHTTPServer`, keep-alive supported, one thread per
connection) bound to the host's loopback address and `cfg.ports.web`. What it does, and why:

* Start-up sleeps `cfg.workload.web_start_seconds` before binding ("loading modules"), so a
  restart leaves a real gap in which connections are refused.
* Pages are cache-aside: look the key up on one memcached node (picked by a stable hash of the
  key, like Perl's Cache::Memcached), and on a miss run the page's SQL on the site database
  (`cfg.db.site_db`, schema in lab/sql/site.sql) and store the result for `PAGE_TTL` seconds.
  A memcached node that is down counts as a miss (and nothing is stored), so stopping or
  flushing memcached moves the load onto the database, as in production.
* Routes: `/~USER` and `/profile?user=USER` (journal page), `/` (front page),
  `/admin/inflight` (requests accepted and not yet answered, this one excluded: a plain
  integer, for drain checks), and `/admin/healthy`, which does what Dreamwidth's
  `DW::Controller::Admin::StatusCheck` does, in its order and words, always with HTTP 200:
  `global writer` (`SELECT UNIX_TIMESTAMP()` on the site database; else `global writer
  unreachable` / `global writer test query failed`), `memcache HOST:PORT` for every memcached
  and `gearman HOST:PORT` for every jobs host's gearmand (1 s TCP connect each), and
  `schwartz 0` (a new connection to TheSchwartz's database and `DESCRIBE job`; `schwartz 0
  unreachable` when it cannot connect). The lab has no cluster databases, MogileFS or Perlbal,
  so those checks have nothing to list.
* Every response carries `X-DW-Host: <host>` (and pages `X-DW-Cache: hit|miss`).
* SIGTERM (or SIGINT): stop accepting, serve the connections already queued on the listening
  socket, close it, let requests in progress finish (at most `DRAIN_SECONDS`), exit 0. New
  connections are refused from then on. Idle keep-alive connections are closed.
* One line per request on stdout, flushed:
  `2025-01-01T12:00:00.123Z va-web01 GET /~user0001 200 2.1ms cache=hit`.
* Fault switch: a web started while its host has a file `faults/unhealthy` in its root folder
  (`LabConfig.fault_switch`) runs with a broken database setting, as after a bad deploy: it
  connects to port `BROKEN_DB_PORT` of the database address, where nothing listens, so
  `/admin/healthy` says `status=fail` (`global writer unreachable`, `schwartz 0 unreachable`)
  and pages not in memcached fail, until it is restarted without the file.
"""

from __future__ import annotations

import argparse
import html
import ipaddress
import json
import re
import signal
import socket
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs, urlsplit

import pymysql
from pymemcache.client.base import PooledClient
from pymemcache.exceptions import MemcacheError

from lab.config import LabConfig, LabHost

PAGE_TTL = 600  # seconds a journal page stays in memcached
FRONT_TTL = 60  # the front page changes more often
MISSING_TTL = 60  # "no such user" is cached too, so bad links do not hammer the database
MEMCACHE_TIMEOUT = 0.5  # connect and read timeout of every memcached call
DB_CONNECT_TIMEOUT = 2.0
DB_QUERY_TIMEOUT = 5.0
DB_POOL_SIZE = 16  # most database connections one web holds at once
HEALTH_CONNECT_TIMEOUT = 1.0  # StatusCheck's IO::Socket::INET Timeout => 1
DRAIN_SECONDS = 5.0  # longest wait for requests in progress after SIGTERM
KEEPALIVE_IDLE_SECONDS = 5.0  # an idle keep-alive connection is closed after this
LATEST_ENTRIES = 20
BROKEN_DB_PORT = 9  # the `unhealthy` fault switch's database port: nothing listens there

# Dreamwidth usernames (LJ::canonical_username): lowercase letters, digits, underscores; 25 at most.
USERNAME_RE = re.compile(r"^[a-z0-9_]{1,25}$")


# -- pure helpers -------------------------------------------------------------------------------


def canonical_username(raw: str) -> str | None:
    """The canonical form of a username as typed in a URL (`Foo-Bar` → `foo_bar`), or None."""
    user = raw.strip().lower().replace("-", "_")
    return user if USERNAME_RE.match(user) else None


def memcache_bucket(key: str, buckets: int) -> int:
    """Which of `buckets` memcached nodes holds `key`.

    Cache::Memcached's hash, `(crc32(key) >> 16) & 0x7fff`, modulo the number of nodes: stable
    across processes and restarts (Python's own `hash()` is not).
    """
    return ((zlib.crc32(key.encode()) >> 16) & 0x7FFF) % buckets


def journal_key(user: str) -> str:
    """The memcached key of a journal page's data."""
    return f"journal:{user}"


FRONT_KEY = "frontpage"


@dataclass(frozen=True)
class Route:
    """What a request path asks for: `kind` is journal, front, healthy, inflight or notfound."""

    kind: str
    user: str | None = None


def route(path: str) -> Route:
    """Map a request target (path and query) to a Route."""
    parts = urlsplit(path)
    p = parts.path
    if p in ("", "/"):
        return Route("front")
    if p == "/admin/healthy":
        return Route("healthy")
    if p == "/admin/inflight":
        return Route("inflight")
    if p.startswith("/~"):
        name = p[2:].split("/", 1)[0]
        user = canonical_username(name)
        return Route("journal", user) if user else Route("notfound")
    if p in ("/profile", "/profile/"):
        users = parse_qs(parts.query).get("user", [])
        user = canonical_username(users[0]) if users else None
        return Route("journal", user) if user else Route("notfound")
    return Route("notfound")


def format_health(passed: list[str], failed: list[str]) -> str:
    """The text of `/admin/healthy`, exactly as DW::Controller::Admin::StatusCheck prints it."""
    if failed:
        out = "status=fail\n\nfailures:\n" + "\n".join(f"  {f}" for f in failed) + "\n"
    else:
        out = "status=ok\n"
    if passed:
        out += "\nokay:\n" + "\n".join(f"  {p}" for p in passed) + "\n"
    return out


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, datetime) else v) for k, v in row.items()}


def render_journal(data: dict[str, Any]) -> str:
    """The HTML of a journal page from its cached data."""
    u = data["user"]
    s = data["stats"]
    e = html.escape
    kind = {"P": "journal", "C": "community", "Y": "feed"}.get(u["journaltype"], "journal")
    items = []
    for entry in data["entries"]:
        poster = f" by {e(entry['poster'])}" if entry["poster"] != u["user"] else ""
        items.append(
            f'<article id="entry-{entry["jitemid"]}"><h3>{e(entry["subject"])}</h3>'
            f"<p class=\"meta\">{e(entry['eventtime'])}{poster}</p>"
            f"<p>{e(entry['body'])}</p></article>"
        )
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{e(u['name'])} ({e(u['user'])}) - Dreamwidth</title></head><body>\n"
        f"<h1>{e(u['name'])}</h1><p class=\"userinfo\">{e(u['user'])}'s {kind}, "
        f"since {e(u['timecreate'])}: {s['entries']} entries ({s['public_entries']} public), "
        f"{s['bytes']} bytes, latest {e(str(s['latest']))}</p>\n"
        + "\n".join(items)
        + "\n</body></html>\n"
    )


def render_front(data: dict[str, Any]) -> str:
    """The HTML of the front page from its cached data."""
    e = html.escape
    items = "\n".join(
        f'<li><a href="/~{e(x["user"])}">{e(x["user"])}</a>: {e(x["subject"])} '
        f"({e(x['logtime'])})</li>"
        for x in data["latest"]
    )
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Dreamwidth Studios</title>"
        f"</head><body>\n<h1>Dreamwidth Studios</h1><p>{data['users']} accounts, "
        f"{data['entries']} entries.</p>\n<h2>Latest things</h2><ul>\n{items}\n</ul>\n"
        "</body></html>\n"
    )


# -- memcached ----------------------------------------------------------------------------------


class MemcacheRing:
    """Every memcached host, one thread-safe pymemcache client each; keys hashed to one node."""

    def __init__(self, servers: list[tuple[str, int]], log: Callable[[str], None]) -> None:
        self.servers = servers
        self._log = log
        self._clients = [
            PooledClient(
                server,
                connect_timeout=MEMCACHE_TIMEOUT,
                timeout=MEMCACHE_TIMEOUT,
                no_delay=True,
                max_pool_size=DB_POOL_SIZE,
            )
            for server in servers
        ]
        self._last_error_log: dict[int, float] = {}

    def _node(self, key: str) -> int:
        return memcache_bucket(key, len(self._clients))

    def _error(self, node: int, what: str, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_error_log.get(node, 0.0) >= 5.0:  # at most one line per node per 5 s
            self._last_error_log[node] = now
            host, port = self.servers[node]
            self._log(f"memcache {host}:{port} {what} failed: {exc!r}")

    def get(self, key: str) -> bytes | None:
        """The cached value, or None on a miss or when its node cannot be reached."""
        if not self._clients:
            return None
        node = self._node(key)
        try:
            return self._clients[node].get(key)
        except (OSError, MemcacheError) as exc:
            self._error(node, "get", exc)
            return None

    def set(self, key: str, value: bytes, ttl: int) -> None:
        """Store `value` for `ttl` seconds; a node that is down is skipped."""
        if not self._clients:
            return
        node = self._node(key)
        try:
            self._clients[node].set(key, value, expire=ttl, noreply=False)
        except (OSError, MemcacheError) as exc:
            self._error(node, "set", exc)

    def close(self) -> None:
        for client in self._clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing at exit, nothing to do about it
                pass


# -- MariaDB ------------------------------------------------------------------------------------


class DbUnavailable(Exception):
    """No database connection could be had within the timeouts."""


class QueryFailed(Exception):
    """A query failed on a connection that was up (as opposed to no connection at all)."""


class DbPool:
    """A small pool of pymysql connections shared by the request threads."""

    def __init__(self, connect: Callable[[], pymysql.connections.Connection], size: int) -> None:
        self._connect = connect
        self._idle: list[pymysql.connections.Connection] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(size)

    @contextmanager
    def connection(self) -> Iterator[pymysql.connections.Connection]:
        """A live connection; it goes back to the pool unless the body raised."""
        if not self._slots.acquire(timeout=DB_QUERY_TIMEOUT):
            raise DbUnavailable("every database connection is busy")
        conn: pymysql.connections.Connection | None = None
        try:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is not None:
                try:
                    conn.ping(reconnect=False)  # the server may have restarted since
                except pymysql.MySQLError:
                    _close_quietly(conn)
                    conn = None
            if conn is None:
                conn = self._connect()
            yield conn
        except BaseException:
            if conn is not None:
                _close_quietly(conn)
                conn = None
            raise
        finally:
            if conn is not None:
                with self._lock:
                    self._idle.append(conn)
            self._slots.release()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            _close_quietly(conn)


def _close_quietly(conn: pymysql.connections.Connection) -> None:
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - already broken
        pass


def connect_db(cfg: LabConfig, database: str,
               port: int | None = None) -> pymysql.connections.Connection:
    """A new connection to `database` on the lab's database server, with timeouts."""
    return pymysql.connect(
        host=cfg.db.address,
        port=port or cfg.ports.mysql,
        user=cfg.db.user,
        password=cfg.db.password(),
        database=database,
        connect_timeout=DB_CONNECT_TIMEOUT,
        read_timeout=DB_QUERY_TIMEOUT,
        write_timeout=DB_QUERY_TIMEOUT,
        autocommit=True,
        charset="utf8mb4",
        cursorclass=pymysql.cursors.DictCursor,
    )


def query_journal(conn: pymysql.connections.Connection, user: str) -> dict[str, Any] | None:
    """A journal page's data: the user's row, totals over all their entries, the latest 20."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT userid, user, name, journaltype, timecreate FROM user WHERE user = %s", (user,)
        )
        row = cur.fetchone()
        if row is None:
            return None
        cur.execute(
            "SELECT COUNT(*) AS entries, COALESCE(SUM(security = 'public'), 0) AS public_entries,"
            " MIN(eventtime) AS first, MAX(eventtime) AS latest,"
            " COALESCE(SUM(LENGTH(body)), 0) AS bytes"
            " FROM log2 WHERE journalid = %s",
            (row["userid"],),
        )
        stats = cur.fetchone() or {}
        cur.execute(
            "SELECT l.jitemid, l.eventtime, l.subject, l.body, u.user AS poster"
            " FROM log2 l LEFT JOIN user u ON u.userid = l.posterid"
            " WHERE l.journalid = %s AND l.security = 'public'"
            " ORDER BY l.eventtime DESC LIMIT %s",
            (row["userid"], LATEST_ENTRIES),
        )
        entries = cur.fetchall()
    return {
        "user": _jsonable(row),
        "stats": {k: int(v) if k in ("entries", "public_entries", "bytes") else v
                  for k, v in _jsonable(stats).items()},
        "entries": [_jsonable(e) for e in entries],
    }


def query_front(conn: pymysql.connections.Connection) -> dict[str, Any]:
    """The front page's data: site totals and the latest public entries."""
    with conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) AS n FROM user")
        users = (cur.fetchone() or {"n": 0})["n"]
        cur.execute("SELECT COUNT(*) AS n FROM log2")
        entries = (cur.fetchone() or {"n": 0})["n"]
        cur.execute(
            "SELECT u.user, l.jitemid, l.subject, l.logtime"
            " FROM log2 l JOIN user u ON u.userid = l.journalid"
            " WHERE l.security = 'public' ORDER BY l.logtime DESC LIMIT %s",
            (LATEST_ENTRIES,),
        )
        latest = cur.fetchall()
    return {"users": users, "entries": entries, "latest": [_jsonable(x) for x in latest]}


# -- health checks ------------------------------------------------------------------------------


def tcp_connects(address: str, port: int, timeout: float = HEALTH_CONNECT_TIMEOUT) -> bool:
    """True if a TCP connection to address:port opens within `timeout` seconds."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


# -- the application ----------------------------------------------------------------------------


class WebApp:
    """One lab web: its config, memcached ring, database pool and in-flight request count."""

    def __init__(self, cfg: LabConfig, host: LabHost) -> None:
        self.cfg = cfg
        self.host = host
        self.memcache = MemcacheRing(
            [(h.address, cfg.ports.memcached) for h in cfg.hosts_with("memcache")], self.log
        )
        self.gearman_servers = [(h.address, cfg.ports.gearman) for h in cfg.hosts_with("jobs")]
        self.fault = cfg.fault_switch(host.name, "unhealthy")
        self.db_port = BROKEN_DB_PORT if self.fault.exists() else cfg.ports.mysql
        self.db = DbPool(lambda: connect_db(cfg, cfg.db.site_db, self.db_port), DB_POOL_SIZE)
        self.draining = threading.Event()
        # Connections with a request accepted and not yet answered (idle keep-alive ones leave).
        self._pending: set[socket.socket] = set()
        self._pending_lock = threading.Lock()
        self._out_lock = threading.Lock()
        self._checks = ThreadPoolExecutor(max_workers=8, thread_name_prefix="healthy")

    # logging
    def log(self, message: str) -> None:
        """One line on stdout, with time and host, flushed at once."""
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        with self._out_lock:
            sys.stdout.write(f"{stamp} {self.host.name} {message}\n")
            sys.stdout.flush()

    # in-flight accounting: a connection counts from its accept (its request may still be
    # unread) until its response is written, and again whenever a keep-alive request arrives.
    @property
    def inflight(self) -> int:
        with self._pending_lock:
            return len(self._pending)

    def pending(self, conn: socket.socket, busy: bool) -> None:
        with self._pending_lock:
            if busy:
                self._pending.add(conn)
            else:
                self._pending.discard(conn)

    # pages
    def cached(
        self, key: str, ttl: int, load: Callable[[], dict | None]
    ) -> tuple[dict | None, str]:
        """Cache-aside read: (data, "hit"|"miss"). `load` runs on a miss; None is cached too."""
        raw = self.memcache.get(key)
        if raw is not None:
            value = json.loads(raw)
            return (None if value.get("missing") else value), "hit"
        data = load()
        stored = data if data is not None else {"missing": True}
        self.memcache.set(key, json.dumps(stored).encode(), MISSING_TTL if data is None else ttl)
        return data, "miss"

    def journal(self, user: str) -> tuple[dict | None, str]:
        def load() -> dict | None:
            with self.db.connection() as conn:
                return query_journal(conn, user)

        return self.cached(journal_key(user), PAGE_TTL, load)

    def front(self) -> tuple[dict | None, str]:
        def load() -> dict | None:
            with self.db.connection() as conn:
                return query_front(conn)

        return self.cached(FRONT_KEY, FRONT_TTL, load)

    # /admin/healthy
    def health(self) -> str:
        """Run StatusCheck's checks (all at once, order kept) and return its text."""
        checks: list[Callable[[], tuple[bool, str]]] = [self._check_global_writer]
        for address, port in self.memcache.servers:
            checks.append(lambda a=address, p=port: (tcp_connects(a, p), f"memcache {a}:{p}"))
        for address, port in self.gearman_servers:
            checks.append(lambda a=address, p=port: (tcp_connects(a, p), f"gearman {a}:{p}"))
        checks.append(self._check_schwartz)
        results = list(self._checks.map(lambda check: check(), checks))
        return format_health([n for ok, n in results if ok], [n for ok, n in results if not ok])

    def _check_global_writer(self) -> tuple[bool, str]:
        """`global writer`: the site database answers `SELECT UNIX_TIMESTAMP()`."""
        try:
            with self.db.connection() as conn:
                try:
                    with conn.cursor() as cur:
                        cur.execute("SELECT UNIX_TIMESTAMP() AS t")
                        row = cur.fetchone()
                except pymysql.MySQLError as exc:
                    raise QueryFailed from exc  # through the pool, which drops the connection
        except QueryFailed:
            return False, "global writer test query failed"
        except (pymysql.MySQLError, DbUnavailable):
            return False, "global writer unreachable"
        if not row or not row["t"]:
            return False, "global writer test query failed"
        return True, "global writer"

    def _check_schwartz(self) -> tuple[bool, str]:
        """TheSchwartz's one database (`schwartz 0`): a fresh connection and `DESCRIBE job`."""
        try:
            conn = connect_db(self.cfg, self.cfg.db.schwartz_db, self.db_port)
        except pymysql.MySQLError:
            return False, "schwartz 0 unreachable"
        try:
            with conn.cursor() as cur:
                cur.execute("DESCRIBE job")
                ok = cur.fetchone() is not None
        except pymysql.MySQLError:
            ok = False
        finally:
            _close_quietly(conn)
        return ok, "schwartz 0"

    def close(self) -> None:
        self._checks.shutdown(wait=False, cancel_futures=True)
        self.memcache.close()
        self.db.close()


class DwHandler(BaseHTTPRequestHandler):
    """Serves one connection's requests for the WebApp in `server.app`."""

    protocol_version = "HTTP/1.1"
    server_version = "Apache"
    timeout = KEEPALIVE_IDLE_SECONDS
    server: "WebServer"

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Silence the stdlib's stderr log: every request is logged by `_serve`."""

    def send_response(self, code: int, message: str | None = None) -> None:
        super().send_response(code, message)
        self.send_header("X-DW-Host", self.server.app.host.name)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._serve(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib naming
        self._serve(send_body=False)

    def _serve(self, send_body: bool) -> None:
        app = self.server.app
        start = time.monotonic()
        status, cache = 500, "-"
        app.pending(self.request, True)
        try:
            try:
                status, content_type, body, cache = self._page(app)
            except (pymysql.MySQLError, DbUnavailable) as exc:
                status, content_type, cache = 503, "text/plain; charset=utf-8", "miss"
                body = f"Database unavailable: {exc}\n"
                app.log(f"database error on {self.path}: {exc!r}")
            except Exception as exc:  # noqa: BLE001 - any bug becomes a 500, logged
                status, content_type = 500, "text/plain; charset=utf-8"
                body = "Internal server error\n"
                app.log(f"error on {self.path}: {exc!r}")
            if app.draining.is_set():
                self.close_connection = True
            data = body.encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                if cache != "-":
                    self.send_header("X-DW-Cache", cache)
                if self.close_connection:
                    self.send_header("Connection", "close")
                self.end_headers()
                if send_body:
                    self.wfile.write(data)
            except OSError:
                self.close_connection = True  # the client went away
        finally:
            app.pending(self.request, False)
        ms = (time.monotonic() - start) * 1000
        app.log(f"{self.command} {self.path} {status} {ms:.1f}ms cache={cache}")

    def _page(self, app: WebApp) -> tuple[int, str, str, str]:
        """(status, content type, body, cache) for this request's path."""
        r = route(self.path)
        if r.kind == "healthy":
            return 200, "text/plain; charset=utf-8", app.health(), "-"
        if r.kind == "inflight":
            # every request in progress but this one
            return 200, "text/plain; charset=utf-8", f"{app.inflight - 1}\n", "-"
        if r.kind == "front":
            data, cache = app.front()
            page = render_front(data or {"users": 0, "entries": 0, "latest": []})
            return 200, "text/html; charset=utf-8", page, cache
        if r.kind == "journal" and r.user:
            data, cache = app.journal(r.user)
            if data is None:
                return 404, "text/plain; charset=utf-8", f"Unknown account: {r.user}\n", cache
            return 200, "text/html; charset=utf-8", render_journal(data), cache
        return 404, "text/plain; charset=utf-8", "Not found\n", "-"


class WebServer(ThreadingHTTPServer):
    """The listening socket: one daemon thread per connection."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, app: WebApp) -> None:
        self.app = app
        super().__init__((app.host.address, app.cfg.ports.web), DwHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Count the connection as pending from its accept, before its thread even starts."""
        self.app.pending(request, True)
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.app.pending(request, False)

    def accept_backlog(self) -> int:
        """Hand every connection already waiting in the listen queue to a thread; how many."""
        self.socket.setblocking(False)
        accepted = 0
        while True:
            try:
                request, client_address = self.get_request()
            except (BlockingIOError, InterruptedError):
                return accepted
            except OSError:
                return accepted
            request.setblocking(True)
            self.process_request(request, client_address)
            accepted += 1


# -- main ---------------------------------------------------------------------------------------


def wait_for_signal(stop: threading.Event, timeout: float | None = None) -> bool:
    """Wait until `stop` is set (True) or `timeout` passes (False).

    Waits in short steps: the kernel may deliver SIGTERM to any thread, and Python runs the
    handler only when the main thread next runs bytecode, so an endless `Event.wait()` in the
    main thread could miss it.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        step = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
        if step <= 0:
            return stop.is_set()
        if stop.wait(step):
            return True


def serve(cfg: LabConfig, host: LabHost) -> int:
    """Start up, serve until SIGTERM/SIGINT, drain, return the exit status."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    app = WebApp(cfg, host)
    app.log(f"starting: loading modules for {cfg.workload.web_start_seconds:.1f}s")
    if app.db_port != cfg.ports.mysql:
        app.log(f"fault switch {app.fault}: database port {app.db_port}, where nothing listens")
    if wait_for_signal(stop, cfg.workload.web_start_seconds):
        app.log("stopped before start-up finished")
        app.close()
        return 0
    try:
        server = WebServer(app)
    except OSError as exc:
        app.log(f"cannot listen on {host.address}:{cfg.ports.web}: {exc}")
        app.close()
        return 1
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name="accept", daemon=True)
    thread.start()
    app.log(f"listening on {host.address}:{cfg.ports.web}")

    wait_for_signal(stop)
    app.log("stopping: no longer accepting connections, draining")
    app.draining.set()
    server.shutdown()
    queued = server.accept_backlog()  # connections that reached us are served, not reset
    server.server_close()
    if queued:
        app.log(f"serving {queued} connections that were still queued")
    deadline = time.monotonic() + DRAIN_SECONDS
    while app.inflight > 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    left = app.inflight
    app.log(f"stopped ({left} requests cut off)" if left else "stopped, nothing in flight")
    app.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.web", description=__doc__.split("\n")[0])
    parser.add_argument("--host", required=True, help="the web host to be, e.g. va-web01")
    parser.add_argument("--config", required=True, help="the lab's lab.json")
    args = parser.parse_args(argv)
    cfg = LabConfig.load(args.config)
    host = cfg.host(args.host)
    if "web" not in host.roles:
        parser.error(f"{host.name} is not a web host")
    if ipaddress.ip_address(host.address) not in ipaddress.ip_network("127.0.0.0/8"):
        parser.error(f"{host.name}'s address {host.address} is not a loopback address")
    return serve(cfg, host)


if __name__ == "__main__":
    sys.exit(main())
