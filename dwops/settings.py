"""Process-wide settings dwops applies before Prefect is imported."""

from __future__ import annotations

import os


def use_project_prefect() -> None:
    """Keep Prefect's state in the project's state folder and its traffic on this machine.

    Only fills in what the caller has not set: an operator's own PREFECT_HOME or PREFECT_API_URL
    wins. Analytics are off: a Prefect server here never calls out.
    """
    from lab.config import state_dir

    os.environ.setdefault("PREFECT_HOME", str(state_dir() / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_API_HOST", "127.0.0.1")
