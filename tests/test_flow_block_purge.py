"""block-address and purge-cdn on the lab (moto at the lab's endpoint; plain boto3 is the ground
truth for the IP set's contents, its tags and the distribution's invalidations).

Only documentation addresses are ever put in the set (192.0.2.0/24, 198.51.100.0/24,
203.0.113.0/24, 2001:db8::/32): they are data in moto, nothing talks to them. Every test that
changes the set puts it back as it found it (addresses and tags).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from dwops.inventory import Inventory, load_inventory
from dwops.runbook import BadParameters
from flows.block_address import (BlockAddressParams, address_is_in_set, address_is_not_blocked,
                                 covers_no_inventory_host, fits_the_set, is_broad, never_blocked)
from flows.purge_cdn import PurgeCdnParams
from lab.config import LabConfig
from tasks.aws import (expiry_tag_key, format_expiry, merge_addresses, parse_expiry_tags,
                       parse_invalidation)

PROJECT = Path(__file__).resolve().parent.parent

# -- parameters and pure parts (no lab) ---------------------------------------------------------


def refusals(**values: Any) -> dict[tuple, str]:
    with pytest.raises(ValidationError) as e:
        BlockAddressParams(**values)
    return {tuple(x["loc"]): x["msg"] for x in e.value.errors()}


def test_addresses_are_normalised_to_cidr_and_deduplicated() -> None:
    p = BlockAddressParams(action="block", addresses=["203.0.113.7", "203.0.113.7/32",
                                                      "2001:DB8:0::1", "198.51.100.0/24"])
    assert p.addresses == ["203.0.113.7/32", "2001:db8::1/128", "198.51.100.0/24"]


@pytest.mark.parametrize("address, why", [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("10.0.0.0/8", "private (RFC 1918)"),
    ("172.16.5.4", "private (RFC 1918)"), ("192.168.1.0/24", "private (RFC 1918)"),
    ("fd12:3456::1", "unique local"), ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("224.0.0.1", "multicast"), ("ff02::1", "multicast"), ("0.0.0.0", "unspecified"),
    ("::", "unspecified"), ("240.0.0.1", "reserved"), ("255.255.255.255", "reserved"),
    ("100.64.0.1", "shared address space"), ("0.0.0.0/0", "covers every address"),
    ("::/0", "covers every address"), ("8.0.0.0/14", "broader than /16"),
    ("8.0.0.0/7", "broader than /12 (33,554,432 addresses): nothing broader than /12"),
    ("2001:db8::/32", "broader than /48"), ("192.0.0.0/2", "contains"),
])
def test_blocking_what_is_not_the_internet_or_too_broad_is_refused(address: str, why: str) -> None:
    [(loc, msg)] = refusals(action="block", addresses=[address]).items()
    assert loc == ("addresses", 0) and msg.startswith("refused: ") and why in msg, msg


@pytest.mark.parametrize("text", ["1.2.3.4; rm -rf /", "$(reboot)", "203.0.113.7 ", "host.example",
                                  "203.0.113.7/33", "fe80::1%eth0", "203.0.113.07", "`id`", ""])
def test_what_is_not_an_address_is_refused_for_every_action(text: str) -> None:
    for action in ("block", "unblock"):
        msgs = refusals(action=action, addresses=[text])
        assert list(msgs) == [("addresses", 0)], msgs


def test_host_bits_are_refused_not_guessed() -> None:
    msgs = refusals(action="block", addresses=["192.0.2.7/24"])
    assert "did you mean 192.0.2.0/24 (256 addresses) or 192.0.2.7/32" in msgs[("addresses", 0)]


def test_allow_broad_allows_breadth_never_private_ranges() -> None:
    p = BlockAddressParams(action="block", addresses=["203.0.0.0/12", "2001:db8::/32"],
                           allow_broad=True)
    assert p.addresses == ["203.0.0.0/12", "2001:db8::/32"]
    msgs = refusals(action="block", addresses=["10.0.0.0/8", "0.0.0.0/0"], allow_broad=True)
    assert set(msgs) == {("addresses", 0), ("addresses", 1)}


def test_nothing_broader_than_the_floor_is_blocked_even_with_allow_broad() -> None:
    msgs = refusals(action="block", addresses=["203.0.0.0/11", "8.0.0.0/8", "2001:db8::/31"],
                    allow_broad=True)
    assert msgs == {
        ("addresses", 0): "refused: 203.0.0.0/11 is broader than /12 (2,097,152 addresses): "
                          "nothing broader than /12 (IPv4) or /32 (IPv6) is ever blocked, even "
                          "with allow_broad",
        ("addresses", 1): "refused: 8.0.0.0/8 is broader than /12 (16,777,216 addresses): "
                          "nothing broader than /12 (IPv4) or /32 (IPv6) is ever blocked, even "
                          "with allow_broad",
        ("addresses", 2): "refused: 2001:db8::/31 is broader than /32 (158,456,325,028,528,675,"
                          "187,087,900,672 addresses): nothing broader than /12 (IPv4) or /32 "
                          "(IPv6) is ever blocked, even with allow_broad"}
    # Unblocking stays possible for any entry: what is in the set can always be taken out.
    assert BlockAddressParams(action="unblock", addresses=["8.0.0.0/8"]).addresses == ["8.0.0.0/8"]


@pytest.mark.parametrize("addresses, allow_broad, broad", [
    (["203.0.113.7"], False, False), (["203.0.0.0/16"], False, False),
    (["2001:db8:1::/48"], False, False), (["203.0.113.7", "203.0.0.0/15"], True, True),
    (["203.0.0.0/12"], True, True), (["2001:db8::/47"], True, True),
])
def test_is_broad_says_which_blocks_need_allow_broad(addresses: list[str], allow_broad: bool,
                                                     broad: bool) -> None:
    params = BlockAddressParams(action="block", addresses=addresses, allow_broad=allow_broad)
    assert params.is_broad() is broad
    assert is_broad(ipaddress.ip_network(params.addresses[-1])) is broad
    if broad:  # exactly what allow_broad=false refuses
        assert ("addresses", len(addresses) - 1) in refusals(action="block", addresses=addresses)
    assert BlockAddressParams(action="unblock", addresses=addresses).is_broad() is False


def test_the_never_block_networks_are_refused_whatever_the_parameters() -> None:
    production = load_inventory(PROJECT / "inventory" / "production.toml")
    assert set(production.never_block) == {"admin", "office"}
    office = ipaddress.ip_network(production.never_block["office"][0])
    inside, around = f"{office.network_address + 7}", str(office.supernet(new_prefix=14))
    for params in (dict(addresses=[inside]), dict(addresses=[around], allow_broad=True),
                   dict(addresses=["203.0.113.7", inside], expires_in_hours=1, dry_run=True)):
        p = BlockAddressParams(action="block", **params)
        with pytest.raises(BadParameters) as e:
            p.check_inventory(production)
        assert e.value.field == "addresses"
        assert f"never_block entry 'office' of inventory 'production'" in str(e.value)
    assert never_blocked([f"{inside}/32", around], production) == [
        f"refused: {inside}/32 is inside {office}, never_block entry 'office' of inventory "
        f"'production' (never blocked, whatever the parameters)",
        f"refused: {around} covers {office}, never_block entry 'office' of inventory "
        f"'production' (never blocked, whatever the parameters)"]
    # Unblocking an address of those networks (blocked by mistake, or before the list) is allowed.
    BlockAddressParams(action="unblock", addresses=[inside]).check_inventory(production)
    BlockAddressParams(action="block", addresses=["203.0.113.7"]).check_inventory(production)


def labs_inventory_written_to(folder: Path, office: str | None = None) -> Path:
    """The lab's inventory as `lab up` writes it, into `folder` (from the lab's configuration:
    nothing of the lab is touched), with a never_block entry `office` when given."""
    from lab.fleet import write_inventory

    (folder / "lab").mkdir()
    path = write_inventory(LabConfig.load().model_copy(update={"state_dir": str(folder)}))
    if office:
        text = path.read_text()
        assert text.count("[never_block]\n") == 1
        path.write_text(text.replace("[never_block]\n", f'[never_block]\noffice = ["{office}"]\n'))
    return path


def test_the_labs_never_block_networks_are_its_admin_hosts(tmp_path: Path) -> None:
    inventory = load_inventory(labs_inventory_written_to(tmp_path))
    assert inventory.never_block == {"va-admin01": ["127.10.0.10/32"],
                                     "dfw-admin01": ["127.20.0.10/32"]}


def test_unblock_may_remove_any_entry_but_action_and_fields_must_agree() -> None:
    assert BlockAddressParams(action="unblock", addresses=["10.0.0.0/8"]).addresses == [
        "10.0.0.0/8"]
    assert BlockAddressParams(action="expire").addresses == []
    assert ("addresses",) in refusals(action="expire", addresses=["203.0.113.7"])
    assert ("addresses",) in refusals(action="block", addresses=[])
    assert ("expires_in_hours",) in refusals(action="unblock", addresses=["203.0.113.7"],
                                             expires_in_hours=2)
    assert "expires_in_hours" in str(refusals(action="block", addresses=["203.0.113.7"],
                                              expires_in_hours=8761))
    assert ("addresses",) in refusals(action="block",
                                      addresses=[f"203.0.113.{i}" for i in range(51)])
    assert ("action",) in refusals(action="reboot", addresses=["203.0.113.7"])


def test_gates_on_the_set() -> None:
    present = ("192.0.2.0/24", "198.51.100.7/32")
    assert not address_is_not_blocked("198.51.100.7/32", present).ok
    covered = address_is_not_blocked("192.0.2.9/32", present)
    assert not covered.ok and "already blocked by 192.0.2.0/24" in covered.reason
    assert address_is_not_blocked("203.0.113.7/32", present).ok
    assert address_is_in_set("198.51.100.7/32", present).ok
    inside = address_is_in_set("192.0.2.9/32", present)
    assert not inside.ok and "still blocked by 192.0.2.0/24" in inside.reason
    assert not fits_the_set(["2001:db8::1/128"], "IPV4", "s").ok
    assert fits_the_set(["203.0.113.7/32"], "IPV4", "s").ok
    ours = covers_no_inventory_host(["203.0.113.0/24"], {"va-admin01": "203.0.113.10",
                                                         "db": "db.example.net"})
    assert not ours.ok and "va-admin01" in ours.reason
    assert covers_no_inventory_host(["198.51.100.0/24"], {"va-admin01": "203.0.113.10"}).ok


def test_merging_addresses_compares_networks_and_keeps_order() -> None:
    current = ("192.0.2.0/24", "2001:DB8::1/128", "198.51.100.0/24")
    assert merge_addresses(current, add=["203.0.113.7/32", "192.0.2.0/24"]) == (
        "192.0.2.0/24", "2001:DB8::1/128", "198.51.100.0/24", "203.0.113.7/32")
    assert merge_addresses(current, remove=["2001:db8::1/128", "192.0.2.9/32"]) == (
        "192.0.2.0/24", "198.51.100.0/24")
    assert merge_addresses(current) == current


def test_expiry_tags_round_trip_and_malformed_ones_are_set_aside() -> None:
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    tags = [{"Key": expiry_tag_key("203.0.113.7/32"), "Value": format_expiry(when)},
            {"Key": expiry_tag_key("2001:db8::/48"), "Value": "2026-01-02T03:04:05+00:00"},
            {"Key": "dwops-expires/not-an-address", "Value": format_expiry(when)},
            {"Key": expiry_tag_key("203.0.113.8/32"), "Value": "soon"},
            {"Key": "owner", "Value": "ops"}]
    assert tags[0] == {"Key": "dwops-expires/203.0.113.7_32", "Value": "2026-01-02T03:04:05Z"}
    expiries, malformed = parse_expiry_tags(tags)
    assert expiries == {"203.0.113.7/32": when, "2001:db8::/48": when}
    assert malformed == ("dwops-expires/not-an-address", "dwops-expires/203.0.113.8_32")


def test_invalidation_status_is_spelled_as_aws_documents_it() -> None:
    assert parse_invalidation({"Invalidation": {"Id": "I1", "Status": "COMPLETED"}}).status == \
        "Completed"
    assert parse_invalidation({"Invalidation": {"Id": "I2", "Status": "InProgress"}}).status == \
        "InProgress"


@pytest.mark.parametrize("path", ["static/x", "/a b", "/a\tb", "/a;rm -rf /", "/a*b", "/*/x",
                                  "/x?y=1", "/$(id)", "/`id`", "/a|b", "/a&b", "/%zz", "/é",
                                  "/" + "a" * 500, "/a\nb"])
def test_bad_paths_are_refused(path: str) -> None:
    with pytest.raises(ValidationError) as e:
        PurgeCdnParams(paths=["/ok", path])
    assert [tuple(x["loc"]) for x in e.value.errors()] == [("paths", 1)], e.value.errors()


def test_good_paths_and_path_limits() -> None:
    p = PurgeCdnParams(paths=["/", "/static/*", "/~user/a%20b.css", "/static/*", "/*"])
    assert p.paths == ["/", "/static/*", "/~user/a%20b.css", "/*"]
    for bad in ([], [f"/p{i}" for i in range(101)], [f"/p{i}/*" for i in range(16)]):
        with pytest.raises(ValidationError):
            PurgeCdnParams(paths=bad)
    with pytest.raises(ValidationError):
        PurgeCdnParams(paths=["/"], wait_seconds=0)


# -- on the lab ---------------------------------------------------------------------------------


class IpSet:
    """The lab's IP set through plain boto3 (the ground truth)."""

    def __init__(self, inventory: Inventory):
        from lab import aws
        from lab.config import LabConfig

        self.waf = aws.client(LabConfig.load(), "wafv2")
        a = inventory.aws
        self.key = dict(Name=a.waf_ip_set, Scope=a.waf_scope, Id=a.waf_ip_set_id)

    def get(self) -> dict[str, Any]:
        return self.waf.get_ip_set(**self.key)

    def addresses(self) -> list[str]:
        return self.get()["IPSet"]["Addresses"]

    def tags(self) -> dict[str, str]:
        arn = self.get()["IPSet"]["ARN"]
        found = self.waf.list_tags_for_resource(ResourceARN=arn)["TagInfoForResource"]
        return {t["Key"]: t["Value"] for t in found.get("TagList") or []}

    def tag(self, **tags: str) -> None:
        self.waf.tag_resource(ResourceARN=self.get()["IPSet"]["ARN"],
                              Tags=[{"Key": k, "Value": v} for k, v in tags.items()])

    def restore(self, addresses: list[str], tags: dict[str, str]) -> None:
        reply = self.get()
        if reply["IPSet"]["Addresses"] != addresses:
            self.waf.update_ip_set(**self.key, Addresses=addresses,
                                   Description=reply["IPSet"]["Description"],
                                   LockToken=reply["LockToken"])
        extra = [k for k in self.tags() if k not in tags]
        if extra:
            self.waf.untag_resource(ResourceARN=reply["IPSet"]["ARN"], TagKeys=extra)
        if tags:
            self.tag(**tags)


