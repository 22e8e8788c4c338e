"""block-address: block or unblock addresses at the edge (the WAF IP set), with optional expiry.

The notes (Traffic Flow): "AWS WAF. Use this to configure mitigations against bad actors or
things." The inventory names the IP set (`aws.waf_ip_set`) that the web ACL's block rule refers
to; this flow changes only that set's addresses and its expiry tags.

1. Validate the parameters: every address is an IPv4/IPv6 address or CIDR (normalised to CIDR
   form); blocking refuses loopback, private (RFC 1918, ULA), shared (RFC 6598), link-local,
   multicast, unspecified and reserved ranges, /0, anything broader than /16 (IPv4) or /48
   (IPv6) unless `allow_broad` (`is_broad`), and anything broader than /12 (IPv4) or /32 (IPv6)
   even with it (the floor, `FLOOR`) - all before anything is read. Then, against the inventory:
   a block that covers or overlaps a network of its `never_block` list (production: the admin
   and office networks) is refused, naming the entry; no parameter overrides that.
2. Read the IP set (addresses, LockToken, expiry tags) and compute the plan from it; publish the
   plan. A dry run stops here.
3. Gates before blocking: the addresses fit the set's IP version, none covers an inventory host,
   the set and its tags have room. A broad block (`allow_broad`) then waits for an operator's
   approval (or `dwops run --approve` at the terminal): it shuts out whole providers' users.
4. One address at a time: skip it when there is nothing to do (already blocked / not in the set),
   else record or forget its expiry, change the set (LockToken; re-read only on a concurrent
   change), and verify by reading the set again that the address is (or is no longer) there and
   nothing else went missing. The first failure halts the run; the addresses after it are not
   touched.
5. Publish the report, with the set's contents before and after.

Expiry: `block` with `expires_in_hours` records the address's expiry as a tag on the IP set itself
(`dwops-expires/203.0.113.7_32` = `2026-01-02T03:04:05Z`), so it survives between runs and
machines. `action=expire` removes every address whose expiry has passed (and forgets its tag);
nothing else expires by itself: schedule `block-address` with `{"action": "expire"}` (e.g. every
15 minutes) so that expiries take effect. An address blocked without expiry is never expired.
Blocking an address already in the set (or covered by a broader entry) and unblocking one that
is not in it are skipped: running the same request twice changes nothing the second time.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import time
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal

from prefect import flow, get_run_logger
from pydantic import Field, StrictBool, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from dwops.approval import decide_emergency
from dwops.inventory import Inventory, resolve_inventory
from dwops.runbook import (BadParameters, ChangeParams, Gate, Outcome, Plan, Report, Step, finish,
                           publish_plan)
from tasks.aws import (WAF_MAX_ADDRESSES, WAF_MAX_TAGS, AwsError, IpSetState, clear_waf_expiries,
                       format_expiry, read_waf_ip_set_state, set_waf_expiries, update_waf_ip_set)
from tasks.common import attempt

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# -- what may be blocked (pure) -----------------------------------------------------------------

# Ranges never blocked: they are not the internet's (or are everyone's). Checked by overlap, so a
# CIDR that merely contains one of them is refused too.
REFUSED_RANGES: tuple[tuple[Network, str], ...] = tuple(
    (ipaddress.ip_network(net), what) for net, what in (
        ("0.0.0.0/8", "unspecified ('this network', RFC 1122)"),
        ("10.0.0.0/8", "private (RFC 1918)"),
        ("100.64.0.0/10", "shared address space (RFC 6598, carrier-grade NAT)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private (RFC 1918)"),
        ("192.0.0.0/24", "reserved (IETF protocol assignments)"),
        ("192.168.0.0/16", "private (RFC 1918)"),
        ("198.18.0.0/15", "reserved (benchmarking, RFC 2544)"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved (240.0.0.0/4 and broadcast)"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("::ffff:0:0/96", "IPv4-mapped (give the IPv4 address instead)"),
        ("fc00::/7", "private (unique local, ULA)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "reserved (deprecated site-local)"),
        ("ff00::/8", "multicast"),
    ))
IPV6_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")
BROADEST = {4: 16, 6: 48}  # the broadest prefix blocked without allow_broad
# The broadest prefix ever blocked, allow_broad or not: a /12 is 1,048,576 IPv4 addresses (the
# size of a large hosting provider's range), a /32 an ISP's whole IPv6 allocation. Anything
# broader would cut off a share of the internet, not an attacker.
FLOOR = {4: 12, 6: 32}
ADDRESS_TEXT = re.compile(r"^[0-9A-Fa-f:.]{2,45}(/[0-9]{1,3})?$")


def parse_address(text: str) -> tuple[Network | None, str]:
    """An address or CIDR as a network (an address is its /32 or /128), or None and why not.

    Only hex digits, `.`, `:` and one `/prefix` are accepted: anything else (spaces, `;`, `$`,
    a scope id, a host name) is not an address. Host bits set (192.0.2.7/24) are refused rather
    than guessed."""
    if not isinstance(text, str) or not ADDRESS_TEXT.match(text):
        return None, "not an IP address or CIDR"
    try:
        return ipaddress.ip_network(text, strict=True), ""
    except ValueError as e:
        if "host bits set" in str(e):
            net = ipaddress.ip_network(text, strict=False)
            host = text.split("/")[0]
            return None, (f"host bits set: did you mean {net} ({net.num_addresses} addresses) "
                          f"or {host}/{net.max_prefixlen}?")
        return None, "not an IP address or CIDR"


def is_broad(net: Network) -> bool:
    """A block broader than /16 (IPv4) or /48 (IPv6): it needs allow_broad (and is refused
    broader than the FLOOR whatever the parameters)."""
    return net.prefixlen < BROADEST[net.version]


def refusal(net: Network, allow_broad: bool = False) -> str:
    """Why `net` must not be blocked ("" when it may be)."""
    if net.prefixlen == 0:
        return "covers every address"
    for refused, what in REFUSED_RANGES:
        if refused.version != net.version or not net.overlaps(refused):
            continue
        if net.subnet_of(refused):  # type: ignore[arg-type]
            return f"is {what}" + (f" ({refused})" if net != refused else "")
        return f"contains {what} addresses ({refused})"
    if net.version == 6 and not net.subnet_of(IPV6_GLOBAL_UNICAST):  # type: ignore[arg-type]
        return f"is reserved (outside global unicast {IPV6_GLOBAL_UNICAST})"
    floor = FLOOR[net.version]
    if net.prefixlen < floor:
        return (f"is broader than /{floor} ({net.num_addresses:,} addresses): nothing broader "
                f"than /{FLOOR[4]} (IPv4) or /{FLOOR[6]} (IPv6) is ever blocked, even with "
                f"allow_broad")
    if is_broad(net) and not allow_broad:
        return (f"is broader than /{BROADEST[net.version]} ({net.num_addresses:,} addresses); "
                f"set allow_broad=true if that is meant")
    return ""


# -- parameters ---------------------------------------------------------------------------------

AddressText = Annotated[str, Field(min_length=1, max_length=64,
                                   description="an IPv4/IPv6 address or CIDR, e.g. 203.0.113.7, "
                                               "203.0.113.0/24, 2001:db8::/48")]


class BlockAddressParams(ChangeParams):
    NEEDS_APPROVAL_FOR: ClassVar[str] = "a broad block (allow_broad)"

    action: Literal["block", "unblock", "expire"] = Field(
        description="block: add the addresses to the WAF IP set; unblock: remove them; "
                    "expire: remove every address whose recorded expiry has passed")
    addresses: list[AddressText] = Field(
        default_factory=list, max_length=50,
        description="1 to 50 addresses or CIDRs for block/unblock (normalised to CIDR form); "
                    "none for expire")
    allow_broad: StrictBool = Field(False, description="allow blocking a prefix broader than /16 "
                                                       "(IPv4) or /48 (IPv6), down to /12 and "
                                                       "/32 at the broadest")
    expires_in_hours: int | None = Field(
        None, ge=1, le=8760, description="block only: remove the addresses again after this "
                                         "many hours (at the next scheduled `expire` run)")

    @model_validator(mode="after")
    def _check_addresses(self) -> "BlockAddressParams":
        errors: list[InitErrorDetails] = []

        def refuse(loc: tuple[Any, ...], value: Any, why: str) -> None:
            errors.append(InitErrorDetails(
                type=PydanticCustomError("refused", "{why}", {"why": why}), loc=loc,
                input=value))

        if self.action == "expire" and self.addresses:
            refuse(("addresses",), self.addresses, "expire takes no addresses: it removes "
                                                   "every address whose expiry has passed")
        if self.action != "expire" and not self.addresses:
            refuse(("addresses",), self.addresses, f"{self.action} needs 1 to 50 addresses")
        if self.expires_in_hours is not None and self.action != "block":
            refuse(("expires_in_hours",), self.expires_in_hours, "only for action=block")
        normalised: list[str] = []
        for i, text in enumerate(self.addresses):
            net, why = parse_address(text)
            if net is not None and self.action == "block":
                why = refusal(net, self.allow_broad)
                why = f"refused: {net} {why}" if why else ""
            if why:
                refuse(("addresses", i), text, why)
            elif str(net) not in normalised:
                normalised.append(str(net))
        if errors:
            raise ValidationError.from_exception_data(type(self).__name__, errors)
        self.addresses = normalised
        return self

    def is_broad(self) -> bool:
        """Whether this run blocks a broad range (`is_broad`): what allow_broad allows."""
        return self.action == "block" and any(is_broad(ipaddress.ip_network(a))
                                               for a in self.addresses)

    def check_inventory(self, inventory: Inventory) -> None:
        """A block touching the inventory's never_block networks is refused, whatever else."""
        if self.action == "block" and (hits := never_blocked(self.addresses, inventory)):
            raise BadParameters("; ".join(hits), "addresses")


