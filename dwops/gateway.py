"""The gateway: the proxy's authorization service, and the one place a request's body is read.

nginx (`dwops/proxy.py`) authenticates every request against the accounts' htpasswd file, then
either asks `GET /authz` (nginx's `auth_request`) whether the account may make it, or, for the
few requests decided on their body (`dwops.policy.BODY_ROUTES`), sends the request here whole.
The gateway then talks to the Prefect server on loopback with the server's own credential, which
no account knows.

What only the gateway does:
- who created a run, and who approved or rejected it, is recorded as tags (`created-by:NAME`,
  `approved-by:NAME`, `rejected-by:NAME`) taken from the account nginx authenticated. A caller
  can neither set nor change those tags;
- a run is created only with what the deployment's form allows: parameters, a name, tags, an
  idempotency key and a scheduled time; never job variables (the worker's command and
  environment), a work queue, or a switched-off parameter schema;
- an integration account's reads are limited to runs of its own deployments;
- Prefect's streams (websockets: events, logs) authenticate inside the stream with the server's
  own credential, which no account has: the gateway relays them for the accounts that may open
  them, signing in to the server itself.

Run it with `python -m dwops.gateway --port PORT` (the environment names the upstream: see
`Config.from_env`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
from base64 import b64encode
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from dwops import policy
from dwops.accounts import Account, AccountStore, Role

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailers", "transfer-encoding", "upgrade", "host", "content-length",
              "authorization", "prefect-automation-id", "prefect-automation-name"}
CACHED_RUNS = 10_000  # runs whose deployment (or decision lock) the gateway keeps at most
# What a caller may put in a run's creation besides parameters (others only as their empty value).
CREATE_FIELDS = {"parameters", "idempotency_key", "name", "tags", "state"}


@dataclass(frozen=True)
class Config:
    upstream: str  # the Prefect server's API, e.g. http://127.0.0.1:4201/api
    upstream_auth_file: Path  # its PREFECT_SERVER_API_AUTH_STRING (`user:password`), 0600
    accounts: Path  # the AccountStore folder

    @classmethod
    def from_env(cls) -> Config:
        return cls(upstream=os.environ["DWOPS_GATEWAY_UPSTREAM"],
                   upstream_auth_file=Path(os.environ["DWOPS_GATEWAY_UPSTREAM_AUTH_FILE"]),
                   accounts=Path(os.environ["DWOPS_GATEWAY_ACCOUNTS"]))


class Refused(Exception):
    """A request the gateway refuses (403), with the reason the caller is shown."""


class Gateway:
    def __init__(self, config: Config):
        self.config = config
        self.store = AccountStore(config.accounts)
        self._accounts: tuple[float, dict[str, Account]] = (-1.0, {})
        self.upstream_auth = config.upstream_auth_file.read_text().strip()
        self.client = httpx.AsyncClient(
            base_url=config.upstream, timeout=30,
            headers={"Authorization": "Basic " + b64encode(self.upstream_auth.encode()).decode()})
        self._deployment_names: dict[str, str] = {}  # id -> name (ids do not change)
        self._run_deployments: dict[str, str | None] = {}  # run id -> deployment id
        self._decisions: dict[str, asyncio.Lock] = {}

    # --- who is asking -------------------------------------------------------------------

    def account(self, request: Request | WebSocket) -> Account | None:
        try:
            mtime = self.store.roles.stat().st_mtime
        except FileNotFoundError:
            return None
        if mtime != self._accounts[0]:
            self._accounts = (mtime, self.store.load())
        return self._accounts[1].get(request.headers.get("x-dwops-account", ""))

    # --- nginx's auth_request ------------------------------------------------------------

    async def authz(self, request: Request) -> Response:
        account = self.account(request)
        method = request.headers.get("x-original-method", "")
        path, query = _split(request.headers.get("x-original-uri", ""))
        verdict = policy.decide(account, method, path, query)
        try:
            await self.settle(verdict, account)
        except Refused as e:
            return _refused(str(e))
        return Response(status_code=204)

    async def settle(self, verdict: policy.Verdict, account: Account | None) -> None:
        """Return if `verdict` allows the request, else raise Refused."""
        if isinstance(verdict, policy.Allow):
            return
        if isinstance(verdict, policy.Deny):
            raise Refused(verdict.reason)
        if isinstance(verdict, policy.Body):
            raise Refused("this request is decided on its body, by the gateway")
        assert account is not None and isinstance(verdict, policy.Lookup)
        name = await self._deployment_of(verdict)
        if name not in account.deployments:
            raise Refused(f"{account.name} may use the deployments "
                          f"{', '.join(account.deployments)} only")

    async def _deployment_of(self, lookup: policy.Lookup) -> str | None:
        """The name of the deployment a looked-up object belongs to (None: none, or unknown)."""
        if lookup.kind == "deployment-name":
            return lookup.key
        deployment_id: str | None = lookup.key
        if lookup.kind == "artifact":
            artifact = await self._get(f"/artifacts/{lookup.key}")
            deployment_id = await self._run_deployment(artifact.get("flow_run_id")) if artifact else None
        elif lookup.kind == "run":
            deployment_id = await self._run_deployment(lookup.key)
        return await self._deployment_name(deployment_id)

    async def _run_deployment(self, run_id: str | None) -> str | None:
        if not run_id:
            return None
        if run_id not in self._run_deployments:
            if len(self._run_deployments) > CACHED_RUNS:
                self._run_deployments.clear()  # a bound on a long-lived gateway's memory
            run = await self._get(f"/flow_runs/{run_id}")
            if run is None:
                return None
            self._run_deployments[run_id] = run.get("deployment_id")
        return self._run_deployments[run_id]

    async def _deployment_name(self, deployment_id: str | None) -> str | None:
        if not deployment_id:
            return None
        if deployment_id not in self._deployment_names:
            deployment = await self._get(f"/deployments/{deployment_id}")
            if deployment is None:
                return None
            self._deployment_names[deployment_id] = deployment["name"]
        return self._deployment_names[deployment_id]

    async def _granted_deployment_ids(self, account: Account) -> set[str]:
        found = await self.client.post("/deployments/filter", json={
            "deployments": {"name": {"any_": list(account.deployments)}}})
        found.raise_for_status()
        return {d["id"] for d in found.json() if d["name"] in account.deployments}

    async def _get(self, path: str) -> dict | None:
        answer = await self.client.get(path)
        if answer.status_code == 404:
            return None
        answer.raise_for_status()
        return answer.json()

    # --- streams (websockets) ------------------------------------------------------------

    async def relay(self, client: WebSocket) -> None:
        """Relay one of Prefect's streams. Its clients sign in inside the stream (a first `auth`
        message whose token is the account's `NAME:SECRET`; not every one sends basic auth on
        the handshake), so the gateway checks that token against the account's hash itself, and
        signs in to the server with the server's own credential."""
        uri = client.headers.get("x-original-uri", "")
        path, query = _split(uri)
        await client.accept(subprotocol="prefect")
        try:
            hello = json.loads(await client.receive_text())
            token = hello.get("token") if hello.get("type") == "auth" else None
            account = await asyncio.to_thread(self.store.verify, str(token or ""))
            if account is None:
                await client.close(code=1008, reason="Invalid token")
                return
            try:
                await self.settle(policy.decide(account, "GET", path, query), account)
            except Refused as e:
                await client.close(code=1008, reason=str(e)[:120])
                return
            url = "ws" + self.config.upstream[len("http"):] + _upstream_path(uri)
            async with ws_connect(url, subprotocols=["prefect"], proxy=None,
                                  open_timeout=10) as server:
                await server.send(json.dumps({"type": "auth", "token": self.upstream_auth}))
                await client.send_text(str(await server.recv()))
                await _pump(client, server)
        except (WebSocketDisconnect, ConnectionClosed, OSError, ValueError, AttributeError):
            pass
        finally:
            try:
                await client.close()
            except (RuntimeError, WebSocketDisconnect):  # already closed, or gone
                pass

    # --- requests decided on their body --------------------------------------------------

    async def forward(self, request: Request) -> Response:
        account = self.account(request)
        uri = request.headers.get("x-original-uri", "")
        path, query = _split(uri)
        verdict = policy.decide(account, request.method, path, query)
        raw = await request.body()
        try:
            if isinstance(verdict, policy.Body):
                assert account is not None
                body = _json_object(raw)
                handler = getattr(self, "_" + verdict.kind.replace("-", "_"))
                return await handler(account, path, body)
            await self.settle(verdict, account)
        except Refused as e:
            return _refused(str(e))
        return await self._pass(request.method, uri, raw, request.headers)

    async def _pass(self, method: str, uri: str, raw: bytes, headers) -> Response:
        sent = {k: v for k, v in headers.items()
                if k.lower() not in HOP_BY_HOP and not k.lower().startswith("x-")}
        answer = await self.client.request(method, _upstream_path(uri), content=raw, headers=sent)
        return _relay(answer)

    async def _send(self, method: str, path: str, body: object) -> Response:
        return _relay(await self.client.request(method, path, json=body))

    async def _create_deployment_run(self, account: Account, path: str, body: dict) -> Response:
        deployment_id = path.split("/")[2]
        if account.role is Role.INTEGRATION:
            name = await self._deployment_name(deployment_id)
            if name not in account.deployments:
                raise Refused(f"{account.name} may run the deployments "
                              f"{', '.join(account.deployments)} only")
        if account.role is not Role.WORKER:
            deployment = await self._get(f"/deployments/{deployment_id}")
            if deployment is None:
                return JSONResponse({"detail": "Deployment not found"}, status_code=404)
            _only_form_fields(body, deployment)
        body["tags"] = _created_by(body.get("tags"), account)
        return await self._send("POST", path, body)

    async def _create_run(self, account: Account, path: str, body: dict) -> Response:
        """A flow run made outside a deployment (an operator's own `dwops run`)."""
        if account.role is not Role.WORKER:
            if body.get("deployment_id"):
                raise Refused("a run of a deployment is created with create_flow_run, where its "
                              "parameters are checked against the deployment's form")
            _empty(body, "job_variables", "work_pool_name", "work_queue_name",
                   "infrastructure_document_id")
        body["tags"] = _created_by(body.get("tags"), account)
        return await self._send("POST", path, body)

    async def _update_run(self, account: Account, path: str, body: dict) -> Response:
        """The run's engine reports its flow's version and retry policy; nothing else changes."""
        extra = sorted(set(body) - {"flow_version", "empirical_policy", "name"})
        if extra:
            raise Refused(f"an operator may not change a run's {', '.join(extra)}")
        return await self._send("PATCH", path, body)

    async def _resume(self, account: Account, path: str, body: dict) -> Response:
        """An operator's answer to a paused run: recorded under the account's name (a tag the
        run's flow checks), then passed on. Only `approve` is taken from the answer."""
        run_id = path.split("/")[2]
        answer = body.get("run_input") or {}
        if not isinstance(answer, dict) or not isinstance(answer.get("approve", False), bool):
            raise Refused("run_input.approve must be true or false")
        approve = answer.get("approve", False)
        if len(self._decisions) > CACHED_RUNS:
            self._decisions = {k: v for k, v in self._decisions.items() if v.locked()}
        lock = self._decisions.setdefault(run_id, asyncio.Lock())
        async with lock:
            run = await self._get(f"/flow_runs/{run_id}")
            if run is None:
                return JSONResponse({"detail": "Flow run not found"}, status_code=404)
            tags = [t for t in run["tags"] if not t.startswith((policy.APPROVED_BY,
                                                                 policy.REJECTED_BY))]
            decision = (policy.APPROVED_BY if approve else policy.REJECTED_BY) + account.name
            await self._tag(run_id, tags + [decision])
            answer = await self.client.post(path, json={"run_input": {"approve": approve}})
            if answer.is_error or answer.json().get("status") != "ACCEPT":
                await self._tag(run_id, run["tags"])  # not taken: the decision is not recorded
            return _relay(answer)

    async def _tag(self, run_id: str, tags: list[str]) -> None:
        (await self.client.patch(f"/flow_runs/{run_id}", json={"tags": tags})).raise_for_status()

    async def _filter_runs(self, account: Account, path: str, body: dict) -> Response:
        if account.role is Role.INTEGRATION:
            wanted = ((body.get("deployments") or {}).get("id") or {}).get("any_")
            granted = await self._granted_deployment_ids(account)
            if not wanted or not set(wanted) <= granted:
                raise Refused("an integration account reads runs of its own deployments: "
                              "filter on deployments.id.any_ with their ids")
        return await self._send("POST", path, body)

    async def _filter_artifacts(self, account: Account, path: str, body: dict) -> Response:
        if account.role is Role.INTEGRATION:
            runs = ((body.get("artifacts") or {}).get("flow_run_id") or {}).get("any_")
            if not runs or not isinstance(runs, list):
                raise Refused("an integration account reads artifacts of its own runs: filter "
                              "on artifacts.flow_run_id.any_")
            for run_id in runs:
                await self.settle(policy.Lookup("run", str(run_id)), account)
        return await self._send("POST", path, body)

    async def _filter_blocks(self, account: Account, path: str, body: dict) -> Response:
        if body.get("include_secrets"):
            raise Refused("operators never read a secret's value")
        return await self._send("POST", path, body)


