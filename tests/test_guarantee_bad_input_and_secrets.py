"""Guarantees 7 and 8: bad input is refused naming the field, before any SSH connection;
secrets appear in no log, artifact, report or error message.

Already proven elsewhere (not repeated here):
- the API refuses unauthenticated calls: tests/e2e/test_platform_api.py
  ::test_an_unauthenticated_call_is_refused_and_creates_nothing;
- an unknown or changed host key is refused: tests/test_lab_ssh.py
  ::test_a_changed_host_key_is_refused, ::test_an_unknown_host_key_is_refused;
- only inventory commands run, values shell-quoted: tests/test_lab_ssh.py
  ::test_only_inventory_commands_run (here: refused before any connection opens).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from _guarantees_bad_input import (PWNED, VALID, BadSet, SshdLogs, cli_params, count,
                                   invalid_sets, same)
from dwops.inventory import Inventory, InventoryError, load_inventory
from flows import FLOWS, load_flow
from lab.config import LabConfig

PROJECT = Path(__file__).resolve().parent.parent


# -- promise 7: bad input ------------------------------------------------------------------------


def _problems(stderr: str) -> list[tuple[str, str]]:
    """(where, message) of each problem line the CLI prints under "bad parameters for NAME:"."""
    out = []
    for line in stderr.splitlines():
        if line.startswith("  ") and ": " in line:
            where, _, msg = line[2:].partition(": ")
            out.append((where, msg))
    return out


def _names_the_field(bad: BadSet, stderr: str) -> str:
    """'' when the refusal names the offending field (and value, when it is one scalar), else why
    not."""
    from dwops.cli import _shown

    if f"bad parameters for {bad.flow}:" not in stderr:
        return "no 'bad parameters for' line"
    problems = _problems(stderr)
    if bad.field:
        lines = [(w, m) for w, m in problems if w == bad.field or w.startswith(bad.field + ".")]
        if not lines:
            return f"no problem line for {bad.field!r}: {problems}"
        if isinstance(bad.value, (str, int, float)) and not isinstance(bad.value, bool):
            shown = f"(got {_shown(bad.value)})"
            if not any(m.endswith(shown) for _, m in lines):
                return f"the value is not shown as {shown}: {lines}"
        return ""
    if not any(all(n in f"{w}: {m}" for n in bad.in_message) for w, m in problems):
        return f"no problem line names {bad.in_message}: {problems}"
    return ""


# Through the real CLI in a subprocess: one set per flow refused by validation, and the sets that
# pass validation but name what the inventory lacks (refused against the inventory, exit 2 too,
# before any run exists).
CLI_SAMPLE = [  # (flow, field, part of the set's description)
    ("restart-webs", "hosts", "element with cyrillic homoglyph"),
    ("restart-webs", "reason", "100 000 characters"),
    ("restart-workers", "reason", "with command substitution"),
    ("restart-workers", "dry-run", "unknown field 'dry-run'"),
    ("restart-memcache", "hosts", "element with newline"),
    ("ensure-gearman", "hosts", "element with backticks"),
    ("ensure-ddlockd", "hosts", "element with zero-width space"),
    ("block-address", "addresses", "element with pipe"),
    ("purge-cdn", "paths", "element with right-to-left override"),
    ("fleet-status", "inventory", "inventory with NUL"),
]


def _inventory_refusals(tmp_path: Path, lab_inventory: Inventory) -> list[tuple[str, list[str], list[str]]]:
    """(flow, -p arguments, what stderr must say): valid to pydantic, refused against the
    inventory (`check_inventory`, or an inventory that cannot be loaded)."""
    bad_inventory = _cross_reference_problems_file(tmp_path)
    key = lab_inventory.ssh.client_key.file
    return [
        ("restart-webs", ["hosts=[\"va-web07\"]"], ["va-web07: not a web host of inventory 'lab'"]),
        ("restart-webs", ["hosts=[\"va-web01\", \"dfw-jobs01\"]"],
         ["dfw-jobs01: not a web host of inventory 'lab'"]),
        ("restart-memcache", ["hosts=[\"dfw-memc03\"]"],
         ["dfw-memc03: not a memcached host of inventory 'lab'"]),
        ("ensure-gearman", ["hosts=[\"dfw-memc01\"]"],
         ["dfw-memc01: not a gearman host of inventory 'lab'"]),
        ("ensure-ddlockd", ["hosts=[\"va-admin01\"]"],
         ["va-admin01: not a ddlockd host of inventory 'lab'"]),
        ("fleet-status", ["inventory=/nonexistent/inventory.toml"],
         ["/nonexistent/inventory.toml: (top level): file not found"]),
        ("restart-workers", ["inventory=/dev/zero"],  # was read until memory ran out
         ["/dev/zero: (top level): not a regular file"]),
        ("block-address", ["action=block", "addresses=[\"203.0.113.7\"]", "dry_run=true",
                           "inventory=/etc"], ["/etc: (top level): not a regular file"]),
        ("purge-cdn", ["paths=[\"/stats/site\"]", "dry_run=true", f"inventory={bad_inventory}"],
         [f"{bad_inventory}: {entry}: {problem}" for entry, problem in CROSS_REFERENCE_PROBLEMS]),
        ("fleet-status", [f"inventory={key}"], [f"{key}: (top level): not valid TOML"]),
        ("restart-webs", ["inventory=/etc/passwd"], ["/etc/passwd: (top level): not valid TOML"]),
        ("restart-webs", ["hosts=[\"va-web01\"]", "put_back=[\"va-web02\"]"],
         ["put_back: va-web02 not among the webs this run restarts (va-web01)"]),
    ]


def _run_cli_limited(prefect_api: str, name: str, params: list[str]) -> tuple[int, str, str]:
    """`dwops run` as dwops_run does, in an address space capped at 4 GiB, so that a regression
    that reads /dev/zero fails this test instead of exhausting the machine's memory."""
    argv = ["/bin/sh", "-c", 'ulimit -v 4194304 && exec "$0" "$@"',  # KiB; no preexec_fn in threads
            sys.executable, "-m", "dwops.cli", "run", name, "--json"]
    for p in params:
        argv += ["-p", p]
    out = subprocess.run(argv, cwd=PROJECT, env=dict(os.environ, PREFECT_API_URL=prefect_api),
                         capture_output=True, text=True, timeout=120)
    return out.returncode, out.stdout, out.stderr


