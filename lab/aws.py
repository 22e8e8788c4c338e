"""The lab's AWS stand-in: seeding the moto server, and publishing the Aurora stand-in's metrics.

Production runs behind CloudFront -> WAF -> an Application Load Balancer -> the webs, sends mail
through SES and keeps its data in an Aurora MySQL cluster (production notes, "Traffic Flow",
"Outgoing Mail", Databases). The lab's moto server holds the same resources, created here:

- RDS: Aurora cluster `cfg.aws.aurora_cluster` (aurora-mysql) with a writer and a reader instance;
- SES: identity `cfg.aws.ses_identity`, verified, with a few sent messages for send statistics;
- EC2/ELBv2: a VPC with two subnets, ALB `cfg.aws.load_balancer`, target group
  `cfg.aws.target_group` (HTTP, `cfg.ports.web`, type ip, health check /admin/healthy) with the
  six webs registered by address, and an HTTP listener forwarding to it;
- CloudFront: a distribution "dreamwidth www" whose origin is the ALB's DNS name;
- WAFv2: IP set `cfg.aws.waf_ip_set` (scope `WAF_SCOPE`) holding documentation addresses.

moto has no metrics of its own, so `python -m lab.aws metrics` measures the MariaDB that stands in
for Aurora (process CPU from /proc, `SHOW GLOBAL STATUS`) every 5 s and puts the numbers into
CloudWatch under Aurora's real metric names (namespace AWS/RDS, dimension DBClusterIdentifier).

Commands: `python -m lab.aws seed --config PATH` (seeds, then saves the filled-in config) and
`python -m lab.aws metrics --config PATH [--interval SECONDS]` (runs until SIGTERM).
"""

from __future__ import annotations

import argparse
import configparser
import datetime as dt
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from lab.config import LabConfig, write_counters
from lab.procs import read_pid

log = logging.getLogger("lab.aws")

# -- what seeding creates (besides the names in cfg.aws) ----------------------------------------

AURORA_ENGINE = "aurora-mysql"
AURORA_INSTANCE_CLASS = "db.r6g.large"
# A dummy master password for the stand-in cluster: moto stores it, nothing ever uses it.
AURORA_MASTER_USER = "dw"
AURORA_MASTER_PASSWORD = "lab-not-a-secret"

SES_SENDER_LOCALPART = "noreply"
SES_SEED_MESSAGES = 3

VPC_NAME = "dw-lab"
VPC_CIDR = "10.20.0.0/16"
SUBNETS: list[tuple[str, str]] = [("10.20.1.0/24", "a"), ("10.20.2.0/24", "b")]
LISTENER_PORT = 80
HEALTH_CHECK_PATH = "/admin/healthy"

CLOUDFRONT_COMMENT = "dreamwidth www"
CLOUDFRONT_CALLER_REFERENCE = "dwops-lab-www"
CLOUDFRONT_ORIGIN_ID = "dw-alb"

# Production's WAF sits behind CloudFront in the traffic flow, so its IP set is a global
# (CLOUDFRONT-scope) one; moto supports REGIONAL and CLOUDFRONT equally. Real AWS only accepts
# CLOUDFRONT scope in us-east-1, which is the lab's region.
WAF_SCOPE = "CLOUDFRONT"
# RFC 5737 documentation ranges: data only, nothing ever talks to them.
WAF_ADDRESSES = ["192.0.2.0/24", "198.51.100.0/24"]

# -- the metrics publisher ----------------------------------------------------------------------

METRICS_NAMESPACE = "AWS/RDS"
METRICS_INTERVAL = 5.0

CLIENT_CONFIG = Config(
    connect_timeout=3,
    read_timeout=10,
    retries={"max_attempts": 2, "mode": "standard"},
    # Never through an HTTP proxy from the environment: the endpoint is a loopback address.
    proxies={},
)


# -- credentials and clients --------------------------------------------------------------------


