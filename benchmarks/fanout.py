"""Fleet fan-out (issue #7, part 1): one command on every host, dwops side by side with what an
operator would otherwise use, on the lab's 13 hosts and on a scaled lab of 200+ SSH hosts, in
one run. `python -m benchmarks.fanout [--hosts N] [--repeat N]` runs it alone.

Settings, each timed from nothing to every host's answer (connection set-up included):
- dwops: `tasks.ssh.SshPool(inventory).run_everywhere(hosts, "uptime")`, as a flow runs it (a
  new pool, its connections opened, the command run everywhere, the pool closed);
- ssh loop: OpenSSH's client once per host, one after another (BatchMode, dwops's key,
  StrictHostKeyChecking=yes with the inventory's known_hosts);
- ansible: ansible-core's ad-hoc `command` module (`ansible all -m command -a uptime`) with its
  default forks (5) and with forks equal to the host count; host key checking on (same
  known_hosts, StrictHostKeyChecking=yes), its default ssh_args (ControlPersist, a fresh control
  folder per run, so every run opens its connections), pipelining on and the interpreter named
  (ansible's own advice for speed; without pipelining it also needs sftp/scp, which the lab's
  forced-command logins do not offer). It logs in with the lab's oracle key: its `command` module
  sends a Python program, which dwops's key may not run (each host's SSH gate allows only the
  inventory's commands), and an operator who uses ansible has such an open key. dwops and the
  ssh loop pay for the gate (a python3 start on the host per command), ansible does not.

Each setting runs once, unmeasured, on the scaled 13 first (imports, bytecode, caches), then
every setting once per round, `repeat` rounds. Fleets: the lab's 13 hosts (OpenSSH sshd), the first 13 scaled hosts and all N scaled hosts
(Dropbear, `lab.scale`). Growth 13 -> N is given both from the lab's 13 (as the issue asks) and
from the scaled 13 (same server software on both ends of the ratio). Then the fleet-status flow,
timed on the lab's inventory and on the lab plus the scaled hosts, against a private platform.

Attributes read from `args` (argparse.Namespace; all optional):
- hosts (int, 200): scaled hosts;
- repeat (int, 3): runs per setting;
- slow_budget (float, 150): seconds one setting may take over all its runs; a setting whose
  first run is slower gets fewer runs (at least 1; the output says so);
- platform / platform_stack: the runner's shared private platform (benchmarks.private); a run
  alone starts its own.

Needs: dropbear-bin and openssh-client (benchmarks/packages.txt), `uv sync --group bench`
(ansible-core), the lab up. Run it under the lab lock; nothing else should load the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import Figure, Section

PROJECT = Path(__file__).resolve().parents[1]
COMMAND = "uptime"   # a read-only command every host of both inventories allows


@dataclass
class Fleet:
    label: str
    inventory: object          # dwops.inventory.Inventory
    hosts: list[str]
    server_pids: list[int]     # the listening sshds (for server-side CPU), when known

    def targets(self) -> list[tuple[str, str, int, str]]:
        return [(h, *self.inventory.ssh_target(h)) for h in self.hosts]


# -- the settings -----------------------------------------------------------------------------------

def run_dwops(fleet: Fleet) -> float:
    """A new pool, every host's `uptime`, the pool closed; every host must answer."""
    from tasks.ssh import SshPool

    async def go() -> dict:
        async with SshPool(fleet.inventory) as pool:
            return await pool.run_everywhere(fleet.hosts, COMMAND)

    started = time.perf_counter()
    results = asyncio.run(go())
    took = time.perf_counter() - started
    bad = {h: r for h, r in results.items()
           if isinstance(r, Exception) or r.exit_status != 0 or "load average" not in r.stdout}
    if bad:
        raise RuntimeError(f"dwops: {len(bad)} of {len(results)} hosts failed, e.g. "
                           f"{next(iter(bad.values()))}")
    return took


def ssh_argv(fleet: Fleet, address: str, port: int, user: str) -> list[str]:
    ssh = fleet.inventory.ssh
    return ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={ssh.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "IdentitiesOnly=yes", "-o", f"ConnectTimeout={ssh.connect_timeout:g}",
            "-i", ssh.client_key.file, "-p", str(port), f"{user}@{address}", COMMAND]


def run_ssh_loop(fleet: Fleet) -> float:
    started = time.perf_counter()
    for host, address, port, user in fleet.targets():
        out = subprocess.run(ssh_argv(fleet, address, port, user), capture_output=True,
                             text=True, timeout=60)
        if out.returncode or "load average" not in out.stdout:
            raise RuntimeError(f"ssh loop: {host}: exit {out.returncode}: {out.stderr.strip()}")
    return time.perf_counter() - started


