"""What needs a human's approval waits for one: a purge of `/*` (and the emergency paths, tested
with their flows). Run here with `dwops run` on the lab, against the test session's Prefect server
(no proxy): approved at the terminal with `--approve`, or paused until answered. An answer given
straight to Prefect, not through the proxy, names nobody: a rejection halts the run, and an
approval without an operator's name recorded by the proxy is refused (tests/e2e has the proxy).
"""

from __future__ import annotations

import asyncio

from dwops.inventory import Inventory

from _paused import answer_when_paused


def invalidations(lab, dist_id: str) -> set[str]:
    from lab import aws

    cloudfront = aws.client(lab, "cloudfront")
    found = set()
    for page in cloudfront.get_paginator("list_invalidations").paginate(DistributionId=dist_id):
        found |= {i["Id"] for i in (page.get("InvalidationList") or {}).get("Items") or []}
    return found


def test_a_purge_of_everything_waits_for_an_approval(lab, lab_inventory: Inventory, dwops_run,
                                                     prefect_api: str):
    dist_id = lab_inventory.aws.cloudfront_distribution_id
    before = invalidations(lab, dist_id)

    # Rejected: nothing is invalidated.
    proc = dwops_run("purge-cdn", 'paths=["/*"]', background=True)
    asyncio.run(answer_when_paused(prefect_api, proc, "purge-cdn", approve=False))
    out, err = proc.communicate(timeout=60)
    report = dwops_run.report(out)
    assert proc.returncode == 1, err[-2000:]
    assert report["halted"] == ("purge of /* not approved (rejected by an unrecorded caller); "
                                "nothing invalidated"), report["halted"]
    assert invalidations(lab, dist_id) == before

    # Approved straight through Prefect, not by an operator through the proxy: refused.
    proc = dwops_run("purge-cdn", 'paths=["/*"]', background=True)
    asyncio.run(answer_when_paused(prefect_api, proc, "purge-cdn", approve=True))
    out, err = proc.communicate(timeout=60)
    report = dwops_run.report(out)
    assert proc.returncode == 1, err[-2000:]
    assert "did not come from an operator account through the proxy" in report["halted"]
    assert invalidations(lab, dist_id) == before

    # Approved at the terminal: one invalidation of /*.
    rc, report, err = dwops_run("purge-cdn", 'paths=["/*"]', approve=True)
    assert rc == 0, err[-2000:]
    approval = [g for g in report["gates"] if g["name"] == "purge of everything approved"]
    assert approval[0]["ok"] and "at the terminal" in approval[0]["reason"], approval
    assert len(invalidations(lab, dist_id) - before) == 1

    # A purge of some paths needs no approval, and --approve is refused where nothing needs it.
    rc, report, err = dwops_run("purge-cdn", 'paths=["/stats/*"]')
    assert rc == 0 and not [g for g in report["gates"] if "approved" in g["name"]], err[-2000:]
    rc, report, err = dwops_run("ensure-ddlockd", approve=True)
    assert rc == 2 and "nothing that needs an approval" in err, err[-2000:]


def ip_set_addresses(lab, inventory: Inventory) -> list[str]:
    from lab import aws

    a = inventory.aws
    return aws.client(lab, "wafv2").get_ip_set(Name=a.waf_ip_set, Scope=a.waf_scope,
                                               Id=a.waf_ip_set_id)["IPSet"]["Addresses"]


def test_a_broad_block_waits_for_an_approval(lab, lab_inventory: Inventory, dwops_run,
                                             prefect_api: str):
    """A block broader than /16 (allowed down to /12 with allow_broad) shuts out whole
    providers: rejected, or approved by nobody the proxy knows, it changes nothing."""
    before = ip_set_addresses(lab, lab_inventory)
    broad = ("action=block", 'addresses=["198.48.0.0/14"]', "allow_broad=true")
    for approve, halted in ((False, "broad block not approved (rejected by an unrecorded "
                                    "caller); nothing changed"),
                            (True, "broad block not approved (not approved: the approval did "
                                   "not come from an operator account through the proxy); "
                                   "nothing changed")):
        proc = dwops_run("block-address", *broad, background=True)
        asyncio.run(answer_when_paused(prefect_api, proc, "block-address", approve=approve))
        out, err = proc.communicate(timeout=60)
        report = dwops_run.report(out)
        assert proc.returncode == 1, err[-2000:]
        assert report["halted"] == halted, report["halted"]
        assert [g["name"] for g in report["gates"]][-1] == "broad block approved"
        assert ip_set_addresses(lab, lab_inventory) == before