@pytest.fixture
def ip_set(lab, lab_inventory: Inventory) -> Iterator[IpSet]:
    """The lab's IP set, put back exactly as found (addresses and tags) after the test."""
    s = IpSet(lab_inventory)
    addresses, tags = s.addresses(), s.tags()
    assert not any(a.startswith("203.0.113.") for a in addresses), addresses
    try:
        yield s
    finally:
        s.restore(addresses, tags)
    assert s.addresses() == addresses and s.tags() == tags


def outcomes(report: dict) -> dict[tuple[str, str], dict]:
    return {(r["host"], r["action"]): r for r in report["results"]}


def reading(report: dict, what: str) -> dict:
    [figures] = [r["figures"] for r in report["readings"] if r["what"] == what]
    return figures


def test_block_then_unblock_a_documentation_address_idempotently(ip_set: IpSet, dwops_run):
    original = ip_set.addresses()

    rc, report, err = dwops_run("block-address", "action=block",
                                'addresses=["203.0.113.7"]', "dry_run=true")
    assert rc == 0, err[-2000:]
    assert report["dry_run"] and report["results"] == []
    assert reading(report, "IP set before")["addresses"] == original
    assert ip_set.addresses() == original

    # 192.0.2.9 is covered by the lab's 192.0.2.0/24: skipped, not added beside it.
    rc, report, err = dwops_run("block-address", "action=block",
                                'addresses=["203.0.113.7", "192.0.2.9"]', "reason=abuse test")
    assert rc == 0, err[-2000:]
    done = outcomes(report)
    assert done[("203.0.113.7/32", "block")]["outcome"] == "done"
    assert done[("192.0.2.9/32", "block")]["outcome"] == "skipped"
    assert "already blocked by 192.0.2.0/24" in done[("192.0.2.9/32", "block")]["detail"]
    assert ip_set.addresses() == original + ["203.0.113.7/32"]
    assert reading(report, "IP set before")["addresses"] == original
    after = reading(report, "IP set after")
    assert after["addresses"] == original + ["203.0.113.7/32"]
    assert (after["added"], after["removed"]) == (["203.0.113.7/32"], [])
    assert not any(k.startswith("dwops-expires/") for k in ip_set.tags())  # no expiry asked

    rc, report, err = dwops_run("block-address", "action=block", 'addresses=["203.0.113.7"]')
    assert rc == 0, err[-2000:]
    [again] = report["results"]
    assert again["outcome"] == "skipped" and "already in the set" in again["detail"]
    assert ip_set.addresses() == original + ["203.0.113.7/32"]

    rc, report, err = dwops_run("block-address", "action=unblock",
                                'addresses=["203.0.113.7/32", "203.0.113.99"]')
    assert rc == 0, err[-2000:]
    done = outcomes(report)
    assert done[("203.0.113.7/32", "unblock")]["outcome"] == "done"
    assert done[("203.0.113.99/32", "unblock")]["outcome"] == "skipped"
    assert ip_set.addresses() == original
    assert reading(report, "IP set after")["removed"] == ["203.0.113.7/32"]