# -- gates (pure) -------------------------------------------------------------------------------


def _networks(addresses: Sequence[str]) -> list[tuple[str, Network]]:
    out = []
    for a in addresses:
        try:
            out.append((a, ipaddress.ip_network(a, strict=False)))
        except ValueError:
            continue
    return out


def address_is_not_blocked(cidr: str, addresses: Sequence[str]) -> Gate:
    """Block only what the set does not already block (exactly, or by a broader entry)."""
    net = ipaddress.ip_network(cidr)
    for text, entry in _networks(addresses):
        if entry == net:
            return Gate("not yet blocked", False, f"{cidr} is already in the set: nothing to do")
        if entry.version == net.version and net.subnet_of(entry):  # type: ignore[arg-type]
            return Gate("not yet blocked", False,
                        f"{cidr} is already blocked by {text}: nothing to do")
    return Gate("not yet blocked", True, f"{cidr} is not in the set")


def address_is_in_set(cidr: str, addresses: Sequence[str]) -> Gate:
    """Unblock only an entry that is in the set; a broader entry is never split."""
    net = ipaddress.ip_network(cidr)
    covering = []
    for text, entry in _networks(addresses):
        if entry == net:
            return Gate("in the set", True, f"{cidr} is in the set")
        if entry.version == net.version and net.subnet_of(entry):  # type: ignore[arg-type]
            covering.append(text)
    why = f"{cidr} is not in the set: nothing to do"
    if covering:
        why += f" (note: still blocked by {', '.join(covering)}; unblock that to unblock it)"
    return Gate("in the set", False, why)


