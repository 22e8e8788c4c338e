"""The lab's webs (lab/web.py) and user traffic (lab/traffic.py), against the running lab.

The `lab` fixture (tests/conftest.py) is the running lab: six webs va-web01..06, both memcached
nodes, MariaDB, the moto ALB target group and the lab's own traffic generator. The tests that
need user traffic read the running generator's counters (counters/traffic.json); none starts a
second generator.

Every test leaves the lab as it found it: whatever it stops is started again, whatever target it
takes out of the ALB is registered again (in its old place), in a `finally`. Other test files may
briefly restart gearman, ddlockd or the workers meanwhile, so the health checks wait (a few
seconds at most) for the exact expected answer instead of reading it once.
"""

from __future__ import annotations

import http.client
import random
import socket
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import boto3
import pymysql
import pytest
from pymemcache.client.base import Client as MemcacheClient

from lab import ctl
from lab.config import LabConfig, LabHost
from lab.traffic import (SITE_USERS, PathPicker, Target, is_loopback, parse_target_health,
                         percentile, read_aws_credentials, read_traffic, routable, username)
from lab.web import FRONT_KEY, Route, format_health, journal_key, memcache_bucket, route

HEALTH_SETTLE_SECONDS = 10  # longest wait for /admin/healthy to give the expected answer

# -- helpers: HTTP, database counters, memcached, the target group ------------------------------


