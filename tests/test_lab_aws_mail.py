"""The lab's AWS stand-in (moto, seeded by lab.aws) and its mail host (real Postfix, lab.mail).

Everything here runs against the running lab (tests/conftest.py's `lab` and `lab_inventory`):
AWS is read with plain boto3, Postfix with its own commands and, like the runbook's tasks, over
SSH on dfw-mail01 with the project's SSH client. The lab is shared with other test files running
at the same time, so these tests only read it; the one test that needs a Postfix of its own starts
a short-lived second instance on 127.99.4.x and removes it again.
"""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import datetime as dt
import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from dwops.inventory import Inventory
from lab import aws as lab_aws
from lab import mail as lab_mail
from lab import procs, services
from lab.config import Aws, Database, LabConfig
from tasks.ssh import SshPool

pytestmark = pytest.mark.lab

# Addresses of this test file's own short-lived instances (127.99.4.1-20 are this file's to use).
UNUSED_AWS_ADDRESS = "127.99.4.1"  # private configs point AWS and the database at nothing
UNUSED_DB_ADDRESS = "127.99.4.2"
SPARE_MAIL_ADDRESS = "127.99.4.4"  # a second, short-lived Postfix instance
NOTHING_LISTENS = "127.99.4.18"  # a MariaDB address where nothing listens
DEAD_RELAY = "127.99.4.19"

# The lab's six webs, by the address the target group registers them under.
WEB_ADDRESSES = {f"127.10.0.{i}" for i in range(11, 17)}
# How recent the metrics publisher's newest data point must be (it publishes every 5 s).
METRICS_MAX_AGE = dt.timedelta(seconds=15)
# How long to wait for another test file's drained web to come back into the target group.
DRAIN_SETTLE_SECONDS = 20.0

FIXTURES = Path(__file__).parent / "fixtures" / "postfix"


def private_config(lab: LabConfig, root: Path, mail_address: str = SPARE_MAIL_ADDRESS) -> LabConfig:
    """A copy of the lab's config whose state lives in `root`, with dfw-mail01 on `mail_address`
    and AWS, the database and the relay on 127.99.4.x, so nothing in it reaches the running lab."""
    lab_dir = root / "lab"
    hosts = [
        h.model_copy(update={"address": mail_address}) if h.name == lab_mail.HOST else h
        for h in lab.hosts
    ]
    return lab.model_copy(
        update={
            "state_dir": str(root),
            "hosts": hosts,
            "dead_relay": DEAD_RELAY,
            "db": Database(
                address=UNUSED_DB_ADDRESS,
                password_file=str(lab_dir / "secrets" / "db-password"),
                socket=str(lab_dir / "mariadb" / "mysqld.sock"),
            ),
            "aws": Aws(
                address=UNUSED_AWS_ADDRESS,
                credentials_file=str(lab_dir / "secrets" / "aws-credentials"),
            ),
        }
    )