def test_refused_or_unplaceable_addresses_change_nothing(ip_set: IpSet, dwops_run, tmp_path,
                                                         lab_inventory: Inventory):
    before, tags = ip_set.addresses(), ip_set.tags()
    rc, report, err = dwops_run(
        "block-address", "action=block",
        'addresses=["127.0.0.1", "10.0.0.0/8", "0.0.0.0/0", "1.2.3.4; rm -rf /", "203.0.0.0/8"]')
    assert rc == 2 and report is None, err[-2000:]
    assert "addresses.0: refused: 127.0.0.1/32 is loopback" in err
    assert "addresses.1: refused: 10.0.0.0/8 is private (RFC 1918)" in err
    assert "addresses.2: refused: 0.0.0.0/0 covers every address" in err
    assert "addresses.3: not an IP address or CIDR" in err
    assert "addresses.4: refused: 203.0.0.0/8 is broader than /12" in err
    assert ip_set.addresses() == before and ip_set.tags() == tags

    # A valid address the set cannot hold (the lab's set is IPV4) halts before any change.
    rc, report, err = dwops_run("block-address", "action=block",
                                'addresses=["203.0.113.7", "2001:db8::7"]')
    assert rc == 1, err[-2000:]
    assert "holds IPV4 addresses only: 2001:db8::7/128" in report["halted"]
    assert {r["outcome"] for r in report["results"]} == {"not reached"}
    assert ip_set.addresses() == before and ip_set.tags() == tags

    # WAF unreachable: nothing can be judged, so the run halts with a report and changes nothing.
    from lab.config import state_dir

    text = (state_dir() / "lab" / "inventory.toml").read_text()
    endpoint = f'endpoint_url = "{lab_inventory.aws.endpoint_url}"'
    assert endpoint in text
    refusing = tmp_path / "refusing-aws.toml"
    refusing.write_text(text.replace(endpoint, 'endpoint_url = "http://127.30.0.29:5000"'))
    rc, report, err = dwops_run("block-address", "action=block", 'addresses=["203.0.113.7"]',
                                f"inventory={refusing}")
    assert rc == 1, err[-2000:]
    assert report["halted"] == "cannot read IP set dw-blocked-ips"
    [gate] = report["gates"]
    assert not gate["ok"] and "unavailable" in gate["reason"]
    assert ip_set.addresses() == before and ip_set.tags() == tags


