"""AWS (boto3): Aurora and its CloudWatch metrics, the webs' ALB target group, SES, CloudFront and
the WAF IP set; read, parsed into frozen dataclasses and judged.

The only module of the project that imports boto3 or botocore. The client contract:
- `clients(inventory)` makes one boto3 Session per endpoint, region and credentials and keeps its
  clients for the life of the process (made on first use, ~0.1 s each, under a lock: sessions are
  not thread-safe, clients are).
- Credentials: the inventory's `aws.credentials` ini file (`[default]` aws_access_key_id,
  aws_secret_access_key, optional aws_session_token), read through `dwops.secrets`, when it names
  one (the lab); otherwise boto3's default chain (production: the instance role). They are never
  logged and never appear in an error.
- Every call has explicit timeouts (connect 3 s, read 10 s) and botocore's standard retry mode with
  2 attempts in all. A loopback endpoint (the lab's moto server) is reached without the
  environment's HTTP proxy.
- boto3 is synchronous: each call runs in a worker thread (`asyncio.to_thread`).

Errors: `AwsUnavailable` (refused, timed out, connection closed, throttled, HTTP 5xx) is an
`Unavailable`: transient, safe to retry a read. `AwsNotFound`: the inventory names a resource
that does not exist. `AwsError`: anything else (AccessDenied, a bad request, no credentials), a
misconfiguration that is raised, not judged.

The `check_*` tasks read and judge one system each and return `Check` lines; an unreachable
service or a missing resource is a CRIT line, never an exception.
"""

from __future__ import annotations

import asyncio
import configparser
import datetime as dt
import ipaddress
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from prefect import task

from dwops.errors import Unavailable
from dwops.health import Check, Thresholds, Verdict, graded, unreachable
from dwops.inventory import Inventory
from dwops.secrets import read_secret
from tasks.common import READ

T = TypeVar("T")

CONNECT_TIMEOUT = 3
READ_TIMEOUT = 10
MAX_ATTEMPTS = 2  # in all, the first one included

SERVICES = ("rds", "cloudwatch", "elbv2", "ses", "cloudfront", "wafv2")
AURORA_NAMESPACE = "AWS/RDS"
AURORA_METRICS = ("CPUUtilization", "DatabaseConnections")

# -- errors -------------------------------------------------------------------------------------


class AwsError(RuntimeError):
    """An AWS call that failed for a reason that retrying will not fix."""

    def __init__(self, service: str, message: str):
        self.service = service
        RuntimeError.__init__(self, f"aws {service}: {message}")


class AwsUnavailable(AwsError, Unavailable):
    """The service did not answer, or answered "slow down": transient, safe to retry a read."""

    def __init__(self, service: str, reason: str):
        AwsError.__init__(self, service, f"unavailable: {reason}")
        self.target, self.reason = f"aws {service}", reason


class AwsNotFound(AwsError):
    """The resource the inventory names does not exist (or the reply holds none)."""


# Error codes that mean "too many requests" or "try again" (botocore's standard retry mode's list).
TRANSIENT_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "ProvisionedThroughputExceededException", "RequestLimitExceeded",
    "BandwidthLimitExceeded", "LimitExceededException", "RequestThrottled", "SlowDown",
    "EC2ThrottledException", "RequestTimeout", "RequestTimeoutException",
    "PriorRequestNotComplete", "TransactionInProgressException", "ServiceUnavailable",
    "InternalFailure", "InternalError",
})
NOT_FOUND_CODES = frozenset({
    "DBClusterNotFoundFault", "TargetGroupNotFound", "LoadBalancerNotFound", "NoSuchDistribution",
    "WAFNonexistentItemException",
})


def classify_error(service: str, exc: Exception) -> AwsError:
    """The project's error for a botocore exception (pure: the reply's code and status decide)."""
    if isinstance(exc, (BotoConnectionError, HTTPClientError)):
        # EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError...
        return AwsUnavailable(service, f"{type(exc).__name__}: {exc}")
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        text = f"{code or 'HTTP ' + str(status)}: {error.get('Message', '')}".rstrip(": ")
        if code in TRANSIENT_CODES or status == 429 or status >= 500:
            return AwsUnavailable(service, text)
        if code in NOT_FOUND_CODES:
            return AwsNotFound(service, text)
        return AwsError(service, text)
    return AwsError(service, f"{type(exc).__name__}: {exc}")


# -- clients ------------------------------------------------------------------------------------


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_credentials(text: str) -> dict[str, str]:
    """boto3 keyword arguments from an AWS credentials ini file's `[default]` section.

    Raises ValueError naming the missing key, never a value.
    """
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text)
    except configparser.Error as e:
        raise ValueError(f"not an ini file ({type(e).__name__})") from None
    if not parser.has_section("default"):
        raise ValueError("no [default] section")
    section = parser["default"]
    out = {}
    for key in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token"):
        value = section.get(key, "").strip()
        if value:
            out[key] = value
        elif key != "aws_session_token":
            raise ValueError(f"[default] has no {key}")
    return out


class AwsClients:
    """boto3 clients for one inventory's AWS account, made on first use and kept.

    Attributes `rds`, `cloudwatch`, `elbv2`, `ses` (in `ses_region` when the inventory sets one),
    `cloudfront`, `wafv2`. Holds no credentials in its repr.
    """

    def __init__(self, session: Any, region: str, ses_region: str, endpoint_url: str | None,
                 config: Config):
        self._session = session
        self._region, self._ses_region = region, ses_region
        self._endpoint_url = endpoint_url
        self._config = config
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AwsClients(region={self._region!r}, endpoint_url={self._endpoint_url!r})"

    def client(self, service: str) -> Any:
        with self._lock:
            if service not in self._clients:
                self._clients[service] = self._session.client(
                    service,
                    region_name=self._ses_region if service == "ses" else self._region,
                    endpoint_url=self._endpoint_url,
                    config=self._config,
                )
            return self._clients[service]

    rds = property(lambda self: self.client("rds"))
    cloudwatch = property(lambda self: self.client("cloudwatch"))
    elbv2 = property(lambda self: self.client("elbv2"))
    ses = property(lambda self: self.client("ses"))
    cloudfront = property(lambda self: self.client("cloudfront"))
    wafv2 = property(lambda self: self.client("wafv2"))


_clients: dict[tuple[Any, ...], AwsClients] = {}
_clients_lock = threading.Lock()


def client_config(endpoint_url: str | None) -> Config:
    """Timeouts, retries, and no environment proxy for a loopback endpoint."""
    options: dict[str, Any] = dict(
        connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT,
        retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
    )
    if endpoint_url and _is_loopback(endpoint_url):
        options["proxies"] = {}  # an HTTP_PROXY from the environment cannot reach 127.x
    return Config(**options)


