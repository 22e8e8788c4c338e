"""purge-cdn: drop paths from CloudFront's edge caches and wait until CloudFront says it is done.

The notes (Traffic Flow): "AWS Cloudfront. Use this to configure caching and such." The inventory
names the distribution (`aws.cloudfront_distribution_id`, or `aws.cloudfront_alias` to find it).

1. Validate the paths (1 to 100, each starting with `/`, at most 500 characters, `*` only as the
   last character, no whitespace, control characters, query strings or shell metacharacters,
   percent-encoding well formed; at most 15 wildcard paths, CloudFront's limit in progress) -
   before anything is read.
2. Plan: one invalidation of these paths, then wait for it. Publish the plan; a dry run stops
   here.
3. Read the distribution (gate: it exists and is enabled) and the invalidations in progress.
   A purge of `/*` (every cached object: every request then goes to the origin until the caches
   fill again) waits for an operator's approval, as the notes' emergency paths do.
4. Create ONE invalidation (its CallerReference is the flow run's id, so a retried run does not
   make a second one), then poll it until Completed or `wait_seconds`. A timeout or an error
   halts the run: the report names the invalidation (it cannot be cancelled; CloudFront finishes
   it anyway).
5. Publish the report: the invalidation's id, status and timings, the distribution before and
   after.

Each invalidated path costs money past CloudFront's monthly free allowance (`/*` counts as one
path): prefer one wildcard to many single paths.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Annotated, Any, ClassVar

from prefect import flow, get_run_logger
from pydantic import AfterValidator, Field, model_validator

from dwops.approval import decide_emergency
from dwops.inventory import resolve_inventory
from dwops.runbook import ChangeParams, Gate, Outcome, Plan, Report, Step, finish, publish_plan
from tasks.aws import (AwsError, CloudFrontState, create_cdn_invalidation, read_cloudfront,
                       wait_for_invalidation)
from tasks.common import attempt

MAX_WILDCARDS = 15  # CloudFront: wildcard paths in progress at one time, per distribution
# Letters, digits and the URL path characters that no shell treats specially; `*` only at the end.
PATH_CHARS = re.compile(r"^/[A-Za-z0-9._~%/:@+,=-]*\*?$")


def check_path(path: str) -> str:
    """A CloudFront invalidation path, or ValueError saying what is wrong with it (pure)."""
    if not path.startswith("/"):
        raise ValueError("must start with /")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in path):
        raise ValueError("contains whitespace or a control character (percent-encode it)")
    if "*" in path[:-1]:
        raise ValueError("'*' is allowed only as the last character")
    if "?" in path:
        raise ValueError("a query string is not part of an invalidation path "
                         "(CloudFront invalidates every query string of a path)")
    if not PATH_CHARS.match(path):
        bad = sorted({c for c in path if not (c.isascii() and c.isalnum())
                      and c not in "._~%/:@+,=-*"})
        raise ValueError(f"contains {' '.join(repr(c) for c in bad)}: only letters, digits and "
                         f"._~%/:@+,=- are allowed (percent-encode anything else)")
    if re.search(r"%(?![0-9A-Fa-f]{2})", path):
        raise ValueError("malformed percent-encoding (% must be followed by two hex digits)")
    return path


PathText = Annotated[str, Field(min_length=1, max_length=500,
                                description="a path starting with /, `*` allowed as the last "
                                            "character, e.g. /stats/site or /static/*"),
                     AfterValidator(check_path)]


def purges_everything(paths: list[str]) -> bool:
    """`/*` drops every cached object of the distribution."""
    return "/*" in paths


class PurgeCdnParams(ChangeParams):
    NEEDS_APPROVAL_FOR: ClassVar[str] = "a purge of /* (every cached object)"

    paths: list[PathText] = Field(min_length=1, max_length=100,
                                  description="the paths to invalidate (1 to 100)")
    wait_seconds: float = Field(300, ge=1, le=3600,
                                description="how long to wait for the invalidation to complete")

    @model_validator(mode="after")
    def _wildcards(self) -> "PurgeCdnParams":
        self.paths = list(dict.fromkeys(self.paths))  # the same path twice is one path
        wild = [p for p in self.paths if p.endswith("*")]
        if len(wild) > MAX_WILDCARDS:
            raise ValueError(f"{len(wild)} wildcard paths: CloudFront allows {MAX_WILDCARDS} in "
                             f"progress at one time")
        return self


def distribution_is_enabled(state: CloudFrontState) -> Gate:
    """Purge only a distribution that serves: a disabled one caches nothing (and something is
    wrong that a purge will not fix)."""
    d = state.distribution
    if not d.enabled:
        return Gate("distribution enabled", False, f"{d.id} is disabled ({d.status}): "
                                                   f"nothing to purge")
    return Gate("distribution enabled", True,
                f"{d.id} enabled, {d.status}, {len(state.invalidations)} invalidation(s) "
                f"in progress")


def plan_purge(params: PurgeCdnParams, inventory_name: str, distribution: str) -> Plan:
    shown = ", ".join(params.paths[:10]) + (f" and {len(params.paths) - 10} more"
                                            if len(params.paths) > 10 else "")
    return Plan("purge-cdn", inventory_name, [
        Step(distribution, "invalidate", f"{len(params.paths)} path(s): {shown}"),
        Step(distribution, "wait for Completed", f"up to {params.wait_seconds:g} s"),
    ], gates=["the distribution exists and is enabled"],
        notes=["an invalidation cannot be cancelled once created"])


@flow(name="purge-cdn",
      description="Invalidate paths in CloudFront and wait for it to complete.")
async def purge_cdn(params: PurgeCdnParams) -> dict[str, Any]:
    log = get_run_logger()

    # 1. Inventory (the parameters were validated before the run started).
    inventory = resolve_inventory(params.inventory)
    aws = inventory.aws
    name = aws.cloudfront_distribution_id or aws.cloudfront_alias or "cloudfront"

    # 2. The plan.
    plan = plan_purge(params, inventory.name, name)
    await publish_plan(plan)
    report = Report("purge-cdn", inventory.name, plan, dry_run=params.dry_run)
    report.reading("request", {"paths": params.paths, "wait_seconds": params.wait_seconds,
                               "reason": params.reason})
    log.info("purge %d path(s) from %s: %s", len(params.paths), name,
             params.reason or "no reason given")
    if params.dry_run:
        log.info("dry run: plan published, nothing changed")
        return await finish(report, log)

    # 3. The distribution, gated.
    try:
        before = await attempt(lambda: read_cloudfront(inventory))
    except AwsError as e:
        report.gate(Gate("distribution enabled", False, f"cannot read it: {e}"))
        report.halt(f"cannot read distribution {name}")
        return await finish(report, log)
    report.reading("distribution before", _figures(before))
    gate = report.gate(distribution_is_enabled(before))
    if not gate.ok:
        log.error("not purging: %s", gate.reason)
        report.halt(gate.reason)
        return await finish(report, log)
    log.info("purging: %s", gate.reason)
    dist_id = before.distribution.id
    if purges_everything(params.paths):
        decision = await decide_emergency(
            f"A purge of `/*` drops every cached object of {name} ({before.distribution.domain}): "
            f"until the caches fill again every request goes to the origin, the webs.", log=log)
        gate = report.gate(Gate("purge of everything approved", decision.approved,
                                decision.reason))
        if not gate.ok:
            log.error("not purging /*: %s", decision.reason)
            report.halt(f"purge of /* not approved ({decision.reason}); nothing invalidated")
            return await finish(report, log)

    # 4. One invalidation, then wait for it.
    started = time.monotonic()
    try:
        invalidation = await create_cdn_invalidation(inventory, dist_id, params.paths,
                                                     _caller_reference())
    except AwsError as e:
        log.error("invalidation not created: %s", e)
        report.record(dist_id, "invalidate", Outcome.FAILED, str(e), started)
        report.halt("the invalidation was not created")
        return await finish(report, log)
    log.info("invalidation %s created (%s)", invalidation.id, invalidation.status)
    report.record(dist_id, "invalidate", Outcome.DONE,
                  f"invalidation {invalidation.id} created ({invalidation.status}), "
                  f"{len(params.paths)} path(s)", started)

    started = time.monotonic()
    waited = await wait_for_invalidation(inventory, dist_id, invalidation.id,
                                         params.wait_seconds)
    if waited.completed:
        log.info("invalidation %s Completed after %.1f s", invalidation.id, waited.seconds)
        report.record(dist_id, "wait for Completed", Outcome.DONE,
                      f"invalidation {invalidation.id} Completed after {waited.seconds:.1f} s "
                      f"({waited.polls} poll(s))", started)
    else:
        status = waited.invalidation.status if waited.invalidation else invalidation.status
        log.error("invalidation %s not completed: %s", invalidation.id, waited.error)
        report.record(dist_id, "wait for Completed", Outcome.FAILED,
                      f"invalidation {invalidation.id} {status} after {waited.seconds:.1f} s: "
                      f"{waited.error} (CloudFront goes on with it; check it later)", started)
        report.halt(f"invalidation {invalidation.id} not completed")

    # 5. The report.
    try:
        report.reading("distribution after", _figures(await attempt(lambda: read_cloudfront(
            inventory))))
    except AwsError as e:
        report.reading("distribution after", {"error": str(e)})
    return await finish(report, log)


def _caller_reference() -> str:
    """The flow run's id (a retried run of the same flow run finds its invalidation again)."""
    from prefect.runtime import flow_run

    return f"dwops-purge-cdn-{flow_run.id or uuid.uuid4()}"


def _figures(state: CloudFrontState) -> dict[str, Any]:
    d = state.distribution
    return {"id": d.id, "status": d.status, "enabled": d.enabled, "domain": d.domain,
            "invalidations_in_progress": [i.id for i in state.invalidations]}