def expiry_has_passed(cidr: str, expiries: Mapping[str, dt.datetime], now: dt.datetime) -> Gate:
    when = expiries.get(cidr)
    if when is None:
        return Gate("expired", False, f"{cidr} has no expiry: never expired")
    if when > now:
        return Gate("expired", False, f"{cidr} expires {format_expiry(when)}: not yet")
    return Gate("expired", True, f"{cidr} expired {format_expiry(when)}")


def fits_the_set(cidrs: Sequence[str], version: str, set_name: str) -> Gate:
    """A WAF IP set holds one IP version (IPV4 or IPV6)."""
    want = {"IPV4": 4, "IPV6": 6}.get(version.upper())
    wrong = [c for c in cidrs if want is not None and ipaddress.ip_network(c).version != want]
    if wrong:
        return Gate("fits the IP set", False,
                    f"IP set {set_name} holds {version} addresses only: {', '.join(wrong)} "
                    f"cannot go in it (the inventory names no set for the other version)")
    return Gate("fits the IP set", True, f"every address is {version or 'of the set'}")


def never_blocked(cidrs: Sequence[str], inventory: Inventory) -> list[str]:
    """Each address that covers or overlaps a network of the inventory's never_block list,
    naming the entry (an empty list: none does)."""
    hits = []
    for cidr in cidrs:
        net = ipaddress.ip_network(cidr)
        for entry, kept in inventory.never_block_networks():
            if kept.version == net.version and net.overlaps(kept):
                how = "covers" if kept.subnet_of(net) else "is inside"  # type: ignore[arg-type]
                hits.append(f"refused: {cidr} {how} {kept}, never_block entry {entry!r} of "
                            f"inventory {inventory.name!r} (never blocked, whatever the "
                            f"parameters)")
    return hits


