"""Who may do what, through the real proxy: every role against every class of API call.

The `platform` fixture is a real `dwops up` (nginx in front of the Prefect server, the gateway
deciding). Each case is one HTTP call as one caller: the first operator account, an integration
account granted fleet-status and restart-webs, the worker account, no account, and a wrong
secret. A call is answered as the role allows; a refused call (401 or 403) changes nothing: what
it would have changed is read before and after, as the worker account.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest

CALLERS = ("operator", "integration", "worker", "nobody", "wrong-secret")
GRANTED, UNGRANTED = "fleet-status", "restart-memcache"
SECRET_VALUE = "matrix-test-secret-value-9f3c1e"


@dataclass
class World:
    """What the cases act on, made once through the worker account."""

    platform: object
    credentials: dict[str, str | None]
    granted_run: str
    ungranted_run: str
    secret_block: str

    def as_worker(self, method: str, path: str, body: object = None) -> object:
        status, answer = self.platform.api(method, path, body,
                                           credential=self.credentials["worker"])
        assert 200 <= status < 300, (method, path, status, answer)
        return answer

    def deployment_id(self, name: str) -> str:
        return self.platform.deployment(name)["id"]


def _later() -> dict:
    """A run scheduled a day from now: created, never run by the worker."""
    at = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()
    return {"type": "SCHEDULED", "state_details": {"scheduled_time": at}}


@pytest.fixture(scope="module")
def world(platform) -> World:
    worker = platform.worker_credential
    credentials = {
        "operator": platform.credential,
        "integration": platform.account("matrix-ci", "integration", f"{GRANTED},restart-webs"),
        "worker": worker,
        "nobody": None,
        "wrong-secret": "admin:" + "x" * 43,
    }

    def status_of(path: str, body: dict) -> dict:
        status, answer = platform.api("POST", path, body, credential=worker)
        assert status == 201, answer
        return answer

    runs = {name: status_of(f"/deployments/{platform.deployment(name)['id']}/create_flow_run",
                            {"parameters": {"params": {}}, "state": _later()})["id"]
            for name in (GRANTED, UNGRANTED)}
    status, block_type = platform.api("GET", "/block_types/slug/secret", credential=worker)
    assert status == 200, block_type
    schemas = platform.api("POST", "/block_schemas/filter", {"block_types": {"slug": {
        "any_": ["secret"]}}}, credential=worker)[1]
    block = status_of("/block_documents/", {
        "name": "matrix-test-secret", "data": {"value": SECRET_VALUE},
        "block_type_id": block_type["id"], "block_schema_id": schemas[0]["id"]})
    w = World(platform, credentials, runs[GRANTED], runs[UNGRANTED], block["id"])
    yield w
    for run in runs.values():
        platform.api("DELETE", f"/flow_runs/{run}", credential=worker)
    platform.api("DELETE", f"/block_documents/{block['id']}", credential=worker)
    for a in platform.api("POST", "/automations/filter", {}, credential=worker)[1]:
        if a["name"].startswith("matrix-test"):
            platform.api("DELETE", f"/automations/{a['id']}", credential=worker)


@dataclass(frozen=True)
class Case:
    name: str
    call: Callable[[World], tuple[str, str, object]]  # (method, path, body)
    allowed: dict[str, int]  # caller -> the status it gets when allowed
    witness: Callable[[World], object]  # what a refused call must leave as it was


def _runs_of(name: str) -> Callable[[World], object]:
    return lambda w: sorted(r["id"] for r in w.as_worker("POST", "/flow_runs/filter", {
        "deployments": {"id": {"any_": [w.deployment_id(name)]}}}))


def _run(w: World) -> object:
    run = w.as_worker("GET", f"/flow_runs/{w.granted_run}")
    return run["state"]["id"], sorted(run["tags"])


def _nothing(w: World) -> object:
    return None


def _deployment(w: World) -> object:
    d = w.as_worker("GET", f"/deployments/{w.deployment_id(GRANTED)}")
    return d["updated"], d["description"]


def _automations(w: World) -> object:
    return sorted(a["id"] for a in w.as_worker("POST", "/automations/filter", {}))


def _pool(w: World) -> object:
    return w.as_worker("GET", "/work_pools/dwops")["description"]


def _limit(w: World) -> object:
    lock = w.as_worker("GET", "/v2/concurrency_limits/dwops-maintenance")
    return lock["updated"], lock["limit"]


def _inputs(w: World) -> object:
    return sorted(i["key"] for i in w.as_worker(
        "POST", f"/flow_runs/{w.granted_run}/input/filter", {"prefix": "matrix"}))


def allowed(**statuses: int) -> dict[str, int]:
    return statuses


CASES = [
    Case("create a run of a granted deployment",
         lambda w: ("POST", f"/deployments/{w.deployment_id(GRANTED)}/create_flow_run",
                    {"parameters": {"params": {}}, "state": _later()}),
         allowed(operator=201, integration=201, worker=201), _runs_of(GRANTED)),
    Case("create a run of an ungranted deployment",
         lambda w: ("POST", f"/deployments/{w.deployment_id(UNGRANTED)}/create_flow_run",
                    {"parameters": {"params": {}}, "state": _later()}),
         allowed(operator=201, worker=201), _runs_of(UNGRANTED)),
    Case("create a run with job variables (the worker's command and environment)",
         lambda w: ("POST", f"/deployments/{w.deployment_id(GRANTED)}/create_flow_run",
                    {"parameters": {"params": {}}, "state": _later(),
                     "job_variables": {"env": {"DWOPS_INVENTORY": "production"}}}),
         allowed(worker=201), _runs_of(GRANTED)),
    Case("read a run of a granted deployment",
         lambda w: ("GET", f"/flow_runs/{w.granted_run}", None),
         allowed(operator=200, integration=200, worker=200), _nothing),
    Case("read a run of an ungranted deployment",
         lambda w: ("GET", f"/flow_runs/{w.ungranted_run}", None),
         allowed(operator=200, worker=200), _nothing),
    Case("read every run",
         lambda w: ("POST", "/flow_runs/filter", {"limit": 5}),
         allowed(operator=200, worker=200), _nothing),
    Case("resume (approve) a run",
         lambda w: ("POST", f"/flow_runs/{w.granted_run}/resume",
                    {"run_input": {"approve": True}}),
         allowed(operator=200), _run),
    Case("set a run's state",
         lambda w: ("POST", f"/flow_runs/{w.granted_run}/set_state",
                    {"state": _later(), "force": True}),
         allowed(operator=201, worker=201), _run),
    Case("write a run's input",
         lambda w: ("POST", f"/flow_runs/{w.granted_run}/input",
                    {"key": f"matrix-{len(_inputs(w))}", "value": "{\"approve\": true}"}),
         allowed(worker=201), _inputs),
    Case("read a block with its secret",
         lambda w: ("GET", f"/block_documents/{w.secret_block}?include_secrets=true", None),
         allowed(worker=200), _nothing),
    Case("read blocks with their secrets (filter)",
         lambda w: ("POST", "/block_documents/filter", {"include_secrets": True}),
         allowed(worker=200), _nothing),
    Case("change a deployment",
         lambda w: ("PATCH", f"/deployments/{w.deployment_id(GRANTED)}",
                    {"description": w.platform.deployment(GRANTED)["description"]}),
         allowed(worker=204), _deployment),
    Case("create an automation",
         lambda w: ("POST", "/automations/", {
             "name": "matrix-test", "enabled": False,
             "trigger": {"type": "event", "expect": ["matrix.test"], "posture": "Reactive",
                         "threshold": 1, "within": 0},
             "actions": [{"type": "do-nothing"}]}),
         allowed(worker=201), _automations),
    Case("change the work pool",
         lambda w: ("PATCH", "/work_pools/dwops", {"description": "dwops runbook flows"}),
         allowed(worker=204), _pool),
    Case("change a concurrency limit",
         lambda w: ("PATCH", "/v2/concurrency_limits/dwops-maintenance", {"limit": 1}),
         allowed(worker=204), _limit),
    Case("sign in to the UI (its check of the credential)",
         lambda w: ("GET", "/admin/version", None),
         allowed(operator=200, worker=200), _nothing),
]


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_role_is_answered_as_it_allows_and_a_refusal_changes_nothing(world, case, caller):
    method, path, body = case.call(world)
    before = case.witness(world)
    status, answer = world.platform.api(method, path, body, credential=world.credentials[caller])
    if caller in case.allowed:
        assert status == case.allowed[caller], (status, answer)
    else:
        assert status == (401 if caller in ("nobody", "wrong-secret") else 403), (status, answer)
        assert case.witness(world) == before, "a refused call changed something"
    if status == 403:
        assert "refused by dwops" in str(answer), answer
    if case.name.startswith("read a block") and caller == "worker":
        assert SECRET_VALUE in str(answer)  # the worker needs the fleet's secrets
    if case.name.startswith("read a block") and status != 200:
        assert SECRET_VALUE not in str(answer)
    if case.name.startswith("resume") and caller == "operator":
        # Allowed, and refused by the server (the run is not paused): no decision recorded.
        assert answer["status"] == "ABORT", answer
        assert case.witness(world) == before


def test_prefect_streams_are_opened_with_an_account_and_only_as_its_role_allows(world):
    """Prefect's websockets (events in and out, the task-run subscription) sign in inside the
    stream with the account's NAME:SECRET; the gateway checks it and signs in to the server with
    the server's own credential."""
    import asyncio
    import json

    from websockets.asyncio.client import connect

    async def open_stream(path: str, token: str | None) -> str:
        url = f"ws://127.0.0.1:{world.platform.port}/api{path}"
        try:
            async with connect(url, subprotocols=["prefect"], proxy=None) as ws:
                await ws.send(json.dumps({"type": "auth", "token": token}))
                return json.loads(await ws.recv())["type"]
        except Exception as e:  # the refusal: the stream is closed with a policy violation
            return f"closed: {getattr(getattr(e, 'rcvd', None), 'code', e)}"

    expected = {  # (path, caller) -> what the stream answers
        ("/events/in", "operator"): "auth_success", ("/events/in", "worker"): "auth_success",
        ("/events/out", "operator"): "auth_success", ("/events/out", "worker"): "auth_success",
        ("/task_runs/subscriptions/scheduled", "worker"): "auth_success",
    }
    for path in ("/events/in", "/events/out", "/task_runs/subscriptions/scheduled"):
        for caller in CALLERS:
            got = asyncio.run(open_stream(path, world.credentials[caller]))
            assert got == expected.get((path, caller), "closed: 1008"), (path, caller, got)