def write_credentials(cfg: LabConfig) -> Path:
    """Write the lab's dummy AWS credentials (an ini file, `[default]`) with mode 0600."""
    path = Path(cfg.aws.credentials_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (
        "# The lab's AWS stand-in (a moto server) accepts any keys: these are not secrets.\n"
        "[default]\n"
        "aws_access_key_id = lab\n"
        "aws_secret_access_key = lab\n"
    )
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return path


def read_credentials(cfg: LabConfig) -> tuple[str, str]:
    """(access key id, secret key) from the `[default]` section of cfg.aws.credentials_file."""
    parser = configparser.ConfigParser()
    if not parser.read(cfg.aws.credentials_file):
        raise FileNotFoundError(f"{cfg.aws.credentials_file}: no AWS credentials for the lab")
    section = parser["default"]
    return section["aws_access_key_id"], section["aws_secret_access_key"]


_clients: dict[tuple[str, str, str, str, str], Any] = {}


def client(cfg: LabConfig, service: str) -> Any:
    """A boto3 client for `service` on the lab's moto server, with timeouts and no proxy.

    Clients are cached per endpoint, region, credentials and service (making one costs ~0.1 s).
    """
    key_id, secret = read_credentials(cfg)
    key = (cfg.aws_endpoint_url, cfg.aws.region, key_id, secret, service)
    if key not in _clients:
        _clients[key] = boto3.client(
            service,
            endpoint_url=cfg.aws_endpoint_url,
            region_name=cfg.aws.region,
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            config=CLIENT_CONFIG,
        )
    return _clients[key]


def _error_code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "")


# -- seeding (each step looks first, creates only what is missing) ------------------------------


def seed(cfg: LabConfig) -> LabConfig:
    """Create (or find) every AWS resource of the lab on the moto server; return cfg filled in.

    Idempotent: a second run against the same moto server reuses what exists and returns the same
    ids. The caller saves the returned config.
    """
    if not Path(cfg.aws.credentials_file).exists():
        write_credentials(cfg)
    ensure_aurora(cfg)
    ensure_ses(cfg)
    vpc_id, subnet_ids = ensure_vpc(cfg)
    lb_arn, lb_dns = ensure_load_balancer(cfg, subnet_ids)
    tg_arn = ensure_target_group(cfg, vpc_id)
    ensure_listener(cfg, lb_arn, tg_arn)
    register_webs(cfg, tg_arn)
    distribution_id = ensure_distribution(cfg, lb_dns)
    ip_set_id = ensure_waf_ip_set(cfg)
    aws = cfg.aws.model_copy(
        update={
            "load_balancer_arn": lb_arn,
            "target_group_arn": tg_arn,
            "cloudfront_distribution_id": distribution_id,
            "waf_ip_set_id": ip_set_id,
        }
    )
    return cfg.model_copy(update={"aws": aws})


def ensure_aurora(cfg: LabConfig) -> None:
    """The Aurora cluster with its writer (created first) and reader instances."""
    rds = client(cfg, "rds")
    try:
        rds.describe_db_clusters(DBClusterIdentifier=cfg.aws.aurora_cluster)
        log.info("aurora cluster %s exists", cfg.aws.aurora_cluster)
    except ClientError as exc:
        if _error_code(exc) != "DBClusterNotFoundFault":
            raise
        rds.create_db_cluster(
            DBClusterIdentifier=cfg.aws.aurora_cluster,
            Engine=AURORA_ENGINE,
            MasterUsername=AURORA_MASTER_USER,
            MasterUserPassword=AURORA_MASTER_PASSWORD,
            DatabaseName=cfg.db.site_db,
        )
        log.info("created aurora cluster %s", cfg.aws.aurora_cluster)
    # The first instance of a cluster becomes its writer: create the writer before the reader.
    for instance in (cfg.aws.aurora_writer, cfg.aws.aurora_reader):
        try:
            rds.describe_db_instances(DBInstanceIdentifier=instance)
            continue
        except ClientError as exc:
            if _error_code(exc) != "DBInstanceNotFound":
                raise
        rds.create_db_instance(
            DBInstanceIdentifier=instance,
            DBClusterIdentifier=cfg.aws.aurora_cluster,
            Engine=AURORA_ENGINE,
            DBInstanceClass=AURORA_INSTANCE_CLASS,
        )
        log.info("created aurora instance %s", instance)


