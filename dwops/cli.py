"""The `dwops` command line.

Text that comes from hosts, services or the Prefect server (check reasons, host names, report
summaries, run names, state messages) is printed as text, never as Rich markup: in a table as a
`Text`, in a line through `escape`. A `ps` title holding `[/x]` must not crash the output, nor
`[bold red]` restyle it.
"""

from __future__ import annotations

import json
import os
import sys

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

app = typer.Typer(help="Dreamwidth's production runbook as Prefect flows.", no_args_is_help=True)
lab_app = typer.Typer(help="The lab: the production fleet replicated on this machine.",
                      no_args_is_help=True)
app.add_typer(lab_app, name="lab")
inventory_app = typer.Typer(help="What an inventory gives each host.", no_args_is_help=True)
app.add_typer(inventory_app, name="inventory")

console = Console()
err = Console(stderr=True)

VERDICT_STYLE = {"OK": "green", "WARN": "yellow", "CRIT": "bold red"}


@app.command("status")
def status(
    inventory: str = typer.Option("lab", "--inventory", "-i",
                                  help="lab, production, or the path of an inventory file"),
    as_json: bool = typer.Option(False, "--json", help="one object per check, for tools"),
) -> None:
    """Read every system of the fleet and judge it (the fleet-status flow). Exit 1 on CRIT."""
    from dwops.settings import use_project_prefect

    use_project_prefect()
    from pydantic import ValidationError

    from dwops.inventory import PATHS_ALLOWED, InventoryError, resolve_inventory
    from flows.fleet_status import FleetCritical, FleetStatusParams, fleet_status

    os.environ[PATHS_ALLOWED] = "allow"  # the operator's own machine: inventory files by path
    try:
        params = FleetStatusParams(inventory=inventory)
        resolve_inventory(params.inventory)  # a bad inventory exits 2 before any run exists
        import asyncio

        state = asyncio.run(fleet_status(params, return_state=True))
        outcome = state.result(raise_on_failure=False)
    except (InventoryError, ValidationError) as e:
        err.print(f"[red]{escape(str(e))}[/]", soft_wrap=True)
        raise typer.Exit(2) from None
    if isinstance(outcome, FleetCritical):
        report = outcome.report.as_dict()
    elif isinstance(outcome, BaseException):
        err.print(f"[red]fleet-status failed:[/] {escape(str(outcome))}")
        raise typer.Exit(2)
    else:
        report = outcome
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n")
    else:
        table = Table(title=Text(f"fleet status: {report['inventory']}"))
        for col in ("verdict", "system", "host", "reason"):
            table.add_column(col)
        order = {"CRIT": 0, "WARN": 1, "OK": 2}
        for c in sorted(report["checks"], key=lambda c: (order[c["verdict"]], c["system"], c["host"])):
            v = c["verdict"]
            table.add_row(Text(v, style=VERDICT_STYLE[v]), Text(c["system"]), Text(c["host"]),
                          Text(c["reason"]))
        console.print(table)
        n = report["counts"]
        console.print(f"{report['verdict']}: {n['OK']} ok, {n['WARN']} warn, {n['CRIT']} crit "
                      f"in {report['seconds']} s")
    if report["verdict"] == "CRIT":
        raise typer.Exit(1)


@app.command("up")
def up(
    inventory: str = typer.Option("lab", help="the inventory the deployments act on"),
) -> None:
    """Bring up everything: the lab, the proxy and the Prefect server behind it, the work pool, a
    worker and every deployment; run fleet-status once; print the UI's address and, the first
    time, the first operator account."""
    from dwops import platform
    from lab import fleet

    say = lambda msg: err.print(f"[dim]up:[/] {msg}")  # noqa: E731
    try:
        made = platform.ensure_accounts()
        fleet.up(say=say)
        platform.start_server(say)
        platform.deploy(say)
        platform.install_automations(say, inventory)
        platform.start_worker(say, inventory)
    except Exception as e:  # every step names what failed and where its log is
        err.print(f"[red]dwops up failed:[/] {escape(str(e))}")
        raise typer.Exit(1) from None
    say("running fleet-status once through its deployment")
    out = platform.prefect("deployment", "run", "fleet-status/fleet-status", "--watch",
                           "--watch-timeout", "180", check=False, env=platform.client_env())
    say("fleet-status: " + ("completed" if out.returncode == 0 else "did not complete (see the UI)"))
    console.print(f"Prefect UI: [bold]{platform.ui_url()}[/]  (sign in with an operator account)")
    if made:
        console.print(f"The first operator account, shown once (this machine's CLI keeps it in "
                      f"{platform.credential_file()}); more with `dwops user add`:",
                      soft_wrap=True)
        console.print(made, soft_wrap=True, markup=False)
    else:
        console.print(f"Operator account: in {platform.credential_file()}", soft_wrap=True)