def http_get(cfg: LabConfig, host: LabHost, path: str) -> tuple[int, dict[str, str], str]:
    """GET `path` from a web: (status, headers, body)."""
    conn = http.client.HTTPConnection(host.address, cfg.ports.web, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read().decode()
    finally:
        conn.close()


@contextmanager
def db_status(cfg: LabConfig) -> Iterator[Callable[[str], int]]:
    """A reader of the database's global status counters (SHOW GLOBAL STATUS is no SELECT)."""
    conn = pymysql.connect(host=cfg.db.address, port=cfg.ports.mysql, user=cfg.db.user,
                           password=cfg.db.password(), connect_timeout=3, read_timeout=5)
    try:
        def read(name: str) -> int:
            with conn.cursor() as cur:
                cur.execute("SHOW GLOBAL STATUS LIKE %s", (name,))
                return int(cur.fetchone()[1])

        yield read
    finally:
        conn.close()


def memcache(cfg: LabConfig, host: LabHost) -> MemcacheClient:
    return MemcacheClient((host.address, cfg.ports.memcached), connect_timeout=1, timeout=1)


def memcache_node_of(cfg: LabConfig, key: str) -> LabHost:
    """The memcached host that holds `key`, by the webs' own hashing."""
    nodes = cfg.hosts_with("memcache")
    return nodes[memcache_bucket(key, len(nodes))]


def elbv2(cfg: LabConfig):  # noqa: ANN201 - a boto3 client
    """A client of the AWS stand-in's load balancers."""
    return boto3.client("elbv2", endpoint_url=cfg.aws_endpoint_url, region_name=cfg.aws.region,
                        **read_aws_credentials(cfg.aws.credentials_file))


def read_all(conn: socket.socket) -> bytes:
    """Everything the peer sends until it closes."""
    chunks = []
    while chunk := conn.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def running_traffic(cfg: LabConfig) -> dict[str, Any]:
    """The lab's traffic generator's counters; fails unless it is running and writing them."""
    counters = read_traffic(cfg)
    assert counters.get("running"), f"the lab's traffic generator is not running: {counters}"
    age = time.time() - counters.get("updated", 0)
    assert age < 3, f"the lab's traffic counters are {age:.0f}s old"
    return counters


def targeted(cfg: LabConfig) -> list[str]:
    """The webs the lab's traffic currently sends to (its last read of the ALB's targets)."""
    return [t["host"] for t in read_traffic(cfg).get("targets", [])]


def registered(cfg: LabConfig) -> list[tuple[str, int, str]]:
    """The target group's targets, in the ALB's order: (address, port, state)."""
    reply = elbv2(cfg).describe_target_health(TargetGroupArn=cfg.aws.target_group_arn)
    return [(t.address, t.port, t.state) for t in parse_target_health(reply, {})]


def last_registered_web(cfg: LabConfig) -> LabHost:
    """The web registered last in the target group: taking it out and back keeps the order."""
    found = registered(cfg)
    assert found, "the ALB's target group has no targets"
    by_address = {h.address: h for h in cfg.hosts_with("web")}
    return by_address[found[-1][0]]


@contextmanager
def out_of_the_alb(cfg: LabConfig, web: LabHost) -> Iterator[None]:
    """Deregister `web` from the ALB until the traffic no longer sends to it; register it back
    (and wait for the traffic to use it again) afterwards, whatever happens."""
    tg = cfg.aws.target_group_arn
    target = {"Id": web.address, "Port": cfg.ports.web}
    before = registered(cfg)
    assert before[-1][0] == web.address, "only the last target goes back in its old place"
    running_traffic(cfg)
    wait_for(lambda: web.name in targeted(cfg), 5, f"the traffic to target {web.name}")
    try:
        elbv2(cfg).deregister_targets(TargetGroupArn=tg, Targets=[target])
        wait_for(lambda: web.name not in targeted(cfg), 5, f"the ALB to drop {web.name}")
        time.sleep(0.5)  # requests already sent to it are answered
        yield
    finally:
        elbv2(cfg).register_targets(TargetGroupArn=tg, Targets=[target])
        wait_for(lambda: web.name in targeted(cfg), 5, f"{web.name} back in the ALB")
        assert registered(cfg) == before


def warm_cache(cfg: LabConfig, nodes: Sequence[LabHost] | None = None) -> None:
    """Cache every journal (and the front page) whose key lives on `nodes` (default: all), as a
    long-running site has them: what a test flushed or restarted away is cached again."""
    webs = cfg.hosts_with("web")
    names = {h.name for h in (nodes or cfg.hosts_with("memcache"))}
    paths = [f"/~{username(u)}" for u in range(1, SITE_USERS + 1)
             if memcache_node_of(cfg, journal_key(username(u))).name in names]
    if memcache_node_of(cfg, FRONT_KEY).name in names:
        paths.append("/")
    with ThreadPoolExecutor(max_workers=12) as pool:
        codes = list(pool.map(lambda i: http_get(cfg, webs[i % len(webs)], paths[i])[0],
                              range(len(paths))))
    assert codes == [200] * len(paths)


def healthy_body(cfg: LabConfig, web: LabHost) -> str:
    status, headers, body = http_get(cfg, web, "/admin/healthy")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert headers["X-DW-Host"] == web.name
    return body


def wait_for_health(cfg: LabConfig, web: LabHost, expected: str) -> str:
    """/admin/healthy of `web` once it says exactly `expected` (a concurrent gearman restart
    elsewhere may fail a check for a moment); fails with the last answer if it never does."""
    deadline = time.monotonic() + HEALTH_SETTLE_SECONDS
    while (body := healthy_body(cfg, web)) != expected and time.monotonic() < deadline:
        time.sleep(0.2)
    assert body == expected
    return body


def expected_health(cfg: LabConfig, failed: Sequence[str] = ()) -> str:
    """What /admin/healthy must say when exactly `failed` items fail."""
    items = ["global writer"]
    items += [f"memcache {h.address}:{cfg.ports.memcached}" for h in cfg.hosts_with("memcache")]
    items += [f"gearman {h.address}:{cfg.ports.gearman}" for h in cfg.hosts_with("jobs")]
    items += ["schwartz 0"]
    return format_health([i for i in items if i not in failed], [i for i in items if i in failed])


# -- pure parts ---------------------------------------------------------------------------------


def test_format_health_prints_like_statuscheck() -> None:
    assert format_health(["global writer", "memcache 127.0.0.1:11211"], []) == (
        "status=ok\n\nokay:\n  global writer\n  memcache 127.0.0.1:11211\n")
    assert format_health(["global writer"], ["memcache 127.0.0.2:11211", "schwartz 0"]) == (
        "status=fail\n\nfailures:\n  memcache 127.0.0.2:11211\n  schwartz 0\n"
        "\nokay:\n  global writer\n")
    assert format_health([], ["global writer unreachable"]) == (
        "status=fail\n\nfailures:\n  global writer unreachable\n")


def test_routes() -> None:
    assert route("/") == Route("front")
    assert route("/~user0001") == Route("journal", "user0001")
    assert route("/~User-0001/") == Route("journal", "user_0001")
    assert route("/profile?user=user0002&mode=full") == Route("journal", "user0002")
    assert route("/profile") == Route("notfound")
    assert route("/~bad%20name") == Route("notfound")
    assert route("/admin/healthy") == Route("healthy")
    assert route("/admin/inflight") == Route("inflight")
    assert route("/nope") == Route("notfound")


def test_memcache_bucket_is_cache_memcacheds_hash() -> None:
    # crc32("foo") = 0x8c736521: (0x8c736521 >> 16) & 0x7fff = 3187
    assert [memcache_bucket("foo", n) for n in (1, 2, 3, 10)] == [0, 1, 1, 7]
    spread = Counter(memcache_bucket(journal_key(username(u)), 2) for u in range(1, 2001))
    assert 800 < spread[0] < 1200


def test_targets_from_describe_target_health() -> None:
    reply = {"TargetHealthDescriptions": [  # as moto answers, plus what a real ALB can say
        {"Target": {"Id": "127.10.0.11", "Port": 80}, "HealthCheckPort": "traffic-port",
         "TargetHealth": {"State": "healthy"}},
        {"Target": {"Id": "127.10.0.12", "Port": 80}, "TargetHealth": {"State": "draining"}},
        {"Target": {"Id": "10.0.0.5", "Port": 80}, "TargetHealth": {"State": "healthy"}},
    ]}
    targets = parse_target_health(reply, {"127.10.0.11": "va-web01", "127.10.0.12": "va-web02"})
    assert targets == [Target("127.10.0.11", 80, "healthy", "va-web01"),
                       Target("127.10.0.12", 80, "draining", "va-web02"),
                       Target("10.0.0.5", 80, "healthy", "10.0.0.5")]
    assert [t.host for t in routable(targets)] == ["va-web01", "10.0.0.5"]
    unhealthy = [Target("127.10.0.11", 80, "unhealthy", "a"),
                 Target("127.10.0.12", 80, "draining", "b")]
    assert [t.host for t in routable(unhealthy)] == ["a"]  # fail open, never to a draining one
    assert [is_loopback(a) for a in ("127.10.0.11", "127.255.255.254", "10.0.0.5", "::1",
                                     "localhost", "128.0.0.1")] == [True, True, False, False,
                                                                    False, False]


def test_percentile() -> None:
    assert percentile([], 50) is None
    assert percentile([5.0], 99) == 5.0
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 99)) == (50.0, 99.0)