def test_a_never_block_network_is_refused_before_anything_is_read(ip_set: IpSet, dwops_run,
                                                                  prefect_api: str,
                                                                  tmp_path: Path, monkeypatch):
    """The lab's inventory with a documentation network as never_block entry 'office' (as
    production's office network): blocks that cover or fall inside it are refused with exit 2
    before any run exists, whatever the parameters; and a run that skips the CLI's check (as one
    created through the API does) is refused by the flow itself. The set never changes."""
    import asyncio

    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from dwops.inventory import PATHS_ALLOWED
    from flows.block_address import block_address

    before, tags = ip_set.addresses(), ip_set.tags()
    inventory = labs_inventory_written_to(tmp_path, office="203.0.113.128/25")
    for params, wanted in (
            (['addresses=["203.0.113.0/24"]', "allow_broad=true", "expires_in_hours=1"],
             "addresses: refused: 203.0.113.0/24 covers 203.0.113.128/25, never_block entry "
             "'office' of inventory 'lab' (never blocked, whatever the parameters)"),
            (['addresses=["203.0.113.7", "203.0.113.200"]', "dry_run=true"],
             "refused: 203.0.113.200/32 is inside 203.0.113.128/25, never_block entry 'office'")):
        rc, report, err = dwops_run("block-address", "action=block", *params,
                                    f"inventory={inventory}")
        assert (rc, report) == (2, None), err[-2000:]
        assert wanted in " ".join(err.split()), err[-2000:]
        assert ip_set.addresses() == before and ip_set.tags() == tags

    # The same inventory takes a block outside the entry (a dry run: nothing changes).
    rc, report, err = dwops_run("block-address", "action=block", 'addresses=["203.0.113.7"]',
                                "dry_run=true", f"inventory={inventory}")
    assert rc == 0 and report["dry_run"], err[-2000:]

    monkeypatch.setenv(PATHS_ALLOWED, "allow")
    params = BlockAddressParams(action="block", addresses=["203.0.113.129"],
                                inventory=str(inventory))
    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        state = asyncio.run(block_address(params, return_state=True))
        asyncio.run(APILogHandler.aflush())  # its logs reach this server, not a later one
    refused = state.result(raise_on_failure=False)
    assert state.is_failed() and isinstance(refused, BadParameters), refused
    assert "203.0.113.129/32 is inside 203.0.113.128/25, never_block entry 'office'" in str(refused)
    assert ip_set.addresses() == before and ip_set.tags() == tags