def ensure_ses(cfg: LabConfig) -> None:
    """The SES identity, verified, with send statistics (moto delivers the mail nowhere)."""
    ses = client(cfg, "ses")
    ses.verify_domain_identity(Domain=cfg.aws.ses_identity)  # moto verifies at once
    # moto always answers get_send_statistics with one data point; the quota's count is reliable.
    if ses.get_send_quota().get("SentLast24Hours", 0) > 0:
        return
    sender = f"{SES_SENDER_LOCALPART}@{cfg.aws.ses_identity}"
    for i in range(SES_SEED_MESSAGES):
        ses.send_email(
            Source=sender,
            Destination={"ToAddresses": [f"user{i + 1}@example.net"]},
            Message={
                "Subject": {"Data": f"lab notification {i + 1}"},
                "Body": {"Text": {"Data": "Sent by the lab's seeding to give SES statistics."}},
            },
        )
    log.info("sent %d messages through SES as %s", SES_SEED_MESSAGES, sender)


def ensure_vpc(cfg: LabConfig) -> tuple[str, list[str]]:
    """The lab's VPC (tagged Name=dw-lab) and its two subnets in different zones."""
    ec2 = client(cfg, "ec2")
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "tag:Name", "Values": [VPC_NAME]}])["Vpcs"]
    if vpcs:
        vpc_id = vpcs[0]["VpcId"]
    else:
        vpc_id = ec2.create_vpc(
            CidrBlock=VPC_CIDR,
            TagSpecifications=[
                {"ResourceType": "vpc", "Tags": [{"Key": "Name", "Value": VPC_NAME}]}
            ],
        )["Vpc"]["VpcId"]
        log.info("created vpc %s", vpc_id)
    existing = {
        s["CidrBlock"]: s["SubnetId"]
        for s in ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Subnets"]
    }
    subnet_ids = []
    for cidr, zone in SUBNETS:
        if cidr not in existing:
            existing[cidr] = ec2.create_subnet(
                VpcId=vpc_id, CidrBlock=cidr, AvailabilityZone=f"{cfg.aws.region}{zone}"
            )["Subnet"]["SubnetId"]
            log.info("created subnet %s", cidr)
        subnet_ids.append(existing[cidr])
    return vpc_id, subnet_ids


def ensure_load_balancer(cfg: LabConfig, subnet_ids: list[str]) -> tuple[str, str]:
    """The application load balancer; returns (ARN, DNS name)."""
    elb = client(cfg, "elbv2")
    try:
        lb = elb.describe_load_balancers(Names=[cfg.aws.load_balancer])["LoadBalancers"][0]
    except ClientError as exc:
        if _error_code(exc) != "LoadBalancerNotFound":
            raise
        lb = elb.create_load_balancer(
            Name=cfg.aws.load_balancer,
            Subnets=subnet_ids,
            Type="application",
            Scheme="internet-facing",
            IpAddressType="ipv4",
        )["LoadBalancers"][0]
        log.info("created load balancer %s", lb["LoadBalancerArn"])
    return lb["LoadBalancerArn"], lb["DNSName"]


def ensure_target_group(cfg: LabConfig, vpc_id: str) -> str:
    """The webs' target group (HTTP on the web port, ip targets, /admin/healthy); its ARN."""
    elb = client(cfg, "elbv2")
    try:
        return elb.describe_target_groups(Names=[cfg.aws.target_group])["TargetGroups"][0][
            "TargetGroupArn"
        ]
    except ClientError as exc:
        if _error_code(exc) != "TargetGroupNotFound":
            raise
    tg = elb.create_target_group(
        Name=cfg.aws.target_group,
        Protocol="HTTP",
        Port=cfg.ports.web,
        VpcId=vpc_id,
        TargetType="ip",
        HealthCheckProtocol="HTTP",
        HealthCheckPath=HEALTH_CHECK_PATH,
        HealthCheckPort="traffic-port",
        Matcher={"HttpCode": "200"},
    )["TargetGroups"][0]
    log.info("created target group %s", tg["TargetGroupArn"])
    return tg["TargetGroupArn"]


def ensure_listener(cfg: LabConfig, lb_arn: str, tg_arn: str) -> str:
    """An HTTP listener on the ALB forwarding to the target group; its ARN."""
    elb = client(cfg, "elbv2")
    for listener in elb.describe_listeners(LoadBalancerArn=lb_arn)["Listeners"]:
        if listener["Port"] == LISTENER_PORT:
            return listener["ListenerArn"]
    listener = elb.create_listener(
        LoadBalancerArn=lb_arn,
        Protocol="HTTP",
        Port=LISTENER_PORT,
        DefaultActions=[{"Type": "forward", "TargetGroupArn": tg_arn}],
    )["Listeners"][0]
    log.info("created listener %s", listener["ListenerArn"])
    return listener["ListenerArn"]


