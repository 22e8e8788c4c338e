"""restart-webs on the lab, under the lab's own user traffic.

Ground truth is the lab's: the traffic generator's counters (counters/traffic.json, every request
a user would have sent through the ALB, failed or not), the webs' pidfiles, the moto ALB's target
group and the hosts' sshd logs. Every test puts back what it changed: webs registered again (in
their old order), sshd started again.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from flows.restart_webs import RestartWebsParams
from lab import ctl, procs, services
from lab.config import LabConfig
from lab.traffic import parse_target_health, read_aws_credentials, read_traffic
from test_lab_web import wait_for

DELAY = 1.0
DEFAULT_DELAY = RestartWebsParams.model_fields["delay"].default  # the notes' 5 s


# -- the lab's ground truth ---------------------------------------------------------------------


def webs(lab: LabConfig) -> list[str]:
    return [h.name for h in lab.hosts_with("web")]


def pid(lab: LabConfig, host: str) -> int | None:
    return procs.read_pid(services.find(lab, "apache2", host).pidfile)


def elbv2(lab: LabConfig):  # noqa: ANN201 - a boto3 client of the moto ALB
    return boto3.client("elbv2", endpoint_url=lab.aws_endpoint_url, region_name=lab.aws.region,
                        config=Config(connect_timeout=2, read_timeout=5,
                                      retries={"max_attempts": 2, "mode": "standard"}),
                        **read_aws_credentials(lab.aws.credentials_file))


def registered(lab: LabConfig, elb=None) -> list[tuple[str, str]]:
    """The target group's targets in the ALB's order: (host, state)."""
    host_of = {h.address: h.name for h in lab.hosts}
    reply = (elb or elbv2(lab)).describe_target_health(TargetGroupArn=lab.aws.target_group_arn)
    return [(t.host, t.state) for t in parse_target_health(reply, host_of)]


def running_traffic(lab: LabConfig) -> dict[str, Any]:
    """The traffic generator's counters; fails unless it is running and writing them."""
    counters = read_traffic(lab)
    assert counters.get("running"), f"the lab's traffic generator is not running: {counters}"
    assert time.time() - counters.get("updated", 0) < 3, "the traffic counters are stale"
    return counters


def failures(counters: dict[str, Any]) -> dict[str, int]:
    return {**{h: w["failures"] for h, w in counters["webs"].items()},
            "all": counters["totals"]["failures"]}


def ssh_logins(lab: LabConfig) -> dict[str, int]:
    """Accepted SSH logins so far, per web (its sshd's log)."""
    out = {}
    for h in webs(lab):
        log = Path(services.find(lab, "sshd", h).logfile)
        out[h] = log.read_text(errors="replace").count("Accepted publickey") if log.exists() else 0
    return out


def put_back(lab: LabConfig, order: list[str]) -> None:
    """Register every web of `order` again and restore the ALB's order, one web at a time (a
    target registered again goes last; moving one out and straight back loses no request)."""
    elb = elbv2(lab)
    tg, port = lab.aws.target_group_arn, lab.ports.web
    address = {h.name: h.address for h in lab.hosts}
    now = [h for h, _ in registered(lab, elb)]
    for h in order:
        if h not in now:
            elb.register_targets(TargetGroupArn=tg, Targets=[{"Id": address[h], "Port": port}])
    now = [h for h, _ in registered(lab, elb)]
    keep = 1  # the longest head of `order` already in that order stays; the rest moves last
    while keep < len(order) and now.index(order[keep]) > now.index(order[keep - 1]):
        keep += 1
    for h in order[keep:]:
        target = [{"Id": address[h], "Port": port}]
        elb.deregister_targets(TargetGroupArn=tg, Targets=target)
        elb.register_targets(TargetGroupArn=tg, Targets=target)
    assert [h for h, _ in registered(lab, elb)] == order


class CapacitySampler(threading.Thread):
    """Counts the healthy targets of the ALB every 50 ms while a flow runs (and keeps every
    reading: when, and each registered web's state)."""

    def __init__(self, lab: LabConfig) -> None:
        super().__init__(daemon=True)
        self.elb = elbv2(lab)
        self.lab = lab
        self.counts: list[int] = []
        self.samples: list[tuple[float, dict[str, str]]] = []
        self.errors: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                states = registered(self.lab, self.elb)
                self.counts.append(sum(1 for _, s in states if s == "healthy"))
                self.samples.append((time.time(), dict(states)))
            except Exception as e:  # noqa: BLE001 - kept and asserted on
                self.errors.append(repr(e))
            self.halt.wait(0.05)

    def stop(self) -> None:
        self.halt.set()
        self.join(10)


