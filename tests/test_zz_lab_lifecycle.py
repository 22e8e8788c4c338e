"""`dwops lab up` twice is harmless; `dwops lab down` leaves nothing running; up again restores it.

Runs last (file name) because it takes the lab down and brings it back.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from pathlib import Path

from lab import mail, procs
from lab.config import LabConfig

PROJECT = Path(__file__).resolve().parent.parent


def dwops(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dwops.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=PROJECT)


def lab_listeners(lab: LabConfig) -> list[str]:
    """Listening TCP sockets on any lab address, read from /proc/net/tcp."""
    addresses = {h.address for h in lab.hosts} | {lab.db.address, lab.aws.address}
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state = fields[1], fields[3]
        if state != "0A":
            continue
        hex_ip, hex_port = local.split(":")
        ip = str(ipaddress.IPv4Address(bytes(reversed(bytes.fromhex(hex_ip)))))
        if ip in addresses:
            found.append(f"{ip}:{int(hex_port, 16)}")
    return found


def pids(st: dict) -> dict[str, int]:
    return {f"{s['name']}@{s['host']}": s["pid"] for s in st["services"]}


def test_up_twice_is_harmless_down_leaves_nothing_and_up_restores(lab: LabConfig):
    before = json.loads(dwops("lab", "status", "--json").stdout)
    queued = len(mail.postqueue(lab, "-j").splitlines())

    again = dwops("lab", "up")
    assert again.returncode == 0, again.stderr
    after = json.loads(dwops("lab", "status", "--json").stdout)
    assert pids(after) == pids(before)  # nothing restarted, nothing duplicated
    assert len(mail.postqueue(lab, "-j").splitlines()) == queued >= 5  # mail not seeded twice

    down = dwops("lab", "down")
    assert down.returncode == 0, down.stderr
    assert procs.processes_under(str(lab.lab_dir)) == []
    assert lab_listeners(lab) == []
    for pid in pids(before).values():
        assert not procs.pid_alive(pid)
    st = json.loads(dwops("lab", "status", "--json").stdout)
    assert not any(s["up"] for s in st["services"])

    up = dwops("lab", "up")
    assert up.returncode == 0, up.stderr
    st = json.loads(dwops("lab", "status", "--json").stdout)
    assert st["all_up"], [s for s in st["services"] if not s["up"]]