@app.command("down")
def down(
    wipe: bool = typer.Option(False, "--wipe", help="also delete the lab's data, keys and logs"),
    keep_lab: bool = typer.Option(False, "--keep-lab",
                                  help="stop only the worker and the Prefect server"),
) -> None:
    """Stop the worker, the Prefect server and the lab; nothing is left running."""
    from dwops import platform
    from lab import fleet

    if wipe and keep_lab:
        err.print("[red]--wipe deletes the lab's data: it cannot be combined with --keep-lab[/]")
        raise typer.Exit(2)
    say = lambda msg: err.print(f"[dim]down:[/] {msg}")  # noqa: E731
    platform.stop(say)
    if keep_lab:
        return
    stopped = fleet.wipe(say) if wipe else fleet.down(say)
    err.print(f"down: stopped {len(stopped or [])} lab processes")


user_app = typer.Typer(help="Accounts of the API and UI (behind the proxy of `dwops up`).",
                       no_args_is_help=True)
app.add_typer(user_app, name="user")


@user_app.command("add")
def user_add(
    name: str = typer.Argument(..., help="the account's name: lowercase letters, digits, '-'"),
    role: str = typer.Option(..., "--role", help="operator, integration or worker"),
    deployments: str = typer.Option("", "--deployments",
                                    help="an integration's deployments, comma-separated"),
) -> None:
    """Make an account; print its NAME:SECRET once, as the last line (only its hash is kept)."""
    from dwops import platform
    from dwops.accounts import AccountError, Role
    from flows import FLOWS

    try:
        wanted = Role(role)
    except ValueError:
        err.print(f"[red]unknown role {escape(role)!r}: operator, integration or worker[/]")
        raise typer.Exit(2) from None
    names = tuple(d.strip() for d in deployments.split(",") if d.strip())
    unknown = [d for d in names if d not in FLOWS]
    if unknown:
        err.print(f"[red]no deployment {escape(', '.join(unknown))} "
                  f"(there are: {', '.join(FLOWS)})[/]")
        raise typer.Exit(2)
    try:
        secret = platform.accounts().add(name, wanted, names)
    except AccountError as e:
        err.print(f"[red]{escape(str(e))}[/]")
        raise typer.Exit(2) from None
    err.print(f"account {name} ({wanted.value}) made; its secret is shown once, below:")
    console.print(secret, markup=False, soft_wrap=True)


@user_app.command("list")
def user_list() -> None:
    """Every account and its role (never a secret)."""
    from dwops import platform

    for account in platform.accounts().load().values():
        console.print(account.describe(), markup=False)


@user_app.command("remove")
def user_remove(name: str = typer.Argument(..., help="the account to remove")) -> None:
    """Remove an account: its next request is refused."""
    from dwops import platform
    from dwops.accounts import AccountError

    try:
        gone = platform.accounts().remove(name)
    except AccountError as e:
        err.print(f"[red]{escape(str(e))}[/]")
        raise typer.Exit(2) from None
    err.print(f"removed {gone.describe()}")


@lab_app.command("up")
def lab_up() -> None:
    """Start every lab host and service (idempotent: what runs is left alone)."""
    from lab import fleet

    try:
        fleet.up(say=lambda msg: err.print(f"[dim]lab:[/] {msg}"))
    except Exception as e:  # a failed start names the service and its log
        err.print(f"[red]lab up failed:[/] {e}")
        raise typer.Exit(1) from None
    st = fleet.wait_until_up(30)
    _print_status(st)
    if not st["all_up"]:
        raise typer.Exit(1)


