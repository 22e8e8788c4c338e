"""dwops run like production: `dwops up` on the lab, driven as other systems drive it.

Everything here goes through the real proxy, a real Prefect server behind it and a real worker
(the `platform` fixture runs the main command itself): REST calls with an account, `dwops
trigger`, `dwops approve`, `dwops history`. The runs execute on the worker against the lab's real
hosts.
"""

from __future__ import annotations

import json
import os
import stat
import time
import uuid

import pytest

from flows import FLOWS
from lab import ctl, procs, services
from lab.config import LabConfig

FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}


def pid(lab: LabConfig, service: str, host: str) -> int | None:
    return procs.read_pid(services.find(lab, service, host).pidfile)


def runs_of(platform, deployment: str) -> list[dict]:
    return platform.ok("POST", "/flow_runs/filter", {"flow_runs": {"deployment_id": {
        "any_": [platform.deployment(deployment)["id"]]}}, "sort": "EXPECTED_START_TIME_DESC"})


def listeners(port: int) -> set[str]:
    """Local addresses listening on `port` (IPv4 and IPv6), read from /proc/net."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hexport = local.rsplit(":", 1)
                if state == "0A" and int(hexport, 16) == port:
                    found.add(address)
    return found


def test_dwops_up_brings_up_server_worker_deployments_and_automations(platform):
    # The first operator account: generated, kept 0600 in the state folder for this machine's
    # CLI, shown once by `dwops up` as the last line; only its hash is in the accounts.
    path = platform.home / "api-auth"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert platform.credential.startswith("admin:") and len(platform.credential) > 40
    assert [line.strip() for line in platform.up_output.splitlines()].count(
        platform.credential) == 1
    assert platform.ui_url in platform.up_output
    assert "fleet-status: completed" in platform.up_output
    secret = platform.credential.partition(":")[2]
    for kept in (platform.home / "accounts").iterdir():
        assert secret not in kept.read_text(), kept
    accounts = platform.dwops("user", "list").stdout.splitlines()
    assert {"admin: operator", "worker: worker"} <= set(accounts), accounts
    # The proxy, the Prefect server behind it and the gateway listen on 127.0.0.1 only
    # (0100007F in /proc/net/tcp), and the server refuses a caller that goes around the proxy.
    for port in (platform.port, platform.port + 1, platform.port + 2):
        assert listeners(port) == {"0100007F"}, port
    from dwops.platform import rest

    status, _ = rest("POST", f"http://127.0.0.1:{platform.port + 1}/api/deployments/filter", {},
                     platform.credential)
    assert status == 401

    # The work pool, an online worker, the maintenance lock, the automations.
    pool = platform.ok("GET", "/work_pools/dwops")
    assert pool["type"] == "process"
    workers = platform.ok("POST", "/work_pools/dwops/workers/filter", {})
    assert [w["status"] for w in workers if w["name"] == "dwops-worker"] == ["ONLINE"]
    lock = platform.ok("GET", "/v2/concurrency_limits/dwops-maintenance")
    assert lock["limit"] == 1 and lock["active"]
    automations = platform.ok("POST", "/automations/filter", {})
    assert {a["name"] for a in automations} == {
        "dwops: start gearman when fleet-status finds it down",
        "dwops: start ddlockd when fleet-status finds it down",
        "dwops: mark runs whose process died as crashed"}

    # A deployment for every flow, with its schema enforced, a description and tags; the ones
    # that change state refuse a second concurrent run.
    for name in FLOWS:
        d = platform.deployment(name)
        assert d["enforce_parameter_schema"] is True, name
        assert d["description"] and d["tags"], name
        if "changes-state" in d["tags"]:
            assert d["global_concurrency_limit"]["limit"] == 1, name
            assert d["concurrency_options"]["collision_strategy"] == "CANCEL_NEW", name
    schedules = {name: [s["active"] for s in platform.deployment(name)["schedules"]]
                 for name in FLOWS}
    assert schedules["fleet-status"] == [True]
    assert schedules["restart-webs"] == [False]  # declared, off until someone turns it on

    # The one fleet-status run of `dwops up` ran on the worker and kept its report.
    done = [r for r in runs_of(platform, "fleet-status") if r["state_type"] == "COMPLETED"]
    assert done and done[-1]["work_pool_name"] == "dwops"
    keys = {a["key"] for a in platform.artifacts(done[-1]["id"])}
    assert "fleet-status-lab-summary" in keys


def test_an_unauthenticated_call_is_refused_and_creates_nothing(platform):
    before = len(runs_of(platform, "ensure-ddlockd"))
    path = f"/deployments/{platform.deployment('ensure-ddlockd')['id']}/create_flow_run"
    for credential in (None, "admin:wrong-password", platform.credential.split(":")[1]):
        status, _ = platform.api("POST", path, {"parameters": {"params": {}}},
                                 credential=credential)
        assert status == 401, credential
        status, _ = platform.api("POST", "/deployments/filter", {}, credential=credential)
        assert status == 401, credential
    assert len(runs_of(platform, "ensure-ddlockd")) == before


def test_a_rest_trigger_with_an_idempotency_key_makes_one_run_on_the_worker(platform, lab):
    running = {h: pid(lab, "ddlockd", h) for h in ("dfw-jobs01", "dfw-jobs02")}
    key = f"test-{uuid.uuid4()}"
    status, first = platform.create_run("ensure-ddlockd", {}, idempotency_key=key)
    assert status == 201, first
    status, again = platform.create_run("ensure-ddlockd", {}, idempotency_key=key)
    assert status in (200, 201) and again["id"] == first["id"]

    run = platform.wait_for(first["id"], FINAL)
    assert run["state_type"] == "COMPLETED", run["state"]
    assert run["work_pool_name"] == "dwops" and run["infrastructure_pid"]
    assert [r["id"] for r in runs_of(platform, "ensure-ddlockd")
            if r["idempotency_key"] == key] == [first["id"]]
    report = platform.report(first["id"])
    assert report["description"].startswith("ensure-ddlockd on lab: completed - 0 done")
    assert {h: pid(lab, "ddlockd", h) for h in running} == running  # never restarted


def test_bad_parameters_by_rest_are_refused_before_a_run_exists(platform):
    before = len(runs_of(platform, "restart-webs"))
    for bad in ({"delay": -1}, {"delay": "soon"}, {"hosts": ["va-web01; reboot"]},
                {"unknown_option": 1}):
        status, answer = platform.create_run("restart-webs", bad)
        assert status == 409, (bad, answer)
        assert "Validation failed" in str(answer), (bad, answer)
    assert len(runs_of(platform, "restart-webs")) == before


def test_dwops_trigger_waits_for_the_outcome_and_history_lists_it(platform, lab):
    out = platform.dwops("trigger", "ensure-gearman", "--wait")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Completed: ensure-gearman on lab: completed" in " ".join(out.stdout.split())

    out = platform.dwops("trigger", "restart-webs", "-p", "delay=-1")
    assert out.returncode == 2 and "delay" in out.stderr
    out = platform.dwops("trigger", "ensure-gearman", "-i", "/etc/passwd")
    assert out.returncode == 2 and "not a file" in out.stderr, out.stderr

    out = platform.dwops("history", "ensure-gearman")
    assert out.returncode == 0, out.stderr
    assert "Completed" in out.stdout and "ensure-gearman on lab" in out.stdout


def test_an_operator_runs_a_flow_from_their_own_terminal_through_the_proxy(platform, lab):
    """`dwops run` signed in as an operator: the run, its task runs, logs, artifacts, events and
    the maintenance lock all go through the proxy, and the run records who made it."""
    out = platform.dwops("run", "ensure-ddlockd", "--json")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["summary"].startswith("ensure-ddlockd on lab: completed"), report["summary"]
    row = next(r for r in json.loads(platform.dwops("history", "ensure-ddlockd", "--json").stdout)
               if r["report"] == report["summary"])
    assert row["created_by"] == "admin" and row["state"] == "Completed", row
    logs = platform.ok("POST", "/logs/filter", {"logs": {"flow_run_id": {"any_": [row["id"]]}}})
    assert any("ensure-ddlockd on lab: completed" in log["message"] for log in logs), logs
    keys = {a["key"] for a in platform.artifacts(row["id"])}
    assert {"ensure-ddlockd-plan", "ensure-ddlockd-report"} <= keys, keys


def test_a_run_through_the_api_cannot_make_the_worker_read_a_file(platform):
    """An inventory path passes the schema (`dwops run` takes paths) but the worker refuses it
    before reading anything: a caller of the API must not choose files on the worker."""
    status, run = platform.create_run("fleet-status", {"inventory": "/etc/passwd"})
    assert status == 201, run
    final = platform.wait_for(run["id"], FINAL)
    assert final["state_type"] == "FAILED", final["state"]
    assert "not an inventory name" in final["state"]["message"], final["state"]


def test_two_concurrent_restarts_give_one_run_and_one_refusal(platform, lab):
    pids = {h: pid(lab, "apache2", h) for h in ("va-web05", "va-web06")}
    params = {"hosts": ["va-web06"], "delay": 1}
    status, first = platform.create_run("restart-webs", params)
    assert status == 201, first
    status, second = platform.create_run("restart-webs", params)
    assert status == 201, second

    runs = [platform.wait_for(r["id"], FINAL, timeout=240) for r in (first, second)]
    states = sorted(r["state_type"] for r in runs)
    assert states == ["CANCELLED", "COMPLETED"], [r["state"] for r in runs]
    refused = next(r for r in runs if r["state_type"] == "CANCELLED")
    history = platform.states(refused["id"])  # never ran, and was never queued behind the other
    assert "RUNNING" not in history and "AWAITINGCONCURRENCYSLOT" not in history, history
    assert not [a for a in platform.artifacts(refused["id"]) if a["key"]]
    done = next(r for r in runs if r["state_type"] == "COMPLETED")
    assert platform.report(done["id"])["description"].startswith(
        "restart-webs on lab: completed - 1 done")
    assert pid(lab, "apache2", "va-web06") not in (None, pids["va-web06"])  # restarted once
    assert pid(lab, "apache2", "va-web05") == pids["va-web05"]


def history_of(platform, run_id: str) -> dict:
    """The run's row in `dwops history --json`."""
    out = platform.dwops("history", "restart-webs", "--limit", "10", "--json")
    assert out.returncode == 0, out.stderr
    return next(row for row in json.loads(out.stdout) if row["id"] == run_id)