def covers_no_inventory_host(cidrs: Sequence[str], known: Mapping[str, str]) -> Gate:
    """Never block our own hosts (the inventory's addresses: hosts, database, ALB targets)."""
    hits = []
    for cidr in cidrs:
        net = ipaddress.ip_network(cidr)
        for name, address in known.items():
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                continue  # a DNS name: nothing to compare
            if ip.version == net.version and ip in net:
                hits.append(f"{cidr} covers {name} ({address})")
    if hits:
        return Gate("covers no inventory host", False, "; ".join(hits))
    return Gate("covers no inventory host", True, "no inventory address is covered")


def set_has_room(count: int, adding: int) -> Gate:
    ok = count + adding <= WAF_MAX_ADDRESSES
    return Gate("set has room", ok, f"{count} addresses + {adding} new "
                                    f"{'<=' if ok else '>'} {WAF_MAX_ADDRESSES} (AWS quota)")


def tags_have_room(tag_count: int, adding: int) -> Gate:
    ok = tag_count + adding <= WAF_MAX_TAGS
    return Gate("expiry tags have room", ok,
                f"{tag_count} tags + {adding} new expiries {'<=' if ok else '>'} {WAF_MAX_TAGS} "
                f"(AWS allows {WAF_MAX_TAGS} tags per IP set)")


# -- plan (pure) --------------------------------------------------------------------------------


def plan_block_address(params: BlockAddressParams, state: IpSetState, inventory_name: str,
                       now: dt.datetime) -> Plan:
    set_name, addresses = state.ip_set.name, state.ip_set.addresses
    steps: list[Step] = []
    gates: list[str] = []
    notes = [f"IP set {set_name} ({state.ip_set.version}, {state.scope}) holds "
             f"{len(addresses)} addresses, {len(state.expiries)} with an expiry"]
    if params.action == "block":
        expires = (f", expires {format_expiry(now + dt.timedelta(hours=params.expires_in_hours))}"
                   if params.expires_in_hours else ", no expiry")
        for cidr in params.addresses:
            g = address_is_not_blocked(cidr, addresses)
            steps.append(Step(cidr, "block", f"add to {set_name}{expires}" if g.ok
                              else f"skip: {g.reason}"))
        gates = ["no address touches the inventory's never_block networks (checked first)",
                 "addresses fit the set's IP version", "no address covers an inventory host",
                 f"the set stays within {WAF_MAX_ADDRESSES} addresses",
                 f"the set's tags stay within {WAF_MAX_TAGS}",
                 "an address already blocked is skipped"]
    elif params.action == "unblock":
        for cidr in params.addresses:
            g = address_is_in_set(cidr, addresses)
            forget = ", forget its expiry" if cidr in state.expiries else ""
            steps.append(Step(cidr, "unblock", f"remove from {set_name}{forget}"
                              if g.ok else f"skip: {g.reason}"))
        gates = ["an address not in the set is skipped"]
    else:
        for cidr, when in sorted(state.expiries.items(), key=lambda kv: kv[1]):
            if not expiry_has_passed(cidr, state.expiries, now).ok:
                continue
            there = address_is_in_set(cidr, addresses).ok
            steps.append(Step(cidr, "expire", f"expired {format_expiry(when)}: "
                              + (f"remove from {set_name}, forget its expiry" if there
                                 else "not in the set: forget its expiry")))
        gates = ["only addresses whose recorded expiry has passed"]
        if not steps:
            notes.append("no expiry has passed: nothing to do")
    if state.malformed:
        notes.append(f"ignored malformed expiry tags: {', '.join(state.malformed)}")
    return Plan("block-address", inventory_name, steps, gates, notes)


# -- the flow -----------------------------------------------------------------------------------


@flow(name="block-address",
      description="Block or unblock addresses in the WAF IP set, with optional expiry.")