def traversable_tempdir(prefix: str) -> Path:
    """A fresh folder in /tmp that the postfix user can traverse (mkdtemp makes it 0700)."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(root, 0o755)
    return root


# -- plain boto3 against the lab's moto server --------------------------------------------------


def aws(lab: LabConfig, service: str):
    parser = configparser.ConfigParser()
    parser.read(lab.aws.credentials_file)
    return boto3.client(
        service,
        endpoint_url=lab.aws_endpoint_url,
        region_name=lab.aws.region,
        aws_access_key_id=parser["default"]["aws_access_key_id"],
        aws_secret_access_key=parser["default"]["aws_secret_access_key"],
        config=Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 2}, proxies={}),
    )


def registered_targets(lab: LabConfig, elb) -> set[tuple[str, int]]:
    """The target group's (Id, Port) targets, once it holds every web again.

    Another test file may drain a web for a few seconds (test_lab_web deregisters one and
    registers it back). While the targets are a strict subset of the webs, wait for that to end,
    up to DRAIN_SETTLE_SECONDS; anything else (all six, or a stranger) is returned at once.
    """
    webs = {(h.address, lab.ports.web) for h in lab.hosts_with("web")}
    deadline = time.monotonic() + DRAIN_SETTLE_SECONDS
    while True:
        health = elb.describe_target_health(TargetGroupArn=lab.aws.target_group_arn)
        found = {
            (t["Target"]["Id"], t["Target"]["Port"]) for t in health["TargetHealthDescriptions"]
        }
        if found == webs or not found < webs or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_aurora_cluster_has_one_writer_and_one_reader(lab: LabConfig) -> None:
    cluster = aws(lab, "rds").describe_db_clusters(DBClusterIdentifier=lab.aws.aurora_cluster)[
        "DBClusters"
    ][0]
    assert cluster["Engine"] == "aurora-mysql"
    members = {m["DBInstanceIdentifier"]: m["IsClusterWriter"] for m in cluster["DBClusterMembers"]}
    assert members == {lab.aws.aurora_writer: True, lab.aws.aurora_reader: False}
    assert sorted(members.values()) == [False, True]  # exactly one writer and one reader


def test_ses_identity_is_verified_and_quota_readable(lab: LabConfig) -> None:
    ses = aws(lab, "ses")
    attrs = ses.get_identity_verification_attributes(Identities=[lab.aws.ses_identity])
    assert attrs["VerificationAttributes"][lab.aws.ses_identity]["VerificationStatus"] == "Success"
    quota = ses.get_send_quota()
    assert quota["Max24HourSend"] > 0
    assert quota["SentLast24Hours"] >= 1
    points = ses.get_send_statistics()["SendDataPoints"]
    assert sum(p["DeliveryAttempts"] for p in points) >= 1


def test_target_group_has_the_six_webs(lab: LabConfig) -> None:
    elb = aws(lab, "elbv2")
    tg = elb.describe_target_groups(TargetGroupArns=[lab.aws.target_group_arn])["TargetGroups"][0]
    assert tg["TargetGroupName"] == lab.aws.target_group
    assert (tg["Protocol"], tg["Port"], tg["TargetType"]) == ("HTTP", lab.ports.web, "ip")
    assert tg["HealthCheckPath"] == "/admin/healthy"
    assert lab.aws.load_balancer_arn in tg["LoadBalancerArns"]
    targets = registered_targets(lab, elb)
    assert targets == {(address, lab.ports.web) for address in WEB_ADDRESSES}
    assert targets == {(h.address, lab.ports.web) for h in lab.hosts_with("web")}

    lb = elb.describe_load_balancers(LoadBalancerArns=[lab.aws.load_balancer_arn])[
        "LoadBalancers"
    ][0]
    assert lb["LoadBalancerName"] == lab.aws.load_balancer and lb["Type"] == "application"
    assert len(lb["AvailabilityZones"]) == 2
    listeners = elb.describe_listeners(LoadBalancerArn=lab.aws.load_balancer_arn)["Listeners"]
    forwards = [a["TargetGroupArn"] for ls in listeners for a in ls["DefaultActions"]]
    assert lab.aws.target_group_arn in forwards


def test_cloudfront_distribution_points_at_the_alb(lab: LabConfig) -> None:
    dns = aws(lab, "elbv2").describe_load_balancers(LoadBalancerArns=[lab.aws.load_balancer_arn])[
        "LoadBalancers"
    ][0]["DNSName"]
    dist = aws(lab, "cloudfront").get_distribution(Id=lab.aws.cloudfront_distribution_id)[
        "Distribution"
    ]
    assert dist["Id"] == lab.aws.cloudfront_distribution_id
    config = dist["DistributionConfig"]
    assert config["Comment"] == "dreamwidth www"
    assert [o["DomainName"] for o in config["Origins"]["Items"]] == [dns]


def test_waf_ip_set_holds_documentation_addresses(lab: LabConfig) -> None:
    ip_set = aws(lab, "wafv2").get_ip_set(
        Name=lab.aws.waf_ip_set, Scope=lab_aws.WAF_SCOPE, Id=lab.aws.waf_ip_set_id
    )["IPSet"]
    assert (ip_set["Name"], ip_set["Id"]) == (lab.aws.waf_ip_set, lab.aws.waf_ip_set_id)
    assert "192.0.2.0/24" in ip_set["Addresses"]
    assert ip_set["IPAddressVersion"] == "IPV4"


def aws_inventory(lab: LabConfig) -> dict[str, object]:
    """Everything seeding creates, counted by name, read with plain boto3."""
    rds, elb, ec2 = aws(lab, "rds"), aws(lab, "elbv2"), aws(lab, "ec2")
    clusters = [
        c for c in rds.describe_db_clusters()["DBClusters"]
        if c["DBClusterIdentifier"] == lab.aws.aurora_cluster
    ]
    instances = [
        i["DBInstanceIdentifier"] for i in rds.describe_db_instances()["DBInstances"]
        if i.get("DBClusterIdentifier") == lab.aws.aurora_cluster
    ]
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "tag:Name", "Values": ["dw-lab"]}])["Vpcs"]
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpcs[0]["VpcId"]]}])
    lbs = [
        lb["LoadBalancerArn"] for lb in elb.describe_load_balancers()["LoadBalancers"]
        if lb["LoadBalancerName"] == lab.aws.load_balancer
    ]
    tgs = [
        tg["TargetGroupArn"] for tg in elb.describe_target_groups()["TargetGroups"]
        if tg["TargetGroupName"] == lab.aws.target_group
    ]
    listeners = elb.describe_listeners(LoadBalancerArn=lbs[0])["Listeners"]
    dists = [
        d["Id"]
        for d in aws(lab, "cloudfront").list_distributions()["DistributionList"].get("Items", [])
        if d["Comment"] == "dreamwidth www"
    ]
    ip_sets = [
        s["Id"] for s in aws(lab, "wafv2").list_ip_sets(Scope=lab_aws.WAF_SCOPE)["IPSets"]
        if s["Name"] == lab.aws.waf_ip_set
    ]
    return {
        "clusters": len(clusters),
        "instances": sorted(instances),
        "vpcs": len(vpcs),
        "subnets": len(subnets["Subnets"]),
        "load_balancers": lbs,
        "target_groups": tgs,
        "listeners": len(listeners),
        "targets": sorted(registered_targets(lab, elb)),
        "distributions": dists,
        "ip_sets": ip_sets,
        "ses_sent": aws(lab, "ses").get_send_quota()["SentLast24Hours"],
    }


def test_seeding_the_running_lab_again_changes_nothing(lab: LabConfig) -> None:
    before = aws_inventory(lab)
    again = lab_aws.seed(lab)
    again = lab_aws.seed(again)
    assert aws_inventory(lab) == before
    assert again.aws == lab.aws
    assert before["instances"] == sorted([lab.aws.aurora_writer, lab.aws.aurora_reader])
    assert (before["clusters"], before["vpcs"], before["subnets"]) == (1, 1, 2)
    assert before["load_balancers"] == [lab.aws.load_balancer_arn]
    assert before["target_groups"] == [lab.aws.target_group_arn]
    assert before["listeners"] == 1
    assert before["targets"] == sorted((a, lab.ports.web) for a in WEB_ADDRESSES)
    assert before["distributions"] == [lab.aws.cloudfront_distribution_id]
    assert before["ip_sets"] == [lab.aws.waf_ip_set_id]


def test_seeding_leaves_a_drained_web_drained(lab: LabConfig) -> None:
    # Against a target group of our own in the lab's VPC (the lab's group is other tests' to
    # drain): seeding registers the webs in an empty group, then never re-registers a web that
    # was deregistered on purpose.
    elb = aws(lab, "elbv2")
    vpc = aws(lab, "ec2").describe_vpcs(Filters=[{"Name": "tag:Name", "Values": ["dw-lab"]}])[
        "Vpcs"
    ][0]["VpcId"]
    name = f"dw-test-{os.getpid()}"
    arn = elb.create_target_group(
        Name=name, Protocol="HTTP", Port=lab.ports.web, VpcId=vpc, TargetType="ip"
    )["TargetGroups"][0]["TargetGroupArn"]
    try:
        def ids() -> set[str]:
            health = elb.describe_target_health(TargetGroupArn=arn)["TargetHealthDescriptions"]
            return {t["Target"]["Id"] for t in health}

        lab_aws.register_webs(lab, arn)
        assert ids() == WEB_ADDRESSES
        drained = {"Id": "127.10.0.11", "Port": lab.ports.web}
        elb.deregister_targets(TargetGroupArn=arn, Targets=[drained])
        lab_aws.register_webs(lab, arn)
        assert ids() == WEB_ADDRESSES - {"127.10.0.11"}
    finally:
        elb.delete_target_group(TargetGroupArn=arn)
    left = elb.describe_target_groups()["TargetGroups"]
    assert name not in {tg["TargetGroupName"] for tg in left}


def test_write_credentials_is_private(lab: LabConfig, tmp_path: Path) -> None:
    cfg = private_config(lab, tmp_path)
    path = lab_aws.write_credentials(cfg)
    assert path == tmp_path / "lab" / "secrets" / "aws-credentials"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    parser = configparser.ConfigParser()
    parser.read(path)
    assert parser["default"]["aws_access_key_id"] and parser["default"]["aws_secret_access_key"]


# -- the Aurora metrics publisher (metrics@aws) -------------------------------------------------


def recent_datapoints(lab: LabConfig, metric: str) -> tuple[dt.datetime, list[dict]]:
    """(now, the cluster's data points of `metric` from the last METRICS_MAX_AGE), plain boto3."""
    now = dt.datetime.now(dt.timezone.utc)
    points = aws(lab, "cloudwatch").get_metric_statistics(
        Namespace="AWS/RDS",
        MetricName=metric,
        Dimensions=[{"Name": "DBClusterIdentifier", "Value": lab.aws.aurora_cluster}],
        StartTime=now - METRICS_MAX_AGE,
        EndTime=now + dt.timedelta(seconds=5),
        Period=60,
        Statistics=["Average", "Maximum", "SampleCount"],
    )["Datapoints"]
    return now, points


def test_metrics_publisher_keeps_aurora_metrics_current(lab: LabConfig) -> None:
    publisher = services.find(lab, "metrics", services.AWS)
    assert procs.read_pid(publisher.pidfile), "metrics@aws is not running"
    for metric, unit in (("CPUUtilization", "Percent"), ("DatabaseConnections", "Count")):
        now, points = recent_datapoints(lab, metric)
        assert points, f"no {metric} for {lab.aws.aurora_cluster} in the last {METRICS_MAX_AGE}"
        newest = max(p["Timestamp"] for p in points)
        # moto reads StartTime to the second: allow that second.
        assert now - METRICS_MAX_AGE - dt.timedelta(seconds=1) <= newest <= now + dt.timedelta(
            seconds=1
        ), (metric, newest, now)
        assert all(p["Unit"] == unit for p in points), points
        if metric == "CPUUtilization":
            assert all(0.0 <= p["Maximum"] <= 100.0 for p in points), points
        else:
            # The lab's workers, webs and feeders keep connections open (the publisher leaves
            # its own out): a publisher that measured nothing would say 0.
            assert max(p["Maximum"] for p in points) >= 1, points
    counters = json.loads((lab.counters_dir / "aurora.json").read_text())
    assert counters["mariadb_up"] is True and counters["published"] is True, counters
    assert counters["mariadb_pid"] == procs.read_pid(lab.lab_dir / "mariadb" / "mysqld.pid")
    assert time.time() - counters["updated"] < METRICS_MAX_AGE.total_seconds()


def test_metrics_round_survives_mariadb_down(lab: LabConfig, tmp_path: Path) -> None:
    # A copy of the lab whose MariaDB is nowhere: no pidfile, nothing listening. It measures
    # nothing, so it puts nothing into the lab's CloudWatch.
    cfg = lab.model_copy(
        update={
            "state_dir": str(tmp_path),
            "db": lab.db.model_copy(update={"address": NOTHING_LISTENS}),
        }
    )
    meter = lab_aws.AuroraMeter(cfg)
    counters = lab_aws.publish_once(cfg, meter, aws(lab, "cloudwatch"))
    assert counters["mariadb_up"] is False and counters["metrics"] == {}
    assert counters["published"] is False
    assert json.loads((cfg.counters_dir / "aurora.json").read_text())["mariadb_up"] is False


def test_cpu_and_rates_are_computed_from_deltas() -> None:
    stat_line = "123 (mariadbd) S 1 123 123 0 -1 4194560 1 0 0 0 250 50 0 0 20 0 30 0 1 2 3"
    assert lab_aws.parse_proc_stat(stat_line) == 300
    a = lab_aws.CpuSample(pid=123, ticks=300, at=10.0)
    b = lab_aws.CpuSample(pid=123, ticks=400, at=15.0)
    assert lab_aws.cpu_percent(a, b, ncpu=2, hz=100) == pytest.approx(10.0)
    assert lab_aws.cpu_percent(a, lab_aws.CpuSample(pid=9, ticks=1, at=15.0), 2, 100) is None
    rows = [("Threads_connected", "4"), ("Threads_running", "2"), ("Questions", "100"),
            ("Com_select", "40"), ("Com_insert", "5"), ("Com_update", "5")]
    s1 = lab_aws.parse_global_status(rows, at=0.0)
    s2 = lab_aws.parse_global_status(
        [("Questions", "151"), ("Com_select", "60"), ("Com_insert", "15"), ("Com_update", "5")],
        at=5.0,
    )
    assert (s1.threads_connected, s1.threads_running, s1.com_dml) == (4, 2, 10)
    assert lab_aws.status_rates(s1, s2) == {
        "Queries": 10.0, "SelectThroughput": 4.0, "DMLThroughput": 2.0
    }


# -- dfw-mail01's Postfix -----------------------------------------------------------------------


def postqueue(lab: LabConfig, *args: str) -> str:
    """The lab instance's real postqueue, run locally against its config directory."""
    config_dir = lab.host_root(lab_mail.HOST) / "etc" / "postfix"
    return subprocess.run(
        ["/usr/sbin/postqueue", "-c", str(config_dir), *args],
        check=True, capture_output=True, text=True, timeout=30,
    ).stdout


def queue_over_ssh(inventory: Inventory, settle: float = 5.0) -> list[dict]:
    """`mail.queue` (postqueue -j) on dfw-mail01 over SSH, parsed line by line.

    Postfix's queue manager retries deferred mail now and then, moving it through the active
    queue for a moment: read again (same connection) until nothing is in flight, up to `settle` s.
    """
    async def go() -> list[dict]:
        async with SshPool(inventory) as pool:
            deadline = time.monotonic() + settle
            while True:
                result = await pool.run(lab_mail.HOST, "mail.queue", timeout=30)
                assert result.ok, (result.exit_status, result.stderr)
                assert result.command == "postqueue -j"
                messages = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
                if all(m["queue_name"] == "deferred" for m in messages):
                    return messages
                if time.monotonic() > deadline:
                    return messages
                await asyncio.sleep(0.2)

    return asyncio.run(go())


def test_postqueue_over_ssh_shows_mail_deferred_at_the_dead_relay(
    lab: LabConfig, lab_inventory: Inventory
) -> None:
    messages = queue_over_ssh(lab_inventory)
    deferred = [m for m in messages if m["queue_name"] == "deferred"]
    assert len(deferred) >= 5, messages  # `dwops lab up` defers five
    assert len(deferred) == len(messages), messages
    for m in deferred:
        assert {"queue_id", "arrival_time", "message_size", "sender"} <= m.keys()
        assert m["recipients"]
        for r in m["recipients"]:
            assert f"connect to {lab.dead_relay}[{lab.dead_relay}]:{lab.ports.smtp}" in r[
                "delay_reason"
            ], r
            assert "Connection refused" in r["delay_reason"]
    # The host's bin/postqueue wraps the lab's own instance, not the system's Postfix.
    assert {m["queue_id"] for m in messages} == {
        json.loads(line)["queue_id"] for line in postqueue(lab, "-j").splitlines()
    }
    assert f"in {len(messages)} Requests." in postqueue(lab, "-p").splitlines()[-1]


def test_postqueue_wrapper_runs_the_instances_postqueue(lab: LabConfig, tmp_path: Path) -> None:
    wrapper = lab_mail.postqueue_wrapper(lab)
    assert (lab.host_root(lab_mail.HOST) / "bin" / "postqueue").read_text() == wrapper
    script = tmp_path / "postqueue"
    script.write_text(wrapper)
    script.chmod(0o755)
    out = subprocess.run([str(script), "-j"], check=True, capture_output=True, text=True).stdout
    assert {json.loads(x)["queue_id"] for x in out.splitlines()} == {
        m["queue_id"] for m in map(json.loads, postqueue(lab, "-j").splitlines())
    }


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(address, port) of the TCP sockets that process `pid` listens on (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and inode in inodes:  # LISTEN
            hex_addr, hex_port = local.split(":")
            address = socket.inet_ntoa(bytes.fromhex(hex_addr)[::-1])
            found.add((address, int(hex_port, 16)))
    return found


def test_postfix_listens_on_the_hosts_address_only(lab: LabConfig) -> None:
    pid = lab_mail.is_running(lab)
    assert pid
    assert listening_addresses(pid) == {(lab.host(lab_mail.HOST).address, lab.ports.smtp)}
    config_dir = lab.host_root(lab_mail.HOST) / "etc" / "postfix"
    settings = subprocess.run(
        ["/usr/sbin/postconf", "-c", str(config_dir), "-h", "smtp_dns_support_level",
         "relayhost", "inet_protocols", "smtpd_peername_lookup"],
        check=True, capture_output=True, text=True,
    ).stdout.split()
    assert settings == ["disabled", f"[{lab.dead_relay}]:25", "ipv4", "no"]


def test_postfix_start_and_stop_are_idempotent(lab: LabConfig) -> None:
    # A second, short-lived instance on 127.99.4.4 under its own /tmp root; the lab's stays as is.
    lab_pid = lab_mail.is_running(lab)
    assert lab_pid
    root = traversable_tempdir("dwops-mail-")
    cfg = private_config(lab, root)
    try:
        assert lab_mail.stop(cfg) is None
        pid = lab_mail.start(cfg)
        assert pid != lab_pid
        assert lab_mail.start(cfg) == pid == lab_mail.is_running(cfg)
        assert procs.wait_port(SPARE_MAIL_ADDRESS, cfg.ports.smtp, 10)
        assert listening_addresses(pid) == {(SPARE_MAIL_ADDRESS, cfg.ports.smtp)}
        assert lab_mail.read_queue(cfg) == []
        assert "Mail queue is empty" in lab_mail.postqueue(cfg, "-p")
        assert lab_mail.stop(cfg) == pid
        assert lab_mail.is_running(cfg) is None
        assert lab_mail._session_members(pid) == []
        assert lab_mail.stop(cfg) is None
    finally:
        lab_mail.stop(cfg)
        shutil.rmtree(root, ignore_errors=True)
    assert lab_mail.is_running(lab) == lab_pid


def test_untraversable_state_path_is_a_clear_error(lab: LabConfig) -> None:
    root = traversable_tempdir("dwops-mail-")
    try:
        private = root / "private"
        private.mkdir()
        os.chmod(private, 0o700)
        cfg = private_config(lab, private / "state")
        with pytest.raises(lab_mail.PostfixPathError, match=f"cannot traverse {private} "):
            lab_mail.write_config(cfg)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_master_cf_keeps_debians_layout_without_chroot() -> None:
    debian = Path("/etc/postfix/master.cf").read_text()
    ours = lab_mail.master_cf(debian, "127.20.0.41:25")
    assert len(ours.splitlines()) == len(debian.splitlines())
    services_ = [ln.split() for ln in ours.splitlines() if ln and ln[0] not in "# \t"]
    assert services_ and all(fields[4] == "n" for fields in services_)
    assert ["127.20.0.41:25", "inet"] in [fields[:2] for fields in services_]
    assert not any(fields[:2] == ["smtp", "inet"] for fields in services_)


def test_saved_postqueue_outputs_parse() -> None:
    from tasks.mail import parse_postqueue_json

    messages = parse_postqueue_json((FIXTURES / "postqueue-j.txt").read_text())
    assert messages and all(m.queue_name == "deferred" for m in messages)
    assert all("Connection refused" in (r.delay_reason or "") for m in messages
               for r in m.recipients)
    last = (FIXTURES / "postqueue-p.txt").read_text().splitlines()[-1]
    assert last == f"-- 2 Kbytes in {len(messages)} Requests."