def register_webs(cfg: LabConfig, tg_arn: str) -> None:
    """Register every web (Id = its address, Port = the web port) in a target group without targets.

    A group that already has targets is left as it is: seeding a running lab again must not put
    back a web that was deregistered on purpose (drained for a restart), the way a real ALB keeps
    its registrations until someone changes them.
    """
    elb = client(cfg, "elbv2")
    if elb.describe_target_health(TargetGroupArn=tg_arn)["TargetHealthDescriptions"]:
        return
    elb.register_targets(
        TargetGroupArn=tg_arn,
        Targets=[{"Id": h.address, "Port": cfg.ports.web} for h in cfg.hosts_with("web")],
    )


def ensure_distribution(cfg: LabConfig, origin_dns: str) -> str:
    """The CloudFront distribution "dreamwidth www" in front of the ALB; its id."""
    cf = client(cfg, "cloudfront")
    items = cf.list_distributions()["DistributionList"].get("Items", [])
    for item in items:
        if item.get("Comment") == CLOUDFRONT_COMMENT:
            return item["Id"]
    distribution = cf.create_distribution(
        DistributionConfig={
            "CallerReference": CLOUDFRONT_CALLER_REFERENCE,
            "Comment": CLOUDFRONT_COMMENT,
            "Enabled": True,
            "Origins": {
                "Quantity": 1,
                "Items": [
                    {
                        "Id": CLOUDFRONT_ORIGIN_ID,
                        "DomainName": origin_dns,
                        "CustomOriginConfig": {
                            "HTTPPort": LISTENER_PORT,
                            "HTTPSPort": 443,
                            "OriginProtocolPolicy": "http-only",
                        },
                    }
                ],
            },
            "DefaultCacheBehavior": {
                "TargetOriginId": CLOUDFRONT_ORIGIN_ID,
                "ViewerProtocolPolicy": "redirect-to-https",
                "MinTTL": 0,
                "ForwardedValues": {"QueryString": True, "Cookies": {"Forward": "all"}},
            },
        }
    )["Distribution"]
    log.info("created cloudfront distribution %s", distribution["Id"])
    return distribution["Id"]


def ensure_waf_ip_set(cfg: LabConfig) -> str:
    """The WAFv2 IP set (scope WAF_SCOPE) with documentation addresses; its id."""
    waf = client(cfg, "wafv2")
    for ip_set in waf.list_ip_sets(Scope=WAF_SCOPE).get("IPSets", []):
        if ip_set["Name"] == cfg.aws.waf_ip_set:
            return ip_set["Id"]
    summary = waf.create_ip_set(
        Name=cfg.aws.waf_ip_set,
        Scope=WAF_SCOPE,
        IPAddressVersion="IPV4",
        Addresses=WAF_ADDRESSES,
        Description="Addresses blocked at the edge (lab data: documentation ranges)",
    )["Summary"]
    log.info("created waf ip set %s", summary["Id"])
    return summary["Id"]


# -- measuring the Aurora stand-in (pure parts) -------------------------------------------------


@dataclass(frozen=True)
class CpuSample:
    """Cumulative CPU ticks (utime + stime) of a process at a monotonic time."""

    pid: int
    ticks: int
    at: float


@dataclass(frozen=True)
class StatusSample:
    """The counters of `SHOW GLOBAL STATUS` the publisher uses, at a monotonic time."""

    threads_connected: int
    threads_running: int
    questions: int
    com_select: int
    com_dml: int
    at: float


DML_COUNTERS = (
    "Com_insert",
    "Com_insert_select",
    "Com_update",
    "Com_update_multi",
    "Com_delete",
    "Com_delete_multi",
    "Com_replace",
    "Com_replace_select",
)


def parse_proc_stat(text: str) -> int:
    """utime + stime (clock ticks) from the text of /proc/PID/stat."""
    fields = text.rsplit(")", 1)[1].split()
    # After "(comm)": state is field 3 of stat(5); utime and stime are fields 14 and 15.
    return int(fields[11]) + int(fields[12])