@lab_app.command("down")
def lab_down(
    wipe: bool = typer.Option(False, "--wipe", help="also delete the lab's data, keys and logs"),
) -> None:
    """Stop everything the lab runs; nothing is left running."""
    from lab import fleet

    say = lambda msg: err.print(f"[dim]lab:[/] {msg}")  # noqa: E731
    stopped = fleet.wipe(say) if wipe else fleet.down(say)
    err.print(f"lab down: stopped {len(stopped or [])} processes")


scale_app = typer.Typer(help="Extra lightweight SSH hosts on 127.40.x.x for fan-out benchmarks.",
                        no_args_is_help=True)
lab_app.add_typer(scale_app, name="scale")


@scale_app.command("up")
def lab_scale_up(hosts: int = typer.Option(200, "--hosts", min=1, max=50_000,
                                           help="how many SSH hosts to run")) -> None:
    """Start HOSTS Dropbear sshds (own host keys, the lab's client key); write their inventory."""
    from lab import scale

    try:
        path = scale.up(hosts)
    except Exception as e:  # a failed start names the log
        err.print(f"[red]lab scale up failed:[/] {escape(str(e))}")
        raise typer.Exit(1) from None
    st = scale.status()
    err.print(f"{st['listening']} scaled hosts listening; inventory {path}; "
              f"known_hosts {st['known_hosts']}")


@scale_app.command("down")
def lab_scale_down() -> None:
    """Stop every scaled host (nothing is left running or listening)."""
    from lab import scale

    err.print(f"lab scale down: stopped {len(scale.down())} processes")


@scale_app.command("status")
def lab_scale_status() -> None:
    """How many scaled hosts run and listen, and their memory."""
    from lab import scale

    sys.stdout.write(json.dumps(scale.status(), indent=2) + "\n")


@lab_app.command("status")
def lab_status(as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """Every lab host and service with its pid and state, the lab's paths and counters."""
    from lab import fleet

    try:
        st = fleet.status()
    except FileNotFoundError as e:
        err.print(str(e))
        raise typer.Exit(2) from None
    if as_json:
        sys.stdout.write(json.dumps(st, indent=2) + "\n")
    else:
        _print_status(st)
    if not st["all_up"]:
        raise typer.Exit(1)


def _print_status(st: dict) -> None:
    table = Table(title="dwops lab", show_lines=False)
    for col in ("service", "host", "listens", "pid", "state"):
        table.add_column(col)
    for s in st["services"]:
        listens = f"{s['address']}:{s['port']}" if s["port"] else "-"
        state = "[green]up[/]" if s["up"] else "[red]down[/]"
        table.add_row(s["name"], s["host"], listens, str(s["pid"] or "-"), state)
    console.print(table)
    console.print(f"inventory   {st['inventory']}")
    console.print(f"known_hosts {st['known_hosts']}")
    console.print(f"client key  {st['client_key']}")
    console.print(f"AWS         {st['aws_endpoint']}  database {st['database']['dsn']}")
    totals = st["counters"].get("traffic", {}).get("totals")
    if totals:
        console.print(f"traffic     {totals['requests']} requests, {totals['failures']} failed")


def parse_assignments(pairs: list[str]) -> dict:
    """`key=value` pairs (`a.b=value` for nested fields) into a dict; values are JSON when they
    parse as JSON (numbers, true/false, lists), else plain strings."""
    out: dict = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r} is not key=value")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