def test_expiry_is_kept_on_the_set_and_expire_removes_only_what_has_expired(ip_set: IpSet,
                                                                            dwops_run):
    original = ip_set.addresses()
    rc, report, err = dwops_run("block-address", "action=block", "expires_in_hours=2",
                                'addresses=["203.0.113.8", "203.0.113.9"]')
    assert rc == 0, err[-2000:]
    assert ip_set.addresses() == original + ["203.0.113.8/32", "203.0.113.9/32"]
    tags = ip_set.tags()
    soon = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2)
    for key in ("dwops-expires/203.0.113.8_32", "dwops-expires/203.0.113.9_32"):
        when = dt.datetime.fromisoformat(tags[key].replace("Z", "+00:00"))
        assert abs((when - soon).total_seconds()) < 120, tags

    # .8's expiry passes (written straight into its tag); .9's does not.
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    ip_set.tag(**{"dwops-expires/203.0.113.8_32": format_expiry(past)})
    rc, report, err = dwops_run("block-address", "action=expire")
    assert rc == 0, err[-2000:]
    [expired] = report["results"]
    assert (expired["host"], expired["action"], expired["outcome"]) == (
        "203.0.113.8/32", "expire", "done")
    assert ip_set.addresses() == original + ["203.0.113.9/32"]
    tags = ip_set.tags()
    assert "dwops-expires/203.0.113.8_32" not in tags and "dwops-expires/203.0.113.9_32" in tags
    assert reading(report, "IP set after")["removed"] == ["203.0.113.8/32"]