def clients(inventory: Inventory) -> AwsClients:
    """The boto3 clients for `inventory`'s AWS (kept per endpoint, regions and credentials).

    Blocking (reads the credentials file, may build a session): call it from a thread.
    Raises `dwops.secrets.SecretUnavailable` or AwsError for unusable credentials.
    """
    aws = inventory.aws
    credentials: dict[str, str] = {}
    if aws.credentials is not None:
        try:
            credentials = parse_credentials(read_secret(aws.credentials))
        except ValueError as e:
            raise AwsError("credentials", f"{aws.credentials.describe()}: {e}") from None
    key = (aws.endpoint_url, aws.region, aws.ses_region or aws.region,
           tuple(sorted(credentials.items())))
    with _clients_lock:
        found = _clients.get(key)
        if found is None:
            session = boto3.session.Session(**credentials)
            found = _clients[key] = AwsClients(session, aws.region, aws.ses_region or aws.region,
                                               aws.endpoint_url, client_config(aws.endpoint_url))
        return found


def _call_sync(service: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except (BotoCoreError, ClientError) as e:
        raise classify_error(service, e) from None


async def _call(service: str, fn: Callable[[], T]) -> T:
    """Run one blocking boto3 call (or a few, e.g. a paginator) in a thread, errors classified."""
    return await asyncio.to_thread(_call_sync, service, fn)


def _strip(reply: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in reply.items() if k != "ResponseMetadata"}


def _utc(value: Any) -> dt.datetime | None:
    """An aware UTC datetime from what botocore returns (aware datetimes); None if absent."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if not isinstance(value, dt.datetime):
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


# -- Aurora (RDS) -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterMember:
    instance: str
    is_writer: bool
    promotion_tier: int | None = None


@dataclass(frozen=True)
class AuroraCluster:
    identifier: str
    status: str
    engine: str
    writer: str | None
    readers: tuple[str, ...]
    members: tuple[ClusterMember, ...]

    @property
    def writers(self) -> tuple[str, ...]:
        return tuple(m.instance for m in self.members if m.is_writer)


def parse_aurora_cluster(reply: Mapping[str, Any]) -> AuroraCluster:
    """`rds.describe_db_clusters(DBClusterIdentifier=...)`: the cluster, its writer and readers.

    A reply without a cluster raises AwsNotFound; a cluster without members has writer None and no
    readers; with more than one writer (impossible for Aurora MySQL), `writer` is the first.
    """
    found = reply.get("DBClusters") or []
    if not found:
        raise AwsNotFound("rds", "the reply holds no DB cluster")
    c = found[0]
    members = tuple(
        ClusterMember(str(m.get("DBInstanceIdentifier", "?")), bool(m.get("IsClusterWriter")),
                      m.get("PromotionTier"))
        for m in c.get("DBClusterMembers") or []
    )
    writers = [m.instance for m in members if m.is_writer]
    return AuroraCluster(
        identifier=str(c.get("DBClusterIdentifier", "?")),
        status=str(c.get("Status", "unknown")),
        engine=str(c.get("Engine", "")),
        writer=writers[0] if writers else None,
        readers=tuple(m.instance for m in members if not m.is_writer),
        members=members,
    )


async def read_aurora_cluster(inventory: Inventory) -> AuroraCluster:
    """Describe the inventory's Aurora cluster (status, writer, readers). Read-only; safe to
    retry."""
    name = inventory.aws.aurora_cluster
    reply = await _call("rds", lambda: clients(inventory).rds.describe_db_clusters(
        DBClusterIdentifier=name))
    return parse_aurora_cluster(reply)


# -- CloudWatch ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricPoint:
    """The newest data point of a metric. `timestamp` is the start of its period (CloudWatch's
    convention), so a metric published continuously is up to one period "old"."""

    value: float
    timestamp: dt.datetime
    age_seconds: float


def parse_metric_latest(reply: Mapping[str, Any], now: dt.datetime,
                        statistic: str = "Average") -> MetricPoint | None:
    """`cloudwatch.get_metric_statistics`: the newest data point's `statistic`, or None when the
    reply has no data point carrying it (no data in the window)."""
    now = _utc(now) or _now()
    points = [(ts, p[statistic]) for p in reply.get("Datapoints") or []
              if statistic in p and (ts := _utc(p.get("Timestamp"))) is not None]
    if not points:
        return None
    ts, value = max(points, key=lambda p: p[0])
    return MetricPoint(float(value), ts, max(0.0, (now - ts).total_seconds()))


async def read_aurora_metrics(
    inventory: Inventory, names: Sequence[str] = AURORA_METRICS, period: int = 60,
    window: int = 600, statistic: str = "Average",
) -> dict[str, MetricPoint | None]:
    """The newest `period`-second point of each AWS/RDS metric of the cluster within the last
    `window` seconds (None: no data). One get_metric_statistics per metric, all at once.
    Read-only; safe to retry."""
    cluster = inventory.aws.aurora_cluster
    now = _now()

    def get(name: str) -> Callable[[], Any]:
        return lambda: clients(inventory).cloudwatch.get_metric_statistics(
            Namespace=AURORA_NAMESPACE, MetricName=name,
            Dimensions=[{"Name": "DBClusterIdentifier", "Value": cluster}],
            StartTime=now - dt.timedelta(seconds=window), EndTime=now,
            Period=period, Statistics=[statistic],
        )

    replies = await asyncio.gather(*(_call("cloudwatch", get(n)) for n in names))
    return {n: parse_metric_latest(r, now, statistic) for n, r in zip(names, replies)}


# -- the ALB's target group (ELBv2) ---------------------------------------------------------------


@dataclass(frozen=True)
class TargetState:
    """One web of the inventory in the target group: `state` is the ALB's (healthy, unhealthy,
    initial, draining, unused, unavailable) or "unregistered"; `reason` the ALB's explanation."""

    host: str
    target_id: str
    state: str
    reason: str = ""