async def block_address(params: BlockAddressParams) -> dict[str, Any]:
    log = get_run_logger()

    # 1. Inventory (the parameters were validated before the run started), and its never_block
    #    networks (refused before anything is read).
    inventory = resolve_inventory(params.inventory)
    params.check_inventory(inventory)
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)

    # 2. Read the IP set; plan from it.
    try:
        state = await attempt(lambda: read_waf_ip_set_state(inventory))
    except AwsError as e:
        # No plan could be made: the report says HALTED even for a dry run.
        report = Report("block-address", inventory.name,
                        Plan("block-address", inventory.name, [], ["the IP set is readable"]))
        report.gate(Gate("the IP set is readable", False, str(e)))
        report.halt(f"cannot read IP set {inventory.aws.waf_ip_set}")
        return await finish(report, log)
    plan = plan_block_address(params, state, inventory.name, now)
    await publish_plan(plan)
    report = Report("block-address", inventory.name, plan, dry_run=params.dry_run)
    report.reading("request", {"action": params.action, "addresses": params.addresses,
                               "expires_in_hours": params.expires_in_hours,
                               "allow_broad": params.allow_broad, "reason": params.reason})
    report.reading("IP set before", _contents(state))
    log.info("%s %s on %s: %s", params.action, ", ".join(params.addresses) or "(expired)",
             state.ip_set.name, params.reason or "no reason given")
    if params.dry_run:
        log.info("dry run: plan published, nothing changed")
        return await finish(report, log)

    run = _Run(inventory, params, state, report, log, now)
    # 3. Gates before blocking anything; a broad block (allow_broad) waits for an operator.
    if params.action == "block" and not run.gates_pass():
        return await finish(report, log)
    if params.is_broad() and not await run.broad_block_approved():
        return await finish(report, log)

    # 4. One address at a time.
    for step in plan.steps:
        if not await run.step(step.host):
            break

    # 5. The set after, and the report.
    await run.read_after()
    return await finish(report, log)


class _Run:
    """One run's changing state: the set as last read, and the report."""

    def __init__(self, inventory: Inventory, params: BlockAddressParams, state: IpSetState,
                 report: Report, log: Any, now: dt.datetime):
        self.inventory, self.params, self.report, self.log = inventory, params, report, log
        self.before = self.state = state
        self.now = now
        self.expiry = (now + dt.timedelta(hours=params.expires_in_hours)
                       if params.expires_in_hours else None)

    def gates_pass(self) -> bool:
        wanted = [c for c in self.params.addresses
                  if address_is_not_blocked(c, self.state.ip_set.addresses).ok]
        new_tags = [c for c in wanted if c not in self.state.expiries] if self.expiry else []
        known = {h: host.address for h, host in self.inventory.hosts.items()}
        known["database"] = self.inventory.database.address
        known.update({f"ALB target {h}": t for h, t in self.inventory.aws.alb.targets.items()})
        for gate in (fits_the_set(wanted, self.state.ip_set.version, self.state.ip_set.name),
                     covers_no_inventory_host(wanted, known),
                     set_has_room(len(self.state.ip_set.addresses), len(wanted)),
                     tags_have_room(self.state.tag_count, len(new_tags))):
            self.report.gate(gate)
            if not gate.ok:
                self.log.error("gate %s holds: %s; nothing changed", gate.name, gate.reason)
                self.report.halt(f"{gate.name}: {gate.reason}")
                return False
            self.log.info("gate %s passes: %s", gate.name, gate.reason)
        return True

    async def broad_block_approved(self) -> bool:
        """A block broader than /16 (IPv4) or /48 (IPv6) shuts out whole providers' users: it
        goes ahead only with a human's approval, as the notes' emergency paths do."""
        broad = [a for a in self.params.addresses if is_broad(ipaddress.ip_network(a))]
        decision = await decide_emergency(
            f"A broad block: {', '.join(broad)} shuts out every user in "
            f"{sum(ipaddress.ip_network(a).num_addresses for a in broad):,} addresses "
            f"from the site.", log=self.log)
        gate = self.report.gate(Gate("broad block approved", decision.approved, decision.reason))
        if not gate.ok:
            self.log.error("not blocking %s: %s", ", ".join(broad), decision.reason)
            self.report.halt(f"broad block not approved ({decision.reason}); nothing changed")
        return gate.ok

    async def step(self, cidr: str) -> bool:
        """Act on one address; False when the run must stop."""
        action = self.params.action
        addresses = self.state.ip_set.addresses
        gate = self.report.gate(
            address_is_not_blocked(cidr, addresses) if action == "block" else
            address_is_in_set(cidr, addresses) if action == "unblock" else
            expiry_has_passed(cidr, self.state.expiries, self.now))
        if not gate.ok:
            self.log.info("%s %s skipped: %s", action, cidr, gate.reason)
            self.report.record(cidr, action, Outcome.SKIPPED, gate.reason)
            return True
        in_set = address_is_in_set(cidr, addresses).ok
        self.log.info("%s %s: %s", action, cidr, gate.reason)
        started = time.monotonic()
        arn, set_id = self.state.arn, self.state.ip_set.id
        try:
            if action == "block":
                if self.expiry:  # the expiry first: a block never outlives its intended expiry
                    await set_waf_expiries(self.inventory, arn, {cidr: self.expiry})
                elif cidr in self.state.expiries:  # a stale expiry must not end a permanent block
                    await clear_waf_expiries(self.inventory, arn, [cidr])
                change = await update_waf_ip_set(self.inventory, set_id, add=[cidr])
            else:
                change = (await update_waf_ip_set(self.inventory, set_id, remove=[cidr])
                          if in_set else None)
                if cidr in self.state.expiries:
                    await clear_waf_expiries(self.inventory, arn, [cidr])
            after = await attempt(lambda: read_waf_ip_set_state(self.inventory))
        except AwsError as e:
            self.log.error("%s %s failed: %s", action, cidr, e)
            self.report.record(cidr, action, Outcome.FAILED, f"{e}", started)
            self.report.halt(f"{action} {cidr} failed")
            return False
        problem = _verify(action, cidr, self.state, after, self.expiry)
        if problem:
            self.log.error("%s %s not verified: %s", action, cidr, problem)
            self.report.record(cidr, action, Outcome.FAILED, problem, started)
            self.report.halt(f"{action} {cidr} not verified")
            self.state = after
            return False
        self.state = after
        detail = (f"added to {after.ip_set.name}" if action == "block" else
                  f"removed from {after.ip_set.name}" if in_set else
                  "was not in the set")
        if action == "block":
            detail += f", expires {format_expiry(self.expiry)}" if self.expiry else ", no expiry"
        elif cidr in self.before.expiries:
            detail += ", expiry forgotten"
        if change is not None:
            detail += (f"; {len(change.after)} addresses now"
                       + (f" ({change.attempts} attempts: the set changed meanwhile)"
                          if change.attempts > 1 else ""))
        self.log.info("%s %s done: %s", action, cidr, detail)
        self.report.record(cidr, action, Outcome.DONE, detail, started)
        return True

    async def read_after(self) -> None:
        try:
            after = await attempt(lambda: read_waf_ip_set_state(self.inventory))
        except AwsError as e:
            self.report.reading("IP set after", {"error": str(e)})
            return
        figures = _contents(after)
        before = {str(ipaddress.ip_network(a, strict=False)) for a in self.before.ip_set.addresses}
        now = {str(ipaddress.ip_network(a, strict=False)) for a in after.ip_set.addresses}
        figures["added"] = sorted(now - before)
        figures["removed"] = sorted(before - now)
        self.report.reading("IP set after", figures)