def test_concurrent_changes_to_the_set_lose_no_update(ip_set: IpSet, lab_inventory: Inventory):
    """Four writers at once: each conflict (WAFOptimisticLockException) is re-read and redone,
    so every address ends up in the set. A writer loses at most once to each other writer, so
    four attempts always suffice."""
    import asyncio

    from tasks.aws import update_waf_ip_set

    original = ip_set.addresses()
    wanted = [f"203.0.113.{i}/32" for i in range(100, 104)]
    set_id = lab_inventory.aws.waf_ip_set_id

    async def all_at_once() -> list[Any]:
        return await asyncio.gather(*(update_waf_ip_set.fn(lab_inventory, set_id, add=[a])
                                      for a in wanted))

    changes = asyncio.run(all_at_once())
    assert all(c.written and wanted[i] in c.after for i, c in enumerate(changes))
    assert sorted(ip_set.addresses()) == sorted(original + wanted)
    changes = asyncio.run(update_waf_ip_set.fn(lab_inventory, set_id, remove=wanted))
    assert changes.written and ip_set.addresses() == original


def invalidations(cloudfront: Any, dist_id: str) -> dict[str, dict]:
    found: dict[str, dict] = {}
    for page in cloudfront.get_paginator("list_invalidations").paginate(DistributionId=dist_id):
        for item in (page.get("InvalidationList") or {}).get("Items") or []:
            found[item["Id"]] = item
    return found