@app.command("run")
def run(
    name: str = typer.Argument(..., help="the flow, e.g. restart-webs (see `dwops flows`)"),
    param: list[str] = typer.Option([], "--param", "-p", help="key=value, repeatable"),
    inventory: str = typer.Option(None, "--inventory", "-i", help="lab, production or a path"),
    approve: bool = typer.Option(False, "--approve",
                                 help="approve, at this terminal, what needs a human's approval "
                                      "(an emergency path, a purge of /*, a broad block)"),
    as_json: bool = typer.Option(False, "--json", help="print the run's report as JSON"),
) -> None:
    """Run a runbook flow here and now; exit 1 if it fails or halts, 2 on bad parameters."""
    from dwops.settings import use_project_prefect

    use_project_prefect()
    import asyncio

    from dwops.inventory import PATHS_ALLOWED

    os.environ[PATHS_ALLOWED] = "allow"  # as in `dwops status`
    flow, model, values = _params_for(name, param, inventory, approve=approve,
                                      against_inventory=True)
    params = model(**values)
    if approve:  # this process's own run only: never a parameter a deployment's run could carry
        from dwops.approval import approve_at_this_terminal

        approve_at_this_terminal(os.environ.get("USER") or os.environ.get("LOGNAME") or "")
    state = asyncio.run(flow(params, return_state=True))
    outcome = state.result(raise_on_failure=False)
    report = getattr(outcome, "report", None)
    data = report.as_dict() if report is not None else outcome
    if as_json and not isinstance(data, BaseException):
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    elif isinstance(data, dict) and "summary" in data:
        console.print(Text(data["summary"]))
    if state.is_completed():
        return
    err.print(f"[red]{name} {state.name.lower()}:[/] {escape(str(outcome))}", soft_wrap=True)
    raise typer.Exit(1)


def _params_for(name: str, param: list[str], inventory: str | None, *, approve: bool = False,
                against_inventory: bool = False):
    """(flow, its parameters model, the values) with the values validated against the model
    here, before any run exists: bad input exits 2 and touches nothing. `against_inventory`
    (a run here and now) also loads the inventory and checks the values against it: an
    inventory that is none, or a host it does not have, exits 2 as well."""
    from pydantic import ValidationError

    from flows import load_flow

    try:
        flow, model = load_flow(name)
    except KeyError as e:
        err.print(f"[red]{escape(e.args[0])}[/]")
        raise typer.Exit(2) from None
    values = parse_assignments(param)
    if inventory:
        values["inventory"] = inventory
    if approve and not getattr(model, "NEEDS_APPROVAL_FOR", None):
        err.print(f"[red]{name} has nothing that needs an approval[/]")
        raise typer.Exit(2)
    try:
        params = model(**values)
    except ValidationError as e:
        err.print(f"[red]bad parameters for {name}:[/]")
        for problem in e.errors():
            where = ".".join(str(p) for p in problem["loc"]) or "(parameters)"
            got = problem.get("input")
            shown = "" if problem["type"] == "missing" or isinstance(got, dict) else \
                f" (got {_shown(got)})"
            err.print(f"  {escape(where)}: {escape(problem['msg'] + shown)}", soft_wrap=True)
        raise typer.Exit(2) from None
    if against_inventory:
        _check_against_inventory(name, params)
    return flow, model, values


def _check_against_inventory(name: str, params) -> None:
    """Exit 2 when the parameters' inventory cannot be loaded, or lacks or forbids what they
    name (the model's `check_inventory`, which the flow runs again at its start)."""
    from dwops.inventory import InventoryError, resolve_inventory
    from dwops.runbook import BadParameters

    try:
        inventory = resolve_inventory(params.inventory)
        check = getattr(params, "check_inventory", None)
        if check is not None:
            check(inventory)
    except InventoryError as e:  # one line per problem: `  inventory: FILE: entry: problem`
        err.print(f"[red]bad parameters for {name}:[/]")
        for line in str(e).splitlines()[1:]:
            err.print(f"  inventory: {escape(line.strip())}", soft_wrap=True)
        raise typer.Exit(2) from None
    except BadParameters as e:
        err.print(f"[red]bad parameters for {name}:[/]\n  {escape(e.field or '(parameters)')}: "
                  f"{escape(str(e))}", soft_wrap=True)
        raise typer.Exit(2) from None


