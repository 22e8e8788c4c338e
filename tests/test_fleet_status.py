"""fleet-status against the lab: it reports exactly the state a test puts into the lab, a host
that is down is a CRIT line (never a crash), and the rest of the fleet is still reported."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import ctl, mail
from lab.config import LabConfig
from lab.jobs import enqueue_import, enqueue_job

PROJECT = Path(__file__).resolve().parent.parent
SYSTEMS = {"ssh", "gearman", "ddlockd", "workers", "memcached", "schwartz", "aurora-sql", "aurora",
           "web", "alb", "postfix", "ses", "cloudfront", "waf"}


def dwops_status(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dwops.cli", "status", *args],
                          capture_output=True, text=True, timeout=240, cwd=PROJECT,
                          env={**os.environ, **env})


def by_key(report: dict) -> dict[tuple[str, str], dict]:
    return {(c["system"], c["host"]): c for c in report["checks"]}


def test_every_system_of_the_notes_is_reported(lab: LabConfig, prefect_api: str):
    out = dwops_status("--json")
    report = json.loads(out.stdout)
    assert {c["system"] for c in report["checks"]} == SYSTEMS
    checks = by_key(report)
    for h in lab.hosts:
        assert checks[("ssh", h.name)]["verdict"] == "OK"
    for h in lab.hosts_with("web"):
        assert ("web", h.name) in checks and ("alb", h.name) in checks
    crit = [c for c in report["checks"] if c["verdict"] == "CRIT"]
    assert not crit and out.returncode == 0, (crit, out.stderr[-2000:])
    aurora = checks[("aurora", lab.aws.aurora_cluster)]
    assert aurora["figures"]["writer"] == lab.aws.aurora_writer
    assert aurora["figures"]["readers"] == [lab.aws.aurora_reader]
    assert checks[("postfix", "dfw-mail01")]["figures"]["total"] == len(mail.read_queue(lab))


def test_reports_exactly_what_was_put_into_the_lab(lab: LabConfig, prefect_api: str):
    probe = f"DW::Worker::StatusProbe{int(time.time())}"
    jobids = [enqueue_job(lab, probe, {"n": i}) for i in range(7)]
    user, userid = "statusprobe", 990001
    enqueue_import(lab, user, userid, 45)
    busy_host = wait_for_busy_import(lab, user)
    ctl.stop(lab, "ddlockd", "dfw-jobs02")
    ctl.stop(lab, "memcached", "dfw-memc02")
    ctl.stop(lab, "sshd", "va-web04")
    try:
        out = dwops_status("--json")
    finally:
        ctl.start(lab, "sshd", "va-web04")
        ctl.start(lab, "memcached", "dfw-memc02")
        ctl.start(lab, "ddlockd", "dfw-jobs02")
        delete_jobs(lab, probe)
    assert out.returncode == 1, out.stderr[-2000:]  # CRIT
    report = json.loads(out.stdout)
    checks = by_key(report)

    # Every system is still reported, and every host of each.
    assert {c["system"] for c in report["checks"]} == SYSTEMS
    assert {h for (s, h) in checks if s == "ssh"} == {h.name for h in lab.hosts}

    schwartz = next(c for c in report["checks"] if c["system"] == "schwartz")
    assert schwartz["figures"]["functions"][probe]["ready"] == 7 == len(jobids)

    workers = checks[("workers", busy_host)]
    assert any(f"{user}({userid})" in b for b in workers["figures"]["busy"])
    assert workers["verdict"] == "OK"

    assert checks[("ddlockd", "dfw-jobs02")]["verdict"] == "CRIT"
    assert "unreachable" in checks[("ddlockd", "dfw-jobs02")]["reason"]
    assert checks[("ddlockd", "dfw-jobs01")]["verdict"] == "OK"

    assert checks[("memcached", "dfw-memc02")]["verdict"] == "CRIT"
    assert checks[("memcached", "dfw-memc01")]["verdict"] in ("OK", "WARN")
    # Dreamwidth's own status check on every web names the dead memcached.
    for h in lab.hosts_with("web"):
        assert checks[("web", h.name)]["verdict"] == "CRIT"
        assert "memcache 127.20.0.32:11211" in checks[("web", h.name)]["reason"]

    assert checks[("ssh", "va-web04")]["verdict"] == "CRIT"
    assert [h for (s, h), c in checks.items() if s == "ssh" and c["verdict"] != "OK"] == ["va-web04"]

    crit = {(c["system"], c["host"]) for c in report["checks"] if c["verdict"] == "CRIT"}
    expected = ({("ddlockd", "dfw-jobs02"), ("memcached", "dfw-memc02"), ("ssh", "va-web04")}
                | {("web", h.name) for h in lab.hosts_with("web")})
    assert crit == expected


def test_text_from_hosts_is_printed_as_text_never_as_markup(lab: LabConfig, prefect_api: str):
    """An import whose user name holds Rich markup (`[/x]` once crashed `dwops status`, `[red]`
    restyled it) shows in the importer's `ps` title on its jobs host, and so in the table."""
    user = "[/x][red]markupprobe[/red]"
    enqueue_import(lab, user, 990002, 30)
    busy_host = wait_for_busy_import(lab, user)
    out = dwops_status(COLUMNS="400")  # wide enough that no cell wraps
    assert out.returncode in (0, 1) and "Traceback" not in out.stderr, out.stderr[-2000:]
    [row] = [line for line in out.stdout.splitlines() if " workers " in line and busy_host in line]
    assert f"entries: {user}(990002)" in row, row


