"""ensure-gearman on the lab: starts a stopped job server, never touches a running one unless asked,
refuses a restart that would lose queued jobs unless the loss is accepted, idempotent.

Ground truth is the lab's own: the gearmand pid files and the servers' admin `status`.
"""

from __future__ import annotations

import asyncio
import time

from lab import ctl, procs, services
from lab.config import LabConfig
from lab.gearman_worker import Worker, submit_background
from tasks.gearman import QueueDepth, read_gearman_status

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

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (ArtifactCollectionFilter,
                                                ArtifactCollectionFilterKey)

    async def latest_plan() -> str:
        async with get_client() as client:
            found = await client.read_latest_artifacts(
                artifact_filter=ArtifactCollectionFilter(
                    key=ArtifactCollectionFilterKey(any_=["ensure-gearman-plan"])))
            return found[0].data

    plan = asyncio.run(latest_plan())
    assert "| 1 | dfw-jobs01 | start or restart |" in plan
    assert "| 2 | dfw-jobs02 | start or restart |" in plan


def test_bad_parameters_are_refused_before_any_host_is_touched(lab: LabConfig, dwops_run):
    pids = {h: pid(lab, h) for h in ("dfw-jobs01", "dfw-jobs02")}
    rc, report, err = dwops_run("ensure-gearman", "verify_seconds=0")
    assert rc == 2 and "verify_seconds" in err
    rc, report, err = dwops_run("ensure-gearman", 'hosts=["dfw-jobs01; reboot"]')
    assert rc == 2 and "hosts.0" in err
    rc, report, err = dwops_run("ensure-gearman", "accept_lost_jobs=true")
    assert rc == 2 and "only applies with restart=true" in err
    rc, report, err = dwops_run("ensure-gearman", "restart=yes-please")
    assert rc == 2 and "restart" in err
    rc, report, err = dwops_run("ensure-gearman", 'hosts=["dfw-jobs09"]', "restart=true",
                                "accept_lost_jobs=true")
    assert rc == 1 and "dfw-jobs09: not a gearman host of inventory 'lab'" in err
    assert {h: pid(lab, h) for h in pids} == pids