def cpu_percent(prev: CpuSample, cur: CpuSample, ncpu: int, hz: int) -> float | None:
    """The process's share of the whole machine's CPU between two samples, 0-100 like RDS.

    None when the samples are of different processes (a restart) or no time passed.
    """
    elapsed = cur.at - prev.at
    if cur.pid != prev.pid or elapsed <= 0 or cur.ticks < prev.ticks:
        return None
    busy = (cur.ticks - prev.ticks) / hz
    return max(0.0, min(100.0, 100.0 * busy / (elapsed * max(1, ncpu))))


def parse_global_status(rows: list[tuple[str, str]], at: float) -> StatusSample:
    """`SHOW GLOBAL STATUS` rows (Variable_name, Value) as a StatusSample."""
    values = {name: value for name, value in rows}

    def num(name: str) -> int:
        try:
            return int(values.get(name, 0))
        except ValueError:
            return 0

    return StatusSample(
        threads_connected=num("Threads_connected"),
        threads_running=num("Threads_running"),
        questions=num("Questions"),
        com_select=num("Com_select"),
        com_dml=sum(num(name) for name in DML_COUNTERS),
        at=at,
    )


def status_rates(
    prev: StatusSample, cur: StatusSample, own_statements: int = 1
) -> dict[str, float] | None:
    """Per-second Questions, selects and DML between two samples (None across a restart).

    `own_statements` is what the publisher itself sent between the samples (its SHOW GLOBAL
    STATUS), left out of Queries the way RDS's own monitoring is not counted.
    """
    elapsed = cur.at - prev.at
    if elapsed <= 0 or cur.questions < prev.questions:
        return None
    return {
        "Queries": max(0, cur.questions - prev.questions - own_statements) / elapsed,
        "SelectThroughput": max(0, cur.com_select - prev.com_select) / elapsed,
        "DMLThroughput": max(0, cur.com_dml - prev.com_dml) / elapsed,
    }


# Aurora's real CloudWatch names where they exist. Threads_running has none (Aurora shows it only
# through Performance Insights as db.Threads.Threads_running): ThreadsRunning is the lab's own.
METRIC_UNITS = {
    "CPUUtilization": "Percent",
    "DatabaseConnections": "Count",
    "ThreadsRunning": "Count",
    "Queries": "Count/Second",
    "SelectThroughput": "Count/Second",
    "DMLThroughput": "Count/Second",
}


def metric_data(
    cluster: str, values: dict[str, float], timestamp: dt.datetime
) -> list[dict[str, Any]]:
    """put_metric_data items for `values` (metric name -> value) of the Aurora cluster."""
    return [
        {
            "MetricName": name,
            "Dimensions": [{"Name": "DBClusterIdentifier", "Value": cluster}],
            "Timestamp": timestamp,
            "Value": float(value),
            "Unit": METRIC_UNITS[name],
        }
        for name, value in values.items()
    ]


# -- the metrics publisher (daemon) -------------------------------------------------------------


class AuroraMeter:
    """Measures the MariaDB that stands in for Aurora; keeps the previous samples for rates."""

    def __init__(self, cfg: LabConfig) -> None:
        self.cfg = cfg
        self.pidfile = cfg.lab_dir / "mariadb" / "mysqld.pid"
        self.ncpu = os.cpu_count() or 1
        self.hz = os.sysconf("SC_CLK_TCK")
        self._cpu: CpuSample | None = None
        self._status: StatusSample | None = None
        self._conn: Any = None

    @property
    def mariadb_pid(self) -> int | None:
        """The pid of the last CPU sample (None when MariaDB was not running)."""
        return self._cpu.pid if self._cpu else None

    def sample_cpu(self) -> float | None:
        """CPU % of mariadbd since the previous call (None at first, or across a restart)."""
        pid = read_pid(self.pidfile)
        if pid is None:
            self._cpu = None
            return None
        try:
            ticks = parse_proc_stat(Path(f"/proc/{pid}/stat").read_text())
        except (OSError, IndexError, ValueError):
            self._cpu = None
            return None
        cur = CpuSample(pid=pid, ticks=ticks, at=time.monotonic())
        prev, self._cpu = self._cpu, cur
        return cpu_percent(prev, cur, self.ncpu, self.hz) if prev else None

    def sample_status(self) -> tuple[StatusSample, dict[str, float] | None]:
        """SHOW GLOBAL STATUS now, and the rates since the previous sample (None at first)."""
        import pymysql

        if self._conn is None:
            self._conn = pymysql.connect(
                host=self.cfg.db.address,
                port=self.cfg.ports.mysql,
                user=self.cfg.db.user,
                password=self.cfg.db.password(),
                connect_timeout=3,
                read_timeout=5,
                write_timeout=5,
                autocommit=True,
            )
            self._status = None  # a new connection: don't difference across it
        try:
            with self._conn.cursor() as cur:
                cur.execute("SHOW GLOBAL STATUS")
                rows = [(str(name), str(value)) for name, value in cur.fetchall()]
        except Exception:
            self.close()
            raise
        sample = parse_global_status(rows, time.monotonic())
        prev, self._status = self._status, sample
        return sample, (status_rates(prev, sample) if prev else None)

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
        self._conn = None
        self._status = None