def restart_readings(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["what"].split(":")[0]: r["figures"] for r in report["readings"]
            if r["what"].endswith(": restart")}


def outcome_of(report: dict[str, Any]) -> dict[str, Any]:
    return next(r["figures"] for r in report["readings"] if r["what"] == "outcome")


def latest_artifact(api: str, key: str) -> str:
    body = json.dumps({"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC",
                       "limit": 1}).encode()
    req = urllib.request.Request(f"{api}/artifacts/filter", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        found = json.load(r)
    assert found, f"no artifact {key!r}"
    return found[0]["data"]


def all_in_rotation(lab: LabConfig) -> list[str]:
    """The ALB's order, after checking every web is registered and healthy."""
    wait_for(lambda: sorted(h for h, s in registered(lab) if s == "healthy") == webs(lab), 10,
             "every web healthy in the ALB")
    return [h for h, _ in registered(lab)]


# -- the tests ------------------------------------------------------------------------------------


def test_a_roll_under_traffic_loses_no_request_one_web_at_a_time(lab: LabConfig, dwops_run):
    order = all_in_rotation(lab)
    pids = {h: pid(lab, h) for h in webs(lab)}
    before = running_traffic(lab)
    sampler = CapacitySampler(lab)
    sampler.start()
    try:
        rc, report, err = dwops_run("restart-webs", "reason=test: a full roll")  # default delay
    finally:
        sampler.stop()
        put_back(lab, order)
    time.sleep(2.5)  # the counters are written every second; the last web gets traffic again
    after = running_traffic(lab)

    assert rc == 0, err[-3000:]
    assert report["halted"] is None
    assert [(r["host"], r["outcome"]) for r in report["results"]] == [
        (h, "done") for h in webs(lab)]

    # Every web is a new process; the report says which, and what it was before.
    readings = restart_readings(report)
    for h in webs(lab):
        assert pid(lab, h) not in (None, pids[h]), h
        assert (readings[h]["pid_before"], readings[h]["pid_after"]) == (pids[h], pid(lab, h))

    # One at a time, in the planned order, `delay` s between one web back and the next out.
    times = [readings[h] for h in webs(lab)]
    for prev, nxt in zip(times, times[1:]):
        assert nxt["deregistered_at"] - prev["alb_healthy_at"] >= DEFAULT_DELAY - 0.01, (prev, nxt)
        assert nxt["restart_started_at"] - prev["restart_finished_at"] >= DEFAULT_DELAY
    for t in times:
        assert (t["deregistered_at"] <= t["drained_at"] <= t["restart_started_at"]
                < t["restart_finished_at"] <= t["status_ok_at"] <= t["registered_at"]
                <= t["alb_healthy_at"]), t
        assert t["drained_at"] - t["deregistered_at"] >= 1.0  # min_drain_seconds
        assert t["inflight"] == 0

    # Capacity: never fewer than five of six webs in the target group (and five while one was out).
    assert not sampler.errors, sampler.errors[:3]
    assert len(sampler.counts) > 50 and min(sampler.counts) == len(webs(lab)) - 1, sampler.counts

    # The users: not one failed request, and every web serves them again after its restart.
    assert failures(after) == failures(before), (failures(before), failures(after))
    for h in webs(lab):
        assert after["webs"][h]["requests"] > before["webs"][h]["requests"], h
        assert after["webs"][h]["last_request"] > readings[h]["registered_at"], h
    assert [g["ok"] for g in report["gates"]] == [True] * len(report["gates"])
    assert report["gates"][-1]["name"].startswith("after")
    out = [t["registered_at"] - t["deregistered_at"] for t in times]
    served = sum(after["webs"][h]["requests"] - before["webs"][h]["requests"] for h in webs(lab))
    print(f"\nroll under traffic: delay {DEFAULT_DELAY:g} s, {served} requests served, "
          f"{failures(after)['all'] - failures(before)['all']} failed, "
          f"capacity min {min(sampler.counts)} of {len(webs(lab))} over {len(sampler.counts)} "
          f"samples, each web out {min(out):.1f}-{max(out):.1f} s, run "
          f"{times[-1]['alb_healthy_at'] - times[0]['deregistered_at']:.1f} s")


def test_a_web_unreachable_over_ssh_halts_the_roll_and_stays_out(lab: LabConfig, dwops_run):
    order = all_in_rotation(lab)
    pids = {h: pid(lab, h) for h in webs(lab)}
    before = running_traffic(lab)
    logins = ssh_logins(lab)
    # va-web04's sshd dies before the roll reaches it: the flow touches no web before its turn,
    # so it finds out after va-web03 (this plan's canary) is done and va-web04 is already out.
    ctl.stop(lab, "sshd", "va-web04")
    try:
        rc, report, err = dwops_run("restart-webs", 'hosts=["va-web03","va-web04","va-web05"]',
                                    f"delay={DELAY}")
        alb = dict(registered(lab))
        pids_after = {h: pid(lab, h) for h in webs(lab)}
        logins_after = ssh_logins(lab)
    finally:
        ctl.start(lab, "sshd", "va-web04")
        put_back(lab, order)
    time.sleep(1.5)
    after = running_traffic(lab)

    assert rc == 1, err[-3000:]
    assert report and "va-web04" in report["halted"]
    result = {r["host"]: r for r in report["results"]}
    assert [(h, result[h]["outcome"]) for h in ("va-web03", "va-web04", "va-web05")] == [
        ("va-web03", "done"), ("va-web04", "failed"), ("va-web05", "not reached")]
    assert "OUT of target group" in result["va-web04"]["detail"]
    assert "ssh" in result["va-web04"]["detail"].lower()
    assert outcome_of(report) == {"done": ["va-web03"], "failed": ["va-web04"],
                                  "not_reached": ["va-web05"],
                                  "out_of_target_group": ["va-web04"]}
    assert restart_readings(report)["va-web04"]["in_target_group"] is False

    # The lab agrees: va-web04 was out of the ALB and never restarted; only va-web03 was.
    assert "va-web04" not in alb
    assert all(alb[h] == "healthy" for h in webs(lab) if h != "va-web04"), alb
    assert pids_after["va-web03"] not in (None, pids["va-web03"])
    assert {h: pids_after[h] for h in webs(lab) if h != "va-web03"} == {
        h: pids[h] for h in webs(lab) if h != "va-web03"}
    assert logins_after["va-web03"] > logins["va-web03"]
    assert {h: logins_after[h] for h in webs(lab) if h != "va-web03"} == {
        h: logins[h] for h in webs(lab) if h != "va-web03"}  # no web touched before its turn
    assert failures(after) == failures(before)


def test_dry_run_publishes_the_plan_and_changes_nothing(lab: LabConfig, dwops_run, prefect_api):
    order = all_in_rotation(lab)
    pids = {h: pid(lab, h) for h in webs(lab)}
    logins = ssh_logins(lab)
    rc, report, err = dwops_run("restart-webs", "dry_run=true", "max_unavailable=2")
    assert rc == 0, err[-3000:]
    assert report["dry_run"] and report["results"] == [] and report["gates"] == []
    plan = latest_artifact(prefect_api, "restart-webs-plan")
    assert "| 1 | va-web01 | restart | canary:" in plan
    assert "| 2 | va-web02 | restart | group 2 of 4 (with va-web03):" in plan
    assert "| 6 | va-web06 | restart | group 4 of 4:" in plan

    # The emergency path's plan says what it loses, and a dry run asks no one and does nothing.
    rc, report, err = dwops_run("restart-webs", "dry_run=true", "delay=0")
    assert rc == 0, err[-3000:]
    assert report["dry_run"] and report["results"] == [] and report["gates"] == []
    plan = latest_artifact(prefect_api, "restart-webs-plan")
    assert "every web (va-web01, va-web02, va-web03, va-web04, va-web05, va-web06) restarts at " \
           "once" in plan.lower() and "users will see errors" in plan
    assert "| 1 | va-web01 | restart | EMERGENCY:" in plan

    assert [h for h, _ in registered(lab)] == order
    assert {h: pid(lab, h) for h in webs(lab)} == pids
    assert ssh_logins(lab) == logins


def test_bad_parameters_are_refused_before_any_ssh(lab: LabConfig, dwops_run):
    pids = {h: pid(lab, h) for h in webs(lab)}
    logins = ssh_logins(lab)
    rc, _, err = dwops_run("restart-webs", "delay=-1", "max_unavailable=4",
                           'hosts=["va-web01; reboot"]')
    assert rc == 2
    assert all(f"  {field}:" in err for field in ("delay", "max_unavailable", "hosts.0")), err
    rc, _, err = dwops_run("restart-webs", "max_unavailable=0")
    assert rc == 2 and "max_unavailable" in err
    rc, _, err = dwops_run("restart-webs", 'hosts=["va-web01","va-web09"]')
    assert rc == 2 and "hosts: va-web09: not a web host of inventory 'lab'" in err
    assert ssh_logins(lab) == logins
    assert {h: pid(lab, h) for h in webs(lab)} == pids


def test_gates_hold_when_a_web_is_already_out_and_nothing_is_touched(lab: LabConfig, dwops_run):
    order = all_in_rotation(lab)
    pids = {h: pid(lab, h) for h in webs(lab)}
    logins = ssh_logins(lab)
    out = lab.host("va-web06")
    elb = elbv2(lab)
    elb.deregister_targets(TargetGroupArn=lab.aws.target_group_arn,
                           Targets=[{"Id": out.address, "Port": lab.ports.web}])
    try:
        rc, report, err = dwops_run("restart-webs", 'hosts=["va-web01","va-web02"]')
        alb = dict(registered(lab, elb))
    finally:
        put_back(lab, order)

    assert rc == 1, err[-3000:]
    capacity = next(g for g in report["gates"] if g["name"].startswith("capacity"))
    assert not capacity["ok"] and "5 of 6 webs in rotation" in capacity["reason"]
    assert "capacity" in report["halted"]
    assert [(r["host"], r["outcome"]) for r in report["results"]] == [
        ("va-web01", "not reached"), ("va-web02", "not reached")]
    assert "va-web06" not in alb and all(alb[h] == "healthy" for h in webs(lab) if h != "va-web06")
    assert {h: pid(lab, h) for h in webs(lab)} == pids
    assert ssh_logins(lab) == logins


# -- the pure parts, on replies as the real systems print them ------------------------------------


def test_one_target_health_as_aws_and_moto_answer_it():
    from tasks.aws import parse_one_target_health

    def reply(state, reason=None, description=None):
        health = {"State": state, **({"Reason": reason} if reason else {}),
                  **({"Description": description} if description else {})}
        return {"TargetHealthDescriptions": [{"Target": {"Id": "10.0.0.11", "Port": 80},
                                              "HealthCheckPort": "80", "TargetHealth": health}]}

    def state(r):
        return parse_one_target_health(r, "va-web01", "10.0.0.11", 80).state

    assert state(reply("healthy")) == "healthy"
    assert state(reply("draining", "Target.DeregistrationInProgress",
                       "Target deregistration is in progress")) == "draining"
    assert state(reply("unused", "Target.NotRegistered",
                       "Target is not registered to the target group")) == "unregistered"
    assert state(reply("unavailable", "Target.NotRegistered", "Target is not registered")) \
        == "unregistered"  # moto's answer
    assert state(reply("initial", "Elb.RegistrationInProgress")) == "initial"
    assert state({"TargetHealthDescriptions": []}) == "unregistered"


def test_init_script_status_with_and_without_a_pid():
    from tasks.web import parse_init_status

    assert parse_init_status(0, "apache2 on va-web01 is running (pid 14984).\n").pid == 14984
    debian = parse_init_status(0, "[ ok ] apache2 is running.\n")
    assert debian.running and debian.pid is None
    stopped = parse_init_status(3, "apache2 on va-web01 is not running.\n")
    assert not stopped.running and stopped.pid is None


def test_groups_capacity_and_drain_guards():
    from flows.restart_webs import capacity_allows, drained, groups_of
    from tasks.aws import TargetState
    from tasks.web import WebBadReply

    six = [f"va-web0{i}" for i in range(1, 7)]
    assert groups_of(six, 1) == [[h] for h in six]
    assert groups_of(six, 3) == [six[:1], six[1:4], six[4:]]
    states = [TargetState(h, h, "healthy") for h in six]
    assert capacity_allows(states, ["va-web01"], 1).ok
    assert not capacity_allows(states, ["va-web02", "va-web03"], 1).ok
    one_out = [TargetState(h, h, "unregistered" if h == "va-web06" else "healthy") for h in six]
    held = capacity_allows(one_out, ["va-web01"], 1)
    assert not held.ok and "5 of 6 webs in rotation" in held.reason
    assert capacity_allows(one_out, ["va-web01"], 2).ok

    out = TargetState("va-web01", "x", "unregistered")
    draining = TargetState("va-web01", "x", "draining")
    assert drained(out, 0, 1.0, 1.0) and not drained(out, 0, 0.5, 1.0)
    assert not drained(out, 2, 5.0, 1.0)
    assert not drained(TargetState("va-web01", "x", "healthy"), 0, 5.0, 1.0)
    no_count = WebBadReply("10.0.0.11", 80, "/admin/inflight", 404, "Not found")
    assert drained(out, no_count, 5.0, 1.0) and not drained(draining, no_count, 5.0, 1.0)
