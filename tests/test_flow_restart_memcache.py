"""restart-memcache on the lab: it refuses while the database is busy, restarts one node at a time
with recovery in between, stops at a ceiling, plans only on a dry run, refuses bad parameters.

Ground truth is the lab's own: memcached pids from the hosts' pidfiles, the nodes' `stats`
sampled from a thread while the flow runs, and MariaDB's `Questions` counter (what the flow's
queries/s reads too). The lab's traffic is cache-aside through memcached, so a restarted node
really moves reads onto the database. Every test that empties a node warms the cache again.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, Callable

from lab import procs, services
from lab.config import LabConfig
from lab.traffic import SITE_USERS, username
from lab.web import journal_key
from tasks.memcache import MemcacheUnavailable, read_memcache_stats
from test_lab_web import db_status, http_get, memcache_node_of, warm_cache


def nodes(lab: LabConfig) -> list[str]:
    return [h.name for h in lab.hosts_with("memcache")]


def pids(lab: LabConfig) -> dict[str, int | None]:
    return {h: procs.read_pid(services.find(lab, "memcached", h).pidfile) for h in nodes(lab)}


class Recorder(threading.Thread):
    """A thread that records what it sees while a test runs (`with recorder:`), in order, and
    lets the test wait for the records it needs."""

    def __init__(self, lab: LabConfig):
        super().__init__(daemon=True)
        self.lab, self.records = lab, []
        self._halt = threading.Event()
        self._recorded = threading.Condition()

    def record(self, item: Any) -> None:
        with self._recorded:
            self.records.append(item)
            self._recorded.notify_all()

    def wait_until(self, ready: Callable[[list], bool], what: str, timeout: float = 30) -> list:
        """Wait until `ready(records)`; the records then."""
        with self._recorded:
            assert self._recorded.wait_for(lambda: ready(self.records), timeout), \
                f"{what}: not within {timeout} s ({len(self.records)} records)"
            return list(self.records)

    def __enter__(self) -> Any:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self.join(10)


class DbSampler(Recorder):
    """MariaDB's `Questions` counter (what the flow's queries/s is made of), read every 0.2 s
    with the time of each read, from a thread, while a test runs. Its own reads count in it, as
    they count in what the flow reads at the same time."""

    @property
    def samples(self) -> list[tuple[float, int]]:
        return self.records

    def run(self) -> None:
        with db_status(self.lab) as status:
            while not self._halt.is_set():
                self.record((time.time(), status("Questions")))
                self._halt.wait(0.2)

    def count_at(self, t: float) -> float:
        """The counter at time `t`, interpolated between the reads around it."""
        for (t0, n0), (t1, n1) in zip(self.samples, self.samples[1:]):
            if t0 <= t <= t1:
                return n0 + (n1 - n0) * (t - t0) / (t1 - t0)
        raise AssertionError(f"no reads of the database around {t}")

    def rate(self, start: float, end: float) -> float:
        return (self.count_at(end) - self.count_at(start)) / (end - start)

    def read_at_or_after(self, t: float) -> float:
        """Wait until the counter has been read at `t` or later; the time of that read."""
        samples = self.wait_until(lambda s: s and s[-1][0] >= t, "a read of the database")
        return next(t1 for t1, _ in samples if t1 >= t)

    def rate_over_next(self, seconds: float) -> float:
        """The query rate over the next `seconds`, once the counter has been read past them."""
        start = self.read_at_or_after(time.time())
        end = self.read_at_or_after(start + seconds)
        return self.rate(start, end)


READER_RATE = 15.0  # journal pages per second the test's own reader asks for
QUERIES_PER_MISS = 3  # a journal page read from the database (lab.web.query_journal's queries)


class PageReader(Recorder):
    """A steady reader of the journal pages cached on one memcached node, READER_RATE pages a
    second through the webs in turn, least popular first (the lab's own traffic asks for those
    least), each page once per pass over them (~1000 pages: about a minute).

    While the node is warm every page is a hit and costs the database nothing. Once the node is
    emptied (restarted), every page the reader asks for in the next pass is a miss that costs
    the database QUERIES_PER_MISS queries: the restart adds about READER_RATE * QUERIES_PER_MISS
    queries/s for a minute, however the lab's own traffic varies. Each answer is recorded:
    (time asked, time answered, HTTP status or None if none came, X-DW-Cache)."""

    def __init__(self, lab: LabConfig, node: str):
        super().__init__(lab)
        users = [username(u) for u in range(SITE_USERS, 0, -1)]
        self.paths = [f"/~{u}" for u in users if memcache_node_of(lab, journal_key(u)).name == node]

    @property
    def answers(self) -> list[tuple[float, float, int | None, str | None]]:
        return self.records

    def ask(self, web: Any, path: str) -> None:
        asked = time.time()
        try:
            status, headers, _ = http_get(self.lab, web, path)
        except OSError:
            status, headers = None, {}
        self.record((asked, time.time(), status, headers.get("X-DW-Cache")))

    def run(self) -> None:
        webs = itertools.cycle(self.lab.hosts_with("web"))
        with ThreadPoolExecutor(4) as pool:
            due = time.monotonic()
            for path in itertools.cycle(self.paths):
                if self._halt.wait(max(0.0, due - time.monotonic())):
                    break
                pool.submit(self.ask, next(webs), path)
                due += 1 / READER_RATE

    def wait_for_answers(self, n: int) -> list[tuple]:
        """Wait until the reader has had `n` answers; all of its answers so far."""
        return self.wait_until(lambda answers: len(answers) >= n, f"{n} answers to the reader")


def same_rate(reported: float, lab_rate: float) -> bool:
    """The flow's queries/s for a window against the lab's own counter over the same window:
    equal but for the reads' timing (0.2 s apart) and the flow leaving its own SHOW out."""
    return abs(reported - lab_rate) <= 0.15 * lab_rate + 3


