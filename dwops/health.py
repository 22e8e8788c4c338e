"""Verdicts on what the reads saw: OK, WARN or CRIT, each with a one-line reason and its figures.

Everything here is pure: observations in, `Check`s out. The thresholds are a pydantic model (the
fleet-status flow's parameters), with Dreamwidth's own values as defaults where it had them
(TheSchwartz queue: warn at 150 ready jobs, critical at 300, from dw-ops' Nagios check).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Verdict(str, Enum):
    OK = "OK"
    WARN = "WARN"
    CRIT = "CRIT"

    @property
    def rank(self) -> int:
        return {"OK": 0, "WARN": 1, "CRIT": 2}[self.value]


@dataclass(frozen=True)
class Check:
    """One line of the fleet's status: which system, where, the verdict and why."""

    system: str
    host: str
    verdict: Verdict
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["verdict"] = self.verdict.value
        return d


def worst(checks: list[Check]) -> Verdict:
    return max((c.verdict for c in checks), key=lambda v: v.rank, default=Verdict.OK)


def graded(value: float, warn: float, crit: float) -> Verdict:
    """CRIT at or above `crit`, WARN at or above `warn`, else OK."""
    if value >= crit:
        return Verdict.CRIT
    if value >= warn:
        return Verdict.WARN
    return Verdict.OK


def unreachable(system: str, host: str, reason: str) -> Check:
    """A host or service that did not answer is a CRIT line, never a crash."""
    return Check(system, host, Verdict.CRIT, f"unreachable: {reason}", {"reachable": False})


class Thresholds(BaseModel):
    """When a reading turns WARN or CRIT. Defaults follow Dreamwidth's own checks where it had any."""

    model_config = ConfigDict(extra="forbid")

    schwartz_ready_warn: int = Field(150, ge=1, le=1_000_000,
                                     description="TheSchwartz jobs ready to run: warn at (dw-ops: 150)")
    schwartz_ready_crit: int = Field(300, ge=1, le=1_000_000,
                                     description="TheSchwartz jobs ready to run: critical at (dw-ops: 300)")
    schwartz_errors_hour_warn: int = Field(50, ge=1, le=1_000_000,
                                           description="job errors in the last hour: warn at")
    gearman_waiting_warn: int = Field(100, ge=1, le=1_000_000,
                                      description="gearman jobs waiting for a worker: warn at")
    memcache_fill_warn: float = Field(0.95, gt=0, le=1, description="memcached bytes/limit: warn at")
    memcache_hit_ratio_warn: float = Field(0.5, ge=0, le=1,
                                           description="hit ratio over the sample window: warn below")
    memcache_warm_seconds: int = Field(300, ge=0, le=86400,
                                       description="a node up for less than this is cold: warn")
    aurora_cpu_warn: float = Field(70, gt=0, le=100, description="Aurora CPU %: warn at")
    aurora_cpu_crit: float = Field(90, gt=0, le=100, description="Aurora CPU %: critical at")
    aurora_threads_running_warn: int = Field(20, ge=1, le=10000,
                                             description="MySQL threads running: warn at")
    aurora_threads_running_crit: int = Field(50, ge=1, le=10000,
                                             description="MySQL threads running: critical at")
    aurora_metrics_max_age: int = Field(300, ge=10, le=3600,
                                        description="seconds before CloudWatch figures count as stale")
    web_slow_seconds: float = Field(1.0, gt=0, le=60, description="/admin/healthy slower than this: warn")
    mail_queue_warn: int = Field(50, ge=1, le=1_000_000, description="messages in Postfix's queue: warn at")
    mail_queue_crit: int = Field(500, ge=1, le=1_000_000,
                                 description="messages in Postfix's queue: critical at")
    mail_oldest_warn_seconds: int = Field(3600, ge=60, le=30 * 86400,
                                          description="oldest queued message older than this: warn")
    ses_bounce_warn: float = Field(0.05, ge=0, le=1,
                                   description="SES bounce rate: warn at (AWS reviews at 5%)")
    ses_bounce_crit: float = Field(0.10, ge=0, le=1, description="SES bounce rate: critical at (10%)")
    ses_complaint_warn: float = Field(0.001, ge=0, le=1, description="SES complaint rate: warn at (0.1%)")
    ses_complaint_crit: float = Field(0.005, ge=0, le=1,
                                      description="SES complaint rate: critical at (0.5%)")
    ses_quota_warn: float = Field(0.8, gt=0, le=1, description="share of the 24 h send quota used: warn at")

    @model_validator(mode="after")
    def _warn_before_crit(self) -> "Thresholds":
        """Every figure with a warn and a critical threshold must reach warn first: warn <= crit
        where higher is worse, warn >= crit where lower is worse (LOWER_IS_WORSE)."""
        bad = []
        for figure, warn, crit in threshold_pairs(self):
            if figure in LOWER_IS_WORSE and warn < crit:
                bad.append(f"{figure}_warn ({warn:g}) is below {figure}_crit ({crit:g}): lower "
                           f"is worse, so warn must be at or above crit")
            elif figure not in LOWER_IS_WORSE and warn > crit:
                bad.append(f"{figure}_warn ({warn:g}) is above {figure}_crit ({crit:g})")
        if bad:
            raise ValueError("a warning threshold must come before its critical one: "
                             + "; ".join(bad))
        return self


# Figures judged worse the lower they go, should they get a critical threshold beside their
# warning one (the hit ratio warns below memcache_hit_ratio_warn).
LOWER_IS_WORSE = frozenset({"memcache_hit_ratio"})


def threshold_pairs(thresholds: BaseModel) -> list[tuple[str, float, float]]:
    """(figure, warn, crit) for every `FIGURE_warn` field that has a `FIGURE_crit` beside it."""
    return [(name.removesuffix("_warn"), getattr(thresholds, name),
             getattr(thresholds, name.removesuffix("_warn") + "_crit"))
            for name in type(thresholds).model_fields
            if name.endswith("_warn") and name.removesuffix("_warn") + "_crit"
            in type(thresholds).model_fields]