async def _pump(client: WebSocket, server) -> None:
    """Copy messages both ways until either side closes."""

    async def up() -> None:
        while True:
            message = await client.receive()
            if message["type"] == "websocket.disconnect":
                return
            await server.send(message.get("text") if message.get("text") is not None
                              else message.get("bytes"))

    async def down() -> None:
        async for message in server:
            if isinstance(message, bytes):
                await client.send_bytes(message)
            else:
                await client.send_text(message)

    tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _only_form_fields(body: dict, deployment: dict) -> None:
    """What a run's creation may carry: what the deployment's form allows. The UI's Custom run
    sends the deployment's own job variables and work queue back, and no retries: those pass."""
    for field in ("job_variables", "work_queue_name"):
        if body.get(field) == deployment.get(field):
            body.pop(field)
    policy_values = (body.get("empirical_policy") or {}).values()
    if not any(v not in (None, 0, False, [], {}, "") for v in policy_values):
        body.pop("empirical_policy", None)  # no retries: a runbook flow is never blindly re-run
    _empty(body, *(set(body) - CREATE_FIELDS - {"enforce_parameter_schema"}))
    if body.get("enforce_parameter_schema") is False:
        raise Refused("a run cannot switch off its deployment's parameter schema")
    state = body.get("state")
    if state is not None and (not isinstance(state, dict) or
                              state.get("type", "SCHEDULED") != "SCHEDULED"):
        raise Refused("a run is created SCHEDULED (now, or at a time), in no other state")


