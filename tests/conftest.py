"""Fixtures for tests that run against the real lab (`dwops lab up`; `scripts/test` brings it up).

No test here mocks SSH, memcached, MySQL, gearman or the lock daemon: they talk to the lab's real
servers. A missing lab is an error, not a skip.
"""

from __future__ import annotations

import pytest

from dwops.inventory import Inventory, resolve_inventory
from lab.config import LabConfig


@pytest.fixture(scope="session")
def lab() -> LabConfig:
    """The running lab's configuration; fails (never skips) when the lab is not up."""
    from lab import fleet

    try:
        st = fleet.wait_until_up(timeout=30)  # a service a test is restarting comes back
    except FileNotFoundError as e:
        pytest.fail(f"{e}: run scripts/test (or `dwops lab up`) first", pytrace=False)
    down = [f"{s['name']}@{s['host']}" for s in st["services"] if not s["up"]]
    if down:
        pytest.fail(f"the lab is not fully up: {', '.join(down)} down", pytrace=False)
    return LabConfig.load()


@pytest.fixture(scope="session")
def lab_inventory(lab: LabConfig) -> Inventory:
    """The lab's inventory, loaded through the same loader as production's."""
    return resolve_inventory("lab")