def ansible_bin() -> str:
    path = Path(sys.executable).parent / "ansible"
    if not path.exists():
        raise RuntimeError("ansible is not installed: `uv sync --group bench` (scripts/bench does)")
    return str(path)


def write_ansible_inventory(fleet: Fleet, folder: Path) -> Path:
    from lab.config import LabConfig
    from lab.hostfiles import ssh_paths

    ssh = fleet.inventory.ssh
    open_key = ssh_paths(LabConfig.load())["oracle_key"]  # ansible's module is no allowed command
    common = (f"-F /dev/null -o StrictHostKeyChecking=yes -o UserKnownHostsFile={ssh.known_hosts} "
              f"-o GlobalKnownHostsFile=/dev/null -o IdentitiesOnly=yes")
    lines = ["[fleet]"]
    lines += [f"{h} ansible_host={address} ansible_port={port} ansible_user={user}"
              for h, address, port, user in fleet.targets()]
    lines += ["", "[fleet:vars]", f"ansible_ssh_private_key_file={open_key}",
              "ansible_python_interpreter=/usr/bin/python3",
              f"ansible_ssh_common_args='{common}'", ""]
    path = folder / f"hosts-{fleet.label.replace(' ', '-')}.ini"
    path.write_text("\n".join(lines))
    return path


def run_ansible(fleet: Fleet, forks: int, folder: Path, hosts_file: Path) -> float:
    """One ad-hoc run with a fresh ControlPersist folder; its masters are stopped afterwards
    (outside the timing), by pid."""
    control = Path(tempfile.mkdtemp(prefix="cp-", dir=folder))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_CONFIG=str(folder / "ansible.cfg"), ANSIBLE_HOME=str(folder / "home"),
               ANSIBLE_LOCAL_TEMP=str(folder / "tmp"), ANSIBLE_HOST_KEY_CHECKING="True",
               ANSIBLE_PIPELINING="True", ANSIBLE_SSH_CONTROL_PATH_DIR=str(control),
               ANSIBLE_RETRY_FILES_ENABLED="False", ANSIBLE_NOCOLOR="1",
               ANSIBLE_DEPRECATION_WARNINGS="False")
    argv = [ansible_bin(), "all", "-i", str(hosts_file), "-m", "command", "-a", COMMAND,
            "-f", str(forks), "-o"]
    started = time.perf_counter()
    try:
        out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1800)
        took = time.perf_counter() - started
    finally:
        stop_masters(control)
    ok = sum(1 for line in out.stdout.splitlines() if "| CHANGED | rc=0 |" in line)
    if out.returncode or ok != len(fleet.hosts):
        raise RuntimeError(f"ansible forks={forks}: exit {out.returncode}, {ok} of "
                           f"{len(fleet.hosts)} hosts ok: {(out.stdout + out.stderr)[-800:]}")
    return took


def stop_masters(control: Path) -> None:
    """The ControlPersist masters of one ansible run (their command line names its folder)."""
    from lab import procs

    left = procs.processes_under(str(control))
    for pid in left:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for pid in left:
        if not procs.wait_gone(pid, 5):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    shutil.rmtree(control, ignore_errors=True)


# -- CPU accounting -----------------------------------------------------------------------------------

def own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


def servers_cpu(pids: list[int]) -> float:
    """CPU seconds of the listening servers and of their reaped children (one per login)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / tick


# -- fleet-status -----------------------------------------------------------------------------------

FLEET_STATUS = """
import asyncio, json, sys, time
from dwops.settings import use_project_prefect
use_project_prefect()
from flows.fleet_status import FleetStatusParams, fleet_status
out = []
for inventory in sys.argv[2:]:
    for i in range(int(sys.argv[1])):
        t = time.perf_counter()
        state = asyncio.run(fleet_status(FleetStatusParams(inventory=inventory), return_state=True))
        wall = time.perf_counter() - t
        r = state.result(raise_on_failure=False)
        report = r.report.as_dict() if hasattr(r, "report") else r
        if not isinstance(report, dict):
            raise SystemExit(f"fleet-status on {inventory} failed: {r!r}")
        out.append({"inventory": inventory, "wall": wall, "seconds": report["seconds"],
                    "verdict": report["verdict"], "checks": len(report["checks"])})
