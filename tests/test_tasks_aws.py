"""tasks/aws.py: the parsers on replies recorded from the lab's moto server, the pure judges, and
the reads and checks against the running lab.

Fixtures: tests/fixtures/aws/ (see its README.md; `record.py` there records them again). The lab
is shared with other test files running at the same time: the integration tests only read the
lab's resources; the one that deregisters a web does it in a target group of its own
(`dwops-test-*`), removed again at the end, so the lab's traffic and other tests never see it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from dwops.errors import Unavailable
from dwops.health import Check, Thresholds, Verdict
from dwops.inventory import Inventory, SecretRef
from tasks.aws import (
    AuroraCluster,
    AwsError,
    AwsNotFound,
    AwsUnavailable,
    CloudFrontState,
    ClusterMember,
    Distribution,
    Invalidation,
    IpSet,
    MetricPoint,
    SesStatus,
    TargetState,
    check_alb,
    check_aurora_cluster,
    check_edge,
    check_ses,
    classify_error,
    client_config,
    clients,
    find_distribution_id,
    find_ip_set_id,
    judge_alb,
    judge_aurora,
    judge_cloudfront,
    judge_ses,
    judge_waf,
    parse_aurora_cluster,
    parse_credentials,
    parse_distribution,
    parse_invalidations,
    parse_ip_set,
    parse_metric_latest,
    parse_ses,
    parse_ses_verification,
    parse_target_group_arn,
    parse_target_health,
    read_aurora_cluster,
    read_aurora_metrics,
    read_cloudfront,
    read_ses,
    read_target_health,
    read_waf_ip_set,
)

FIXTURES = Path(__file__).parent / "fixtures" / "aws"
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
UTC = dt.timezone.utc
# An address of the AWS range where nothing listens: the endpoint refuses every connection.
REFUSING_ENDPOINT = "http://127.30.0.29:5000"
WEBS = {f"va-web0{i}": f"127.10.0.1{i}" for i in range(1, 7)}  # the lab's six webs, as recorded
T = Thresholds()


def revive(value: Any) -> Any:
    """JSON as recorded back into what botocore returns: ISO strings become aware datetimes."""
    if isinstance(value, dict):
        return {k: revive(v) for k, v in value.items()}
    if isinstance(value, list):
        return [revive(v) for v in value]
    if isinstance(value, str) and ISO.match(value):
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value


def recorded(name: str) -> dict[str, Any]:
    return revive(json.loads((FIXTURES / f"{name}.json").read_text()))


def recorded_at(name: str) -> dt.datetime:
    return dt.datetime.fromisoformat((FIXTURES / f"{name}-recorded-at.txt").read_text().strip())


def recorded_error(name: str) -> ClientError:
    e = recorded(name)
    return ClientError({"Error": e["Error"], "ResponseMetadata": {
        "HTTPStatusCode": e["HTTPStatusCode"]}}, e["operation"])


# -- parsers, on recorded replies ------------------------------------------------------------


def test_fixture_datetimes_come_back_as_aware_datetimes() -> None:
    point = recorded("cloudwatch-get-metric-statistics-cpu")["Datapoints"][0]
    assert isinstance(point["Timestamp"], dt.datetime) and point["Timestamp"].tzinfo is not None


def test_aurora_cluster_with_writer_and_reader() -> None:
    cluster = parse_aurora_cluster(recorded("rds-describe-db-clusters"))
    assert cluster == AuroraCluster(
        identifier="dw-global", status="available", engine="aurora-mysql",
        writer="dw-global-1", readers=("dw-global-2",),
        members=(ClusterMember("dw-global-1", True, 1), ClusterMember("dw-global-2", False, 1)),
    )


def test_aurora_cluster_without_members_has_no_writer() -> None:
    cluster = parse_aurora_cluster(recorded("rds-describe-db-clusters-no-members"))
    assert (cluster.identifier, cluster.status) == ("dwops-fixture-empty", "available")
    assert (cluster.writer, cluster.readers, cluster.members) == (None, (), ())
    check = judge_aurora(cluster, {}, T)
    assert check.verdict is Verdict.CRIT and "no writer" in check.reason


def test_stopped_aurora_cluster_is_critical() -> None:
    cluster = parse_aurora_cluster(recorded("rds-describe-db-clusters-stopped"))
    assert cluster.status == "stopped"
    check = judge_aurora(cluster, {}, T)
    assert check.verdict is Verdict.CRIT
    assert check.reason.startswith("cluster stopped")


@pytest.mark.parametrize("reply", [{}, {"DBClusters": []}])
def test_a_reply_without_cluster_is_not_found(reply: dict) -> None:
    with pytest.raises(AwsNotFound):
        parse_aurora_cluster(reply)


def test_latest_metric_point_and_its_age() -> None:
    reply = recorded("cloudwatch-get-metric-statistics-cpu")
    now = recorded_at("cloudwatch")
    newest = max(reply["Datapoints"], key=lambda p: p["Timestamp"])
    point = parse_metric_latest(reply, now)
    assert point == MetricPoint(newest["Average"], newest["Timestamp"],
                                (now - newest["Timestamp"]).total_seconds())
    assert 0 <= point.age_seconds <= 60 + 5  # the newest 60 s period started within the last 60 s


def test_metric_points_are_picked_by_time_not_by_order() -> None:
    reply = recorded("cloudwatch-get-metric-statistics-connections")
    shuffled = {**reply, "Datapoints": list(reversed(reply["Datapoints"]))}
    now = recorded_at("cloudwatch")
    assert parse_metric_latest(shuffled, now) == parse_metric_latest(reply, now)


def test_no_datapoints_is_none() -> None:
    reply = recorded("cloudwatch-get-metric-statistics-no-datapoints")
    assert reply == {"Label": "FreeableMemory", "Datapoints": []}
    assert parse_metric_latest(reply, recorded_at("cloudwatch")) is None
    assert parse_metric_latest({}, recorded_at("cloudwatch")) is None


def test_datapoints_without_the_statistic_are_skipped() -> None:
    reply = recorded("cloudwatch-get-metric-statistics-cpu")
    assert parse_metric_latest(reply, recorded_at("cloudwatch"), statistic="Maximum") is None
    newest = max(reply["Datapoints"], key=lambda p: p["Timestamp"])
    broken = {"Datapoints": [{k: v for k, v in newest.items() if k != "Average"},
                             *[p for p in reply["Datapoints"] if p is not newest]]}
    point = parse_metric_latest(broken, recorded_at("cloudwatch"))
    assert point is not None and point.timestamp < newest["Timestamp"]


def test_every_web_in_the_target_group() -> None:
    states = parse_target_health(recorded("elbv2-describe-target-health"), WEBS, port=80)
    assert states == [TargetState(h, a, "healthy", "") for h, a in WEBS.items()]


def test_a_web_missing_from_the_target_group_is_unregistered() -> None:
    states = parse_target_health(recorded("elbv2-describe-target-health-one-missing"), WEBS)
    assert [(s.host, s.state) for s in states] == [
        ("va-web01", "healthy"), ("va-web02", "healthy"), ("va-web03", "healthy"),
        ("va-web04", "unregistered"), ("va-web05", "healthy"), ("va-web06", "healthy")]
    assert states[3] == TargetState("va-web04", "127.10.0.14", "unregistered",
                                    "not in target group")


def test_an_empty_target_group_and_a_wrong_port() -> None:
    empty = parse_target_health(recorded("elbv2-describe-target-health-empty"), WEBS)
    assert {s.state for s in empty} == {"unregistered"} and len(empty) == 6
    wrong_port = parse_target_health(recorded("elbv2-describe-target-health"), WEBS, port=8080)
    assert {s.state for s in wrong_port} == {"unregistered"}


def test_targets_outside_the_inventory_are_left_out_and_reasons_kept() -> None:
    reply = recorded("elbv2-describe-target-health")
    reply["TargetHealthDescriptions"][0]["TargetHealth"] = {  # as a real ALB says it
        "State": "unhealthy", "Reason": "Target.FailedHealthChecks",
        "Description": "Health checks failed"}
    states = parse_target_health(reply, {"va-web01": "127.10.0.11"})
    assert states == [TargetState("va-web01", "127.10.0.11", "unhealthy",
                                  "Target.FailedHealthChecks: Health checks failed")]


def test_target_group_arn_by_name() -> None:
    reply = recorded("elbv2-describe-target-groups")
    assert parse_target_group_arn(reply, "dw-web").startswith(
        "arn:aws:elasticloadbalancing:us-east-1:")
    with pytest.raises(AwsNotFound):
        parse_target_group_arn(reply, "dw-other")


def test_ses_quota_and_rates_over_the_last_24_hours() -> None:
    quota, stats = recorded("ses-get-send-quota"), recorded("ses-get-send-statistics")
    status = parse_ses(quota, stats, recorded_at("ses"))
    assert status == SesStatus(max_24h=200.0, sent_24h=quota["SentLast24Hours"], max_rate=1.0,
                               bounce_rate=0.0, complaint_rate=0.0,
                               delivery_attempts=sum(p["DeliveryAttempts"]
                                                     for p in stats["SendDataPoints"]))
    assert status.delivery_attempts >= 3


def test_ses_rates_count_only_the_last_24_hours() -> None:
    quota, stats = recorded("ses-get-send-quota"), recorded("ses-get-send-statistics")
    later = parse_ses(quota, stats, recorded_at("ses") + dt.timedelta(hours=25))
    assert (later.delivery_attempts, later.bounce_rate, later.complaint_rate) == (0, None, None)
    stamp = stats["SendDataPoints"][0]["Timestamp"]
    old = {"Timestamp": stamp - dt.timedelta(hours=30), "DeliveryAttempts": 100, "Bounces": 90,
           "Complaints": 5, "Rejects": 0}
    recent = {"Timestamp": stamp - dt.timedelta(hours=1), "DeliveryAttempts": 97, "Bounces": 7,
              "Complaints": 1, "Rejects": 2}
    mixed = parse_ses(quota, {"SendDataPoints": [*stats["SendDataPoints"], old, recent]},
                      recorded_at("ses"))
    attempts = 97 + sum(p["DeliveryAttempts"] for p in stats["SendDataPoints"])
    assert mixed.delivery_attempts == attempts
    assert mixed.bounce_rate == pytest.approx(7 / attempts)
    assert mixed.complaint_rate == pytest.approx(1 / attempts)
    assert mixed.rejects == 2


def test_ses_identity_verification() -> None:
    assert parse_ses_verification(recorded("ses-get-identity-verification-attributes"),
                                  "dreamwidth.org") == "Success"
    assert parse_ses_verification(recorded("ses-get-identity-verification-attributes-unknown"),
                                  "unknown.example.net") is None


def test_distribution() -> None:
    d = parse_distribution(recorded("cloudfront-get-distribution"))
    assert (d.id, d.status, d.enabled, d.comment) == ("NAZOBCEFDBJGN", "Deployed", True,
                                                      "dreamwidth www")
    assert d.domain.endswith(".cloudfront.net") and d.aliases == ()
    with pytest.raises(AwsNotFound):
        parse_distribution({})


def test_distribution_found_by_alias_or_comment() -> None:
    listing = recorded("cloudfront-list-distributions")
    assert find_distribution_id(listing, "dreamwidth www") == "NAZOBCEFDBJGN"
    assert find_distribution_id(listing, "www.dreamwidth.org") is None
    item = listing["DistributionList"]["Items"][0]
    item["Aliases"] = {"Quantity": 1, "Items": ["www.dreamwidth.org"]}
    assert find_distribution_id(listing, "www.dreamwidth.org") == "NAZOBCEFDBJGN"
    assert parse_distribution(item).aliases == ("www.dreamwidth.org",)
    assert find_distribution_id({"DistributionList": {"Quantity": 0}}, "x") is None


def test_only_invalidations_in_progress_are_listed() -> None:
    reply = recorded("cloudfront-list-invalidations")
    assert {i["Status"] for i in reply["InvalidationList"]["Items"]} == {"COMPLETED"}  # moto
    assert parse_invalidations(reply) == []
    assert parse_invalidations(recorded("cloudfront-list-invalidations-empty")) == []
    first = reply["InvalidationList"]["Items"][0]
    first["Status"] = "InProgress"  # what AWS says until the edge locations are done
    assert parse_invalidations(reply) == [Invalidation(first["Id"], "InProgress",
                                                       first["CreateTime"])]


def test_ip_set_and_its_id_by_name() -> None:
    ip_set = parse_ip_set(recorded("wafv2-get-ip-set"))
    assert ip_set == IpSet("dw-blocked-ips", ip_set.id, ("192.0.2.0/24", "198.51.100.0/24"),
                           "IPV4")
    assert find_ip_set_id(recorded("wafv2-list-ip-sets"), "dw-blocked-ips") == ip_set.id
    assert find_ip_set_id(recorded("wafv2-list-ip-sets"), "dw-other") is None
    with pytest.raises(AwsNotFound):
        parse_ip_set({})


@pytest.mark.parametrize("name", ["rds-error-cluster-not-found",
                                  "elbv2-error-target-group-not-found",
                                  "cloudfront-error-no-such-distribution",
                                  "wafv2-error-ip-set-not-found"])
def test_recorded_not_found_errors(name: str) -> None:
    error = classify_error("svc", recorded_error(name))
    assert type(error) is AwsNotFound and not isinstance(error, Unavailable)


def test_transient_and_permanent_errors() -> None:
    refused = classify_error("rds", EndpointConnectionError(endpoint_url=REFUSING_ENDPOINT))
    timed_out = classify_error("ses", ReadTimeoutError(endpoint_url="http://x/"))
    throttled = classify_error("cloudwatch", ClientError(
        {"Error": {"Code": "Throttling", "Message": "Rate exceeded"},
         "ResponseMetadata": {"HTTPStatusCode": 400}}, "GetMetricStatistics"))
    server = classify_error("elbv2", ClientError(
        {"Error": {"Code": "", "Message": ""}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "X"))
    denied = classify_error("rds", ClientError(
        {"Error": {"Code": "AccessDenied", "Message": "not authorized"},
         "ResponseMetadata": {"HTTPStatusCode": 403}}, "DescribeDBClusters"))
    for e in (refused, timed_out, throttled, server):
        assert isinstance(e, AwsUnavailable) and isinstance(e, Unavailable), e
    assert isinstance(denied, AwsError) and not isinstance(denied, (Unavailable, AwsNotFound))
    assert "AccessDenied" in str(denied) and throttled.reason == "Throttling: Rate exceeded"


def test_credentials_ini_and_errors_that_never_show_values() -> None:
    text = "# comment\n[default]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = s3cr3t\n"
    assert parse_credentials(text) == {"aws_access_key_id": "AKIDEXAMPLE",
                                       "aws_secret_access_key": "s3cr3t"}
    with pytest.raises(ValueError) as missing:
        parse_credentials("[default]\naws_access_key_id = AKIDEXAMPLE\n")
    assert "aws_secret_access_key" in str(missing.value)
    assert "AKIDEXAMPLE" not in str(missing.value)
    with pytest.raises(ValueError, match="no \\[default\\]"):
        parse_credentials("[other]\naws_access_key_id = AKIDEXAMPLE\n")


def test_client_config_timeouts_retries_and_proxies() -> None:
    lab = client_config("http://127.30.0.20:5000")
    assert (lab.connect_timeout, lab.read_timeout) == (3, 10)
    assert lab.retries == {"mode": "standard", "max_attempts": 2}
    assert lab.proxies == {}
    assert client_config(None).proxies is None  # production: the environment's proxy, if any


# -- judges (pure) --------------------------------------------------------------------------------

NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
CLUSTER = AuroraCluster("dw-global", "available", "aurora-mysql", "w1", ("r1",),
                        (ClusterMember("w1", True), ClusterMember("r1", False)))


def metrics(cpu: float | None = 12.5, connections: float | None = 40, age: float = 30
            ) -> dict[str, MetricPoint | None]:
    point = lambda v: None if v is None else MetricPoint(v, NOW, age)  # noqa: E731
    return {"CPUUtilization": point(cpu), "DatabaseConnections": point(connections)}


def test_aurora_healthy_and_its_figures() -> None:
    check = judge_aurora(CLUSTER, metrics(), T)
    assert check == Check("aurora", "dw-global", Verdict.OK,
                          "available, writer w1, 1 reader, CPU 12.5%, 40 connections", {
                              "status": "available", "engine": "aurora-mysql", "writer": "w1",
                              "readers": ["r1"], "cpu": 12.5, "connections": 40,
                              "metric_ages": {"CPUUtilization": 30, "DatabaseConnections": 30}})


@pytest.mark.parametrize("cpu, verdict", [(69.9, Verdict.OK), (70, Verdict.WARN),
                                          (89, Verdict.WARN), (90, Verdict.CRIT)])
def test_aurora_cpu_is_graded(cpu: float, verdict: Verdict) -> None:
    check = judge_aurora(CLUSTER, metrics(cpu=cpu), T)
    assert check.verdict is verdict
    if verdict is not Verdict.OK:
        assert check.reason.startswith(f"CPU {cpu:.0f}%")


def test_aurora_stale_or_missing_metrics_warn() -> None:
    stale = judge_aurora(CLUSTER, metrics(cpu=95, age=T.aurora_metrics_max_age + 1), T)
    assert stale.verdict is Verdict.WARN  # an old CPU figure is not graded
    assert "CPUUtilization stale (301 s old" in stale.reason
    missing = judge_aurora(CLUSTER, metrics(connections=None), T)
    assert (missing.verdict, missing.reason) == (Verdict.WARN,
                                                 "no recent DatabaseConnections data")
    assert missing.figures["connections"] is None


def test_aurora_topology() -> None:
    no_reader = AuroraCluster("c", "available", "aurora-mysql", "w1", (),
                              (ClusterMember("w1", True),))
    check = judge_aurora(no_reader, metrics(), T)
    assert (check.verdict, check.reason) == (Verdict.WARN,
                                             "no reader instance (nothing to fail over to)")
    two = AuroraCluster("c", "available", "aurora-mysql", "w1", (),
                        (ClusterMember("w1", True), ClusterMember("w2", True)))
    assert judge_aurora(two, metrics(), T).verdict is Verdict.CRIT
    failing_over = AuroraCluster("c", "failing-over", "aurora-mysql", "w1", ("r1",),
                                 CLUSTER.members)
    check = judge_aurora(failing_over, metrics(cpu=95), T)
    assert (check.verdict, check.reason) == (Verdict.CRIT,
                                             "CPU 95% (at or over 90%); cluster failing-over")


def test_aurora_unreachable_rds_or_cloudwatch() -> None:
    check = judge_aurora(AwsUnavailable("rds", "refused"), metrics(), T, "dw-global")
    assert check == Check("aurora", "dw-global", Verdict.CRIT, "unreachable: rds: refused",
                          {"reachable": False})
    check = judge_aurora(CLUSTER, AwsUnavailable("cloudwatch", "timed out"), T)
    assert (check.verdict, check.reason) == (Verdict.CRIT, "CloudWatch unreachable: timed out")
    assert check.figures["writer"] == "w1"
    missing = judge_aurora(AwsNotFound("rds", "DBClusterNotFoundFault"), {}, T, "dw-global")
    assert missing.verdict is Verdict.CRIT and "not found" in missing.reason


def test_alb_verdicts_per_web() -> None:
    checks = judge_alb([
        TargetState("va-web01", "127.10.0.11", "healthy"),
        TargetState("va-web02", "127.10.0.12", "unregistered", "not in target group"),
        TargetState("va-web03", "127.10.0.13", "draining", "Target.DeregistrationInProgress"),
        TargetState("va-web04", "127.10.0.14", "unhealthy", "Target.Timeout: Request timed out"),
        TargetState("va-web05", "127.10.0.15", "initial", "Elb.RegistrationInProgress"),
    ], "dw-web")
    assert [(c.host, c.verdict, c.reason) for c in checks] == [
        ("va-web01", Verdict.OK, "healthy in dw-web"),
        ("va-web02", Verdict.WARN, "not in target group"),
        ("va-web03", Verdict.WARN, "not in target group (draining)"),
        ("va-web04", Verdict.CRIT, "unhealthy: Target.Timeout: Request timed out"),
        ("va-web05", Verdict.WARN, "initial: Elb.RegistrationInProgress"),
    ]
    assert set(checks[0].figures) == {"target_group", "target", "state", "aws_reason"}
    assert {c.system for c in checks} == {"alb"}


def test_alb_unreachable_is_one_critical_line() -> None:
    [check] = judge_alb(AwsUnavailable("elbv2", "refused"), "dw-web")
    assert check == Check("alb", "dw-web", Verdict.CRIT, "unreachable: elbv2: refused",
                          {"reachable": False})


SES_OK = SesStatus(200, 3, 1, 0.0, 0.0, 3, identity="dreamwidth.org", verification="Success")


@pytest.mark.parametrize("change, verdict, reason", [
    ({}, Verdict.OK, "3/200 sent in 24 h, bounces 0.00%, complaints 0.00%"),
    ({"bounce_rate": 0.05}, Verdict.WARN, "bounce rate 5.00% (at or over 5.00%)"),
    ({"bounce_rate": 0.12}, Verdict.CRIT, "bounce rate 12.00% (at or over 10.00%)"),
    ({"complaint_rate": 0.002}, Verdict.WARN, "complaint rate 0.20% (at or over 0.10%)"),
    ({"complaint_rate": 0.005}, Verdict.CRIT, "complaint rate 0.50% (at or over 0.50%)"),
    ({"sent_24h": 170}, Verdict.WARN, "85% of the 24 h quota used"),
    ({"sent_24h": 200}, Verdict.CRIT, "24 h quota used up (200 of 200)"),
    ({"verification": "Pending"}, Verdict.CRIT, "identity dreamwidth.org not verified (Pending)"),
    ({"verification": None}, Verdict.CRIT,
     "identity dreamwidth.org not verified (unknown to SES)"),
    ({"bounce_rate": None, "complaint_rate": None, "delivery_attempts": 0, "sent_24h": 0},
     Verdict.OK, "0/200 sent in 24 h, no mail in 24 h"),
])
def test_ses_verdicts(change: dict, verdict: Verdict, reason: str) -> None:
    from dataclasses import replace

    check = judge_ses(replace(SES_OK, **change), T)
    assert (check.system, check.host, check.verdict, check.reason) == (
        "ses", "dreamwidth.org", verdict, reason)


def test_ses_figures_and_unreachable() -> None:
    assert set(judge_ses(SES_OK, T).figures) == {
        "max_24h", "sent_24h", "max_rate", "quota_used", "delivery_attempts", "bounces",
        "complaints", "rejects", "bounce_rate", "complaint_rate", "verification"}
    check = judge_ses(AwsUnavailable("ses", "refused"), T, "dreamwidth.org")
    assert (check.host, check.verdict, check.reason) == ("dreamwidth.org", Verdict.CRIT,
                                                         "unreachable: ses: refused")


def distribution(status: str = "Deployed", enabled: bool = True) -> Distribution:
    return Distribution("E1", status, enabled, "d1.cloudfront.net")


def test_cloudfront_verdicts() -> None:
    ok = judge_cloudfront(CloudFrontState(distribution(), ()))
    assert (ok.system, ok.host, ok.verdict, ok.reason) == (
        "cloudfront", "E1", Verdict.OK, "deployed, enabled, d1.cloudfront.net")
    assert ok.figures == {"status": "Deployed", "enabled": True, "domain": "d1.cloudfront.net",
                          "aliases": [], "invalidations_in_progress": []}
    busy = judge_cloudfront(CloudFrontState(distribution("InProgress"), (
        Invalidation("I1", "InProgress", NOW), Invalidation("I2", "InProgress", NOW))))
    assert (busy.verdict, busy.reason) == (Verdict.WARN, "deploying, 2 invalidations in progress")
    assert busy.figures["invalidations_in_progress"] == ["I1", "I2"]
    off = judge_cloudfront(CloudFrontState(distribution(enabled=False), ()))
    assert (off.verdict, off.reason) == (Verdict.CRIT, "disabled (Deployed)")
    down = judge_cloudfront(AwsUnavailable("cloudfront", "refused"), "E1")
    assert (down.host, down.verdict) == ("E1", Verdict.CRIT)


def test_waf_verdicts() -> None:
    ok = judge_waf(IpSet("dw-blocked-ips", "id-1", ("192.0.2.0/24",), "IPV4"), "dw-blocked-ips",
                   "CLOUDFRONT")
    assert ok == Check("waf", "dw-blocked-ips", Verdict.OK, "IP set holds 1 address",
                       {"id": "id-1", "scope": "CLOUDFRONT", "addresses": 1, "version": "IPV4"})
    gone = judge_waf(AwsNotFound("wafv2", "WAFNonexistentItemException"), "dw-blocked-ips")
    assert (gone.verdict, gone.figures) == (Verdict.CRIT, {"found": False})


# -- against the running lab -----------------------------------------------------------------


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def with_aws(inventory: Inventory, **aws: Any) -> Inventory:
    return inventory.model_copy(update={"aws": inventory.aws.model_copy(update=aws)})


@pytest.mark.lab
def test_lab_aurora_cluster_and_fresh_metrics(lab, lab_inventory: Inventory) -> None:
    cluster = run(read_aurora_cluster(lab_inventory))
    assert (cluster.writer, cluster.readers) == (lab.aws.aurora_writer, (lab.aws.aurora_reader,))
    names = ("CPUUtilization", "DatabaseConnections", "ThreadsRunning")
    points = run(read_aurora_metrics(lab_inventory, names=names))
    for name in names:  # the lab publishes every 5 s; a point's time is its minute's start
        assert points[name] is not None and points[name].age_seconds < 60 + 15, (name, points)
    [check] = run(check_aurora_cluster.fn(lab_inventory, T))
    assert (check.system, check.host) == ("aurora", "dw-global")
    assert check.figures["writer"] == lab.aws.aurora_writer
    assert check.figures["readers"] == [lab.aws.aurora_reader]
    assert isinstance(check.figures["cpu"], float)
    assert set(check.figures["metric_ages"]) == {"CPUUtilization", "DatabaseConnections"}
    # The lab's load may vary; only CPU may make it other than OK.
    assert check.verdict is Verdict.OK or check.reason.startswith("CPU"), check


@pytest.mark.lab
def test_lab_alb_lists_every_web(lab_inventory: Inventory) -> None:
    states = run(read_target_health(lab_inventory))
    assert [s.host for s in states] == list(lab_inventory.aws.alb.targets)
    # Other test files drain a web for a few seconds: unregistered is the only other state.
    assert {s.state for s in states} <= {"healthy", "unregistered"}
    checks = run(check_alb.fn(lab_inventory, T))
    assert [c.host for c in checks] == list(lab_inventory.aws.alb.targets)
    assert all(c.verdict is Verdict.OK or c.reason == "not in target group" for c in checks)


@pytest.fixture
def private_target_group(lab_inventory: Inventory) -> Iterator[tuple[Inventory, Any, str]]:
    """A target group of this test's own holding the six webs, like the lab's; removed at the end.
    Yields (inventory pointing at it, elbv2 client, its ARN)."""
    elb = clients(lab_inventory).elbv2
    alb = lab_inventory.aws.alb
    vpc = elb.describe_target_groups(Names=[alb.target_group])["TargetGroups"][0]["VpcId"]
    name = f"dwops-test-{int(time.time() * 1000) % 10**8}"
    arn = elb.create_target_group(Name=name, Protocol="HTTP", Port=alb.target_port, VpcId=vpc,
                                  TargetType="ip")["TargetGroups"][0]["TargetGroupArn"]
    try:
        elb.register_targets(TargetGroupArn=arn, Targets=[
            {"Id": t, "Port": alb.target_port} for t in alb.targets.values()])
        inventory = with_aws(lab_inventory,
                             alb=alb.model_copy(update={"target_group": name}))
        yield inventory, elb, arn
    finally:
        elb.delete_target_group(TargetGroupArn=arn)


@pytest.mark.lab
def test_a_deregistered_web_warns_not_in_target_group(private_target_group) -> None:
    inventory, elb, arn = private_target_group
    alb = inventory.aws.alb
    assert {c.verdict for c in run(check_alb.fn(inventory, T))} == {Verdict.OK}
    target = {"Id": alb.targets["va-web03"], "Port": alb.target_port}
    elb.deregister_targets(TargetGroupArn=arn, Targets=[target])
    try:
        checks = {c.host: c for c in run(check_alb.fn(inventory, T))}
        assert (checks["va-web03"].verdict, checks["va-web03"].reason) == (
            Verdict.WARN, "not in target group")
        assert checks["va-web03"].figures["state"] == "unregistered"
        assert {c.verdict for h, c in checks.items() if h != "va-web03"} == {Verdict.OK}
    finally:
        elb.register_targets(TargetGroupArn=arn, Targets=[target])
    assert {c.verdict for c in run(check_alb.fn(inventory, T))} == {Verdict.OK}


@pytest.mark.lab
def test_lab_ses(lab_inventory: Inventory) -> None:
    status = run(read_ses(lab_inventory))
    assert status.verification == "Success" and status.max_24h > 0
    assert status.delivery_attempts >= 1
    [check] = run(check_ses.fn(lab_inventory, T))
    assert (check.system, check.host, check.verdict) == ("ses", "dreamwidth.org", Verdict.OK)


@pytest.mark.lab
def test_lab_edge(lab_inventory: Inventory) -> None:
    state = run(read_cloudfront(lab_inventory))
    assert state.distribution.id == lab_inventory.aws.cloudfront_distribution_id
    assert run(read_waf_ip_set(lab_inventory)).id == lab_inventory.aws.waf_ip_set_id
    cloudfront, waf = run(check_edge.fn(lab_inventory, T))
    assert (cloudfront.system, cloudfront.verdict) == ("cloudfront", Verdict.OK)
    assert cloudfront.figures["invalidations_in_progress"] == []  # moto completes them at once
    assert (waf.system, waf.host, waf.verdict) == ("waf", "dw-blocked-ips", Verdict.OK)
    assert waf.figures["addresses"] == 2


@pytest.mark.lab
def test_lab_distribution_and_ip_set_found_by_name(lab_inventory: Inventory) -> None:
    """Production may name only the alias (or comment) and the IP set's name."""
    by_name = with_aws(lab_inventory, cloudfront_distribution_id=None,
                       cloudfront_alias="dreamwidth www", waf_ip_set_id=None)
    cloudfront, waf = run(check_edge.fn(by_name, T))
    assert cloudfront.host == lab_inventory.aws.cloudfront_distribution_id
    assert waf.figures["id"] == lab_inventory.aws.waf_ip_set_id
    missing = with_aws(lab_inventory, cloudfront_distribution_id=None,
                       cloudfront_alias="nothing.example.net", waf_ip_set="dwops-no-such-set",
                       waf_ip_set_id=None, aurora_cluster="dwops-no-such-cluster")
    cloudfront, waf = run(check_edge.fn(missing, T))
    [aurora] = run(check_aurora_cluster.fn(missing, T))
    for check in (cloudfront, waf, aurora):
        assert check.verdict is Verdict.CRIT and "not found" in check.reason, check