def test_traffic_prefers_a_few_journals() -> None:
    picker = PathPicker(random.Random(7))
    paths = [picker.path() for _ in range(5000)]
    journals = [p for p in paths if p.startswith("/~")]
    assert 0.75 < len(journals) / len(paths) < 0.85
    assert 0.05 < paths.count("/") / len(paths) < 0.15
    users = Counter(p[2:] for p in journals)
    assert users.most_common(1)[0][0] == "user0001"
    top = sum(n for u, n in users.items() if int(u[4:]) <= 100)
    assert top / len(journals) > 0.6
    assert all(1 <= int(u[4:]) <= SITE_USERS for u in users)


# -- against the lab ----------------------------------------------------------------------------


@pytest.mark.lab
def test_journal_and_front_pages_are_served(lab: LabConfig) -> None:
    assert len(lab.hosts_with("web")) == 6
    for web in lab.hosts_with("web"):
        status, headers, body = http_get(lab, web, "/~user0002")
        assert status == 200, body
        assert headers["X-DW-Host"] == web.name
        assert "user0002" in body and "<article" in body

    web = lab.hosts_with("web")[0]
    status, _, body = http_get(lab, web, "/profile?user=user0002")
    assert status == 200 and "user0002" in body

    status, headers, body = http_get(lab, web, "/")
    assert status == 200 and "Latest things" in body
    assert headers["X-DW-Host"] == web.name

    status, headers, _ = http_get(lab, web, "/~nosuchuser")
    assert status == 404 and headers["X-DW-Host"] == web.name

    last = username(SITE_USERS)  # the traffic's user list matches site.sql's
    assert http_get(lab, web, f"/~{last}")[0] == 200
    assert http_get(lab, web, f"/~{username(SITE_USERS + 1)}")[0] == 404


