"""ensure-gearman on the lab: starts a stopped job server, never touches a running one unless asked,
refuses a restart that would lose queued jobs unless the loss is accepted, idempotent.

Ground truth is the lab's own: the gearmand pid files and the servers' admin `status`.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

from pathlib import Path

from flows.ensure_gearman import (describe_jobs, gearman_is_down, held_jobs, plan_ensure_gearman,
                                  queued_jobs_may_be_lost, workers_are_back)
from lab import ctl, procs, services
from lab.config import LabConfig
from lab.gearman_worker import Worker, submit_background
from tasks.gearman import (GearmanReading, GearmanUnavailable, QueueDepth, parse_gearman_status,
                           parse_gearman_version, read_gearman_status)

UNWORKED = "dw_lab_ensure_gearman_unworked"  # a function no lab worker serves


def pid(lab: LabConfig, host: str) -> int | None:
    return procs.read_pid(services.find(lab, "gearman", host).pidfile)


def address(lab: LabConfig, host: str) -> str:
    return next(h.address for h in lab.hosts if h.name == host)


def queues(lab: LabConfig, host: str) -> dict[str, QueueDepth]:
    rows = asyncio.run(read_gearman_status(address(lab, host), lab.ports.gearman))
    return {q.function: q for q in rows}


def drain(lab: LabConfig, host: str, function: str, seconds: float = 10) -> None:
    """Work off any jobs a failed test left queued for `function`, with the lab's own worker."""
    if not queues(lab, host).get(function, QueueDepth(function, 0, 0, 0)).total:
        return

    async def go() -> None:
        worker = Worker([(address(lab, host), lab.ports.gearman)], function)
        task = asyncio.ensure_future(worker.run())
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            rows = await read_gearman_status(address(lab, host), lab.ports.gearman)
            if not any(q.function == function and q.total for q in rows):
                break
            await asyncio.sleep(0.2)
        worker.stopping.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(go())


def recorded(name: str) -> str:
    """A reply recorded from the real Perl job server (tests/fixtures/gearman)."""
    return (Path(__file__).parent / "fixtures" / "gearman" / name).read_bytes().decode()


def perl_reading(status: str) -> GearmanReading:
    return GearmanReading(parse_gearman_version(recorded("perl-version.txt")),
                          parse_gearman_status(recorded(status)))


# -- the guards, on recorded replies (pure) ------------------------------------------------------

def test_the_guards_name_every_job_a_restart_would_lose():
    busy, empty = perl_reading("perl-status.txt"), perl_reading("perl-status-empty.txt")
    down = GearmanUnavailable("127.20.0.22", 7003, "Connection refused")
    assert held_jobs(busy) == {"dw\tlab_prefixed": {"waiting": 2, "running": 0},
                               "lab_noworker": {"waiting": 5, "running": 0},
                               "lab_work": {"waiting": 27, "running": 1}}
    assert describe_jobs(held_jobs(busy)) == ("35 jobs (dw\tlab_prefixed: 2 waiting; "
                                              "lab_noworker: 5 waiting; "
                                              "lab_work: 27 waiting, 1 running)")

    refused = queued_jobs_may_be_lost({"j1": busy, "j2": empty, "j3": down}, accepted=False)
    assert not refused.ok
    assert refused.reason.startswith("a restart would lose j1: 35 jobs (")
    assert "j3 down: run without restart=true to start it" in refused.reason
    assert refused.readings == {"j1": {"dw\tlab_prefixed": 2, "lab_noworker": 5, "lab_work": 28}}
    accepted = queued_jobs_may_be_lost({"j1": busy, "j2": empty}, accepted=True)
    assert accepted.ok and accepted.reason.startswith("accept_lost_jobs=true: will lose j1: 35")
    assert queued_jobs_may_be_lost({"j2": empty, "j3": down}, accepted=False).ok

    assert gearman_is_down("j3", down).ok
    running = gearman_is_down("j1", busy)
    assert not running.ok and running.reason.startswith("answers (perl 1.130.1, 4 functions")

    assert workers_are_back("j1", busy, ["lab_work", "lab_other"]).ok
    missing = workers_are_back("j1", busy, ["lab_work", "lab_noworker"])
    assert not missing.ok and missing.reason == "no worker registered again for lab_noworker"


def test_the_plan_says_what_a_restart_costs():
    plain = plan_ensure_gearman("lab", ["a", "b"], restart=False, accept_lost_jobs=False)
    assert [(s.host, s.action) for s in plain.steps] == [("a", "start if down"),
                                                          ("b", "start if down")]
    assert any("never touched" in g for g in plain.gates)
    restart = plan_ensure_gearman("lab", ["a"], restart=True, accept_lost_jobs=False)
    assert restart.steps[0].action == "start or restart"
    assert any("accept_lost_jobs=true (not given" in g for g in restart.gates)
    assert "loses every job" in restart.markdown()


# -- the flow, on the lab ------------------------------------------------------------------------

def by_host(report: dict) -> dict[str, dict]:
    return {r["host"]: r for r in report["results"]}