def test_generated_bad_parameters_are_refused_naming_the_field_and_open_no_ssh(
        lab: LabConfig, lab_inventory: Inventory, prefect_api: str, dwops_run, tmp_path: Path):
    from typer.testing import CliRunner

    from dwops.cli import app, parse_assignments
    from lab import services
    from tasks.ssh import SshPool

    for name in FLOWS:  # every mutation starts from a set the flow accepts
        load_flow(name)[1].model_validate(VALID[name])
    sets = invalid_sets()
    assert len(sets) >= 300 and {s.flow for s in sets} == set(FLOWS)
    by_inventory = _inventory_refusals(tmp_path, lab_inventory)
    runs_before = _flow_runs(prefect_api)
    sample = [next(s for s in sets if s.flow == f and s.field == field and want in s.why)
              for f, field, want in CLI_SAMPLE]
    assert len(sample) + len(by_inventory) >= 20
    Path(PWNED).unlink(missing_ok=True)

    def validation(bad: BadSet):
        rc, report, err = dwops_run(bad.flow, *cli_params(bad.values), timeout=120)
        return bad, rc, report, err

    def inventory_run(case):
        name, params, wanted = case
        if "inventory=/dev/zero" in params:
            rc, out, err = _run_cli_limited(prefect_api, name, params)
        else:
            rc, _, err = dwops_run(name, *params, timeout=120)
        return case, rc, err

    logs = SshdLogs({h.name: services.find(lab, "sshd", h.name).logfile for h in lab.hosts})
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        # 1. A sample through the real CLI in subprocesses (dwops_run), four at a time, while...
        for bad in sample:  # only a set its model refuses is ever run
            with pytest.raises(ValidationError):
                load_flow(bad.flow)[1].model_validate(bad.values)
        validations = [pool.submit(validation, bad) for bad in sample]
        inventory_runs = [pool.submit(inventory_run, case) for case in by_inventory]

        # 2. ...every generated set is refused by its model, and by the CLI (in-process) with
        #    exit 2 and a message naming the field. Only a refused set is handed to the CLI.
        runner = CliRunner()
        not_refused, unclear = [], []
        for bad in sets:
            model = load_flow(bad.flow)[1]
            try:
                model.model_validate(bad.values)
            except ValidationError:
                pass
            else:
                not_refused.append(bad.label)
                continue
            args = cli_params(bad.values)
            assert same(parse_assignments(args), bad.values), bad.label  # the CLI sees this set
            argv = ["run", bad.flow, "--json"] + [a for p in args for a in ("-p", p)]
            result = runner.invoke(app, argv)
            why = _names_the_field(bad, result.stderr)
            if result.exit_code != 2 or result.stdout or why:
                unclear.append(f"{bad.label}: exit {result.exit_code}, {why or result.stdout[:200]}")
        in_process_seconds = time.monotonic() - started
        refused = [f.result() for f in validations]
        refused_by_inventory = [f.result() for f in inventory_runs]
    cli_seconds = time.monotonic() - started
    assert not not_refused, f"{len(not_refused)} invalid sets accepted: {not_refused[:10]}"
    assert not unclear, f"{len(unclear)} refusals unclear: {unclear[:5]}"

    # 3. No connection reached any lab sshd while all of that ran.
    window = logs.new_text()
    during = {h: count(t, "Connection from") for h, t in window.items()}

    for bad, rc, report, err in refused:
        assert rc == 2 and report is None, (bad.label, rc, err[-500:])
        assert not _names_the_field(bad, err), (bad.label, _names_the_field(bad, err))
    assert _flow_runs(prefect_api) == runs_before, "a refused set created a flow run"
    for (name, params, wanted), rc, err in refused_by_inventory:
        flat = " ".join(err.split())
        assert rc == 2 and f"bad parameters for {name}:" in err, (name, params, rc, err[-800:])
        for w in wanted:
            assert " ".join(w.split()) in flat, (name, params, w, err[-800:])
    key_text = Path(lab_inventory.ssh.client_key.file).read_text().strip()
    assert all(line not in err for line in key_text.splitlines()[1:-1]
               for _, _, err in refused_by_inventory), "the key file's content was echoed"
    assert not Path(PWNED).exists(), "a shell ran a payload"
    assert during == {h: 0 for h in during}, (
        f"sshd logged connections: {during}; "
        f"new log lines: { {h: t[-600:] for h, t in window.items() if t} }")

    # 4. The counter is live: one login to every host shows up in its log, and nothing else does.
    async def control() -> dict[str, int]:
        async with SshPool(lab_inventory) as ssh:
            conns = {h: await ssh.connection(h) for h in logs.files}
            return {h: c.get_extra_info("sockname")[1] for h, c in conns.items()}

    ports = asyncio.run(control())
    deadline = time.monotonic() + 10
    while True:
        seen = logs.new_connections()
        if all(any(p == ports[h] for _, p in seen[h]) for h in seen) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    others = {h: [c for c in cs if c[1] != ports[h]] for h, cs in seen.items()}
    assert all(any(p == ports[h] for _, p in seen[h]) for h in seen), f"control not logged: {seen}"
    assert others == {h: [] for h in others}, f"connections other than the control: {others}"
    after = logs.new_text()
    print(f"\nbad input: {len(sets)} generated invalid sets (+{len(by_inventory)} refused against "
          f"the inventory) "
          f"over {len(FLOWS)} flows, all refused in-process in {in_process_seconds:.1f} s; "
          f"{len(sample) + len(by_inventory)} through the CLI subprocess, all done after "
          f"{cli_seconds:.1f} s; "
          f"sshd lines before {sum(logs.lines_at_mark.values())}, new during the window "
          f"{sum(len(t.splitlines()) for t in window.values())} "
          f"({sum(during.values())} 'Connection from'), then the control's "
          f"{sum(len(t.splitlines()) for t in after.values())} lines with "
          f"{sum(count(t, 'Accepted publickey') for t in after.values())}/{len(ports)} logins")


