"""The runbook flows, one per file; file, function and deployment share a name.

`FLOWS` maps each flow's name to its module: `dwops run NAME` and the deployments use it.
"""

FLOWS: dict[str, str] = {
    "fleet-status": "flows.fleet_status",
    "restart-workers": "flows.restart_workers",
    "restart-webs": "flows.restart_webs",
    "restart-memcache": "flows.restart_memcache",
    "ensure-gearman": "flows.ensure_gearman",
    "ensure-ddlockd": "flows.ensure_ddlockd",
    "block-address": "flows.block_address",
    "purge-cdn": "flows.purge_cdn",
}


def load_flow(name: str):
    """(flow object, its parameters model) for a flow name."""
    import importlib
    import typing

    if name not in FLOWS:
        raise KeyError(f"no flow {name!r} (flows: {', '.join(FLOWS)})")
    module = importlib.import_module(FLOWS[name])
    flow = getattr(module, name.replace("-", "_"))
    params_model = typing.get_type_hints(flow.fn)["params"]
    return flow, params_model