def by_step(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["host"], r["action"]): r for r in report["results"]}


def readings(report: dict[str, Any], what: str) -> list[dict[str, Any]]:
    return [r["figures"] for r in report["readings"] if r["what"] == what]


class NodeSampler(threading.Thread):
    """Reads every node's `stats` every 50 ms while a flow runs: (time, {host: pid or None})."""

    def __init__(self, lab: LabConfig):
        super().__init__(daemon=True)
        self.lab, self.samples = lab, []
        self.addresses = {h.name: h.address for h in lab.hosts_with("memcache")}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            seen: dict[str, int | None] = {}
            for host, address in self.addresses.items():
                try:
                    seen[host] = read_memcache_stats(address, self.lab.ports.memcached, 0.5).pid
                except MemcacheUnavailable:
                    seen[host] = None
            self.samples.append((time.time(), seen))
            self._halt.wait(0.05)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


def test_refuses_while_the_database_runs_more_queries_than_max_qps(lab: LabConfig, dwops_run):
    first, second = nodes(lab)
    before = pids(lab)
    with DbSampler(lab) as db:
        rate = db.rate_over_next(3)  # the lab's real query rate now
        limit = round(rate / 3, 1)
        assert limit > 0, f"the lab's database is idle ({rate:.1f} queries/s)"
        rc, report, err = dwops_run("restart-memcache", f"max_qps={limit}", "wait_for_load=3")

    assert rc == 1, err[-2000:]
    assert report["halted"].startswith(f"database too busy to restart {first}")
    steps = by_step(report)
    assert steps[(first, "restart")]["outcome"] == "skipped"
    assert "refused: database load high" in steps[(first, "restart")]["detail"]
    assert [steps[(first, "wait for recovery")]["outcome"], steps[(second, "restart")]["outcome"],
            steps[(second, "wait for recovery")]["outcome"]] == ["not reached"] * 3
    gate = [g for g in report["gates"] if g["name"] == "db_load_is_low"][-1]
    assert not gate["ok"] and f"queries/s >= {limit:g}" in gate["reason"]
    # It waited (polled), then refused; every poll read the database's real rate: the lab's
    # own counter over the same 2 s window says the same.
    polls = readings(report, f"{first} gate")
    assert len(polls) >= 2 and not any(p["ok"] for p in polls)
    assert polls[-1]["qps"] == gate["readings"]["qps"]
    for p in polls:
        lab_rate = db.rate(p["at"] - 2, p["at"])
        assert p["qps"] > limit and same_rate(p["qps"], lab_rate), (p, lab_rate, rate)
    assert pids(lab) == before  # no node touched