def test_unknown_or_repeated_hosts_and_a_file_that_is_no_inventory_exit_2_before_any_run(
        lab: LabConfig, prefect_api: str, dwops_run):
    """The issue's three cases, through real `dwops run` processes: each exits 2 naming the
    parameter, and the Prefect server holds no more runs than before."""
    before = _flow_runs(prefect_api)
    cases = [
        (["hosts=[\"va-web01\", \"va-web09\"]"],
         "hosts: va-web09: not a web host of inventory 'lab'"),
        (["hosts=[\"va-web01\", \"va-web01\"]"], "hosts: Value error, va-web01 named more than once"),
        (["inventory=/etc/passwd"], "inventory: /etc/passwd: (top level): not valid TOML"),
    ]
    for params, wanted in cases:
        rc, report, err = dwops_run("restart-webs", *params, "dry_run=true", timeout=120)
        assert (rc, report) == (2, None), (params, rc, err[-800:])
        assert "bad parameters for restart-webs:" in err and wanted in " ".join(err.split()), err
    assert _flow_runs(prefect_api) == before


def _flow_runs(api: str) -> int:
    """How many flow runs the test session's Prefect server holds."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def count() -> int:
        with temporary_settings(updates={PREFECT_API_URL: api}):
            async with get_client() as client:
                return await client.count_flow_runs()

    return asyncio.run(count())


# A bad inventory file: each problem named as FILE: entry: problem.

FIELD_PROBLEMS_TOML = """
name = "broken"
colour = "blue"

