"""The `dwops` command line."""

from __future__ import annotations

import json
import sys

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Dreamwidth's production runbook as Prefect flows.", no_args_is_help=True)
lab_app = typer.Typer(help="The lab: the production fleet replicated on this machine.",
                      no_args_is_help=True)
app.add_typer(lab_app, name="lab")

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
    from dwops.inventory import InventoryError
    from flows.fleet_status import FleetCritical, FleetStatusParams, fleet_status

    try:
        params = FleetStatusParams(inventory=inventory)
        import asyncio

        state = asyncio.run(fleet_status(params, return_state=True))
        outcome = state.result(raise_on_failure=False)
    except InventoryError as e:
        err.print(f"[red]{e}[/]")
        raise typer.Exit(2) from None
    if isinstance(outcome, FleetCritical):
        report = outcome.report.as_dict()
    elif isinstance(outcome, BaseException):
        err.print(f"[red]fleet-status failed:[/] {outcome}")
        raise typer.Exit(2)
    else:
        report = outcome
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n")
    else:
        table = Table(title=f"fleet status: {report['inventory']}")
        for col in ("verdict", "system", "host", "reason"):
            table.add_column(col)
        order = {"CRIT": 0, "WARN": 1, "OK": 2}
        for c in sorted(report["checks"], key=lambda c: (order[c["verdict"]], c["system"], c["host"])):
            v = c["verdict"]
            table.add_row(f"[{VERDICT_STYLE[v]}]{v}[/]", c["system"], c["host"], c["reason"])
        console.print(table)
        n = report["counts"]
        console.print(f"{report['verdict']}: {n['OK']} ok, {n['WARN']} warn, {n['CRIT']} crit "
                      f"in {report['seconds']} s")
    if report["verdict"] == "CRIT":
        raise typer.Exit(1)


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
                                 help="explicitly approve an emergency path from the command line"),
    as_json: bool = typer.Option(False, "--json", help="print the run's report as JSON"),
) -> None:
    """Run a runbook flow here and now; exit 1 if it fails or halts, 2 on bad parameters."""
    from dwops.settings import use_project_prefect

    use_project_prefect()
    import asyncio

    from pydantic import ValidationError

    from flows import load_flow

    try:
        flow, model = load_flow(name)
    except KeyError as e:
        err.print(f"[red]{e.args[0]}[/]")
        raise typer.Exit(2) from None
    values = parse_assignments(param)
    if inventory:
        values["inventory"] = inventory
    if approve:
        if "emergency_approved" not in model.model_fields:
            err.print(f"[red]{name} has no emergency path to approve[/]")
            raise typer.Exit(2)
        values["emergency_approved"] = True
    try:
        params = model(**values)
    except ValidationError as e:
        err.print(f"[red]bad parameters for {name}:[/]")
        for problem in e.errors():
            where = ".".join(str(p) for p in problem["loc"]) or "(parameters)"
            err.print(f"  {where}: {problem['msg']}")
        raise typer.Exit(2) from None
    state = asyncio.run(flow(params, return_state=True))
    outcome = state.result(raise_on_failure=False)
    report = getattr(outcome, "report", None)
    data = report.as_dict() if report is not None else outcome
    if as_json and not isinstance(data, BaseException):
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    elif isinstance(data, dict) and "summary" in data:
        console.print(data["summary"])
    if state.is_completed():
        return
    err.print(f"[red]{name} {state.name.lower()}:[/] {outcome}")
    raise typer.Exit(1)


@app.command("flows")
def list_flows() -> None:
    """The runbook flows this project has."""
    from flows import FLOWS

    for name in FLOWS:
        console.print(name)


if __name__ == "__main__":
    app()
