"""Judging gearman, ddlockd, memcached, workers and SSH logins: pure judges on recorded replies,
and the check tasks against the lab (a dead address is a CRIT line, never an exception)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

from dwops.errors import Unavailable
from dwops.health import Thresholds, Verdict
from dwops.inventory import Inventory
from tasks.ddlockd import check_ddlockd, judge_ddlockd, parse_ddlockd_status
from tasks.gearman import (GearmanReading, check_gearman, judge_gearman, parse_gearman_status,
                           parse_gearman_version)
from tasks.memcache import (MemcacheSamples, check_memcached, judge_memcache, parse_memcache_stats)
from tasks.ssh import CommandResult, SshUnavailable, check_ssh, judge_login
from tasks.workers import check_workers, judge_workers, parse_workers_ps

FIXTURES = Path(__file__).parent / "fixtures"
T = Thresholds()
# The recorded memcached node had been up 40 s: judge it as warm.
WARM_AFTER_30S = Thresholds(memcache_warm_seconds=30)


def fixture(*parts: str) -> str:
    return (FIXTURES.joinpath(*parts)).read_bytes().decode()


def memcache_samples() -> MemcacheSamples:
    data = json.loads(fixture("memcached", "stats-two-samples.json"))
    return MemcacheSamples(parse_memcache_stats(data["before"]), parse_memcache_stats(data["after"]), 1.0)


# -- memcached --------------------------------------------------------------------------------

def test_memcache_stats_parse_from_a_real_node():
    s = memcache_samples()
    assert s.after.pid == s.before.pid > 0
    assert s.after.limit_maxbytes == 64 * 1024 * 1024
    assert s.after.version.startswith("1.6.")
    assert s.after.get_hits >= s.before.get_hits and s.after.uptime >= s.before.uptime


def test_memcache_judge_on_recorded_samples_is_ok_with_the_windows_hit_ratio():
    s = memcache_samples()
    check = judge_memcache("dfw-memc01", s, WARM_AFTER_30S)
    hits = s.after.get_hits - s.before.get_hits
    misses = s.after.get_misses - s.before.get_misses
    assert check.verdict is Verdict.OK
    assert check.figures["hit_ratio"] == round(hits / (hits + misses), 4)


def test_memcache_restart_between_samples_and_a_cold_node_warn():
    s = memcache_samples()
    restarted = dataclasses.replace(s, after=dataclasses.replace(s.after, uptime=2, pid=s.after.pid + 1))
    assert judge_memcache("m", restarted, T).reason == "restarted while being read"
    cold = dataclasses.replace(s, before=dataclasses.replace(s.before, uptime=40),
                               after=dataclasses.replace(s.after, uptime=41))
    check = judge_memcache("m", cold, T)
    assert check.verdict is Verdict.WARN and "cold" in check.reason


def test_memcache_low_hit_ratio_warns_and_down_is_crit():
    s = memcache_samples()
    low = dataclasses.replace(s, after=dataclasses.replace(
        s.after, get_hits=s.before.get_hits + 1, get_misses=s.before.get_misses + 9))
    check = judge_memcache("m", low, WARM_AFTER_30S)
    assert check.verdict is Verdict.WARN and "hit ratio 10%" in check.reason
    down = judge_memcache("m", Unavailable("memcached 127.0.0.9:11211", "Connection refused"), T)
    assert down.verdict is Verdict.CRIT and down.reason == "unreachable: Connection refused"


# -- gearman and ddlockd ------------------------------------------------------------------------

def test_gearman_judge_names_functions_with_jobs_and_no_worker():
    reading = GearmanReading(parse_gearman_version(fixture("gearman", "perl-version.txt")),
                             parse_gearman_status(fixture("gearman", "perl-status.txt")))
    check = judge_gearman("dfw-jobs01", reading, T.gearman_waiting_warn)
    assert check.verdict is Verdict.WARN
    assert check.reason == "jobs waiting with no worker: dw\tlab_prefixed, lab_noworker"
    assert check.figures["server"] == "perl 1.130.1"


def test_gearman_judge_ok_and_deep_queue():
    empty = GearmanReading(parse_gearman_version(fixture("gearman", "c-version.txt")),
                           parse_gearman_status(fixture("gearman", "c-status-empty.txt")))
    assert judge_gearman("j", empty, 100).verdict is Verdict.OK
    busy = GearmanReading(empty.version, [q for q in parse_gearman_status(
        fixture("gearman", "perl-status.txt")) if q.workers])
    assert judge_gearman("j", busy, 10).reason == "27 jobs waiting"


def test_ddlockd_judge():
    status = parse_ddlockd_status(fixture("ddlockd", "status.txt"))
    check = judge_ddlockd("dfw-jobs01", status)
    assert check.verdict is Verdict.OK and check.figures["successes"] == status.successes
    down = judge_ddlockd("dfw-jobs02", Unavailable("ddlockd 127.20.0.22:7002", "Connection refused"))
    assert down.verdict is Verdict.CRIT


# -- workers and importers ------------------------------------------------------------------------

def test_workers_ps_recorded_on_a_jobs_host():
    reading = parse_workers_ps(fixture("workers", "ps-dfw-jobs01.txt"))
    assert reading.manager_running
    assert len(reading.importers) == 3
    assert [(p.state, p.user) for p in reading.busy] == [("friends", "user9564")]
    check = judge_workers("dfw-jobs01", reading)
    assert check.verdict is Verdict.OK
    assert check.figures["busy"] == ["friends: user9564(9564)"]


def test_workers_without_a_manager_is_crit_and_without_importers_warns():
    text = fixture("workers", "ps-dfw-jobs01.txt")
    no_manager = "\n".join(line for line in text.splitlines() if "worker-manager" not in line)
    assert judge_workers("j", parse_workers_ps(no_manager)).verdict is Verdict.CRIT
    no_importers = "\n".join(line for line in text.splitlines() if "content-importer" not in line)
    check = judge_workers("j", parse_workers_ps(no_importers))
    assert check.verdict is Verdict.WARN and check.reason == "no content-importer running"


def test_login_judge():
    ok = CommandResult("va-web01", "hostname", 0, "va-web01\n", "", 0.05)
    assert judge_login("va-web01", ok).verdict is Verdict.OK
    wrong = CommandResult("va-web01", "hostname", 0, "va-web02\n", "", 0.05)
    assert judge_login("va-web01", wrong).verdict is Verdict.WARN
    down = judge_login("va-web01", SshUnavailable("va-web01", "cannot connect: refused"))
    assert down.verdict is Verdict.CRIT and down.reason == "unreachable: cannot connect: refused"


# -- the check tasks on the lab ------------------------------------------------------------------

def with_address(inv: Inventory, host: str, address: str) -> Inventory:
    hosts = dict(inv.hosts)
    hosts[host] = hosts[host].model_copy(update={"address": address})
    return inv.model_copy(update={"hosts": hosts})


def run(check, inv: Inventory):
    return asyncio.run(check.fn(inv, T))


def test_check_tasks_on_the_lab(lab_inventory: Inventory):
    for check, system, hosts in ((check_gearman, "gearman", ["dfw-jobs01", "dfw-jobs02"]),
                                 (check_ddlockd, "ddlockd", ["dfw-jobs01", "dfw-jobs02"]),
                                 (check_memcached, "memcached", ["dfw-memc01", "dfw-memc02"]),
                                 (check_workers, "workers", ["dfw-jobs01", "dfw-jobs02"]),
                                 (check_ssh, "ssh", list(lab_inventory.hosts))):
        checks = run(check, lab_inventory)
        assert [c.host for c in checks] == hosts
        assert all(c.system == system and c.verdict is not Verdict.CRIT for c in checks), checks


def test_a_dead_address_is_a_crit_line_and_the_others_are_still_read(lab_inventory: Inventory):
    for check, host, other in ((check_gearman, "dfw-jobs02", "dfw-jobs01"),
                               (check_ddlockd, "dfw-jobs01", "dfw-jobs02"),
                               (check_memcached, "dfw-memc01", "dfw-memc02"),
                               (check_workers, "dfw-jobs01", "dfw-jobs02"),
                               (check_ssh, "dfw-mail01", "va-web01")):
        checks = {c.host: c for c in run(check, with_address(lab_inventory, host, "127.20.0.250"))}
        assert checks[host].verdict is Verdict.CRIT
        assert checks[host].reason.startswith("unreachable")
        assert checks[other].verdict is not Verdict.CRIT
