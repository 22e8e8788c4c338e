"""No parameter, job variable or run input can stand in for a human's approval.

A run created through a deployment (here by an integration account, as another system would)
cannot carry its own approval: every way of smuggling one in leaves every web untouched. The
emergency goes ahead only when an operator account answers through the proxy (tested in
test_platform_api.py).
"""

from __future__ import annotations

from lab import procs, services
from lab.config import LabConfig

FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}
WEBS = [f"va-web0{i}" for i in range(1, 7)]


def web_pids(lab: LabConfig) -> dict[str, int | None]:
    return {h: procs.read_pid(services.find(lab, "apache2", h).pidfile) for h in WEBS}


def test_no_parameter_job_variable_or_run_input_approves_an_emergency(platform, lab):
    pids = web_pids(lab)
    smuggler = platform.account("smuggler", "integration", "restart-webs")
    worker = platform.worker_credential
    create = f"/deployments/{platform.deployment('restart-webs')['id']}/create_flow_run"
    runs_before = count_runs(platform)

    # 1. An approval as a parameter: not in the form, refused before a run exists.
    for caller in (smuggler, platform.credential):
        for params in ({"delay": 0, "emergency_approved": True},
                       {"delay": 0, "emergency": True, "approve": True}):
            status, answer = platform.api("POST", create, {"parameters": {"params": params}},
                                          credential=caller)
            assert status == 409 and "Validation failed" in str(answer), (params, answer)
    out = platform.dwops("trigger", "restart-webs", "-p", "delay=0", "-p",
                         "emergency_approved=true")
    assert out.returncode == 2 and "emergency_approved" in out.stderr, out.stderr

    # 2. Job variables (the worker's environment or command): refused by the proxy.
    for caller in (smuggler, platform.credential):
        for job_variables in ({"env": {"DWOPS_APPROVE": "1"}},
                              {"command": "python -m dwops.cli run restart-webs --approve"}):
            status, answer = platform.api("POST", create, {
                "parameters": {"params": {"delay": 0}}, "job_variables": job_variables},
                credential=caller)
            assert status == 403 and "job_variables" in str(answer), answer
    assert count_runs(platform) == runs_before

    # 3. A run input written before the pause (and again during it), then the run forced on
    # without an operator's answer.
    status, run = platform.api("POST", create, {"parameters": {"params": {
        "hosts": ["va-web06"], "delay": 0}}}, credential=smuggler)
    assert status == 201, run
    forged = {"key": "paused-1-response", "value": '{"approve": true}'}
    for caller in (smuggler, platform.credential):  # neither may write a run's input
        status, answer = platform.api("POST", f"/flow_runs/{run['id']}/input", forged,
                                      credential=caller)
        assert status == 403, answer
    # The worker account (no human's) can write it: the flow must not take it as an approval.
    status, answer = platform.api("POST", f"/flow_runs/{run['id']}/input", forged,
                                  credential=worker)
    assert status == 201, answer
    paused = platform.wait_for(run["id"], {"PAUSED"} | FINAL, timeout=120)
    assert paused["state_type"] == "PAUSED", paused["state"]
    keys = {i["key"] for i in platform.ok("POST", f"/flow_runs/{run['id']}/input/filter",
                                          {"prefix": "paused-1"})}
    # The forged key is the one the flow reads, and Prefect dropped what was written there
    # before the pause; written again now, after it, the flow reads it if the run goes on.
    assert "paused-1-schema" in keys and "paused-1-response" not in keys, keys
    status, answer = platform.api("POST", f"/flow_runs/{run['id']}/input", forged,
                                  credential=worker)
    assert status == 201, answer
    for caller in (smuggler, worker):  # only an operator may answer
        status, answer = platform.api("POST", f"/flow_runs/{run['id']}/resume",
                                      {"run_input": {"approve": True}}, credential=caller)
        assert status == 403, answer
    assert web_pids(lab) == pids
    status, answer = platform.api("POST", f"/flow_runs/{run['id']}/set_state", {
        "state": {"type": "RUNNING"}, "force": True}, credential=worker)
    assert status == 201 and answer["status"] == "ACCEPT", answer

    done = platform.wait_for(run["id"], FINAL, timeout=120)
    assert done["state_type"] == "FAILED", done["state"]
    report = platform.report(run["id"])
    assert "the approval did not come from an operator account through the proxy" in (
        report["description"]), report["description"]
    assert "created-by:smuggler" in done["tags"]
    assert not [t for t in done["tags"] if t.startswith(("approved-by:", "rejected-by:"))]
    assert web_pids(lab) == pids  # no web was touched


def count_runs(platform) -> int:
    return platform.ok("POST", "/flow_runs/count", {"deployments": {"id": {"any_": [
        platform.deployment("restart-webs")["id"]]}}})