def parse_target_health(reply: Mapping[str, Any], targets: Mapping[str, str],
                        port: int | None = None) -> list[TargetState]:
    """`elbv2.describe_target_health`: the state of every inventory web (`targets`: host -> target
    id), in inventory order. A web not registered (on `port`, when given) is "unregistered".
    Registered targets that are not in the inventory are left out."""
    seen: dict[str, dict[str, Any]] = {}
    for d in reply.get("TargetHealthDescriptions") or []:
        target = d.get("Target") or {}
        tid = target.get("Id")
        if tid is None or (port is not None and target.get("Port") not in (None, port)):
            continue
        seen.setdefault(str(tid), d.get("TargetHealth") or {})
    out = []
    for host, tid in targets.items():
        health = seen.get(tid)
        if health is None:
            out.append(TargetState(host, tid, "unregistered", "not in target group"))
            continue
        why = ": ".join(str(health[k]) for k in ("Reason", "Description") if health.get(k))
        out.append(TargetState(host, tid, str(health.get("State", "unknown")), why))
    return out


def parse_target_group_arn(reply: Mapping[str, Any], name: str) -> str:
    """`elbv2.describe_target_groups(Names=[name])`: the group's ARN (AwsNotFound if absent)."""
    for group in reply.get("TargetGroups") or []:
        if group.get("TargetGroupName") == name and group.get("TargetGroupArn"):
            return str(group["TargetGroupArn"])
    raise AwsNotFound("elbv2", f"no target group named {name!r} in the reply")


async def read_target_health(inventory: Inventory) -> list[TargetState]:
    """The state of every web in the ALB's target group (resolved by name). Read-only; safe to
    retry."""
    alb = inventory.aws.alb
    groups = await _call("elbv2", lambda: clients(inventory).elbv2.describe_target_groups(
        Names=[alb.target_group]))
    arn = parse_target_group_arn(groups, alb.target_group)
    reply = await _call("elbv2", lambda: clients(inventory).elbv2.describe_target_health(
        TargetGroupArn=arn))
    return parse_target_health(reply, alb.targets, alb.target_port)


# -- SES ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SesStatus:
    """The account's sending quota, and its send statistics over the last 24 h. Rates are
    bounces (complaints) per delivery attempt; None when nothing was attempted."""

    max_24h: float
    sent_24h: float
    max_rate: float
    bounce_rate: float | None
    complaint_rate: float | None
    delivery_attempts: int
    bounces: int = 0
    complaints: int = 0
    rejects: int = 0
    identity: str = ""
    verification: str | None = None  # SES's VerificationStatus; None: SES does not know it

    @property
    def quota_used(self) -> float | None:
        return self.sent_24h / self.max_24h if self.max_24h > 0 else None


def parse_ses(quota_reply: Mapping[str, Any], stats_reply: Mapping[str, Any],
              now: dt.datetime) -> SesStatus:
    """`ses.get_send_quota` and `ses.get_send_statistics` (15-minute data points over two weeks):
    the quota and the bounce and complaint rates over the data points of the 24 h before `now`."""
    now = _utc(now) or _now()
    since = now - dt.timedelta(hours=24)
    attempts = bounces = complaints = rejects = 0
    for p in stats_reply.get("SendDataPoints") or []:
        ts = _utc(p.get("Timestamp"))
        if ts is None or ts < since:
            continue
        attempts += int(p.get("DeliveryAttempts") or 0)
        bounces += int(p.get("Bounces") or 0)
        complaints += int(p.get("Complaints") or 0)
        rejects += int(p.get("Rejects") or 0)
    return SesStatus(
        max_24h=float(quota_reply.get("Max24HourSend") or 0),
        sent_24h=float(quota_reply.get("SentLast24Hours") or 0),
        max_rate=float(quota_reply.get("MaxSendRate") or 0),
        bounce_rate=bounces / attempts if attempts else None,
        complaint_rate=complaints / attempts if attempts else None,
        delivery_attempts=attempts, bounces=bounces, complaints=complaints, rejects=rejects,
    )


def parse_ses_verification(reply: Mapping[str, Any], identity: str) -> str | None:
    """`ses.get_identity_verification_attributes`: the identity's VerificationStatus (Success,
    Pending, Failed, TemporaryFailure, NotStarted), or None when SES does not know it."""
    attrs = (reply.get("VerificationAttributes") or {}).get(identity)
    status = (attrs or {}).get("VerificationStatus")
    return str(status) if status else None


async def read_ses(inventory: Inventory) -> SesStatus:
    """The SES quota, the last 24 h's send statistics and the sending identity's verification.
    Read-only; safe to retry."""
    identity = inventory.aws.ses_identity
    now = _now()
    quota, stats, verification = await asyncio.gather(
        _call("ses", lambda: clients(inventory).ses.get_send_quota()),
        _call("ses", lambda: clients(inventory).ses.get_send_statistics()),
        _call("ses", lambda: clients(inventory).ses.get_identity_verification_attributes(
            Identities=[identity])),
    )
    return replace(parse_ses(quota, stats, now), identity=identity,
                   verification=parse_ses_verification(verification, identity))


# -- CloudFront ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Distribution:
    id: str
    status: str  # Deployed or InProgress
    enabled: bool
    domain: str
    aliases: tuple[str, ...] = ()
    comment: str = ""


@dataclass(frozen=True)
class Invalidation:
    id: str
    status: str
    created: dt.datetime | None


@dataclass(frozen=True)
class CloudFrontState:
    distribution: Distribution
    invalidations: tuple[Invalidation, ...]  # the ones in progress


def parse_distribution(reply: Mapping[str, Any]) -> Distribution:
    """`cloudfront.get_distribution` (or one item of list_distributions): id, status, enabled."""
    d = reply.get("Distribution", reply)
    if not d or "Id" not in d:
        raise AwsNotFound("cloudfront", "the reply holds no distribution")
    config = d.get("DistributionConfig") or d  # list items carry the config's fields themselves
    return Distribution(
        id=str(d["Id"]), status=str(d.get("Status", "unknown")),
        enabled=bool(config.get("Enabled", False)), domain=str(d.get("DomainName", "")),
        aliases=tuple((config.get("Aliases") or {}).get("Items") or ()),
        comment=str(config.get("Comment", "")),
    )


def find_distribution_id(reply: Mapping[str, Any], alias: str) -> str | None:
    """One page of `cloudfront.list_distributions`: the id of the distribution serving `alias`
    (an alternate domain name), or else the one whose comment is `alias`; None if neither."""
    items = (reply.get("DistributionList") or {}).get("Items") or []
    for item in items:
        if alias in ((item.get("Aliases") or {}).get("Items") or ()):
            return str(item["Id"])
    for item in items:
        if item.get("Comment") == alias:
            return str(item["Id"])
    return None


def _in_progress(status: str) -> bool:
    return status.replace("_", "").replace(" ", "").lower() == "inprogress"


