"""The proxy's policy and accounts, pure: what each role may do with which request.

The same decisions are tested through the real proxy in tests/e2e/test_access.py; these pin the
rules themselves, including the routes that only the gateway may decide (on their bodies), and
check that nginx's routing map and the policy agree.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from dwops import policy
from dwops.accounts import Account, AccountError, AccountStore, Role, validate
from dwops.policy import Allow, Body, Deny, Lookup, decide
from dwops.proxy import ProxyLayout, render

RUN = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"
OPERATOR = Account("alice", Role.OPERATOR)
CI = Account("ci", Role.INTEGRATION, ("restart-webs",))
WORKER = Account("worker", Role.WORKER)


@pytest.mark.parametrize("method, path, query, verdict", [
    ("GET", "/flow_runs/" + RUN, {}, Allow()),
    ("POST", "/flow_runs/filter", {}, Body("filter-runs")),
    ("POST", "/deployments/filter", {}, Allow()),
    ("POST", "/ui/flow_runs/history", {}, Allow()),
    ("POST", f"/flow_runs/{RUN}/set_state", {}, Allow()),
    ("POST", f"/flow_runs/{RUN}/resume", {}, Body("resume")),
    ("POST", f"/deployments/{RUN}/create_flow_run", {}, Body("create-deployment-run")),
    ("POST", "/v2/concurrency_limits/increment-with-lease", {}, Allow()),
    ("GET", f"/block_documents/{RUN}", {"include_secrets": "true"}, Deny),
    ("GET", f"/block_documents/{RUN}", {"include_secrets": "True"}, Deny),
    ("GET", "/block_types/slug/secret/block_documents/name/x", {"include_secrets": "1"}, Deny),
    ("GET", f"/block_documents/{RUN}", {}, Allow()),
    ("POST", "/block_documents/filter", {}, Body("filter-blocks")),
    ("PATCH", f"/deployments/{RUN}", {}, Deny),
    ("POST", f"/deployments/{RUN}/pause_deployment", {}, Deny),
    ("POST", f"/deployments/{RUN}/create_flow_run/bulk", {}, Deny),
    ("POST", "/automations/", {}, Deny),
    ("PATCH", "/work_pools/dwops", {}, Deny),
    ("POST", "/work_pools/dwops/get_scheduled_flow_runs", {}, Deny),
    ("PATCH", "/v2/concurrency_limits/dwops-maintenance", {}, Deny),
    ("POST", f"/flow_runs/{RUN}/input", {}, Deny),
    ("DELETE", f"/flow_runs/{RUN}", {}, Deny),
    ("POST", "/flow_runs/bulk_set_state", {}, Deny),
    ("POST", "/events", {}, Deny),
    ("POST", "/block_documents/", {}, Deny),
    ("GET", "/task_runs/subscriptions/scheduled", {}, Deny),
    ("POST", "/some/new/endpoint", {}, Deny),  # closed until someone opens it
])
def test_an_operator_runs_and_reads_but_changes_no_configuration_and_reads_no_secret(
        method, path, query, verdict):
    got = decide(OPERATOR, method, path, query)
    assert got == verdict if not isinstance(verdict, type) else isinstance(got, verdict), got


@pytest.mark.parametrize("method, path, query, verdict", [
    ("POST", f"/deployments/{RUN}/create_flow_run", {}, Body("create-deployment-run")),
    ("GET", "/deployments/name/restart-webs/restart-webs", {}, Lookup("deployment-name",
                                                                      "restart-webs")),
    ("GET", f"/flow_runs/{RUN}", {}, Lookup("run", RUN)),
    ("GET", "/flow_run_states/", {"flow_run_id": RUN}, Lookup("run", RUN)),
    ("GET", f"/artifacts/{RUN}", {}, Lookup("artifact", RUN)),
    ("POST", "/flow_runs/filter", {}, Body("filter-runs")),
    ("POST", "/artifacts/filter", {}, Body("filter-artifacts")),
    ("GET", "/health", {}, Allow()),
    ("POST", "/deployments/filter", {}, Deny),
    ("GET", "/admin/version", {}, Deny),  # the UI's sign-in check: no UI for integrations
    ("POST", f"/flow_runs/{RUN}/resume", {}, Deny),
    ("POST", f"/flow_runs/{RUN}/set_state", {}, Deny),
    ("POST", "/flow_runs/", {}, Deny),
    ("GET", "/flow_run_states/", {}, Deny),
    ("GET", f"/block_documents/{RUN}", {}, Deny),
    ("POST", "/logs/filter", {}, Deny),
])
def test_an_integration_makes_and_reads_runs_of_its_deployments_only(method, path, query,
                                                                     verdict):
    got = decide(CI, method, path, query)
    assert got == verdict if not isinstance(verdict, type) else isinstance(got, verdict), got


def test_a_worker_may_do_what_workers_and_deploys_do_but_never_approve():
    for method, path in (("PATCH", f"/deployments/{RUN}"), ("GET", f"/block_documents/{RUN}"),
                         ("POST", f"/flow_runs/{RUN}/input"), ("POST", "/automations/")):
        assert decide(WORKER, method, path, {"include_secrets": "true"}) == Allow()
    assert isinstance(decide(WORKER, "POST", f"/flow_runs/{RUN}/resume", {}), Deny)
    # Runs it creates are recorded as its own, like everyone's.
    assert decide(WORKER, "POST", f"/deployments/{RUN}/create_flow_run", {}) == Body(
        "create-deployment-run")


def test_nobody_and_odd_paths_are_refused():
    assert isinstance(decide(None, "GET", "/health", {}), Deny)
    for path in ("/flow_runs/../admin/settings", "/flow_runs//x"):
        assert isinstance(decide(WORKER, "GET", path, {}), Deny)


def test_nginx_sends_exactly_the_body_routes_to_the_gateway(tmp_path):
    """The map nginx routes with is rendered from the policy's BODY_ROUTES, and nginx accepts
    the whole configuration."""
    layout = ProxyLayout(folder=tmp_path, port=4999, server_port=5001, gateway_port=5002,
                         htpasswd=tmp_path / "htpasswd", upstream_credential="prefect:s3cret")
    files = render(layout)
    conf = files[layout.config]
    mapped = re.findall(r'"~\^(\w+) /api(.*)\$" 1;', conf)
    assert mapped == [(m, p) for m, p, _ in policy.BODY_ROUTES]
    assert "s3cret" not in conf  # the credential is in the include only (0600)
    assert "prefect:s3cret" not in files[tmp_path / "upstream-auth.conf"]  # base64
    from dwops import proxy

    proxy.write(layout)
    (tmp_path / "htpasswd").write_text("")
    check = subprocess.run(proxy.nginx_argv(layout, "-t"), capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert re.search(r"listen 127\.0\.0\.1:4999;", conf)


def test_accounts_are_kept_as_bcrypt_hashes_and_their_secret_is_shown_once(tmp_path):
    store = AccountStore(tmp_path / "accounts")
    made = store.add("ops-one", Role.OPERATOR)
    name, _, secret = made.partition(":")
    assert name == "ops-one" and len(secret) >= 40
    line = store.htpasswd.read_text().strip()
    assert line.startswith("ops-one:$2y$") and secret not in line
    assert secret not in store.roles.read_text()
    verify = subprocess.run(["htpasswd", "-v", "-i", str(store.htpasswd), "ops-one"],
                            input=secret, capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    store.add("ci", Role.INTEGRATION, ("restart-webs", "fleet-status"))
    assert store.load()["ci"].deployments == ("restart-webs", "fleet-status")
    with pytest.raises(AccountError, match="exists already"):
        store.add("ops-one", Role.OPERATOR)
    store.remove("ops-one")
    assert "ops-one" not in store.load() and "ops-one:" not in store.htpasswd.read_text()
    with pytest.raises(AccountError, match="no account"):
        store.remove("ops-one")


@pytest.mark.parametrize("name, role, deployments, problem", [
    ("Bad", Role.OPERATOR, (), "bad account name"),
    ("a:b", Role.OPERATOR, (), "bad account name"),
    ("ci", Role.INTEGRATION, (), "needs --deployments"),
    ("ops", Role.OPERATOR, ("restart-webs",), "for integration accounts"),
    ("ci", Role.INTEGRATION, ("Restart Webs",), "bad deployment name"),
])
def test_a_bad_account_is_refused_with_its_reason(name, role, deployments, problem):
    with pytest.raises(AccountError, match=problem):
        validate(name, role, deployments)
