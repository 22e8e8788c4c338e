"""Roll overhead: restart-webs on the lab, its wall time split per host into what the hosts and
the ALB take and what dwops adds.

Each run is `dwops run restart-webs -p delay=D --json`, the operator's command, against a
private `dwops up` server (so the run is recorded as in production; the CLI runs the flow in its
own process, no worker in between). From the run's report (flows/restart_webs.py: per web, wall
clock marks of every phase; the run's own start and end), per web:

- restart: `web.restart` over SSH, sent to answered (the host's own restart command);
- health: restart answered to `/admin/healthy` status=ok (the web starting up, polled every
  0.25 s, with the pid check over SSH in between);
- ALB: deregistered to drained (`min_drain_seconds`, the ALB's target refresh, and requests in
  flight) plus registered to healthy in the ALB;
- delay: the `delay` asked for between two webs;
- orchestration: everything else (the run's wall time minus all of the above), split into
  before the first web (inventory, plan, maintenance lock, gates), inside each web's cycle (ALB
  calls, the step from one phase to the next), between webs (the gates re-read before each
  one), and after the last (the after-gate, the report).

The emergency path (`delay=0`: every web at once, in place) needs approval: it runs with
`--approve`, as an operator who decided would. Its per-host figures overlap, so its
orchestration is what comes before the first restart and after the last web is healthy.
Requests the lab's users lost (the traffic generator's failures) are counted for both.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

from benchmarks.common import Figure, Section
from benchmarks.private import Private, using_platform

TARGET = 0.5  # s of orchestration per host


def run(args) -> Section:
    repeat = max(3, getattr(args, "repeat", 3) or 3)
    delay = 1.0
    section = Section("roll: restart-webs on the lab's 6 webs")
    with using_platform(args) as p:
        rolling = [_roll(p, delay) for _ in range(repeat)]
        emergency = [_roll(p, 0, approve=True) for _ in range(max(1, repeat // 2))]

    ok = [r for r in rolling if r["ok"]]
    bad = [r for r in rolling + emergency if not r["ok"]]
    for r in bad:
        section.notes.append(f"run failed (delay={r['delay']:g}): {r['error']}")
    if ok:
        n = len(ok[0]["hosts"])
        per = {k: [sum(h[k] for h in r["hosts"].values()) / n for r in ok]
               for k in ("restart", "health", "alb", "orchestration_in_cycle", "web_start",
                         "health_lag")}
        section.figures += [
            Figure(f"rolling delay={delay:g}: run wall (first reading to last)",
                   [r["wall"] for r in ok]),
            Figure("rolling: `dwops run` command wall (Python, Prefect client, run record)",
                   [r["command"] for r in ok]),
            Figure("  per host: restart (web.restart over SSH)", per["restart"]),
            Figure("  per host: health wait (to /admin/healthy status=ok)", per["health"]),
            Figure("    of which the web starting (answered to `listening`, its log)",
                   per["web_start"]),
            Figure("    of which `listening` to status=ok seen (check + 0.25 s polling)",
                   per["health_lag"]),
            Figure("  per host: ALB waits (drain + registered to healthy)", per["alb"]),
            Figure("  per host: requested delay", [r["delays"] / n for r in ok]),
            Figure("  per host: ORCHESTRATION (the rest)",
                   [r["orchestration"] / n for r in ok]),
            Figure("    of which before the first web (whole run)", [r["before"] for r in ok]),
            Figure("    of which inside a web's cycle (per host)", per["orchestration_in_cycle"]),
            Figure("    of which between webs (per gap, beyond the delay)",
                   [r["between"] / max(1, n - 1) for r in ok]),
            Figure("    of which after the last web (whole run)", [r["after"] for r in ok]),
            Figure("  user requests failed during the run", [r["lost"] for r in ok], unit="req"),
        ]
        orch = sorted(r["orchestration"] / n for r in ok)
        worst = orch[-1]
        section.targets.append((f"orchestration < {TARGET:g} s per host (rolling)",
                                worst < TARGET,
                                f"median {_ms(orch[len(orch) // 2])}, worst {_ms(worst)} per host"))
        section.ratios.append(("rolling wall / (restart+health+ALB+delay)",
                               statistics.median([r["wall"] / (r["wall"] - r["orchestration"]) for r in ok])))
    em = [r for r in emergency if r["ok"]]
    if em:
        n = len(em[0]["hosts"])
        section.figures += [
            Figure("emergency delay=0 --approve: run wall", [r["wall"] for r in em]),
            Figure("  slowest web: restart + health + ALB",
                   [max(h["restart"] + h["health"] + h["alb"] for h in r["hosts"].values())
                    for r in em]),
            Figure("  orchestration per host (wall - slowest web) / 6",
                   [r["orchestration"] / n for r in em]),
            Figure("  user requests failed during the run", [r["lost"] for r in em],
                   unit="req"),
        ]
    section.notes.append(f"{len(rolling)} rolling runs (delay={delay:g}), {len(emergency)} "
                         "emergency runs (delay=0, approved with --approve), each "
                         "`dwops run restart-webs --json` against a private dwops up server")
    return section


def _roll(p: Private, delay: float, approve: bool = False) -> dict[str, Any]:
    before = _traffic_failures()
    started = time.monotonic()
    cmd = ["run", "restart-webs", "-p", f"delay={delay:g}", "--json"]
    if approve:
        cmd.append("--approve")
    out = p.dwops(*cmd, timeout=600)
    command = time.monotonic() - started
    lost = _traffic_failures() - before
    try:
        report = json.loads(out.stdout)
    except ValueError:
        report = None
    if out.returncode or not isinstance(report, dict):
        why = (report or {}).get("summary") if isinstance(report, dict) else None
        _put_back(p, report)
        return {"ok": False, "delay": delay,
                "error": f"rc={out.returncode}: {why or out.stderr.strip()[-400:]}"}
    r = breakdown(report)
    r.update(ok=True, delay=delay, command=command, lost=lost)
    return r


def breakdown(report: dict[str, Any]) -> dict[str, Any]:
    """The run's wall time split as the module says (seconds)."""
    readings = {x["what"]: x["figures"] for x in report["readings"]}
    run, params = readings["run"], readings["parameters"]
    cycles = {w.removesuffix(": restart"): f for w, f in readings.items()
              if w.endswith(": restart")}
    order = sorted(cycles, key=lambda h: cycles[h]["started_at"])
    wall = run["finished_at"] - run["started_at"]
    hosts = {}
    for h in order:
        f = cycles[h]
        restart = f["restart_finished_at"] - f["restart_started_at"]
        health = f["status_ok_at"] - f["restart_finished_at"]
        drain = f["drained_at"] - f["deregistered_at"] if "drained_at" in f else 0.0
        alb = drain + (f["alb_healthy_at"] - f.get("registered_at", f["status_ok_at"]))
        cycle = f["alb_healthy_at"] - f["started_at"]
        listening = _listening_at(h, f["restart_finished_at"] - 1, f["status_ok_at"])
        web_start = (listening - f["restart_finished_at"]) if listening else float("nan")
        hosts[h] = {"restart": restart, "health": health, "alb": alb,
                    "orchestration_in_cycle": cycle - restart - health - alb,
                    "web_start": web_start, "health_lag": health - web_start}
    first, last = cycles[order[0]], cycles[order[-1]]
    if params["emergency"]:
        slowest = max(h["restart"] + h["health"] + h["alb"] for h in hosts.values())
        before = min(c["started_at"] for c in cycles.values()) - run["started_at"]
        after = run["finished_at"] - max(c["alb_healthy_at"] for c in cycles.values())
        return {"wall": wall, "hosts": hosts, "delays": 0.0, "before": before, "after": after,
                "between": 0.0, "orchestration": wall - slowest}
    delays = params["delay"] * (len(order) - 1)
    between = sum(cycles[b]["started_at"] - cycles[a]["alb_healthy_at"]
                  for a, b in zip(order, order[1:])) - delays
    spent = sum(h["restart"] + h["health"] + h["alb"] for h in hosts.values())
    return {"wall": wall, "hosts": hosts, "delays": delays,
            "before": first["started_at"] - run["started_at"],
            "after": run["finished_at"] - last["alb_healthy_at"], "between": between,
            "orchestration": wall - spent - delays}


