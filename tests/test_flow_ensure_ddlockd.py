"""ensure-ddlockd on the lab: starts a stopped daemon, never touches a running one, idempotent."""

from __future__ import annotations

from lab import ctl, procs, services
from lab.config import LabConfig


def pid(lab: LabConfig, host: str) -> int | None:
    return procs.read_pid(services.find(lab, "ddlockd", host).pidfile)


def test_starts_a_stopped_daemon_leaves_the_running_one_and_is_idempotent(lab: LabConfig, dwops_run):
    running = pid(lab, "dfw-jobs01")
    ctl.stop(lab, "ddlockd", "dfw-jobs02")
    try:
        rc, report, err = dwops_run("ensure-ddlockd")
        assert rc == 0, err[-2000:]
        outcome = {r["host"]: r for r in report["results"]}
        assert outcome["dfw-jobs02"]["outcome"] == "done"
        assert outcome["dfw-jobs01"]["outcome"] == "skipped"
        assert "never restarted" in outcome["dfw-jobs01"]["detail"]
        assert pid(lab, "dfw-jobs01") == running
        started = pid(lab, "dfw-jobs02")
        assert started

        rc, report, err = dwops_run("ensure-ddlockd")
        assert rc == 0, err[-2000:]
        assert [r["outcome"] for r in report["results"]] == ["skipped", "skipped"]
        assert pid(lab, "dfw-jobs02") == started and pid(lab, "dfw-jobs01") == running
    finally:
        ctl.start(lab, "ddlockd", "dfw-jobs02")


def test_dry_run_plans_and_changes_nothing(lab: LabConfig, dwops_run):
    ctl.stop(lab, "ddlockd", "dfw-jobs02")
    try:
        rc, report, err = dwops_run("ensure-ddlockd", "dry_run=true")
        assert rc == 0, err[-2000:]
        assert report["dry_run"] and report["results"] == []
        assert pid(lab, "dfw-jobs02") is None
    finally:
        ctl.start(lab, "ddlockd", "dfw-jobs02")


def test_unknown_host_and_bad_values_are_refused_before_any_ssh(lab: LabConfig, dwops_run):
    rc, report, err = dwops_run("ensure-ddlockd", 'hosts=["dfw-jobs09"]')
    assert rc == 2 and "hosts: dfw-jobs09: not a ddlockd host of inventory 'lab'" in err
    rc, report, err = dwops_run("ensure-ddlockd", "verify_seconds=-1")
    assert rc == 2 and "verify_seconds" in err
    rc, report, err = dwops_run("ensure-ddlockd", 'hosts=["dfw-jobs01; reboot"]')
    assert rc == 2 and "hosts.0" in err