def test_restarts_one_node_at_a_time_waiting_for_recovery_in_between(lab: LabConfig, dwops_run):
    warm_cache(lab)  # a loaded, warm site, as production has it
    first, second = nodes(lab)
    before = pids(lab)
    sampler = NodeSampler(lab)
    sampler.start()
    try:
        rc, report, err = dwops_run("restart-memcache")
    finally:
        try:
            sampler.stop()
        finally:
            warm_cache(lab)  # what the restarts emptied is cached again
    assert rc == 0, err[-2000:]
    after = pids(lab)
    assert all(after[h] and after[h] != before[h] for h in (first, second)), (before, after)
    steps = by_step(report)
    assert {k: r["outcome"] for k, r in steps.items()} == {
        (h, a): "done" for h in (first, second) for a in ("restart", "wait for recovery")}
    for h in (first, second):
        assert f"pid {before[h]} -> {after[h]}" in steps[(h, "restart")]["detail"]

    # The report: the second restart began only after the first node had recovered.
    t1, t2 = readings(report, f"{first} timings")[0], readings(report, f"{second} timings")[0]
    assert t1["recovered_at"] is not None and t2["recovered_at"] is not None
    assert t1["answered_at"] <= t1["recovered_at"] <= t2["restart_started_at"]

    # The lab: the second node was still its old process after the first answered as a new
    # one, and no sample ever found both nodes down.
    assert not [t for t, seen in sampler.samples if not any(seen.values())]
    first_new = min(t for t, seen in sampler.samples if seen[first] == after[first])
    second_old = max(t for t, seen in sampler.samples if seen[second] == before[second])
    assert first_new < second_old
    assert not [t for t, seen in sampler.samples
                if seen[first] != after[first] and seen[second] != before[second]]

    # The readings: the database's load and each node's hit ratio over the run, in time order.
    series = [r["figures"] for r in report["readings"] if "qps" in r["figures"]]
    assert len(series) >= 5 and all(s["qps"] is not None for s in series)
    assert [s["t"] for s in series] == sorted(s["t"] for s in series)
    for h in (first, second):
        watch = readings(report, f"{h} watch")
        assert watch and all("hit_ratio" in w and w["gets"] is not None for w in watch)
        assert watch[0]["uptime"] < 30


def test_stops_after_the_first_node_when_its_restart_pushes_the_load_over_the_ceiling(
        lab: LabConfig, dwops_run):
    warm_cache(lab)
    first, second = nodes(lab)
    before = pids(lab)
    # What one emptied node costs the database, made steady: besides the lab's traffic (whose
    # extra misses after a restart fade within seconds), the test's reader asks for the first
    # node's pages, all hits until the restart, all misses for a minute after it.
    jump = READER_RATE * QUERIES_PER_MISS
    try:
        with DbSampler(lab) as db, PageReader(lab, first) as reader:
            warmed = reader.wait_for_answers(int(2 * READER_RATE))
            assert all(status == 200 and cache == "hit" for *_, status, cache in warmed), warmed
            rate = db.rate_over_next(6)  # the warm site's load, the reader's hits included
            # Restart only under rate + jump/4, stop over rate + jump/2: above the warm site's
            # load and its variation (a few queries/s), well under what the emptied node adds.
            threshold, ceiling = round(rate + jump / 4, 1), round(rate + jump / 2, 1)
            rc, report, err = dwops_run(
                "restart-memcache", f"max_qps={threshold}", f"ceiling_qps={ceiling}",
                "sample_seconds=3", "target_hit_ratio=1", "recovery_timeout=30")
    finally:
        warm_cache(lab)
    assert rc == 1, err[-2000:]
    # The reader's pages cost the database nothing until the first node's restart began.
    restart_began = readings(report, f"{first} timings")[-1]["restart_started_at"]
    assert all(status == 200 and cache == "hit"
               for _, answered, status, cache in reader.answers if answered < restart_began)
    after = pids(lab)
    assert after[first] != before[first] and after[second] == before[second], (before, after)
    steps = by_step(report)
    assert steps[(first, "restart")]["outcome"] == "done"
    assert steps[(first, "wait for recovery")]["outcome"] == "failed"
    assert steps[(first, "wait for recovery")]["detail"].startswith(
        "STOPPED") and "over the ceiling" in steps[(first, "wait for recovery")]["detail"]
    assert [steps[(second, a)]["outcome"] for a in ("restart", "wait for recovery")] == [
        "not reached"] * 2
    assert "over the ceiling" in report["halted"] and f"{second} not touched" in report["halted"]
    gate = [g for g in report["gates"] if g["name"] == "db_load_is_low"][-1]
    assert gate["ok"] and gate["readings"]["qps"] < threshold  # it started under the threshold
    crossed = [g for g in report["gates"] if g["name"] == "db_load_is_under_ceiling"]
    assert len(crossed) == 1 and crossed[0]["readings"]["qps"] > ceiling
    # ... and the crossing was real: the lab's own counter over the same window.
    last = readings(report, f"{first} watch")[-1]
    assert last["qps"] == crossed[0]["readings"]["qps"]
    lab_rate = db.rate(last["at"] - 3, last["at"])
    assert same_rate(last["qps"], lab_rate), (last, lab_rate)
    missed = [a for a in reader.answers if a[0] >= restart_began]
    print(f"\nceiling: warm {rate:.1f} queries/s, threshold {threshold}, ceiling {ceiling}; "
          f"gate read {gate['readings']['qps']}, crossed at {last['qps']} "
          f"({last['since_restart']} s after the restart); the reader's pages after the "
          f"restart: {sum(a[3] == 'miss' for a in missed)} misses of {len(missed)}")