def _listening_at(host: str, since: float, until: float) -> float | None:
    """When the web's log says it was listening again (its own clock, ms), within the window."""
    from datetime import datetime

    from lab import services
    from lab.config import LabConfig, state_dir

    cfg = LabConfig.load(state_dir() / "lab" / "lab.json")
    log = services.find(cfg, "apache2", host).logfile
    with open(log, "rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - 4_000_000))
        text = f.read().decode(errors="replace")
    for line in reversed(text.splitlines()):
        if " listening on " in line:
            at = datetime.fromisoformat(line.split(" ", 1)[0].replace("Z", "+00:00")).timestamp()
            if since <= at <= until:
                return at
    return None


def _traffic_failures() -> float:
    from lab.config import LabConfig, read_counters, state_dir

    cfg = LabConfig.load(state_dir() / "lab" / "lab.json")
    return float(read_counters(cfg, "traffic").get("totals", {}).get("failures", 0))


def _put_back(p: Private, report: dict | None) -> None:
    """A failed roll leaves the failed web out of the ALB: put it back the flow's own way."""
    outcome = next((x["figures"] for x in (report or {}).get("readings", [])
                    if x["what"] == "outcome"), {})
    out = outcome.get("out_of_target_group") or []
    if out:
        p.dwops("run", "restart-webs", "-p", f"put_back={json.dumps(out)}", "-p", "delay=1",
                timeout=600)


def _ms(s: float) -> str:
    return f"{s * 1000:.0f} ms"