def parse_invalidations(reply: Mapping[str, Any]) -> list[Invalidation]:
    """`cloudfront.list_invalidations`: the invalidations still in progress, newest first (AWS
    lists newest first; "InProgress", moto says COMPLETED at once)."""
    items = (reply.get("InvalidationList") or {}).get("Items") or []
    found = [Invalidation(str(i.get("Id", "?")), str(i.get("Status", "")),
                          _utc(i.get("CreateTime")))
             for i in items if _in_progress(str(i.get("Status", "")))]
    oldest = dt.datetime.min.replace(tzinfo=dt.timezone.utc)
    return sorted(found, key=lambda i: i.created or oldest, reverse=True)


async def read_cloudfront(inventory: Inventory) -> CloudFrontState:
    """The distribution (by id, or found by `cloudfront_alias`) and its invalidations in progress
    (the first page: up to 100, newest first). Read-only; safe to retry."""
    aws = inventory.aws
    dist_id = aws.cloudfront_distribution_id
    if not dist_id:
        if not aws.cloudfront_alias:
            raise AwsError("cloudfront", "the inventory names no distribution id or alias")
        alias = aws.cloudfront_alias

        def find() -> str | None:
            for page in clients(inventory).cloudfront.get_paginator(
                    "list_distributions").paginate():
                if (found := find_distribution_id(page, alias)) is not None:
                    return found
            return None

        dist_id = await _call("cloudfront", find)
        if dist_id is None:
            raise AwsNotFound("cloudfront", f"no distribution serves alias {alias!r}")
    distribution, invalidations = await asyncio.gather(
        _call("cloudfront", lambda: clients(inventory).cloudfront.get_distribution(Id=dist_id)),
        _call("cloudfront", lambda: clients(inventory).cloudfront.list_invalidations(
            DistributionId=dist_id, MaxItems="100")),
    )
    return CloudFrontState(parse_distribution(distribution),
                           tuple(parse_invalidations(invalidations)))


# -- WAFv2 --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IpSet:
    name: str
    id: str
    addresses: tuple[str, ...]
    version: str = ""


def parse_ip_set(reply: Mapping[str, Any]) -> IpSet:
    """`wafv2.get_ip_set`: name, id and addresses (CIDR strings)."""
    s = reply.get("IPSet")
    if not s:
        raise AwsNotFound("wafv2", "the reply holds no IP set")
    return IpSet(str(s.get("Name", "?")), str(s.get("Id", "?")),
                 tuple(str(a) for a in s.get("Addresses") or ()),
                 str(s.get("IPAddressVersion", "")))


def find_ip_set_id(reply: Mapping[str, Any], name: str) -> str | None:
    """One page of `wafv2.list_ip_sets`: the id of the set named `name`, or None."""
    for s in reply.get("IPSets") or []:
        if s.get("Name") == name:
            return str(s["Id"])
    return None


async def read_waf_ip_set(inventory: Inventory) -> IpSet:
    """The inventory's WAF IP set (by name and id, or its id found by name). Read-only; safe to
    retry."""
    aws = inventory.aws
    name, scope, set_id = aws.waf_ip_set, aws.waf_scope, aws.waf_ip_set_id
    if not set_id:
        def find() -> str | None:
            waf = clients(inventory).wafv2
            kwargs: dict[str, Any] = {"Scope": scope, "Limit": 100}
            while True:
                page = waf.list_ip_sets(**kwargs)
                if (found := find_ip_set_id(page, name)) is not None:
                    return found
                if not page.get("NextMarker") or not page.get("IPSets"):
                    return None
                kwargs["NextMarker"] = page["NextMarker"]

        set_id = await _call("wafv2", find)
        if set_id is None:
            raise AwsNotFound("wafv2", f"no {scope} IP set named {name!r}")
    reply = await _call("wafv2", lambda: clients(inventory).wafv2.get_ip_set(
        Name=name, Scope=scope, Id=set_id))
    return parse_ip_set(reply)


# -- judging (pure) -----------------------------------------------------------------------------

# Cluster states in which the cluster serves nothing; other states than `available` are changes in
# progress (backing-up, modifying, failing-over, upgrading, maintenance...): WARN.
AURORA_DOWN_STATES = frozenset({
    "stopped", "stopping", "starting", "deleting", "failed", "inaccessible-encryption-credentials",
    "inaccessible-encryption-credentials-recoverable", "cloning-failed", "migration-failed",
    "incompatible-parameters", "incompatible-restore", "storage-full",
})
METRIC_FIGURES = {"CPUUtilization": "cpu", "DatabaseConnections": "connections",
                  "ThreadsRunning": "threads_running"}


def _round(x: float | None, digits: int = 2) -> float | None:
    return None if x is None else round(x, digits)


def judge_aurora(cluster: AuroraCluster | Unavailable | AwsNotFound,
                 metrics: Mapping[str, MetricPoint | None] | Unavailable,
                 t: Thresholds, name: str = "aurora") -> Check:
    """One line for the cluster. CRIT: unreachable, missing, stopped (or the like), no writer,
    CPU at aurora_cpu_crit, CloudWatch unreachable. WARN: a change in progress, no reader (no
    failover target), CPU at aurora_cpu_warn, a metric missing or older than
    aurora_metrics_max_age. Threads running are graded when the metrics hold them."""
    if isinstance(cluster, Unavailable):
        return unreachable("aurora", name, f"rds: {cluster.reason}")
    if isinstance(cluster, AwsNotFound):
        return Check("aurora", name, Verdict.CRIT, f"cluster not found ({cluster})",
                     {"found": False})
    problems: list[tuple[Verdict, str]] = []
    figures: dict[str, Any] = {"status": cluster.status, "engine": cluster.engine,
                               "writer": cluster.writer, "readers": list(cluster.readers)}
    if cluster.status != "available":
        problems.append((Verdict.CRIT if cluster.status in AURORA_DOWN_STATES else Verdict.WARN,
                         f"cluster {cluster.status}"))
    if not cluster.writers:
        problems.append((Verdict.CRIT, "no writer instance"))
    elif len(cluster.writers) > 1:
        problems.append((Verdict.CRIT, f"{len(cluster.writers)} writers: "
                                       f"{', '.join(cluster.writers)}"))
    if not cluster.readers:
        problems.append((Verdict.WARN, "no reader instance (nothing to fail over to)"))

    if isinstance(metrics, Unavailable):
        problems.append((Verdict.CRIT, f"CloudWatch unreachable: {metrics.reason}"))
    else:
        figures["metric_ages"] = {}
        for metric, point in metrics.items():
            key = METRIC_FIGURES.get(metric, metric)
            figures[key] = _round(point.value) if point else None
            figures["metric_ages"][metric] = _round(point.age_seconds, 1) if point else None
            if point is None:
                problems.append((Verdict.WARN, f"no recent {metric} data"))
            elif point.age_seconds > t.aurora_metrics_max_age:
                problems.append((Verdict.WARN, f"{metric} stale ({point.age_seconds:.0f} s old, "
                                               f"max {t.aurora_metrics_max_age} s)"))
            elif metric == "CPUUtilization":
                v = graded(point.value, t.aurora_cpu_warn, t.aurora_cpu_crit)
                if v is not Verdict.OK:
                    limit = t.aurora_cpu_crit if v is Verdict.CRIT else t.aurora_cpu_warn
                    problems.append((v, f"CPU {point.value:.0f}% (at or over {limit:g}%)"))
            elif metric == "ThreadsRunning":
                v = graded(point.value, t.aurora_threads_running_warn,
                           t.aurora_threads_running_crit)
                if v is not Verdict.OK:
                    problems.append((v, f"{point.value:.0f} threads running"))
    if problems:
        order = sorted(problems, key=lambda p: -p[0].rank)
        return Check("aurora", cluster.identifier, order[0][0], "; ".join(p[1] for p in order),
                     figures)
    parts = [f"available, writer {cluster.writer}", f"{len(cluster.readers)} reader"
             + ("s" if len(cluster.readers) != 1 else "")]
    if figures.get("cpu") is not None:
        parts.append(f"CPU {figures['cpu']:.1f}%")
    if figures.get("connections") is not None:
        parts.append(f"{figures['connections']:.0f} connections")
    return Check("aurora", cluster.identifier, Verdict.OK, ", ".join(parts), figures)