def _verify(action: str, cidr: str, before: IpSetState, after: IpSetState,
            expiry: dt.datetime | None) -> str:
    """What is wrong with the set after one step ("" when it is as wanted)."""
    have = {ipaddress.ip_network(a, strict=False) for a in after.ip_set.addresses}
    had = {ipaddress.ip_network(a, strict=False) for a in before.ip_set.addresses}
    net = ipaddress.ip_network(cidr)
    if action == "block" and net not in have:
        return f"{cidr} is not in the set after the update"
    if action != "block" and net in have:
        return f"{cidr} is still in the set after the update"
    lost = sorted(str(n) for n in had - have - {net})
    if lost:
        return f"other addresses went missing: {', '.join(lost)}"
    if action == "block" and expiry is not None and after.expiries.get(cidr) != expiry:
        return f"{cidr}'s expiry tag is not {format_expiry(expiry)}"
    if action != "block" and cidr in after.expiries:
        return f"{cidr}'s expiry tag is still there"
    return ""


SHOWN = 200  # addresses listed in a reading; the count is always exact


def _contents(state: IpSetState) -> dict[str, Any]:
    addresses = list(state.ip_set.addresses)
    figures: dict[str, Any] = {"set": state.ip_set.name, "count": len(addresses),
                               "addresses": addresses[:SHOWN]}
    if len(addresses) > SHOWN:
        figures["not_shown"] = len(addresses) - SHOWN
    figures["expiries"] = {c: format_expiry(t) for c, t in sorted(state.expiries.items())}
    return figures