def test_dry_run_plans_and_restarts_nothing(lab: LabConfig, dwops_run, prefect_api):
    first, second = nodes(lab)
    before = pids(lab)
    rc, report, err = dwops_run("restart-memcache", "dry_run=true", f'hosts=["{second}"]')
    assert rc == 0, err[-2000:]
    assert report["dry_run"] and report["results"] == [] and report["readings"] == []
    assert "dry run: plan only" in report["summary"]
    assert pids(lab) == before

    # The plan it published: the latest `restart-memcache-plan` artifact on the API.
    body = json.dumps({"artifacts": {"key": {"any_": ["restart-memcache-plan"]}}}).encode()
    request = urllib.request.Request(f"{prefect_api}/artifacts/latest/filter", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        [artifact] = json.load(reply)
    plan = artifact["data"]
    assert f"| 1 | {second} | restart |" in plan and f"| 2 | {second} | wait for recovery |" in plan
    assert first not in plan.split("| # |")[1]  # only the node asked for
    assert "db_load_is_low: threads running < 10, queries/s < 200, CPU < 60 %" in plan
    assert "bin/restart-memcache on dfw-admin01" in plan  # the emergency path, named, not used


def test_bad_parameters_are_refused_before_any_node_is_touched(lab: LabConfig, dwops_run):
    before = pids(lab)

    def refused(*params: str) -> tuple[int, str]:
        rc, _report, err = dwops_run("restart-memcache", *params)
        return rc, " ".join(err.split())  # the console wraps long lines

    rc, err = refused("ceiling_qps=100")
    assert rc == 2 and "ceiling_qps (100) is below max_qps (200)" in err
    rc, err = refused("max_cpu=90", "max_threads_running=50")
    assert rc == 2 and "ceiling_cpu (85) is below max_cpu (90)" in err
    assert "ceiling_threads_running (40) is below max_threads_running (50)" in err
    rc, err = refused("sample_seconds=-1", "max_qps=-3", "target_hit_ratio=1.5")
    assert rc == 2 and all(f in err for f in ("sample_seconds", "max_qps", "target_hit_ratio"))
    rc, err = refused('hosts=["dfw-memc09"]')
    assert rc == 2 and "hosts: dfw-memc09: not a memcached host of inventory 'lab'" in err
    rc, err = refused('hosts=["dfw-memc01; reboot"]')
    assert rc == 2 and "hosts.0" in err
    assert pids(lab) == before


# -- the guards, on readings as the reads return them (no lab needed) -----------------------------

def test_the_load_gates_fail_closed_and_ceilings_allow_equal():
    from dwops.errors import Unavailable
    from flows.restart_memcache import (RestartMemcacheParams, db_load_is_low,
                                        db_load_is_under_ceiling)
    from tasks.aws import MetricPoint
    from tasks.database import DbLoad

    p = RestartMemcacheParams(max_qps=50, ceiling_qps=100)
    now = datetime.now(timezone.utc)
    cpu = MetricPoint(12.5, now, 60.0)
    quiet = DbLoad(threads_running=2, threads_connected=80, queries_per_second=20.0)
    gate = db_load_is_low(quiet, cpu, p)
    assert gate.ok and gate.readings == {"threads_running": 2, "threads_connected": 80,
                                         "qps": 20.0, "cpu": 12.5, "cpu_age_seconds": 60}
    at_threshold = DbLoad(2, 80, 50.0)
    assert not db_load_is_low(at_threshold, cpu, p).ok  # under means under
    assert db_load_is_under_ceiling(DbLoad(2, 80, 100.0), cpu, p).ok  # at the ceiling: not over
    over = db_load_is_under_ceiling(DbLoad(41, 80, 100.5), MetricPoint(90, now, 30.0), p)
    assert not over.ok and over.reason == ("database load over the ceiling: 41 threads running "
                                           "> 40; 100.5 queries/s > 100; CPU 90.0 % > 85 %")
    # Whatever cannot be read counts as high, before and after a restart.
    for load, cpu_point, why in [
            (Unavailable("mysql 127.30.0.10:3306", "refused"), cpu, "cannot read the database"),
            (DbLoad(0, 80, None), cpu, "the database restarted during the sample"),
            (quiet, None, "no CPU data in CloudWatch"),
            (quiet, MetricPoint(1.0, now, 900.0), "CPU data is 900 s old"),
            (quiet, Unavailable("aws cloudwatch", "timed out"), "cannot read CPU")]:
        for guard in (db_load_is_low, db_load_is_under_ceiling):
            gate = guard(load, cpu_point, p)
            assert not gate.ok and why in gate.reason, (guard.__name__, gate.reason)