def judge_alb(states: list[TargetState] | Unavailable | AwsNotFound,
              target_group: str) -> list[Check]:
    """One line per web: healthy OK; unregistered or draining WARN "not in target group";
    unhealthy CRIT; initial, unused, unavailable or unknown WARN. An unreachable ALB or a
    missing target group is one CRIT line for the group."""
    if isinstance(states, Unavailable):
        return [unreachable("alb", target_group, f"elbv2: {states.reason}")]
    if isinstance(states, AwsNotFound):
        return [Check("alb", target_group, Verdict.CRIT, f"target group not found ({states})",
                      {"found": False})]
    checks = []
    for s in states:
        figures = {"target_group": target_group, "target": s.target_id, "state": s.state,
                   "aws_reason": s.reason}
        if s.state == "healthy":
            checks.append(Check("alb", s.host, Verdict.OK, f"healthy in {target_group}", figures))
        elif s.state == "unregistered":
            checks.append(Check("alb", s.host, Verdict.WARN, "not in target group", figures))
        elif s.state == "draining":
            checks.append(Check("alb", s.host, Verdict.WARN, "not in target group (draining)",
                                figures))
        elif s.state == "unhealthy":
            checks.append(Check("alb", s.host, Verdict.CRIT,
                                f"unhealthy: {s.reason or 'failing health checks'}", figures))
        else:
            checks.append(Check("alb", s.host, Verdict.WARN,
                                f"{s.state}" + (f": {s.reason}" if s.reason else ""), figures))
    return checks


def judge_ses(status: SesStatus | Unavailable, t: Thresholds, identity: str = "ses") -> Check:
    """One line for the account and identity. CRIT: unreachable, identity not verified, quota
    used up, bounce or complaint rate at its crit threshold. WARN: at a warn threshold, or the
    24 h quota used at ses_quota_warn."""
    if isinstance(status, Unavailable):
        return unreachable("ses", identity, f"ses: {status.reason}")
    host = status.identity or identity
    used = status.quota_used
    figures = {"max_24h": status.max_24h, "sent_24h": status.sent_24h,
               "max_rate": status.max_rate, "quota_used": _round(used, 4),
               "delivery_attempts": status.delivery_attempts, "bounces": status.bounces,
               "complaints": status.complaints, "rejects": status.rejects,
               "bounce_rate": _round(status.bounce_rate, 4),
               "complaint_rate": _round(status.complaint_rate, 4),
               "verification": status.verification}
    problems: list[tuple[Verdict, str]] = []
    if status.identity and status.verification != "Success":
        problems.append((Verdict.CRIT, f"identity {status.identity} not verified "
                                       f"({status.verification or 'unknown to SES'})"))
    if used is not None:
        if used >= 1:
            problems.append((Verdict.CRIT, f"24 h quota used up ({status.sent_24h:.0f} of "
                                           f"{status.max_24h:.0f})"))
        elif used >= t.ses_quota_warn:
            problems.append((Verdict.WARN, f"{used:.0%} of the 24 h quota used"))
    elif status.max_24h <= 0:
        problems.append((Verdict.CRIT, "no sending quota (sending paused?)"))
    for rate, warn, crit, what in (
        (status.bounce_rate, t.ses_bounce_warn, t.ses_bounce_crit, "bounce"),
        (status.complaint_rate, t.ses_complaint_warn, t.ses_complaint_crit, "complaint"),
    ):
        if rate is None:
            continue
        v = graded(rate, warn, crit)
        if v is not Verdict.OK:
            limit = crit if v is Verdict.CRIT else warn
            problems.append((v, f"{what} rate {rate:.2%} (at or over {limit:.2%})"))
    if problems:
        order = sorted(problems, key=lambda p: -p[0].rank)
        return Check("ses", host, order[0][0], "; ".join(p[1] for p in order), figures)
    rates = ("no mail in 24 h" if status.bounce_rate is None else
             f"bounces {status.bounce_rate:.2%}, complaints {status.complaint_rate or 0:.2%}")
    return Check("ses", host, Verdict.OK,
                 f"{status.sent_24h:.0f}/{status.max_24h:.0f} sent in 24 h, {rates}", figures)


def judge_cloudfront(state: CloudFrontState | Unavailable | AwsNotFound,
                     name: str = "cloudfront") -> Check:
    """Deployed and enabled: OK. InProgress: WARN "deploying". Disabled: CRIT (it serves
    nothing). Invalidations in progress are listed in the figures."""
    if isinstance(state, Unavailable):
        return unreachable("cloudfront", name, f"cloudfront: {state.reason}")
    if isinstance(state, AwsNotFound):
        return Check("cloudfront", name, Verdict.CRIT, f"distribution not found ({state})",
                     {"found": False})
    d = state.distribution
    figures = {"status": d.status, "enabled": d.enabled, "domain": d.domain,
               "aliases": list(d.aliases),
               "invalidations_in_progress": [i.id for i in state.invalidations]}
    pending = (f", {len(state.invalidations)} invalidation"
               f"{'s' if len(state.invalidations) != 1 else ''} in progress"
               if state.invalidations else "")
    if not d.enabled:
        return Check("cloudfront", d.id, Verdict.CRIT, f"disabled ({d.status}){pending}", figures)
    if d.status != "Deployed":
        why = "deploying" if _in_progress(d.status) else f"status {d.status}"
        return Check("cloudfront", d.id, Verdict.WARN, why + pending, figures)
    return Check("cloudfront", d.id, Verdict.OK, f"deployed, enabled, {d.domain}{pending}",
                 figures)