@pytest.mark.lab
def test_second_read_is_a_memcached_hit(lab: LabConfig) -> None:
    web = lab.hosts_with("web")[0]
    user = username(SITE_USERS - 1)  # the traffic almost never asks for the least popular users
    key = journal_key(user)
    node = memcache_node_of(lab, key)
    memcache(lab, node).delete(key)

    with db_status(lab) as status:
        before = status("Com_select")
        code, headers, _ = http_get(lab, web, f"/~{user}")
        assert code == 200 and headers["X-DW-Cache"] == "miss"
        assert status("Com_select") - before >= 3, "a miss runs the page's queries"
        assert memcache(lab, node).get(key) is not None, f"{key} is on {node.name}"

        # The lab's traffic and workers query the database too (about 15 SELECT/s): a cached
        # read proves it runs no query once a read happens with no SELECT at all on the server.
        selects = []
        for _ in range(10):
            hits = memcache(lab, node).stats()[b"get_hits"]
            before = status("Com_select")
            code, headers, _ = http_get(lab, web, f"/~{user}")
            selects.append(status("Com_select") - before)
            assert code == 200 and headers["X-DW-Cache"] == "hit"
            assert memcache(lab, node).stats()[b"get_hits"] > hits
            if selects[-1] == 0:
                break
        assert 0 in selects, f"SELECTs during cached reads: {selects}"


@pytest.mark.lab
def test_healthy_says_ok(lab: LabConfig) -> None:
    for web in lab.hosts_with("web"):
        assert wait_for_health(lab, web, expected_health(lab)).startswith("status=ok\n")


@pytest.mark.lab
def test_healthy_names_a_stopped_memcached(lab: LabConfig) -> None:
    web = lab.hosts_with("web")[0]
    memc = lab.hosts_with("memcache")[-1]
    item = f"memcache {memc.address}:{lab.ports.memcached}"
    try:
        assert ctl.stop(lab, "memcached", memc.name) == 0
        body = wait_for_health(lab, web, expected_health(lab, failed=[item]))
        assert body.startswith(f"status=fail\n\nfailures:\n  {item}\n\nokay:\n  global writer\n")
    finally:
        assert ctl.start(lab, "memcached", memc.name) == 0
    wait_for_health(lab, web, expected_health(lab))
    warm_cache(lab, [memc])  # what the restart emptied is cached again


@pytest.mark.lab
def test_inflight_counts_accepted_requests(lab: LabConfig) -> None:
    web = lab.hosts_with("web")[0]

    def inflight() -> int:
        status, _, body = http_get(lab, web, "/admin/inflight")
        assert status == 200
        return int(body)

    # Connections whose request has not arrived yet count: a stop must wait for them too.
    conns = [socket.create_connection((web.address, lab.ports.web), timeout=5) for _ in range(3)]
    try:
        wait_for(lambda: inflight() >= 3, 3, "3 requests in flight")
    finally:
        for conn in conns:
            conn.close()
    wait_for(lambda: inflight() < 3, 3, "the closed connections to leave")


