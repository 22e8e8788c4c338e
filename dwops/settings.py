"""Process-wide settings dwops applies before Prefect is imported."""

from __future__ import annotations

import os


def use_project_prefect(connect_to_running: bool = True) -> None:
    """Keep Prefect's state in the project's state folder and its traffic on this machine.

    With `connect_to_running`, a Prefect server that `dwops up` started is used (with its
    credential from the state folder). Only fills in what the caller has not set: an operator's
    own PREFECT_HOME or PREFECT_API_URL wins. Analytics are off: nothing here ever calls out.
    """
    from dwops import platform

    os.environ.setdefault("PREFECT_HOME", str(platform.home()))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_API_HOST", "127.0.0.1")
    if connect_to_running and "PREFECT_API_URL" not in os.environ:
        from lab import procs

        cred = platform.credential()
        if cred and procs.read_pid(platform.home() / "server.pid"):
            os.environ["PREFECT_API_URL"] = platform.api_url()
            os.environ.setdefault("PREFECT_API_AUTH_STRING", cred)