def test_run_names_and_report_summaries_are_printed_as_text_by_history(prefect_api: str):
    """`dwops history` prints what the Prefect server holds: a run's name (any API caller sets
    it) and its report's summary (which quotes hosts), as text."""
    from prefect import flow
    from prefect.artifacts import create_markdown_artifact
    from prefect.settings import PREFECT_API_URL, temporary_settings

    name, summary = "[/x][red]markup-run[/red]", "HALTED: [bold red][/x]from a host[/]"

    @flow(name="markup-probe", flow_run_name=name)
    def probe() -> None:
        create_markdown_artifact(key="markup-probe-report", markdown="probe", description=summary)

    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        probe()
    out = subprocess.run([sys.executable, "-m", "dwops.cli", "history", "markup-probe"],
                         capture_output=True, text=True, timeout=120, cwd=PROJECT,
                         env={**os.environ, "PREFECT_API_URL": prefect_api, "COLUMNS": "400"})
    assert out.returncode == 0, out.stderr[-2000:]
    [row] = [line for line in out.stdout.splitlines() if "markup-probe" in line and "│" in line]
    assert name in row and summary in row, row


def test_a_bad_inventory_is_refused_before_anything_runs(tmp_path: Path, prefect_api: str):
    bad = tmp_path / "bad.toml"
    bad.write_text((PROJECT / "inventory" / "production.toml").read_text()
                   .replace('hosts = ["dfw-memc01", "dfw-memc02"]', 'hosts = ["dfw-memc01", "dfw-memc09"]'))
    out = dwops_status("--inventory", str(bad))
    assert out.returncode == 2
    assert f"{bad}: services.memcached.hosts: unknown host 'dfw-memc09'" in out.stderr


def test_artifacts_are_keyed_so_runs_compare(prefect_api: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def read():
        with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
            async with get_client() as client:
                return await client.read_artifacts(artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=["fleet-status-lab", "fleet-status-lab-summary"])))

    artifacts = asyncio.run(read())
    tables = [a for a in artifacts if a.key == "fleet-status-lab"]
    summaries = [a for a in artifacts if a.key == "fleet-status-lab-summary"]
    assert len(tables) >= 2 and len(summaries) >= 2  # one version per run: a history
    assert any("CRIT" in (a.description or "") for a in tables)


def wait_for_busy_import(lab: LabConfig, user: str, timeout: float = 30) -> str:
    """The jobs host whose importer took `user`'s import (read from the lab's own ps)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for h in lab.hosts_with("jobs"):
            out = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True)
            mine = ctl.host_pids(lab, h.name)
            for line in out.stdout.splitlines()[1:]:
                pid, _, args = line.strip().partition(" ")
                if int(pid) in mine and f"[entries: {user}(" in args:
                    return h.name
        time.sleep(0.3)
    pytest.fail(f"no importer took {user}'s import within {timeout} s")


def delete_jobs(lab: LabConfig, funcname: str) -> None:
    import pymysql

    conn = pymysql.connect(host=lab.db.address, port=lab.ports.mysql, user=lab.db.user,
                           password=lab.db.password(), database=lab.db.schwartz_db, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute("DELETE job FROM job JOIN funcmap USING (funcid) WHERE funcname=%s",
                        (funcname,))
            cur.execute("DELETE FROM funcmap WHERE funcname=%s", (funcname,))
    finally:
        conn.close()