def test_starts_a_stopped_server_leaves_the_running_one_and_is_idempotent(lab: LabConfig,
                                                                            dwops_run):
    running = pid(lab, "dfw-jobs01")
    ctl.stop(lab, "gearman", "dfw-jobs02")
    try:
        assert pid(lab, "dfw-jobs02") is None
        rc, report, err = dwops_run("ensure-gearman")
        assert rc == 0, err[-2000:]
        outcome = by_host(report)
        assert outcome["dfw-jobs02"]["outcome"] == "done"
        assert outcome["dfw-jobs02"]["detail"].startswith("started; answers version and status")
        assert outcome["dfw-jobs01"]["outcome"] == "skipped"
        assert "not restarted (restart=false)" in outcome["dfw-jobs01"]["detail"]
        assert pid(lab, "dfw-jobs01") == running
        started = pid(lab, "dfw-jobs02")
        assert started
        readings = {r["what"]: r["figures"] for r in report["readings"]}
        assert readings["dfw-jobs02 before"]["up"] is False
        assert readings["dfw-jobs02 after"]["up"] is True
        assert readings["dfw-jobs02 after"]["server"].startswith("perl 1.13")

        rc, report, err = dwops_run("ensure-gearman")
        assert rc == 0, err[-2000:]
        assert [r["outcome"] for r in report["results"]] == ["skipped", "skipped"]
        assert pid(lab, "dfw-jobs02") == started and pid(lab, "dfw-jobs01") == running
    finally:
        ctl.start(lab, "gearman", "dfw-jobs02")


def test_restart_with_queued_jobs_needs_accept_lost_jobs_and_names_the_loss(lab: LabConfig,
                                                                            dwops_run):
    host = "dfw-jobs02"
    pids = {h: pid(lab, h) for h in ("dfw-jobs01", "dfw-jobs02")}
    try:
        for i in range(5):
            submit_background(address(lab, host), lab.ports.gearman, UNWORKED, f"job {i}".encode())
        assert queues(lab, host)[UNWORKED].total == 5

        # Without accept_lost_jobs: refused, nothing touched, the jobs still queued.
        rc, report, err = dwops_run("ensure-gearman", "restart=true")
        assert rc == 1, err[-2000:]
        assert report["halted"].startswith("refused: a restart would lose")
        assert f"{host}: 5 jobs ({UNWORKED}: 5 waiting)" in report["halted"]
        assert "accept_lost_jobs=true" in report["halted"]
        outcome = by_host(report)
        assert outcome[host]["outcome"] == "skipped"
        assert f"{UNWORKED}: 5 waiting" in outcome[host]["detail"]
        assert outcome["dfw-jobs01"]["outcome"] == "not reached"
        refusal = [g for g in report["gates"] if g["name"] == "no queued jobs lost"]
        assert refusal and not refusal[0]["ok"]
        assert refusal[0]["readings"][host] == {UNWORKED: 5}
        assert {h: pid(lab, h) for h in pids} == pids
        assert queues(lab, host)[UNWORKED].total == 5

        # With it: restarted, the loss named per function, the queue empty afterwards.
        rc, report, err = dwops_run("ensure-gearman", "restart=true", "accept_lost_jobs=true",
                                    f'hosts=["{host}"]')
        assert rc == 0, err[-2000:]
        [result] = report["results"]
        assert result["host"] == host and result["outcome"] == "done"
        assert f"lost 5 jobs ({UNWORKED}: 5 waiting)" in result["detail"]
        assert "workers back: dw_userpic_resize" in result["detail"]
        readings = {r["what"]: r["figures"] for r in report["readings"]}
        assert readings[f"{host} jobs lost"] == {"total": 5, "functions": {UNWORKED: 5}}
        assert UNWORKED not in readings[f"{host} after"]["functions"]
        assert pid(lab, host) not in (None, pids[host])
        assert pid(lab, "dfw-jobs01") == pids["dfw-jobs01"]
        assert UNWORKED not in queues(lab, host)

        # The lab's gearman worker comes back by itself.
        deadline = time.monotonic() + 10
        while True:
            resize = queues(lab, host).get("dw_userpic_resize")
            if (resize and resize.workers >= 1) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert resize and resize.workers >= 1
    finally:
        ctl.start(lab, "gearman", host)
        drain(lab, host, UNWORKED)


def test_dry_run_plans_and_changes_nothing(lab: LabConfig, dwops_run, prefect_api):
    pids = {h: pid(lab, h) for h in ("dfw-jobs01", "dfw-jobs02")}
    rc, report, err = dwops_run("ensure-gearman", "dry_run=true", "restart=true",
                                "accept_lost_jobs=true")
    assert rc == 0, err[-2000:]
    assert report["dry_run"] and report["results"] == [] and report["readings"] == []
    assert {h: pid(lab, h) for h in pids} == pids

    # The plan the dry run published: the latest `ensure-gearman-plan` artifact on the API.
    body = json.dumps({"artifacts": {"key": {"any_": ["ensure-gearman-plan"]}}}).encode()
    request = urllib.request.Request(f"{prefect_api}/artifacts/latest/filter", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        [artifact] = json.load(reply)
    plan = artifact["data"]
    assert "| 1 | dfw-jobs01 | start or restart |" in plan
    assert "| 2 | dfw-jobs02 | start or restart |" in plan


def test_bad_parameters_are_refused_before_any_host_is_touched(lab: LabConfig, dwops_run):
    pids = {h: pid(lab, h) for h in ("dfw-jobs01", "dfw-jobs02")}

    def refused(*params: str) -> tuple[int, str]:
        rc, _report, err = dwops_run("ensure-gearman", *params)
        return rc, " ".join(err.split())  # the console wraps long lines

    rc, err = refused("verify_seconds=0")
    assert rc == 2 and "verify_seconds" in err
    rc, err = refused('hosts=["dfw-jobs01; reboot"]')
    assert rc == 2 and "hosts.0" in err
    rc, err = refused("accept_lost_jobs=true")
    assert rc == 2 and "accept_lost_jobs=true only applies with restart=true" in err
    rc, err = refused('hosts=["dfw-jobs09"]', "restart=true", "accept_lost_jobs=true")
    assert rc == 2 and "hosts: dfw-jobs09: not a gearman host of inventory 'lab'" in err
    assert {h: pid(lab, h) for h in pids} == pids
