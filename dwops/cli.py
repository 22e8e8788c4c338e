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


if __name__ == "__main__":
    app()
