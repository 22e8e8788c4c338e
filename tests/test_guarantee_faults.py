"""Promise: faults halt the roll, not the site.

restart-webs meets a real fault at one web, in the middle of a roll, on the running lab under its
user traffic:

- the host unreachable: its SSH port drops every packet (an iptables DROP rule), so connecting
  hangs until the inventory's SSH connect timeout;
- a restart that fails: its init script exits 1 (the lab's `faults/restart-fails` switch, a
  failed configuration test that leaves the running server alone);
- a web that never turns healthy: it restarts with a broken database setting (the lab's
  `faults/unhealthy` switch) and its /admin/healthy says status=fail;
- an AWS call that errors: the moto ALB's RegisterTargets call for that web is cut off (an
  iptables rule resets the connection carrying it), so the web cannot be put back.

(An SSH server killed outright is test_flow_restart_webs.py's
test_a_web_unreachable_over_ssh_halts_the_roll_and_stays_out.)

In every case the run halts at that web and exits 1; its report names the web and the fault; the
webs before it are restarted and back, the webs after it keep their pids and stay in the ALB; the
failed web is out of the target group (and was never put back while it could not be trusted);
no user request fails. Then the fault is fixed and the same run again, naming the web left out
in `put_back` as the refusal of a plain re-run says, finishes the job: the failed web restarted
first and put back once status=ok, then the others, and every web registered and healthy.

Ground truth is the lab's: pidfiles, the moto ALB's target group (sampled every 50 ms while a
run goes on), the webs' /admin/healthy, the traffic generator's counters. Every test removes its
fault and puts every web back into the ALB in its old order, whatever happens.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from dwops.inventory import Inventory
from lab import ctl
from lab.config import LabConfig
from test_flow_restart_webs import (CapacitySampler, all_in_rotation, failures, outcome_of, pid,
                                    put_back, registered, restart_readings, running_traffic,
                                    wait_for, webs)
from test_lab_web import http_get

DELAY = 0.5
HEALTHY_TIMEOUT = 5  # the flow's wait for status=ok after a restart, in the unhealthy case


# -- faults ---------------------------------------------------------------------------------------


@dataclass
class Rule:
    """An iptables rule at the top of the INPUT chain (every loopback packet passes it)."""

    spec: tuple[str, ...]
    on: bool = False

    def add(self) -> None:
        if shutil.which("iptables") is None:
            pytest.fail("iptables is missing (Debian package iptables)", pytrace=False)
        _iptables("-I", "INPUT", *self.spec)
        self.on = True

    def delete(self) -> None:
        if self.on:
            _iptables("-D", "INPUT", *self.spec)
            self.on = False


def _iptables(*args: str) -> None:
    done = subprocess.run(["iptables", "-w", "5", *args], capture_output=True, text=True)
    assert done.returncode == 0, f"iptables {' '.join(args)}: {done.stderr.strip()}"


def switch_on(lab: LabConfig, host: str, name: str) -> None:
    path = lab.fault_switch(host, name)
    path.parent.mkdir(exist_ok=True)
    path.write_text("set by tests/test_guarantee_faults.py\n")


def switch_off(lab: LabConfig, host: str, name: str) -> None:
    path = lab.fault_switch(host, name)
    path.unlink(missing_ok=True)
    if path.parent.exists() and not any(path.parent.iterdir()):
        path.parent.rmdir()


def moto_connections(lab: LabConfig) -> tuple[set[str], set[str]]:
    """(the moto server's established connections by peer address, the clients' local addresses
    of connections to it). A server connection whose peer is not a client is orphaned."""
    def column(*query: str) -> set[str]:
        out = subprocess.run(["ss", "-Htn", "state", "established", *query], capture_output=True,
                             text=True, check=True).stdout
        return {line.split()[-1 if query[0] == "src" else -2] for line in out.splitlines() if line}

    port = f":{lab.ports.moto}"
    servers = column("src", lab.aws.address, "sport", "=", port)
    clients = column("dst", lab.aws.address, "dport", "=", port)
    return servers, clients


def close_orphaned_moto_connections(lab: LabConfig, known: set[str]) -> None:
    """The RST that cut a call off went to the client only: moto still waits on that connection.
    Close the ones whose client is gone (and that were not there before)."""
    servers, clients = moto_connections(lab)
    for peer in servers - clients - known:
        address, port = peer.rsplit(":", 1)
        subprocess.run(["ss", "-K", "-tn", "src", lab.aws.address, "sport", "=",
                        f":{lab.ports.moto}", "dst", address, "dport", "=", f":{port}"],
                       capture_output=True, check=True)


# -- watching and restoring the lab ------------------------------------------------------------


def health(lab: LabConfig, host: str) -> str:
    status, _, body = http_get(lab, lab.host(host), "/admin/healthy")
    assert status == 200, (host, status, body)
    return body


def healed(lab: LabConfig, hosts: list[str]) -> None:
    """Restart (the way the init script does) every web of `hosts` that does not say status=ok:
    only after the faults are removed, so that no sick web is put back into the ALB."""
    for h in hosts:
        try:
            ok = health(lab, h).startswith("status=ok")
        except (OSError, AssertionError):
            ok = False
        if not ok:
            ctl.restart(lab, "apache2", h)
            wait_for(lambda: health(lab, h).startswith("status=ok"), 15, f"{h} status=ok")


@contextmanager
def fault_on(lab: LabConfig, hosts: list[str], remove: Callable[[], None]) -> Iterator[list[str]]:
    """Around a test that breaks something (yields the ALB's order). Whatever happens, on the way
    out: the fault removed (`remove` may run twice), a web left sick restarted, every web back in
    the ALB in its old order. And, if the test got that far: not one user request failed."""
    order = all_in_rotation(lab)
    users = running_traffic(lab)
    try:
        yield order
    finally:
        remove()
        healed(lab, hosts)
        put_back(lab, order)
    time.sleep(1.5)  # the counters are written every second
    after = running_traffic(lab)
    assert failures(after) == failures(users), (failures(users), failures(after))


# -- one roll, with a fault at one web -----------------------------------------------------------


@dataclass
class Roll:
    rc: int
    report: dict[str, Any]
    err: str
    seconds: float
    pids_before: dict[str, int | None]
    pids_after: dict[str, int | None]
    alb: dict[str, str]
    samples: list[tuple[float, dict[str, str]]]


def roll(lab: LabConfig, dwops_run, hosts: list[str], *params: str) -> Roll:
    """restart-webs on `hosts`, `DELAY` s apart, with the ALB watched while it runs."""
    pids_before = {h: pid(lab, h) for h in webs(lab)}
    watch = CapacitySampler(lab)
    watch.start()
    started = time.monotonic()
    try:
        rc, report, err = dwops_run("restart-webs", f"hosts={json.dumps(hosts)}",
                                    f"delay={DELAY}", *params)
    finally:
        seconds = time.monotonic() - started
        watch.stop()
    assert not watch.errors, watch.errors[:3]
    assert report is not None, err[-3000:]
    return Roll(rc, report, err, seconds, pids_before, {h: pid(lab, h) for h in webs(lab)},
                dict(registered(lab)), watch.samples)


def assert_halted_at(lab: LabConfig, r: Roll, hosts: list[str], bad: str, phase: str, said: str,
                     restarted: bool) -> dict[str, Any]:
    """The run stopped at `bad` (failed at `phase`; the report's halt line and `bad`'s result
    both say `said`), leaving it out of the target group; the webs before it are done, the ones
    after it untouched. Returns `bad`'s result."""
    assert r.rc == 1, r.err[-3000:]
    n = hosts.index(bad)
    result = {x["host"]: x for x in r.report["results"]}
    assert [(h, result[h]["outcome"]) for h in hosts] == (
        [(h, "done") for h in hosts[:n]] + [(bad, "failed")]
        + [(h, "not reached") for h in hosts[n + 1:]])
    halted = r.report["halted"]
    assert halted.startswith(f"{bad} failed at {phase} (") and halted.endswith(
        f", left OUT of target group {lab.aws.target_group}"), halted
    assert said in halted and said in result[bad]["detail"], result[bad]["detail"]
    assert "OUT of target group" in result[bad]["detail"], result[bad]["detail"]
    assert restart_readings(r.report)[bad]["in_target_group"] is False
    assert outcome_of(r.report) == {"done": hosts[:n], "failed": [bad],
                                    "not_reached": hosts[n + 1:], "out_of_target_group": [bad]}

    # The lab agrees. The webs before it: new processes, back in and healthy. The failed one: out
    # of the target group, a new process only if it was restarted. Every other web: untouched.
    for h in hosts[:n]:
        assert r.pids_after[h] not in (None, r.pids_before[h]), h
    assert r.pids_after[bad] is not None
    assert (r.pids_after[bad] != r.pids_before[bad]) is restarted, (
        r.pids_before[bad], r.pids_after[bad])
    untouched = [h for h in webs(lab) if h not in hosts[:n + 1]]
    assert {h: r.pids_after[h] for h in untouched} == {h: r.pids_before[h] for h in untouched}
    assert bad not in r.alb
    assert all(r.alb.get(h) == "healthy" for h in webs(lab) if h != bad), r.alb

    # Once out, the failed web never came back while the run went on; the webs after it never left.
    out = next(i for i, (_, s) in enumerate(r.samples) if bad not in s)
    assert all(bad not in s for _, s in r.samples[out:]), "the failed web was put back"
    assert all(h in s for _, s in r.samples for h in hosts[n + 1:]), "a later web left the ALB"
    assert r.samples[-1][1] == r.alb
    return result[bad]


def rerun(lab: LabConfig, dwops_run, hosts: list[str], bad: str, *params: str) -> Roll:
    """After the fault is fixed: the same restart again, naming the web the halted run left out
    in `put_back` (the report's "check it, then ... put_back"). It restarts that web first and
    puts it back once status=ok, then the others: the job is finished."""
    again = roll(lab, dwops_run, hosts, f'put_back=["{bad}"]', *params)
    assert again.rc == 0, again.err[-3000:]
    assert again.report["halted"] is None
    assert [(x["host"], x["outcome"]) for x in again.report["results"]] == [
        (h, "done") for h in [bad] + [h for h in hosts if h != bad]]
    for h in hosts:  # the previously failed web among them
        assert again.pids_after[h] not in (None, again.pids_before[h]), h
    others = [h for h in webs(lab) if h not in hosts]
    assert {h: again.pids_after[h] for h in others} == {h: again.pids_before[h] for h in others}
    assert sorted(again.alb) == webs(lab) and set(again.alb.values()) == {"healthy"}, again.alb
    assert all(health(lab, h).startswith("status=ok\n") for h in webs(lab))
    # Capacity never went below five of six: the web put back was already out.
    assert min(sum(v == "healthy" for v in s.values()) for _, s in again.samples) >= 5
    return again


def figures(fault: str, r: Roll, bad: str, again: Roll) -> None:
    """The measured figures, printed for the record (pytest -s, or on failure)."""
    result = next(x for x in r.report["results"] if x["host"] == bad)
    print(f"\n{fault}: halted at {bad} after {result['seconds']:.1f} s of its cycle "
          f"(run {r.seconds:.1f} s): {r.report['halted']}\n"
          f"{fault}: re-run {again.report['summary']} in {again.seconds:.1f} s")


# -- the faults -----------------------------------------------------------------------------------


def test_a_host_unreachable_times_out_and_halts_the_roll(lab: LabConfig, dwops_run,
                                                         lab_inventory: Inventory):
    hosts, bad = ["va-web01", "va-web02", "va-web03"], "va-web02"
    # Packets to its SSH port vanish: a connection neither opens nor is refused.
    rule = Rule(("-d", lab.host(bad).address, "-p", "tcp", "--dport", str(lab.ports.ssh),
                 "-j", "DROP"))
    with fault_on(lab, hosts, rule.delete):
        rule.add()
        r = roll(lab, dwops_run, hosts)
        result = assert_halted_at(
            lab, r, hosts, bad, "ssh", restarted=False,
            said=(f"cannot reach it over SSH, restart not run: {bad}: cannot connect to "
                  f"{lab.host(bad).address}:{lab.ports.ssh}: TimeoutError"))
        # It waited for the connect timeout (a read is tried twice), and no longer.
        timeout = lab_inventory.ssh.connect_timeout
        assert timeout <= result["seconds"] <= 2 * timeout + 3, result["seconds"]

        rule.delete()
        again = rerun(lab, dwops_run, hosts, bad)
    figures("host unreachable", r, bad, again)


def test_a_restart_command_that_fails_halts_the_roll(lab: LabConfig, dwops_run):
    hosts, bad = ["va-web02", "va-web03", "va-web04"], "va-web03"
    with fault_on(lab, hosts, lambda: switch_off(lab, bad, "restart-fails")):
        switch_on(lab, bad, "restart-fails")
        r = roll(lab, dwops_run, hosts)
        assert_halted_at(lab, r, hosts, bad, "restart", restarted=False,
                         said=(f"web.restart exited 1: apache2 on {bad}: the configuration test "
                               f"failed ({lab.fault_switch(bad, 'restart-fails')}): not "
                               f"restarting."))
        assert restart_readings(r.report)[bad]["exit_status"] == 1
        assert health(lab, bad).startswith("status=ok\n")  # its old process, out of the ALB

        switch_off(lab, bad, "restart-fails")
        # The next run sees the web left out and refuses, saying how to finish: nothing changes.
        seen = roll(lab, dwops_run, hosts)
        assert seen.rc == 1 and seen.pids_after == seen.pids_before
        assert f"not in rotation: {bad} " in seen.report["halted"], seen.report["halted"]
        assert f"run again with put_back=['{bad}']" in seen.report["halted"]
        again = rerun(lab, dwops_run, hosts, bad)
    figures("restart fails", r, bad, again)


def test_a_web_that_never_turns_healthy_halts_the_roll_and_stays_out(lab: LabConfig, dwops_run):
    hosts, bad = ["va-web03", "va-web04", "va-web05"], "va-web04"
    with fault_on(lab, hosts, lambda: switch_off(lab, bad, "unhealthy")):
        switch_on(lab, bad, "unhealthy")  # read by the web when it starts: the running one is fine
        r = roll(lab, dwops_run, hosts, f"healthy_timeout={HEALTHY_TIMEOUT}")
        result = assert_halted_at(
            lab, r, hosts, bad, "status=ok", restarted=True,
            said=(f"/admin/healthy not status=ok within {HEALTHY_TIMEOUT} s: status=fail: "
                  f"global writer unreachable, schwartz 0 unreachable"))
        readings = restart_readings(r.report)[bad]
        assert "registered_at" not in readings  # never put back
        assert readings["health"]["failures"] == ["global writer unreachable",
                                                  "schwartz 0 unreachable"]
        # It gave up after healthy_timeout, counted from the end of web.restart.
        waited = result["seconds"] - (readings["restart_finished_at"] - readings["deregistered_at"])
        assert HEALTHY_TIMEOUT <= waited <= HEALTHY_TIMEOUT + 2, waited
        assert health(lab, bad).startswith("status=fail\n")  # still sick, and out of the ALB

        # The fix: the setting repaired; the re-run restarts the web and puts it back once ok.
        switch_off(lab, bad, "unhealthy")
        again = rerun(lab, dwops_run, hosts, bad, f"healthy_timeout={HEALTHY_TIMEOUT}")
    figures("never healthy", r, bad, again)


def test_an_aws_call_that_errors_halts_the_roll_and_leaves_the_web_out(lab: LabConfig, dwops_run):
    hosts, bad = ["va-web04", "va-web05", "va-web06"], "va-web05"
    known, _ = moto_connections(lab)
    # The ALB's RegisterTargets for this web (and only that call) gets its connection reset.
    rule = Rule(("-d", lab.aws.address, "-p", "tcp", "--dport", str(lab.ports.moto),
                 "-m", "string", "--algo", "bm", "--string", "Action=RegisterTargets",
                 "-m", "string", "--algo", "bm", "--string", f"Id={lab.host(bad).address}&",
                 "-j", "REJECT", "--reject-with", "tcp-reset"))

    def fix() -> None:
        rule.delete()
        close_orphaned_moto_connections(lab, known)

    with fault_on(lab, hosts, fix):
        rule.add()
        r = roll(lab, dwops_run, hosts)
        assert_halted_at(lab, r, hosts, bad, "back into the target group", restarted=True,
                         said=("register failed: aws elbv2: unavailable: ConnectionClosedError: "
                               "Connection was closed before we received a valid response from "
                               f"endpoint URL: \"{lab.aws_endpoint_url}/\"."))
        readings = restart_readings(r.report)[bad]
        assert "status_ok_at" in readings and "registered_at" not in readings
        assert health(lab, bad).startswith("status=ok\n")  # restarted and well, but out

        fix()
        servers, clients = moto_connections(lab)
        assert not servers - clients - known, "moto still waits on the connections cut off"
        again = rerun(lab, dwops_run, hosts, bad)
    figures("AWS call errors", r, bad, again)