def wait_paused(platform, run_id: str) -> dict:
    return platform.wait_for(run_id, {"PAUSED"} | FINAL, timeout=120)


def test_a_paused_emergency_run_approved_by_rest_completes(platform, lab):
    before = pid(lab, "apache2", "va-web06")
    status, run = platform.create_run("restart-webs", {"hosts": ["va-web06"], "delay": 0})
    assert status == 201, run
    paused = wait_paused(platform, run["id"])
    assert paused["state_type"] == "PAUSED", paused["state"]
    assert pid(lab, "apache2", "va-web06") == before  # nothing happens before the approval

    # The form's answer as a UI sends it; who approved is the account the proxy authenticated,
    # whatever the answer says.
    answer = platform.resume(run["id"], {"approve": True, "approver": "somebody-else"})
    assert answer["status"] == "ACCEPT", answer
    done = platform.wait_for(run["id"], FINAL)
    assert done["state_type"] == "COMPLETED", done["state"]
    report = platform.report(run["id"])
    assert report["description"].startswith("restart-webs on lab: completed - 1 done")
    assert "approved by admin" in report["data"] and "somebody-else" not in report["data"]
    assert pid(lab, "apache2", "va-web06") not in (None, before)
    assert {"created-by:admin", "approved-by:admin"} <= set(platform.run(run["id"])["tags"])

    # `dwops history` names who created the run and who approved it.
    row = history_of(platform, run["id"])
    assert (row["created_by"], row["decided_by"]) == ("admin", "approved: admin"), row