@pytest.mark.lab
def test_a_refusing_endpoint_gives_critical_lines_not_exceptions(lab_inventory: Inventory) -> None:
    refusing = with_aws(lab_inventory, endpoint_url=REFUSING_ENDPOINT)

    async def every_check() -> list[list[Check]]:
        return await asyncio.gather(*(c.fn(refusing, T) for c in (
            check_aurora_cluster, check_alb, check_ses, check_edge)))

    started = time.monotonic()
    results = run(every_check())
    assert time.monotonic() - started < 8
    checks = [c for r in results for c in r]
    assert [(c.system, c.host) for c in checks] == [
        ("aurora", "dw-global"), ("alb", "dw-web"), ("ses", "dreamwidth.org"),
        ("cloudfront", lab_inventory.aws.cloudfront_distribution_id), ("waf", "dw-blocked-ips")]
    for c in checks:
        assert c.verdict is Verdict.CRIT and c.reason.startswith("unreachable: "), c
        assert "EndpointConnectionError" in c.reason and c.figures == {"reachable": False}
    with pytest.raises(AwsUnavailable):
        run(read_aurora_cluster(refusing))


@pytest.mark.lab
def test_credentials_come_from_the_inventory_file(lab_inventory: Inventory, tmp_path: Path) -> None:
    bad = tmp_path / "aws-credentials"
    bad.write_text("[default]\naws_access_key_id = AKIDNOTLOGGED\n")
    broken = with_aws(lab_inventory, credentials=SecretRef(file=str(bad)))
    with pytest.raises(AwsError) as e:
        clients(broken)
    assert "aws_secret_access_key" in str(e.value) and "AKIDNOTLOGGED" not in str(e.value)
    values = parse_credentials(Path(lab_inventory.aws.credentials.file).read_text()).values()
    assert not any(v in repr(clients(lab_inventory)) for v in values)