def test_purge_cdn_creates_one_invalidation_and_waits_for_it(lab, lab_inventory: Inventory,
                                                             dwops_run):
    from lab import aws

    cloudfront = aws.client(lab, "cloudfront")
    dist_id = lab_inventory.aws.cloudfront_distribution_id
    before = invalidations(cloudfront, dist_id)

    rc, report, err = dwops_run("purge-cdn", 'paths=["/", "/static/*"]', "reason=test purge")
    assert rc == 0, err[-2000:]
    created, waited = report["results"]
    assert (created["action"], created["outcome"]) == ("invalidate", "done")
    assert (waited["action"], waited["outcome"]) == ("wait for Completed", "done")
    assert "Completed after" in waited["detail"]
    new = set(invalidations(cloudfront, dist_id)) - set(before)
    assert len(new) == 1, new  # exactly one invalidation per run
    [inv_id] = new
    assert f"invalidation {inv_id} created" in created["detail"]
    batch = cloudfront.get_invalidation(DistributionId=dist_id, Id=inv_id)["Invalidation"]
    assert batch["InvalidationBatch"]["Paths"]["Items"] == ["/", "/static/*"]
    assert batch["InvalidationBatch"]["CallerReference"].startswith("dwops-purge-cdn-")
    assert [g["ok"] for g in report["gates"]] == [True]

    rc, report, err = dwops_run("purge-cdn", 'paths=["/ok", "static/x", "/a b", "/x;reboot", '
                                             '"/a*b"]')
    assert rc == 2 and report is None, err[-2000:]
    for i in (1, 2, 3, 4):
        assert f"paths.{i}:" in err, err
    assert "paths.0" not in err
    assert set(invalidations(cloudfront, dist_id)) - set(before) == new  # nothing more made