def test_a_paused_emergency_run_rejected_with_dwops_approve_changes_nothing(platform, lab):
    pids = {h: pid(lab, "apache2", h) for h in ("va-web05", "va-web06")}
    status, run = platform.create_run("restart-webs", {"hosts": ["va-web05", "va-web06"],
                                                       "delay": 0})
    assert status == 201, run
    assert wait_paused(platform, run["id"])["state_type"] == "PAUSED"

    # Another operator rejects it with the CLI, signed in with their own account.
    bob = platform.account("oncall-bob", "operator")
    out = platform.dwops("approve", run["id"], "--reject", account=bob)
    assert out.returncode == 0 and "rejected" in out.stdout, out.stdout + out.stderr
    done = platform.wait_for(run["id"], FINAL)
    assert done["state_type"] == "FAILED"  # halted: the report says why
    report = platform.report(run["id"])
    assert "HALTED: emergency restart not approved (rejected by oncall-bob)" in (
        report["description"])
    row = history_of(platform, run["id"])
    assert (row["created_by"], row["decided_by"]) == ("admin", "rejected: oncall-bob"), row
    assert "0 done" in report["description"]
    assert {h: pid(lab, "apache2", h) for h in pids} == pids

    # `dwops approve` refuses a run that is not waiting for approval.
    out = platform.dwops("approve", run["id"])
    assert out.returncode == 1 and "not waiting for approval" in " ".join(out.stderr.split())