def _shown(value: object, limit: int = 60) -> str:
    """A refused value as ASCII (a Cyrillic letter, a zero-width space or a NUL is visible as
    its escape), cut to `limit` characters."""
    text = ascii(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


@app.command("trigger")
def trigger(
    name: str = typer.Argument(..., help="the deployment, e.g. restart-webs"),
    param: list[str] = typer.Option([], "--param", "-p", help="key=value, repeatable"),
    inventory: str = typer.Option(None, "--inventory", "-i"),
    idempotency_key: str = typer.Option(None, "--idempotency-key",
                                        help="the same key twice creates one run"),
    wait: bool = typer.Option(False, "--wait", help="follow the run and exit with its outcome"),
) -> None:
    """Create a run of a deployment through the Prefect API (as other systems do)."""
    from dwops.settings import use_project_prefect

    use_project_prefect()
    _, _, values = _params_for(name, param, inventory)
    if "/" in str(values.get("inventory", "")):
        err.print("[red]a triggered run runs on a worker and names its inventory (lab or "
                  "production), not a file: `dwops run` takes paths[/]")
        raise typer.Exit(2)
    import asyncio

    from prefect.client.orchestration import get_client

    async def go():
        async with get_client() as client:
            deployment = await client.read_deployment_by_name(f"{name}/{name}")
            run = await client.create_flow_run_from_deployment(
                deployment.id, parameters={"params": values}, idempotency_key=idempotency_key)
            console.print(Text(f"flow run {run.id} ({run.name}): "
                               f"{run.state.name if run.state else '?'}"))
            if not wait:
                return 0
            while True:
                run = await client.read_flow_run(run.id)
                if run.state and run.state.is_final():
                    break
                await asyncio.sleep(1)
            summary = await _summary_of(client, run)
            console.print(Text(f"{run.state.name}: {summary or run.state.message or ''}"))
            return 0 if run.state.is_completed() else 1

    raise typer.Exit(asyncio.run(go()))


async def _summary_of(client, run) -> str | None:
    """The summary line of a run's report (its newest artifact's description)."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    artifacts = await client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    described = [a for a in artifacts if a.description and a.key and
                 (a.key.endswith("-report") or a.key.startswith("fleet-status"))]
    return described[-1].description if described else None


@app.command("approve")
def approve(
    run_id: str = typer.Argument(..., help="the paused flow run's id"),
    reject: bool = typer.Option(False, "--reject", help="reject instead: nothing is changed"),
) -> None:
    """Approve (or reject) an emergency run that is paused waiting for approval. The run records
    the operator account this CLI signs in with (PREFECT_API_AUTH_STRING, else the one `dwops up`
    made), as the proxy authenticated it."""
    from dwops.settings import use_project_prefect

    use_project_prefect()
    import asyncio
    from uuid import UUID

    from prefect.client.orchestration import get_client

    async def go():
        async with get_client() as client:
            run = await client.read_flow_run(UUID(run_id))
            if not (run.state and run.state.is_paused()):
                err.print(f"[red]{escape(run.name)} is "
                          f"{escape(run.state.name) if run.state else '?'}, "
                          f"not waiting for approval[/]")
                return 1
            refused = await resume_with_input(client, run.id, {"approve": not reject})
            if refused:
                err.print(f"[red]{escape(run.name)}: the server refused the answer: "
                          f"{escape(refused)}[/]")
                return 1
            console.print(Text(f"{run.name}: {'rejected' if reject else 'approved'}"))
            return 0

    raise typer.Exit(asyncio.run(go()))


async def resume_with_input(client, run_id, run_input: dict, wait: float = 15.0) -> str | None:
    """Resume a paused run with its form's answer; None if accepted, else the server's reason.

    A run pauses first and saves its form's schema just after, so an answer sent in between is
    refused with "Run input schema not found" and the run stays paused: that one is retried.
    """
    import asyncio
    import time

    from prefect.exceptions import PrefectHTTPStatusError

    deadline = time.monotonic() + wait
    while True:
        try:
            result = await client.resume_flow_run(run_id, run_input=run_input)
        except PrefectHTTPStatusError as e:  # the proxy's refusal (403) says why
            return f"HTTP {e.response.status_code}: {e.response.text[:300]}"
        if result.status.value == "ACCEPT":
            return None
        reason = getattr(result.details, "reason", None) or result.status.value
        if "schema not found" not in reason or time.monotonic() > deadline:
            return reason
        await asyncio.sleep(0.5)


@app.command("history")
def history(
    name: str = typer.Argument(None, help="only this flow"),
    limit: int = typer.Option(20, "--limit", min=1, max=500),
    as_json: bool = typer.Option(False, "--json", help="one object per run, for tools"),
) -> None:
    """Recent runs: their outcome, who created them and who approved or rejected them (as the
    proxy recorded it), and the summary line of their report."""
    from dwops.settings import use_project_prefect

    use_project_prefect()
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (FlowFilter, FlowFilterName, FlowRunFilter,
                                                FlowRunFilterState, FlowRunFilterStateType)
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    async def go() -> list[dict]:
        async with get_client() as client:
            flow_filter = FlowFilter(name=FlowFilterName(any_=[name])) if name else None
            happened = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                not_any_=[StateType.SCHEDULED])))
            runs = await client.read_flow_runs(flow_filter=flow_filter, flow_run_filter=happened,
                                               sort=FlowRunSort.START_TIME_DESC, limit=limit)
            flows = {f.id: f.name for f in await client.read_flows()}
            return [{"started": run.start_time.strftime("%Y-%m-%d %H:%M:%S")
                     if run.start_time else "-",
                     "flow": flows.get(run.flow_id, "?"), "run": run.name, "id": str(run.id),
                     "state": run.state.name if run.state else "-",
                     "created_by": created_by(run), "decided_by": decided_by(run),
                     "report": await _summary_of(client, run) or ""} for run in runs]

    rows = asyncio.run(go())
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = Table(title="dwops history")
    columns = ("started", "flow", "run", "state", "created_by", "decided_by", "report")
    for col in columns:
        table.add_column(col.replace("_", " "))
    for row in rows:
        table.add_row(*(escape(row[col]) for col in columns))
    console.print(table)


def created_by(run) -> str:
    """Who created a run, as the proxy recorded it: an account, a schedule or an automation."""
    from dwops.policy import CREATED_BY

    account = next((t[len(CREATED_BY):] for t in run.tags if t.startswith(CREATED_BY)), None)
    if account:
        return account
    if run.created_by is not None and run.created_by.type == "AUTOMATION":
        return f"automation: {run.created_by.display_value}"
    if "auto-scheduled" in run.tags:
        return "schedule"
    return "-"


def decided_by(run) -> str:
    """Who approved or rejected a run's emergency path, as the proxy recorded it."""
    from dwops.policy import APPROVED_BY, REJECTED_BY

    for prefix, word in ((APPROVED_BY, "approved"), (REJECTED_BY, "rejected")):
        who = next((t[len(prefix):] for t in run.tags if t.startswith(prefix)), None)
        if who:
            return f"{word}: {who}"
    return ""


@inventory_app.command("allowlist")
def inventory_allowlist(
    host: str = typer.Argument(..., help="a host of the inventory"),
    inventory: str = typer.Option("lab", "--inventory", "-i",
                                  help="lab, production, or the path of an inventory file"),
) -> None:
    """Print HOST's allowlist: the only commands dwops's SSH key may run there, for its gate
    (dwops/allowlist.py, the key's forced command in authorized_keys). Exit 2 on a bad inventory
    or an unknown host."""
    from dwops.allowlist import BadAllowlist
    from dwops.inventory import PATHS_ALLOWED, InventoryError, resolve_inventory

    os.environ[PATHS_ALLOWED] = "allow"  # the operator's own machine, as in `dwops status`
    try:
        text = resolve_inventory(inventory).allowlist(host)
    except (InventoryError, KeyError, BadAllowlist) as e:
        err.print(f"[red]{escape(str(e.args[0] if isinstance(e, KeyError) else e))}[/]")
        raise typer.Exit(2) from None
    sys.stdout.write(text)


@app.command("flows")
def list_flows() -> None:
    """The runbook flows this project has."""
    from flows import FLOWS

    for name in FLOWS:
        console.print(name)


if __name__ == "__main__":
    app()