def publish_once(cfg: LabConfig, meter: AuroraMeter, cloudwatch: Any) -> dict[str, Any]:
    """Measure once, put what could be measured into CloudWatch, write counters/aurora.json."""
    values: dict[str, float] = {}
    counters: dict[str, Any] = {"updated": time.time(), "errors": []}
    cpu = meter.sample_cpu()
    counters["mariadb_pid"] = meter.mariadb_pid
    if cpu is not None:
        values["CPUUtilization"] = round(cpu, 2)
    try:
        status, rates = meter.sample_status()
        # Our own connection and our own running SHOW STATUS are not the site's load.
        values["DatabaseConnections"] = max(0, status.threads_connected - 1)
        values["ThreadsRunning"] = max(0, status.threads_running - 1)
        if rates:
            values.update({name: round(rate, 3) for name, rate in rates.items()})
        counters["mariadb_up"] = True
    except Exception as exc:  # MariaDB down or restarting: log, publish what we have
        counters["mariadb_up"] = False
        counters["errors"].append(f"mysql: {exc}")
        log.warning("cannot read SHOW GLOBAL STATUS: %s", exc)
    counters["published"] = False
    if values:
        try:
            cloudwatch.put_metric_data(
                Namespace=METRICS_NAMESPACE,
                MetricData=metric_data(
                    cfg.aws.aurora_cluster, values, dt.datetime.now(dt.timezone.utc)
                ),
            )
            counters["published"] = True
        except (BotoCoreError, ClientError) as exc:
            counters["errors"].append(f"cloudwatch: {exc}")
            log.warning("cannot put metrics: %s", exc)
    counters["metrics"] = values
    write_counters(cfg, "aurora", counters)
    return counters


def run_metrics(cfg: LabConfig, interval: float = METRICS_INTERVAL) -> None:
    """Publish the Aurora stand-in's metrics every `interval` seconds until SIGTERM/SIGINT."""
    stopping = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    meter = AuroraMeter(cfg)
    cloudwatch = client(cfg, "cloudwatch")
    log.info(
        "publishing %s metrics of %s every %.1f s to %s",
        METRICS_NAMESPACE,
        cfg.aws.aurora_cluster,
        interval,
        cfg.aws_endpoint_url,
    )
    while not stopping.is_set():
        started = time.monotonic()
        try:
            counters = publish_once(cfg, meter, cloudwatch)
            log.debug("published %s", counters["metrics"])
        except Exception:  # never die on one bad round
            log.exception("metrics round failed")
        stopping.wait(max(0.0, interval - (time.monotonic() - started)))
    meter.close()
    log.info("stopped")


# -- command line -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.aws", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["seed", "metrics"])
    parser.add_argument("--config", required=True, help="the lab's lab.json")
    parser.add_argument(
        "--interval", type=float, default=METRICS_INTERVAL, help="metrics: seconds between rounds"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stdout,
    )
    cfg = LabConfig.load(args.config)
    if args.command == "seed":
        seeded = seed(cfg)
        # Save to the file we were given (LabConfig.save would write cfg.config_path).
        path = Path(args.config)
        tmp = path.with_suffix(".seed.tmp")
        tmp.write_text(seeded.model_dump_json(indent=2))
        tmp.replace(path)
        print(seeded.aws.model_dump_json(indent=2))
    else:
        run_metrics(cfg, args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