def test_self_healing_starts_a_stopped_ddlockd_at_most_once_per_window(platform, lab):
    host = "dfw-jobs02"
    healed_before = {r["id"] for r in runs_of(platform, "ensure-ddlockd")}
    ctl.stop(lab, "ddlockd", host)
    try:
        # fleet-status sees it down (CRIT: the run fails) and emits dwops.service.down; the
        # automation runs ensure-ddlockd on the worker, which starts it.
        status, check = platform.create_run("fleet-status", {})
        assert status == 201, check
        assert platform.wait_for(check["id"], FINAL)["state_type"] == "FAILED"
        deadline = time.monotonic() + 120
        while pid(lab, "ddlockd", host) is None:
            assert time.monotonic() < deadline, "the automation did not start ddlockd in 120 s"
            time.sleep(0.5)
        healing = [r for r in runs_of(platform, "ensure-ddlockd") if r["id"] not in healed_before]
        assert len(healing) == 1, healing
        assert healing[0]["created_by"]["type"] == "AUTOMATION"
        run = platform.wait_for(healing[0]["id"], FINAL)
        assert run["state_type"] == "COMPLETED", run["state"]
        assert procs.wait_port(services.find(lab, "ddlockd", host).address, 7002, 10)

        # Down again within the window: fleet-status reports it, the automation does not fire
        # a second time (no restart storm from a flapping daemon).
        ctl.stop(lab, "ddlockd", host)
        status, check = platform.create_run("fleet-status", {})
        assert platform.wait_for(check["id"], FINAL)["state_type"] == "FAILED"
        time.sleep(10)  # an automation's run is created within seconds of the event
        again = [r for r in runs_of(platform, "ensure-ddlockd") if r["id"] not in healed_before]
        assert len(again) == 1, again
        assert pid(lab, "ddlockd", host) is None
    finally:
        ctl.start(lab, "ddlockd", host)


@pytest.fixture(autouse=True)
def _no_test_leaves_a_run_behind(platform):
    yield
    platform.cancel_live_runs()  # a failed test must not leave a paused run holding the lock