[ssh]
port = 70000
known_hosts = "/etc/dwops/known_hosts"
client_key = { file = "/etc/dwops/key", env = "DWOPS_KEY" }

[hosts.web01]
address = "127.0.0.1"
roles = "web"

[services.web]
hosts = []

[database]
address = "127.0.0.1"
password = { block = "dwops-db-password" }

[aws]
region = "mars"
aurora_cluster = "dw"
ses_identity = "example.org"
waf_ip_set = "x"
waf_scope = "GLOBAL"
alb = { load_balancer = "lb", target_group = "tg", targets = {} }
"""

FIELD_PROBLEMS = [
    ("colour", "unknown key (a typo?)"),
    ("ssh.port", "less than or equal to 65535"),
    ("ssh.client_key", "exactly one of block, file or env"),
    ("hosts.web01.roles", "valid list"),
    ("services.web.hosts", "at least 1 item"),
    ("database.user", "Field required"),
    ("aws.region", "should match pattern"),
    ("aws.waf_scope", "'REGIONAL' or 'CLOUDFRONT'"),
]

CROSS_REFERENCE_PROBLEMS = [
    ("hosts.Web_01", "not a valid host name"),
    ("services.web.hosts", "unknown host 'va-web09'"),
    ("commands.Restart", "command names are lower_snake_case"),
    ("commands.uptime", "placeholder {0} must be a plain name"),
    ("commands.hostname", "bad template 'a; b; c {'"),  # once crashed the loader
    ("aws.alb.targets", "unknown host 'va-web10'"),
]


def _cross_reference_problems_file(tmp_path: Path) -> Path:
    """The lab's inventory with six problems across entries."""
    from lab.config import state_dir

    text = (state_dir() / "lab" / "inventory.toml").read_text()
    edits = [
        ('hostname = "hostname"', 'hostname = "a; b; c {"\nRestart = "bin/restart"'),
        ('uptime = "uptime"', 'uptime = "uptime {0}"'),
        ('[hosts.va-web01]', '[hosts.Web_01]\naddress = "127.10.0.99"\n\n[hosts.va-web01]'),
        ('hosts = ["va-web01", "va-web02",', 'hosts = ["va-web09", "va-web01", "va-web02",'),
        ('targets = { va-web01 =', 'targets = { va-web10 = "127.10.0.20", va-web01 ='),
    ]
    for old, new in edits:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path = tmp_path / "cross-reference-problems.toml"
    path.write_text(text)
    return path


def _problem_lines(e: InventoryError) -> list[str]:
    return [line.strip() for line in str(e).splitlines()[1:]]


def test_a_bad_inventory_file_names_every_problem(lab: LabConfig, tmp_path: Path):
    path = tmp_path / "field-problems.toml"
    path.write_text(FIELD_PROBLEMS_TOML)
    with pytest.raises(InventoryError) as field_errors:
        load_inventory(path)
    cross = _cross_reference_problems_file(tmp_path)
    with pytest.raises(InventoryError) as cross_errors:
        load_inventory(cross)
    for e, where, wanted in ((field_errors.value, path, FIELD_PROBLEMS),
                             (cross_errors.value, cross, CROSS_REFERENCE_PROBLEMS)):
        lines = _problem_lines(e)
        assert str(e).startswith("bad inventory\n")
        for entry, problem in wanted:
            assert any(line.startswith(f"{where}: {entry}: ") and problem in line
                       for line in lines), (entry, problem, lines)
        assert len(lines) == len(e.problems) >= len(wanted)
    # The files the inventory path can name by mistake or malice are refused, not read.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it to read would wait forever for a writer
    for p, why in ((fifo, "not a regular file"), (tmp_path, "not a regular file"),
                   (Path(sys.executable).resolve(), "not UTF-8 text")):
        with pytest.raises(InventoryError, match=re.escape(f"{p}: (top level): {why}")):
            load_inventory(p)