def judge_waf(ip_set: IpSet | Unavailable | AwsNotFound, name: str = "waf",
              scope: str = "") -> Check:
    """The IP set is readable: OK, with its address count; missing: CRIT."""
    if isinstance(ip_set, Unavailable):
        return unreachable("waf", name, f"wafv2: {ip_set.reason}")
    if isinstance(ip_set, AwsNotFound):
        return Check("waf", name, Verdict.CRIT, f"IP set not found ({ip_set})", {"found": False})
    n = len(ip_set.addresses)
    return Check("waf", ip_set.name, Verdict.OK,
                 f"IP set holds {n} address{'es' if n != 1 else ''}",
                 {"id": ip_set.id, "scope": scope, "addresses": n, "version": ip_set.version})


# -- the fleet-status tasks ---------------------------------------------------------------------


async def _outcome(read: Any) -> Any:
    """The read's value, or its Unavailable / AwsNotFound as a value (other errors propagate)."""
    try:
        return await read
    except (Unavailable, AwsNotFound) as e:
        return e


@task(name="check-aurora", **READ)
async def check_aurora_cluster(inventory: Inventory, thresholds: Thresholds) -> list[Check]:
    """Read the Aurora cluster (RDS) and its CPU and connections (CloudWatch) and judge them.
    Read-only."""
    cluster, metrics = await asyncio.gather(_outcome(read_aurora_cluster(inventory)),
                                            _outcome(read_aurora_metrics(inventory)))
    if isinstance(metrics, AwsNotFound):  # not raised by CloudWatch reads; keep the types honest
        raise metrics
    return [judge_aurora(cluster, metrics, thresholds, inventory.aws.aurora_cluster)]


@task(name="check-alb", **READ)
async def check_alb(inventory: Inventory, thresholds: Thresholds) -> list[Check]:
    """Read the ALB target group's health and judge every web in it. Read-only."""
    states = await _outcome(read_target_health(inventory))
    return judge_alb(states, inventory.aws.alb.target_group)


@task(name="check-ses", **READ)
async def check_ses(inventory: Inventory, thresholds: Thresholds) -> list[Check]:
    """Read SES's quota, send statistics and identity and judge them. Read-only."""
    status = await _outcome(read_ses(inventory))
    if isinstance(status, AwsNotFound):
        raise status
    return [judge_ses(status, thresholds, inventory.aws.ses_identity)]


@task(name="check-edge", **READ)
async def check_edge(inventory: Inventory, thresholds: Thresholds) -> list[Check]:
    """Read the CloudFront distribution (and its invalidations) and the WAF IP set and judge
    them. Read-only."""
    aws = inventory.aws
    distribution, ip_set = await asyncio.gather(_outcome(read_cloudfront(inventory)),
                                                _outcome(read_waf_ip_set(inventory)))
    name = aws.cloudfront_distribution_id or aws.cloudfront_alias or "cloudfront"
    return [judge_cloudfront(distribution, name),
            judge_waf(ip_set, aws.waf_ip_set, aws.waf_scope)]



# -- ALB changes (restart-webs: one web out of the target group and back) ---------------------------

from prefect.cache_policies import NO_CACHE  # noqa: E402 - kept with the section that uses it

NOT_REGISTERED_REASON = "Target.NotRegistered"


def parse_one_target_health(reply: Mapping[str, Any], host: str, target_id: str,
                            port: int | None = None) -> TargetState:
    """`elbv2.describe_target_health(Targets=[one])`: that target's state. AWS answers a target
    that is not in the group with reason `Target.NotRegistered` (state `unused`; moto says
    `unavailable`): that, or a reply without the target, is "unregistered"."""
    for d in reply.get("TargetHealthDescriptions") or []:
        target = d.get("Target") or {}
        if str(target.get("Id")) != target_id:
            continue
        if port is not None and target.get("Port") not in (None, port):
            continue
        health = d.get("TargetHealth") or {}
        if health.get("Reason") == NOT_REGISTERED_REASON:
            return TargetState(host, target_id, "unregistered", "not in target group")
        why = ": ".join(str(health[k]) for k in ("Reason", "Description") if health.get(k))
        return TargetState(host, target_id, str(health.get("State", "unknown")), why)
    return TargetState(host, target_id, "unregistered", "not in target group")


def _web_target(inventory: Inventory, host: str) -> dict[str, Any]:
    """The target-group entry of a web (`Id` from inventory.aws.alb.targets, the target port)."""
    alb = inventory.aws.alb
    if host not in alb.targets:
        raise AwsNotFound("elbv2", f"the inventory names no ALB target for {host}")
    return {"Id": alb.targets[host], "Port": alb.target_port}


async def _target_group_arn(inventory: Inventory) -> str:
    name = inventory.aws.alb.target_group
    groups = await _call("elbv2", lambda: clients(inventory).elbv2.describe_target_groups(
        Names=[name]))
    return parse_target_group_arn(groups, name)


async def read_web_target(inventory: Inventory, host: str) -> TargetState:
    """One web's registration and health in the ALB's target group (resolved by name): healthy,
    initial, unhealthy, draining, unused, unavailable or "unregistered". Read-only; safe to
    retry."""
    target = _web_target(inventory, host)
    arn = await _target_group_arn(inventory)
    reply = await _call("elbv2", lambda: clients(inventory).elbv2.describe_target_health(
        TargetGroupArn=arn, Targets=[target]))
    return parse_one_target_health(reply, host, target["Id"], target["Port"])


@task(name="deregister-web", cache_policy=NO_CACHE)
async def deregister_web(inventory: Inventory, host: str) -> None:
    """Take one web out of the ALB's target group: the ALB sends it no new requests (a real ALB
    lets its open connections finish for the group's deregistration delay). Changes the ALB.
    AWS treats a repeat as a no-op; the flow re-reads the target's state and decides."""
    target = _web_target(inventory, host)
    arn = await _target_group_arn(inventory)
    await _call("elbv2", lambda: clients(inventory).elbv2.deregister_targets(
        TargetGroupArn=arn, Targets=[target]))