print("RESULT " + json.dumps(out))
"""


def fleet_status_runs(args: argparse.Namespace, inventories: list[str], repeat: int) -> list[dict]:
    from benchmarks.private import using_platform

    with using_platform(args) as platform:
        # As `dwops run` on the operator's machine: the scaled inventory is a path.
        env = dict(platform.env, PYTHONPATH=str(PROJECT), DWOPS_INVENTORY_PATHS="allow")
        started = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", FLEET_STATUS, str(repeat), *inventories],
                             cwd=PROJECT, env=env, capture_output=True, text=True, timeout=900)
        process = time.perf_counter() - started
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if out.returncode or line is None:
        raise RuntimeError(f"fleet-status runs failed ({out.returncode}): "
                           f"{(out.stdout + out.stderr)[-1500:]}")
    runs = json.loads(line.removeprefix("RESULT "))
    for r in runs:
        r["process"] = process
    return runs


# -- the section -----------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> Section:
    from dwops.inventory import load_inventory, resolve_inventory
    from lab import scale
    from lab.config import LabConfig
    from lab import procs, services

    count = int(getattr(args, "hosts", 200) or 200)
    repeat = max(1, int(getattr(args, "repeat", 3) or 3))
    budget = float(getattr(args, "slow_budget", 150) or 150)
    section = Section(f"fanout: one command on every host, 13 lab hosts and {count} scaled hosts")
    ansible_bin()  # fail before starting anything when ansible is missing

    cfg = LabConfig.load()
    lab_inv = resolve_inventory("lab")
    lab_sshds = [pid for d in services.daemons(cfg) if d.name == "sshd"
                 for pid in [procs.read_pid(d.pidfile)] if pid]
    folder = Path(tempfile.mkdtemp(prefix="dwops-fanout-"))
    (folder / "ansible.cfg").write_text("[defaults]\n")
    try:
        scale.prepare(count)  # host keys made (or found) before the timed start
        started = time.perf_counter()
        path = scale.up(count)
        up_seconds = time.perf_counter() - started
        mem = scale.memory()
        inv = load_inventory(path)
        scaled = inv.hosts_with_role("scale")
        server_pids = scale.server_pids()
        fleets = [Fleet("13 lab hosts", lab_inv, list(lab_inv.hosts), lab_sshds),
                  Fleet("13 scaled hosts", inv, scaled[:13], server_pids[:13]),
                  Fleet(f"{count} scaled hosts", inv, scaled, server_pids)]
        section.figures.append(Figure(f"scaled lab start ({count} Dropbear sshds, keys made)",
                                      [up_seconds]))
        section.figures.append(Figure("memory per scaled sshd (RSS)", [mem["rss_per_server"]], "B",
                                      note=f"PSS {mem['pss_per_server'] / 1024:.0f} KiB; "
                                           f"{count} servers: RSS {mem['rss_bytes'] / 2**20:.0f} "
                                           f"MiB, PSS {mem['pss_bytes'] / 2**20:.1f} MiB"))
        measure_fleets(section, fleets, folder, repeat, budget)
        try:
            fleet_status_section(section, args, lab_inv, path, repeat)
        except Exception as e:  # noqa: BLE001 - the fan-out figures stand without it
            section.notes.append(f"fleet-status not measured: {type(e).__name__}: {e}")
    finally:
        scale.down()
        shutil.rmtree(folder, ignore_errors=True)
    left = scale.pids() + sorted(scale.listening(net=scale.NET))
    section.notes.append("scaled lab stopped: " + ("nothing left running or listening" if not left
                                                   else f"LEFT: {left}"))
    return section


def measure_fleets(section: Section, fleets: list[Fleet], folder: Path, repeat: int,
                   budget: float) -> None:
    settings = [("dwops", lambda f, h: run_dwops(f)),
                ("ssh loop", lambda f, h: run_ssh_loop(f)),
                ("ansible forks=5", lambda f, h: run_ansible(f, 5, folder, h)),
                ("ansible forks=N", lambda f, h: run_ansible(f, len(f.hosts), folder, h))]
    samples: dict[tuple[str, str], list[float]] = {}
    client_cpu: dict[tuple[str, str], list[float]] = {}
    server_cpu: dict[tuple[str, str], list[float]] = {}
    allowed: dict[tuple[str, str], int] = {}
    hosts_files = {f.label: write_ansible_inventory(f, folder) for f in fleets}
    # One unmeasured run of each setting on the scaled 13: imports, bytecode, first connections.
    for name, fn in settings:
        print(f"fanout: warm-up: {name}", file=sys.stderr, flush=True)
        fn(fleets[1], hosts_files[fleets[1].label])
    for rep in range(repeat):  # every setting once per round: noise spreads over all of them
        for fleet in fleets:
            for name, fn in settings:
                key = (fleet.label, name)
                if rep >= allowed.get(key, repeat):
                    continue
                print(f"fanout: round {rep + 1}: {fleet.label}: {name}", file=sys.stderr,
                      flush=True)
                cpu0, srv0 = own_cpu(), servers_cpu(fleet.server_pids)
                took = fn(fleet, hosts_files[fleet.label])
                client_cpu.setdefault(key, []).append(own_cpu() - cpu0)
                server_cpu.setdefault(key, []).append(servers_cpu(fleet.server_pids) - srv0)
                samples.setdefault(key, []).append(took)
                if rep == 0:
                    allowed[key] = max(1, min(repeat, int(budget // max(took, 1e-3))))
    med = {k: Figure("", v).median for k, v in samples.items()}
    for fleet in fleets:
        for name, _ in settings:
            key = (fleet.label, name)
            label = name.replace("=N", f"={len(fleet.hosts)}")
            note = ""
            if len(samples[key]) < repeat:
                note = f"only {len(samples[key])} run(s): one took {samples[key][0]:.0f} s"
            if name == "dwops":
                note = (f"dwops process CPU {Figure('', client_cpu[key]).median:.2f} s; "
                        f"sshds' CPU {Figure('', server_cpu[key]).median:.2f} s")
            elif fleet.server_pids:
                note = (note + "; " if note else "") + (
                    f"client CPU {Figure('', client_cpu[key]).median:.2f} s; "
                    f"sshds' CPU {Figure('', server_cpu[key]).median:.2f} s")
            section.figures.append(Figure(f"{fleet.label}: {label}", samples[key], note=note))
    for fleet in fleets:
        for name, _ in settings[1:]:
            section.ratios.append((f"{fleet.label}: {name.replace('=N', f'={len(fleet.hosts)}')} "
                                   f"/ dwops", med[(fleet.label, name)] / med[(fleet.label, "dwops")]))
    big, lab13, small13 = fleets[2].label, fleets[0].label, fleets[1].label
    n = len(fleets[2].hosts)
    for name, _ in settings:
        section.ratios.append((f"growth 13 -> {n} hosts, {name} (from the lab's 13)",
                               med[(big, name)] / med[(lab13, name)]))
        section.ratios.append((f"growth 13 -> {n} hosts, {name} (from the scaled 13)",
                               med[(big, name)] / med[(small13, name)]))
    best = min(("ansible forks=5", "ansible forks=N"), key=lambda s: med[(big, s)])
    speedup = med[(big, best)] / med[(big, "dwops")]
    section.targets.append((f"at {n} hosts dwops at least 5x faster than the best ansible setting",
                            speedup >= 5,
                            f"{speedup:.1f}x ({best.replace('=N', f'={n}')}: "
                            f"{med[(big, best)]:.2f} s, dwops {med[(big, 'dwops')]:.2f} s)"))
    growth = med[(big, "dwops")] / med[(small13, "dwops")]
    host_growth = n / 13
    section.targets.append((
        f"dwops's time grows far slower than the host count (13 -> {n} scaled hosts: at most a "
        f"third of the {host_growth:.1f}x)", growth <= host_growth / 3,
        f"{growth:.1f}x; from the lab's 13: "
        f"{med[(big, 'dwops')] / med[(lab13, 'dwops')]:.1f}x"))
    per_host = Figure("", client_cpu[(big, "dwops")]).median / n
    section.notes.append(
        f"dwops at {n} hosts: its own process used {per_host * 1000:.1f} ms CPU per host; the "
        f"{n} sshds (and the shell and `uptime` each login runs) used "
        f"{Figure('', server_cpu[(big, 'dwops')]).median:.2f} s CPU; all on the same shared "
        f"{os.cpu_count()} cores, which in production would be {n} machines' own")


def fleet_status_section(section: Section, args: argparse.Namespace, lab_inv, scaled_path: Path,
                         repeat: int) -> None:
    runs = fleet_status_runs(args, ["lab", str(scaled_path)], repeat)
    for inventory, label in (("lab", "13 lab hosts"), (str(scaled_path), "lab + scaled hosts")):
        mine = [r for r in runs if r["inventory"] == inventory]
        checks, verdicts = mine[0]["checks"], sorted({r["verdict"] for r in mine})
        section.figures.append(Figure(f"fleet-status flow, {label}: wall", [r["wall"] for r in mine],
                                      note=f"{checks} checks, verdict {'/'.join(verdicts)}"))
        section.figures.append(Figure(f"fleet-status flow, {label}: its own reading time",
                                      [r["seconds"] for r in mine]))
    section.notes.append(f"fleet-status: {repeat} runs per inventory in one process against the "
                         f"private platform, after imports (the process took "
                         f"{runs[0]['process']:.1f} s in all, imports included)")


def main(argv: list[str] | None = None) -> int:
    from dwops.settings import use_project_prefect

    use_project_prefect(connect_to_running=False)  # before Prefect is imported; never its API
    ap = argparse.ArgumentParser(prog="python -m benchmarks.fanout", description=__doc__.split("\n")[0])
    ap.add_argument("--hosts", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--slow-budget", dest="slow_budget", type=float, default=150)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    section = run(args)
    print(section.render())
    if args.json:
        Path(args.json).write_text(json.dumps(section.as_dict(), indent=2))
    return 0 if all(met for _, met, _ in section.targets) else 1


if __name__ == "__main__":
    sys.exit(main())