def test_a_run_outside_dwops_run_takes_inventory_names_not_paths(lab: LabConfig, monkeypatch,
                                                                 tmp_path: Path):
    """A run a worker executes (triggered through the API) must not read whatever file its caller
    names: only `lab`, `production` or the worker's own DWOPS_INVENTORY; `dwops run` on the
    operator's machine takes paths (the bad-inventory tests above go through it)."""
    from dwops.inventory import PATHS_ALLOWED, resolve_inventory

    lab_file = str(lab.lab_dir / "inventory.toml")
    monkeypatch.delenv(PATHS_ALLOWED, raising=False)
    monkeypatch.setenv("DWOPS_INVENTORY", "lab")
    for path in ("/etc/shadow", lab_file, str(tmp_path)):
        with pytest.raises(InventoryError) as e:
            resolve_inventory(path)
        assert str(e.value) == (f"bad inventory\n  {path}: (top level): not an inventory name (lab "
                                "or production); a path is taken only by `dwops run` on your own "
                                "machine or as the worker's DWOPS_INVENTORY")
    assert resolve_inventory("lab").name == "lab"
    monkeypatch.setenv("DWOPS_INVENTORY", lab_file)  # the worker's own file, set by its operator
    assert resolve_inventory(lab_file).name == "lab"
    monkeypatch.setenv(PATHS_ALLOWED, "allow")  # what `dwops run` sets
    assert resolve_inventory(lab_file).name == "lab"


def test_a_command_the_inventory_does_not_allow_is_refused_before_connecting(
        lab: LabConfig, lab_inventory: Inventory):
    """The gap left by test_only_inventory_commands_run: the refusal comes before any
    connection is opened (no sshd logs one)."""
    from lab import services
    from tasks.ssh import SshPool

    logs = SshdLogs({h: services.find(lab, "sshd", h).logfile for h in ("va-web01", "dfw-admin01")})

    async def go() -> tuple[list[str], int]:
        refused = []
        async with SshPool(lab_inventory) as pool:
            for host, name in (("va-web01", "rm_everything"), ("va-web01", "restart_jobs"),
                               ("va-web01", "hostname; id"), ("dfw-admin01", "restart_webs"),
                               ("dfw-admin01", "web.restart")):
                with pytest.raises(KeyError, match="allows no command") as e:
                    await pool.run(host, name)
                refused.append(str(e.value))
            return refused, len(pool._conns)

    refused, open_connections = asyncio.run(go())
    assert len(refused) == 5 and open_connections == 0
    assert logs.new_connections() == {"va-web01": [], "dfw-admin01": []}


# -- promise 8: secrets --------------------------------------------------------------------------