@task(name="register-web", cache_policy=NO_CACHE)
async def register_web(inventory: Inventory, host: str) -> None:
    """Put one web back into the ALB's target group: the ALB sends it requests once its health
    checks pass (state `initial`, then `healthy`). Changes the ALB. AWS treats a repeat as a
    no-op; the flow re-reads the target's state and decides."""
    target = _web_target(inventory, host)
    arn = await _target_group_arn(inventory)
    await _call("elbv2", lambda: clients(inventory).elbv2.register_targets(
        TargetGroupArn=arn, Targets=[target]))


# -- WAF and CloudFront changes -----------------------------------------------------------------
# The block-address and purge-cdn flows' changes (flows/block_address.py, flows/purge_cdn.py).
# WAF: an IP set is changed by read (its LockToken) -> update_ip_set with that token; a concurrent
# change makes the update fail with WAFOptimisticLockException, and only then is the set re-read
# and the same change (add these, remove those) computed afresh and tried again. Expiries of
# blocked addresses live in the IP set's own tags (`dwops-expires/<cidr, "/" as "_">` = ISO UTC
# time), so they survive between runs with the set itself.
# CloudFront: one invalidation per run (CallerReference makes a repeated request idempotent),
# then get_invalidation polled until Completed or a deadline.

from prefect.cache_policies import NO_CACHE  # noqa: E402
import time as _time  # noqa: E402

EXPIRY_TAG_PREFIX = "dwops-expires/"
WAF_MAX_TAGS = 50  # per resource (AWS WAFv2 TagResource)
WAF_MAX_ADDRESSES = 10_000  # per IP set (AWS WAF quota)
WAF_UPDATE_ATTEMPTS = 4  # in all; only a WAFOptimisticLockException is tried again


@dataclass(frozen=True)
class IpSetState:
    """The IP set as one `get_ip_set` read it, with its expiry tags.

    `expiries`: normalised CIDR -> expiry (aware UTC); `malformed`: tag keys under the expiry
    prefix that do not name a CIDR or hold no ISO time (reported, never acted on);
    `tag_count`: every tag of the set (AWS allows WAF_MAX_TAGS)."""

    ip_set: IpSet
    arn: str
    description: str
    lock_token: str
    scope: str
    expiries: Mapping[str, dt.datetime]
    malformed: tuple[str, ...] = ()
    tag_count: int = 0


@dataclass(frozen=True)
class IpSetChange:
    """What `update_waf_ip_set` found and wrote. `written` False: the set already was as wanted."""

    before: tuple[str, ...]
    after: tuple[str, ...]
    attempts: int
    written: bool


@dataclass(frozen=True)
class InvalidationWait:
    """How waiting for an invalidation ended: `completed`, or the last status / error seen."""

    invalidation: Invalidation | None
    completed: bool
    seconds: float
    polls: int
    error: str = ""


def expiry_tag_key(cidr: str) -> str:
    """The tag key holding `cidr`'s expiry: `dwops-expires/203.0.113.7_32` ("/" is kept for the
    prefix only, so the key maps back to exactly one CIDR)."""
    return EXPIRY_TAG_PREFIX + cidr.replace("/", "_")


