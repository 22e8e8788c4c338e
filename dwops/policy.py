"""What each role may do with the Prefect API: a pure function of (role, method, path, query).

The proxy authenticates the account (nginx, `dwops/proxy.py`); this decides. Three answers need
more than the request line, and name what the gateway (`dwops/gateway.py`) must look at:
- `Lookup`: allowed only if the object (a deployment, a flow run, an artifact) belongs to one of
  the integration's deployments;
- `Body`: decided on the request's JSON body (a run's creation, an approval, a filter).
Everything not named here is refused: a new Prefect endpoint is closed until someone opens it.

The roles (`dwops.accounts.Role`):
- operator: the UI and the API: read everything but secrets, run flows (from deployments and on
  their own machine), approve or reject, cancel. Never: secrets, deployments, work pools,
  automations, concurrency limits, blocks, run inputs, deleting history.
- integration: create runs of its own deployments, and read those runs and their artifacts.
- worker: the admin hosts' workers and deploys: everything a worker or `prefect deploy` needs,
  secrets included; but never an approval (approvals are a human's).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dwops.accounts import Account, Role

UUID = r"[0-9a-fA-F-]{36}"
# Reserved tags: set by the gateway from what the proxy authenticated, never by a caller.
CREATED_BY = "created-by:"
APPROVED_BY = "approved-by:"
REJECTED_BY = "rejected-by:"
RESERVED_TAGS = (CREATED_BY, APPROVED_BY, REJECTED_BY)


@dataclass(frozen=True)
class Allow:
    pass


@dataclass(frozen=True)
class Deny:
    reason: str


@dataclass(frozen=True)
class Lookup:
    kind: str  # deployment | deployment-name | run | artifact
    key: str


@dataclass(frozen=True)
class Body:
    kind: str  # see BODY_ROUTES


Verdict = Allow | Deny | Lookup | Body

# Requests decided on their body, by kind. nginx sends exactly these to the gateway
# (`dwops.proxy` renders its map from this list), the rest through `auth_request`.
BODY_ROUTES: list[tuple[str, str, str]] = [
    ("POST", rf"/deployments/{UUID}/create_flow_run", "create-deployment-run"),
    ("POST", r"/flow_runs/?", "create-run"),
    ("PATCH", rf"/flow_runs/{UUID}", "update-run"),
    ("POST", rf"/flow_runs/{UUID}/resume", "resume"),
    ("POST", r"/flow_runs/filter", "filter-runs"),
    ("POST", r"/artifacts/filter", "filter-artifacts"),
    ("POST", r"/block_documents/(filter|count)", "filter-blocks"),
]
_BODY = [(m, re.compile(p + "$"), k) for m, p, k in BODY_ROUTES]
# Prefect's streams (websockets): nginx sends them to the gateway's relay, which decides with
# `decide(account, "GET", path, {})` and signs in to the server itself.
STREAM_ROUTES = [r"/events/in", r"/events/out", r"/logs/out",
                 r"/task_runs/subscriptions/scheduled", r"/work_pools/[^/]+/workers/connect"]

# POSTs that only read (Prefect reads with POST bodies).
_READ_POST = re.compile(
    r"/(.*/)?(filter|count|paginate|history|lateness|concurrency_status)$"
    r"|/events/count-by/[a-z_]+$|/(automations/)?templates/validate$|/ui/.*")
# What an operator's own runs write (a `dwops run` on their machine, the UI's cancel button).
_OPERATOR_WRITES = [
    ("POST", re.compile(r"/flows/?$")),
    ("POST", re.compile(rf"/flow_runs/{UUID}/set_state$")),
    ("PATCH", re.compile(rf"/flow_runs/{UUID}/labels$")),
    ("POST", re.compile(r"/task_runs/?$")),
    ("PATCH", re.compile(rf"/task_runs/{UUID}$")),
    ("POST", re.compile(rf"/task_runs/{UUID}/set_state$")),
    ("POST", re.compile(r"/logs/?$")),
    ("POST", re.compile(r"/artifacts/?$")),
    ("POST", re.compile(r"/(v2/)?concurrency_limits/(increment|decrement)(-with-lease)?$")),
    ("POST", re.compile(r"/v2/concurrency_limits/leases/[^/]+/renew$")),
    ("PUT", re.compile(r"/saved_searches/?$")),
    ("DELETE", re.compile(rf"/saved_searches/{UUID}$")),
]
_WORKER_ONLY_READS = re.compile(r"/(task_runs/subscriptions/scheduled|work_pools/[^/]+/workers/"
                                r"connect)$")
_SECRET_READS = re.compile(r"/(block_documents/.*|block_types/slug/[^/]+/block_documents.*)$")
_PUBLIC = re.compile(r"/(health|ready|version|hello|csrf-token)$")


def body_route(method: str, path: str) -> str | None:
    """The kind of body-decided request this is, or None."""
    for m, pattern, kind in _BODY:
        if m == method and pattern.match(path):
            return kind
    return None


def decide(account: Account | None, method: str, path: str, query: dict[str, str]) -> Verdict:
    """What `account` may do with `method path?query` (path without the `/api` prefix)."""
    method = method.upper()
    if account is None:
        return Deny("no such account")
    if ".." in path or "//" in path:
        return Deny("a path with '..' or '//' is refused")
    if _PUBLIC.match(path) and method in ("GET", "HEAD"):
        return Allow()
    kind = body_route(method, path)
    if account.role is Role.WORKER:
        if kind == "resume":
            return Deny("approvals are a human's: a worker account cannot resume a run")
        if kind in ("create-deployment-run", "create-run"):
            return Body(kind)  # who created it is recorded for every account
        return Allow()
    if account.role is Role.OPERATOR:
        return _operator(method, path, query, kind)
    return _integration(method, path, query, kind)


def _operator(method: str, path: str, query: dict[str, str], kind: str | None) -> Verdict:
    if kind:
        return Body(kind)
    if method in ("GET", "HEAD"):
        if _SECRET_READS.match(path) and query.get("include_secrets", "").lower() not in ("", "false"):
            return Deny("operators never read a secret's value")
        if _WORKER_ONLY_READS.match(path):
            return Deny("for workers only")
        return Allow()
    if method == "POST" and _READ_POST.match(path):
        return Allow()
    if any(m == method and p.match(path) for m, p in _OPERATOR_WRITES):
        return Allow()
    return Deny(f"operators may not {method} {path}: deployments, work pools, automations, "
                f"limits, blocks and run inputs change only by deploying (a worker account)")


def _integration(method: str, path: str, query: dict[str, str], kind: str | None) -> Verdict:
    if kind in ("create-deployment-run", "filter-runs", "filter-artifacts"):
        return Body(kind)
    if method == "GET":
        m = re.fullmatch(r"/deployments/name/[^/]+/([^/]+)", path)
        if m:
            return Lookup("deployment-name", m.group(1))
        m = re.fullmatch(rf"/deployments/({UUID})", path)
        if m:
            return Lookup("deployment", m.group(1))
        m = re.fullmatch(rf"/flow_runs/({UUID})", path)
        if m:
            return Lookup("run", m.group(1))
        if path.rstrip("/") == "/flow_run_states" and re.fullmatch(UUID, query.get("flow_run_id", "")):
            return Lookup("run", query["flow_run_id"])
        m = re.fullmatch(rf"/artifacts/({UUID})", path)
        if m:
            return Lookup("artifact", m.group(1))
    return Deny(f"integration accounts may create and read runs of their deployments only, "
                f"not {method} {path}")