def _forms(label: str, value: bytes) -> dict[str, str]:
    """The secret as text, hex and base64 (standard and URL-safe, at each of the three byte
    alignments it can have inside a longer encoded string)."""
    out = {label: value.decode(errors="replace"), f"{label} (hex)": value.hex()}
    for k in range(3):
        for alphabet, encode in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
            text = encode(b"\0" * k + value).decode()
            out[f"{label} ({alphabet}, offset {k})"] = text[-(-8 * k // 6):(8 * (k + len(value))) // 6]
    return out


def _ssh_key_forms(label: str, pem: str) -> dict[str, str]:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_ssh_private_key(pem.encode(), password=None)
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    out = {**_forms(f"{label} private bytes", raw), **_forms(f"{label} file", pem.strip().encode())}
    body = pem.strip().splitlines()[1:-1]
    # The first body line encodes only the format's header, the same for every such key.
    out.update({f"{label} line {i}": line for i, line in enumerate(body) if i > 0})
    return out


def _leaks(corpus: dict[str, str], needles: dict[str, str]) -> list[str]:
    return [f"{what} in {where}" for where, text in corpus.items()
            for what, needle in needles.items() if needle in text]


def _inventory_variant(tmp_path: Path, name: str, *, client_key: Path, password: Path,
                       credentials: Path, unreachable_web01: bool = False) -> Path:
    from lab.config import state_dir

    text = (state_dir() / "lab" / "inventory.toml").read_text()
    edits = [
        (r'client_key = \{ file = "[^"]*" \}', f'client_key = {{ file = "{client_key}" }}'),
        (r'password = \{ file = "[^"]*" \}', f'password = {{ file = "{password}" }}'),
        (r'credentials = \{ file = "[^"]*" \}', f'credentials = {{ file = "{credentials}" }}'),
    ]
    if unreachable_web01:
        edits.append((r'(\[hosts\.va-web01\]\naddress = )"[^"]*"', r'\1"127.10.0.250"'))
    for pattern, new in edits:
        text, n = re.subn(pattern, new, text)
        assert n == 1, pattern
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def _secret_file(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


async def _server_records(api: str, since: datetime
                          ) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """Everything the Prefect server keeps about the flow runs started since `since`: their
    parameters and states, every log line, every artifact, every task run's state; and per run
    how many logs and artifacts there were."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId,
                                                FlowRunFilter, FlowRunFilterId,
                                                FlowRunFilterStartTime, LogFilter,
                                                LogFilterFlowRunId)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    corpus: dict[str, str] = {}
    tally: dict[str, dict[str, int]] = {}
    with temporary_settings(updates={PREFECT_API_URL: api}):  # the session's server, whatever
        async with get_client() as client:                      # imported prefect first
            runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since)))
            flows = {f.id: f.name for f in await client.read_flows()}
            for run in runs:
                name = f"{flows.get(run.flow_id)} run {run.name}"
                corpus[f"{name} parameters and state"] = json.dumps(
                    {"parameters": run.parameters, "state": run.state.name if run.state else None,
                     "message": run.state.message if run.state else None}, default=str)
                logs, offset = [], 0
                while True:
                    page = await client.read_logs(
                        log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])),
                        limit=200, offset=offset)
                    logs += page
                    offset += len(page)
                    if len(page) < 200:
                        break
                corpus[f"{name} logs"] = "\n".join(log.message for log in logs)
                artifacts = await client.read_artifacts(
                    artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
                for a in artifacts:
                    corpus[f"{name} artifact {a.key or a.id}"] = "\n".join(
                        [a.description or "", a.data if isinstance(a.data, str)
                         else json.dumps(a.data, default=str)])
                task_runs = await client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
                corpus[f"{name} task runs"] = "\n".join(
                    f"{t.name}: {t.state.name if t.state else ''}: {t.state.message if t.state else ''}"
                    for t in task_runs)
                tally[name] = {"logs": len(logs), "artifacts": len(artifacts), "tasks": len(task_runs)}
    return corpus, tally


def test_secrets_appear_in_no_log_artifact_report_or_error(
        lab: LabConfig, lab_inventory: Inventory, prefect_api: str, dwops_run, tmp_path: Path):
    import secrets as random

    import asyncssh

    from dwops import platform
    from dwops.secrets import read_secret

    key_file = Path(lab_inventory.ssh.client_key.file)
    password_file = Path(lab_inventory.database.password.file)
    lab_key, lab_password = key_file.read_text(), read_secret(lab_inventory.database.password)
    wrong_key = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    wrong_password = random.token_urlsafe(18)
    aws_secret = random.token_urlsafe(30)

    needles = {**_ssh_key_forms("lab SSH key", lab_key),
               **_forms("lab database password", lab_password.encode()),
               **_ssh_key_forms("wrong SSH key", wrong_key),
               **_forms("wrong database password", wrong_password.encode()),
               **_forms("AWS secret access key", aws_secret.encode())}
    credential = platform.credential()
    if credential:  # the Prefect API credential of `dwops up`, when there is one
        needles.update(_forms("Prefect API credential", credential.encode()))
        needles.update(_forms("Prefect API password", credential.partition(":")[2].encode()))
    assert all(len(n) >= 16 for n in needles.values()), "a needle too short to mean anything"
    # The scan finds a secret even inside a longer base64 string, at any alignment.
    for k in range(3):
        hidden = base64.b64encode(b"x" * k + lab_password.encode() + b"y").decode()
        assert _leaks({"planted": f"Authorization: Basic {hidden}"}, needles)

    # Inventories whose secrets are wrong (A) or swapped between files (B).
    s = tmp_path / "secrets"
    s.mkdir()
    inv_a = _inventory_variant(
        tmp_path, "wrong-secrets", unreachable_web01=True,
        client_key=_secret_file(s / "wrong-key", wrong_key),
        password=_secret_file(s / "wrong-password", wrong_password),
        credentials=_secret_file(s / "aws", f"[default]\naws_access_key_id = AKIAGUARANTEE\n"
                                            f"aws_secret_access_key = {aws_secret}\n"))
    inv_b = _inventory_variant(
        tmp_path, "swapped-secrets",
        client_key=_secret_file(s / "key-is-the-password", password_file.read_text()),
        password=_secret_file(s / "password-is-the-key", lab_key),
        credentials=_secret_file(s / "aws-is-the-key", lab_key))

    runs = [("fleet-status", (), ()), ("ensure-ddlockd", (), ()),
            ("restart-webs", ("dry_run=true",), ()),
            ("fleet-status", (), ("--inventory", str(inv_a))),
            ("fleet-status", (), ("--inventory", str(inv_b)))]
    since = datetime.now(timezone.utc)
    started = time.monotonic()
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda r: dwops_run(r[0], *r[1], extra=r[2], timeout=180), runs))
    run_seconds = time.monotonic() - started

    (rc_fleet, fleet, err_fleet), (rc_ddl, ddl, err_ddl), (rc_dry, dry, err_dry), \
        (rc_a, rep_a, err_a), (rc_b, rep_b, err_b) = results
    assert fleet is not None and fleet["inventory"] == "lab", err_fleet[-500:]
    assert rc_ddl == 0 and ddl["summary"].startswith("ensure-ddlockd on lab"), err_ddl[-500:]
    assert rc_dry == 0 and dry["dry_run"], err_dry[-500:]
    # The failing runs failed where they were meant to: SSH, MySQL and the AWS credentials.
    assert rc_a == 1 and rc_b == 1, (err_a[-500:], err_b[-500:])
    reasons_a = " ".join(c["reason"] for c in rep_a["checks"] if c["verdict"] == "CRIT")
    reasons_b = " ".join(c["reason"] for c in rep_b["checks"] if c["verdict"] == "CRIT")
    assert "refused our key" in reasons_a and "Access denied" in reasons_a, reasons_a
    assert "127.10.0.250" in reasons_a, reasons_a
    assert "Access denied" in reasons_b and "not an ini file" in reasons_b, reasons_b
    assert "Invalid private key" in reasons_b, reasons_b

    corpus, tally = asyncio.run(_server_records(prefect_api, since))
    assert len(tally) == len(runs), tally
    assert all(t["logs"] > 0 and t["artifacts"] > 0 for t in tally.values()), tally
    for (name, params, extra), (rc, report, err) in zip(runs, results):
        corpus[f"CLI {name} {params} {extra} stdout"] = json.dumps(report, ensure_ascii=False)
        corpus[f"CLI {name} {params} {extra} stderr"] = err
    home = Path(os.environ["PREFECT_HOME"])
    corpus["Prefect server log"] = (home / "server.log").read_text(errors="replace")
    stored = [f for f in (home / "storage").glob("*") if f.is_file()]
    for f in stored:  # persisted results: base64 of pickles
        raw = f.read_bytes()
        corpus[f"stored result {f.name}"] = raw.decode(errors="replace")
        try:
            corpus[f"stored result {f.name} decoded"] = base64.b64decode(raw).decode(errors="replace")
        except ValueError:
            pass

    leaks = _leaks(corpus, needles)
    assert not leaks, leaks
    print(f"\nsecrets: {len(needles)} forms of {5 + 2 * bool(credential)} secrets searched in "
          f"{len(corpus)} records ({sum(t['logs'] for t in tally.values())} log lines, "
          f"{sum(t['artifacts'] for t in tally.values())} artifacts, "
          f"{sum(t['tasks'] for t in tally.values())} task runs of {len(tally)} flow runs, "
          f"{len(runs)} CLI outputs, the server log, {len(stored)} stored results; "
          f"{sum(len(t) for t in corpus.values()) // 1024} KiB): none found; runs took "
          f"{run_seconds:.1f} s")