def format_expiry(when: dt.datetime) -> str:
    """An expiry as a tag value: ISO 8601 UTC to the second, e.g. 2026-01-02T03:04:05Z."""
    return (_utc(when) or _now()).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_expiry_tags(tags: Sequence[Mapping[str, Any]]
                      ) -> tuple[dict[str, dt.datetime], tuple[str, ...]]:
    """`wafv2.list_tags_for_resource` TagList: ({normalised CIDR: expiry}, malformed keys).
    Tags outside the expiry prefix are ignored."""
    expiries: dict[str, dt.datetime] = {}
    malformed: list[str] = []
    for tag in tags:
        key, value = str(tag.get("Key", "")), str(tag.get("Value", ""))
        if not key.startswith(EXPIRY_TAG_PREFIX):
            continue
        try:
            cidr = str(ipaddress.ip_network(key[len(EXPIRY_TAG_PREFIX):].replace("_", "/")))
            when = _utc(dt.datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            malformed.append(key)
            continue
        if when is None:
            malformed.append(key)
            continue
        expiries[cidr] = when
    return expiries, tuple(malformed)


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def merge_addresses(current: Sequence[str], add: Sequence[str] = (),
                    remove: Sequence[str] = ()) -> tuple[str, ...]:
    """The IP set's address list with `remove` taken out and `add` appended (pure).

    Entries are compared as networks, so `2001:DB8::1/128` and `2001:db8::1/128` are one; the
    order and spelling of entries that stay are kept; an address already present is not added
    twice; removing one that is absent does nothing. A broader entry that merely covers a removed
    address is kept (never split)."""
    gone = {n for r in remove if (n := _network(r)) is not None}
    out = [a for a in current if _network(a) not in gone]
    present = {n for a in out if (n := _network(a)) is not None}
    for a in add:
        n = _network(a)
        if n is not None and n not in present:
            out.append(str(n))
            present.add(n)
    return tuple(out)


def parse_ip_set_state(reply: Mapping[str, Any], tags: Sequence[Mapping[str, Any]],
                       scope: str) -> IpSetState:
    """`wafv2.get_ip_set` (with its LockToken) and the set's tags: where a change starts from."""
    ip_set = parse_ip_set(reply)
    s = reply.get("IPSet") or {}
    expiries, malformed = parse_expiry_tags(tags)
    return IpSetState(ip_set, str(s.get("ARN", "")), str(s.get("Description") or ""),
                      str(reply.get("LockToken", "")), scope, expiries, malformed, len(tags))


async def read_waf_ip_set_state(inventory: Inventory) -> IpSetState:
    """The inventory's WAF IP set (found as `read_waf_ip_set` finds it), its LockToken, ARN and
    expiry tags. Read-only; safe to retry."""
    aws = inventory.aws
    found = await read_waf_ip_set(inventory)  # finds the id by name when the inventory has none

    def read() -> IpSetState:
        waf = clients(inventory).wafv2
        reply = waf.get_ip_set(Name=aws.waf_ip_set, Scope=aws.waf_scope, Id=found.id)
        arn = reply["IPSet"]["ARN"]
        tags: list[Mapping[str, Any]] = []
        kwargs: dict[str, Any] = {"ResourceARN": arn, "Limit": 100}
        while True:
            page = waf.list_tags_for_resource(**kwargs)
            tags += (page.get("TagInfoForResource") or {}).get("TagList") or []
            if not page.get("NextMarker"):
                break
            kwargs["NextMarker"] = page["NextMarker"]
        return parse_ip_set_state(reply, tags, aws.waf_scope)

    return await _call("wafv2", read)


def _is_lock_conflict(exc: Exception) -> bool:
    return (isinstance(exc, ClientError)
            and exc.response.get("Error", {}).get("Code") == "WAFOptimisticLockException")


@task(name="update-waf-ip-set", cache_policy=NO_CACHE)
async def update_waf_ip_set(inventory: Inventory, set_id: str, add: Sequence[str] = (),
                            remove: Sequence[str] = (), *,
                            attempts: int = WAF_UPDATE_ATTEMPTS) -> IpSetChange:
    """Add and remove addresses in the inventory's WAF IP set. Changes what the edge blocks.

    Reads the set (addresses, LockToken), writes `merge_addresses(...)` with that token, and only
    when AWS answers WAFOptimisticLockException (someone changed the set in between) reads it again
    and recomputes; any other error is raised (AwsError). Writes nothing when the set already is
    as wanted. Keeps the set's description (an update replaces every field)."""
    aws = inventory.aws

    def apply() -> IpSetChange:
        waf = clients(inventory).wafv2
        for attempt in range(1, attempts + 1):
            reply = waf.get_ip_set(Name=aws.waf_ip_set, Scope=aws.waf_scope, Id=set_id)
            s = reply["IPSet"]
            before = tuple(str(a) for a in s.get("Addresses") or ())
            after = merge_addresses(before, add, remove)
            if after == before:
                return IpSetChange(before, after, attempt, False)
            kwargs: dict[str, Any] = dict(Name=aws.waf_ip_set, Scope=aws.waf_scope, Id=set_id,
                                          Addresses=list(after), LockToken=reply["LockToken"])
            if s.get("Description"):
                kwargs["Description"] = s["Description"]
            try:
                waf.update_ip_set(**kwargs)
            except ClientError as e:
                if _is_lock_conflict(e) and attempt < attempts:
                    _time.sleep(0.2 * attempt)  # let the other writer finish
                    continue
                raise
            return IpSetChange(before, after, attempt, True)
        raise AssertionError("unreachable")

    return await _call("wafv2", apply)


@task(name="set-waf-expiries", cache_policy=NO_CACHE)
async def set_waf_expiries(inventory: Inventory, arn: str,
                           expiries: Mapping[str, dt.datetime]) -> None:
    """Record when each blocked CIDR expires, as tags on the IP set (overwriting an older expiry
    of the same CIDR). Changes the set's tags only; repeating it is harmless."""
    tags = [{"Key": expiry_tag_key(c), "Value": format_expiry(t)} for c, t in expiries.items()]
    if tags:
        await _call("wafv2", lambda: clients(inventory).wafv2.tag_resource(
            ResourceARN=arn, Tags=tags))


@task(name="clear-waf-expiries", cache_policy=NO_CACHE)
async def clear_waf_expiries(inventory: Inventory, arn: str, cidrs: Sequence[str]) -> None:
    """Forget the expiries of `cidrs` (remove their tags from the IP set). Changes the set's tags
    only; removing a tag that is absent is harmless."""
    keys = [expiry_tag_key(c) for c in cidrs]
    if keys:
        await _call("wafv2", lambda: clients(inventory).wafv2.untag_resource(
            ResourceARN=arn, TagKeys=keys))


# CloudFront's documented statuses are InProgress and Completed (moto says COMPLETED).
_INVALIDATION_STATUS = {"completed": "Completed", "inprogress": "InProgress"}


def parse_invalidation(reply: Mapping[str, Any]) -> Invalidation:
    """`cloudfront.create_invalidation` / `get_invalidation`: its id, status (spelled as AWS
    documents it: InProgress, Completed) and creation time."""
    i = reply.get("Invalidation")
    if not i or "Id" not in i:
        raise AwsNotFound("cloudfront", "the reply holds no invalidation")
    raw = str(i.get("Status", ""))
    status = _INVALIDATION_STATUS.get(raw.replace("_", "").replace(" ", "").lower(), raw)
    return Invalidation(str(i["Id"]), status, _utc(i.get("CreateTime")))


def invalidation_completed(invalidation: Invalidation) -> bool:
    return invalidation.status == "Completed"


@task(name="create-cdn-invalidation", cache_policy=NO_CACHE)
async def create_cdn_invalidation(inventory: Inventory, distribution_id: str,
                                  paths: Sequence[str], caller_reference: str) -> Invalidation:
    """Ask CloudFront to drop `paths` from every edge cache of the distribution. Changes the CDN
    (the next requests for those paths go to the origin). The same caller_reference with the
    same paths returns the invalidation already made instead of a second one."""
    batch = {"Paths": {"Quantity": len(paths), "Items": list(paths)},
             "CallerReference": caller_reference}
    reply = await _call("cloudfront", lambda: clients(inventory).cloudfront.create_invalidation(
        DistributionId=distribution_id, InvalidationBatch=batch))
    return parse_invalidation(reply)


async def read_invalidation(inventory: Inventory, distribution_id: str,
                            invalidation_id: str) -> Invalidation:
    """One invalidation of the distribution (status). Read-only; safe to retry."""
    reply = await _call("cloudfront", lambda: clients(inventory).cloudfront.get_invalidation(
        DistributionId=distribution_id, Id=invalidation_id))
    return parse_invalidation(reply)


async def wait_for_invalidation(inventory: Inventory, distribution_id: str,
                                invalidation_id: str, timeout: float,
                                poll: float = 5.0) -> InvalidationWait:
    """Poll `get_invalidation` until Completed or `timeout` seconds (first poll at once, then
    every 1, 2, 4... up to `poll` s). A transient error is polled through; an error that is not
    transient, or the deadline, ends the wait. Read-only."""
    started = asyncio.get_running_loop().time()
    deadline = started + timeout
    last: Invalidation | None = None
    error, polls, delay = "", 0, 1.0
    while True:
        polls += 1
        try:
            last = await read_invalidation(inventory, distribution_id, invalidation_id)
            error = ""
        except Unavailable as e:
            error = str(e)
        except AwsError as e:
            return InvalidationWait(last, False, asyncio.get_running_loop().time() - started,
                                    polls, str(e))
        now = asyncio.get_running_loop().time()
        if last is not None and invalidation_completed(last):
            return InvalidationWait(last, True, now - started, polls)
        if now >= deadline:
            return InvalidationWait(last, False, now - started, polls,
                                    error or f"still {last.status if last else 'unknown'} "
                                             f"after {timeout:g} s")
        await asyncio.sleep(min(delay, poll, max(0.0, deadline - now)))
        delay *= 2
