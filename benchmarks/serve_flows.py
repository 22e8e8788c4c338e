"""The alternative set-up measured by benchmarks/trigger.py: Prefect's `serve()` (its Runner, in
this process) serving the flows of prefect.yaml under the same deployment names, with the same
descriptions, tags, parameter schemas and concurrency limits (CANCEL_NEW). Schedules are left
out (the benchmark's platform has them off). Run by the benchmark, never by dwops itself:

    PREFECT_API_URL=... PREFECT_API_AUTH_STRING=... PREFECT_RUNNER_POLL_FREQUENCY=1 \\
        python -m benchmarks.serve_flows

serve() starts each run as `python -m prefect.engine` in a subprocess, as the process worker
does. (`flow.serve()`/`Runner.add_flow`, which keeps the flow in memory and spawns it, serves one
flow per process and fails these flows: their parameter models do not rebuild in the spawned
child, "`Fleet_StatusModel` is not fully defined".)
"""

from __future__ import annotations

import importlib
from pathlib import Path

import yaml
from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

PROJECT = Path(__file__).resolve().parents[1]


def deployments() -> list:
    spec = yaml.safe_load((PROJECT / "prefect.yaml").read_text())
    out = []
    for d in spec["deployments"]:
        module, _, name = d["entrypoint"].partition(":")
        flow = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), name)
        limit = d.get("concurrency_limit")
        out.append(flow.to_deployment(
            name=d["name"], description=d.get("description"), tags=d.get("tags"),
            enforce_parameter_schema=d.get("enforce_parameter_schema", True),
            concurrency_limit=ConcurrencyLimitConfig(
                limit=limit["limit"],
                collision_strategy=ConcurrencyLimitStrategy(limit["collision_strategy"]))
            if limit else None))
    return out


if __name__ == "__main__":
    serve(*deployments(), print_starting_message=False, pause_on_shutdown=False)