def _empty(body: dict, *fields: str) -> None:
    """Refuse any of `fields` given with a value (their empty value, as forms send, is fine)."""
    given = sorted(f for f in fields if body.get(f) not in (None, {}, [], ""))
    if given:
        raise Refused(f"a caller may not set {', '.join(given)} (the worker's command, "
                      f"environment and queue are the deployment's, and a runbook flow is "
                      f"not retried)")
    for f in fields:
        body.pop(f, None)


def _created_by(tags: object, account: Account) -> list[str]:
    tags = list(tags or [])
    if not all(isinstance(t, str) for t in tags):
        raise Refused("tags must be strings")
    reserved = [t for t in tags if t.startswith(policy.RESERVED_TAGS)]
    if reserved:
        raise Refused(f"tags {', '.join(reserved)} are set by dwops from the account, not by "
                      f"a caller")
    return tags + [policy.CREATED_BY + account.name]


def _json_object(raw: bytes) -> dict:
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise Refused("the body is not JSON") from None
    if not isinstance(body, dict):
        raise Refused("the body is not a JSON object")
    return body


def _split(uri: str) -> tuple[str, dict[str, str]]:
    """`/api/x/y?a=b` into (`/x/y`, {a: b})."""
    parts = urlsplit(uri)
    path = parts.path
    path = path[len("/api"):] if path.startswith("/api/") or path == "/api" else path
    return path, dict(parse_qsl(parts.query))