@pytest.mark.lab
def test_flushing_memcached_makes_the_database_work(lab: LabConfig) -> None:
    running_traffic(lab)  # the lab's own users keep asking for pages meanwhile
    with db_status(lab) as status:
        # Warm the cache with every journal (what a long-running site has cached): what the
        # lab's traffic then asks the database for is little beyond the workers' own queries.
        warm_cache(lab)

        def select_rate(seconds: float) -> float:
            before, start = status("Com_select"), time.monotonic()
            time.sleep(seconds)
            return (status("Com_select") - before) / (time.monotonic() - start)

        try:
            warm = select_rate(3)
            for h in lab.hosts_with("memcache"):
                assert memcache(lab, h).flush_all(noreply=False)
            cold = select_rate(3)
        finally:
            warm_cache(lab)  # the lab's users find their pages cached again
    assert cold >= 1.5 * warm and cold - warm >= 10, (
        f"SELECT/s with a warm cache {warm:.1f}, after the flush {cold:.1f}")


@pytest.mark.lab
def test_a_stopping_web_answers_the_requests_it_accepted(lab: LabConfig) -> None:
    web = last_registered_web(lab)  # out of the ALB while it restarts: no user sees the gap
    users = [username(u) for u in range(1500, 1530)]  # rarely asked for: cache misses, slower
    for user in users:
        key = journal_key(user)
        memcache(lab, memcache_node_of(lab, key)).delete(key)

    with out_of_the_alb(lab, web):
        # Every request is sent on an open connection before the web is told to stop.
        conns = [socket.create_connection((web.address, lab.ports.web), timeout=10)
                 for _ in users]
        try:
            for conn, user in zip(conns, users):
                conn.sendall(f"GET /~{user} HTTP/1.1\r\nHost: {web.address}\r\n"
                             "Connection: close\r\n\r\n".encode())
            with ThreadPoolExecutor(max_workers=1) as pool:
                restart = pool.submit(ctl.restart, lab, "apache2", web.name)
                answers = [read_all(conn).split(b"\r\n", 1)[0] for conn in conns]
                assert restart.result() == 0, f"{web.name} did not come back"
        finally:
            for conn in conns:
                conn.close()
            ctl.start(lab, "apache2", web.name)  # nothing stays stopped (a no-op if it runs)
        assert http_get(lab, web, "/~user0001")[0] == 200
    assert answers == [b"HTTP/1.1 200 OK"] * len(users)


@pytest.mark.lab
def test_restarting_a_registered_web_fails_requests_but_not_a_drained_one(
    lab: LabConfig,
) -> None:
    drained = last_registered_web(lab)
    live = next(h for h in lab.hosts_with("web") if h != drained)
    running_traffic(lab)
    wait_for(lambda: {live.name, drained.name} <= set(targeted(lab)), 5, "both webs targeted")

    with out_of_the_alb(lab, drained):
        time.sleep(1.0)  # the counters of the requests already sent are written
        before = read_traffic(lab)["webs"]
        try:
            assert ctl.restart(lab, "apache2", drained.name) == 0
            assert ctl.restart(lab, "apache2", live.name) == 0
            time.sleep(1.5)  # the failures are counted and written
            after = read_traffic(lab)["webs"]
        finally:
            for web in (drained, live):  # nothing stays stopped (a no-op for a running web)
                ctl.start(lab, "apache2", web.name)

    assert after[live.name]["failures"] > before[live.name]["failures"], after[live.name]
    assert after[live.name]["last_failure"]["reason"] in ("connection refused", "connection reset")
    assert after[drained.name]["failures"] == before[drained.name]["failures"]
    assert after[drained.name]["requests"] == before[drained.name]["requests"]