def _upstream_path(uri: str) -> str:
    return uri[len("/api"):] if uri.startswith("/api") else uri


def _refused(reason: str) -> Response:
    reason = re.sub(r"[^A-Za-z0-9 :/_.,'()-]", "?", reason)[:300]
    return JSONResponse({"detail": f"refused by dwops: {reason}"}, status_code=403,
                        headers={"X-Dwops-Reason": reason})


def _relay(answer: httpx.Response) -> Response:
    headers = {k: v for k, v in answer.headers.items()
               if k.lower() not in HOP_BY_HOP and k.lower() != "content-encoding"}
    return Response(answer.content, status_code=answer.status_code, headers=headers)


async def _upstream_failed(request: Request, exc: Exception) -> Response:
    """The Prefect server did not answer, or answered with an error while the gateway asked it
    something: fail closed, and let clients retry what is worth retrying (503, as a busy
    server answers)."""
    status = exc.response.status_code if isinstance(exc, httpx.HTTPStatusError) else 502
    return JSONResponse({"detail": f"the Prefect server did not answer the gateway ({status})"},
                        status_code=503 if status == 503 else 502)


def create_app(config: Config) -> Starlette:
    gateway = Gateway(config)
    methods = ["GET", "POST", "PATCH", "PUT", "DELETE"]
    return Starlette(routes=[
        Route("/_authz", gateway.authz, methods=["GET"]),
        Route("/_gateway", gateway.forward, methods=methods),
        WebSocketRoute("/_ws", gateway.relay),
    ], exception_handlers={httpx.HTTPStatusError: _upstream_failed,
                           httpx.TransportError: _upstream_failed})


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(create_app(Config.from_env()), host=args.host, port=args.port,
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
