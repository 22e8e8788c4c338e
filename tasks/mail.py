"""Postfix's queue on the mail hosts, read over SSH: the only module that knows its formats.

`postqueue -j` (Postfix 3.x, `postqueue(1)`) prints one JSON object per line: `queue_name`
(maildrop, incoming, active, deferred, hold, corrupt), `queue_id`, `arrival_time` (epoch),
`message_size`, `forced_expire`, `sender`, `recipients` (a list of `{address, delay_reason?}`).
Unknown members are ignored, as the manual asks. An empty queue prints nothing at all; a mail
system that is down makes postqueue exit 69 with `postqueue: fatal: ...` on stderr.

The command itself comes from the inventory (`mail.queue`), run through `tasks.ssh.SshPool`.
`summarize_queue` is pure: it groups the delay reasons with the parts that differ between
identical causes (queue ids, recipients, counts, the "temporarily suspended" prefix) normalised.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from prefect import get_run_logger, task
from prefect.exceptions import MissingContextError

from dwops.errors import Unavailable
from dwops.health import Check, Thresholds, Verdict, graded, unreachable
from dwops.inventory import Inventory
from tasks.common import READ, attempt
from tasks.ssh import CommandResult, SshError, SshPool

QUEUE_COMMAND = "mail.queue"  # the inventory's name for `postqueue -j`
QUEUE_READ_TIMEOUT = 60.0  # seconds for postqueue -j to list a large queue


@dataclass(frozen=True)
class QueuedRecipient:
    address: str
    delay_reason: str | None


@dataclass(frozen=True)
class QueuedMessage:
    """One message of `postqueue -j` (one JSON object per line; unknown members ignored)."""

    queue_name: str
    queue_id: str
    arrival_time: int
    message_size: int
    sender: str
    recipients: tuple[QueuedRecipient, ...]
    forced_expire: bool = False


@dataclass(frozen=True)
class MailQueue:
    """A queue in figures: messages per queue, the oldest's age, recipients per delay reason."""

    total: int
    by_queue: dict[str, int]
    oldest_age_seconds: int | None
    deferred_reasons: dict[str, int]


# -- pure functions -------------------------------------------------------------------------------


def parse_postqueue_json(output: str) -> list[QueuedMessage]:
    """`postqueue -j`: one JSON object per line; blank lines skipped, unknown members ignored.

    A line that is not a JSON object with a `queue_name` and `queue_id` raises ValueError naming
    its line number.
    """
    messages = []
    for n, line in enumerate(output.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError(f"a JSON {type(obj).__name__}, not an object")
            recipients = obj.get("recipients") or []
            if not isinstance(recipients, list):
                raise ValueError("recipients is not a list")
            messages.append(
                QueuedMessage(
                    queue_name=str(obj["queue_name"]),
                    queue_id=str(obj["queue_id"]),
                    arrival_time=int(obj.get("arrival_time", 0)),
                    message_size=int(obj.get("message_size", 0)),
                    sender=str(obj.get("sender", "")),
                    forced_expire=bool(obj.get("forced_expire", False)),
                    recipients=tuple(
                        QueuedRecipient(str(r["address"]), r.get("delay_reason"))
                        for r in recipients
                    ),
                )
            )
        except (ValueError, KeyError, TypeError) as e:
            problem = f"no member {e}" if isinstance(e, KeyError) else str(e)
            raise ValueError(f"postqueue -j line {n}: {problem}: {line[:200]!r}") from None
    return messages


# The parts of a delay reason that differ between messages held up by one cause.
_SUSPENDED = re.compile(r"^(delivery temporarily suspended: )+")
_EMAIL = re.compile(r"<[^<>@\s]*@[^<>\s]*>|\b[\w.+=-]+@[\w-]+(\.[\w-]+)+\b")
_GSMTP = re.compile(r"\S+(?= - gsmtp\b)")  # Google's session id before " - gsmtp"
# Queue ids and message/session ids: a token of 8+ letters and digits holding both, or an
# `id=...`/`queue id ...` value, not part of a host name (no dot, dash or bracket around it).
_ID_VALUE = re.compile(r"\b(id[=:]\s*|queue id\s+)[\w.-]*\w", re.IGNORECASE)
_ID_TOKEN = re.compile(r"(?<![\w.\[-])(?=[A-Za-z0-9]*\d)(?=[A-Za-z0-9]*[A-Za-z])"
                       r"[A-Za-z0-9]{8,}(?![\w.\]-])")
# A bare number (counts, seconds, sizes): not part of an address, a port, an SMTP enhanced
# status code (4.2.0) or the SMTP reply code right after "said:".
_NUMBER = re.compile(r"(?<![\w.\[:/-])(?<!said: )\d+(?![\w.\]:/-])")


def normalize_delay_reason(reason: str) -> str:
    """A delay reason with what differs between identical causes replaced:

    `delivery temporarily suspended: ` (Postfix's note that it gave up on a destination after a
    failure) is dropped; recipient addresses become `<address>`; ids become `ID`; bare counts
    become `N`. Hosts, addresses in brackets, ports and SMTP codes stay: they are the cause.
    """
    text = _SUSPENDED.sub("", reason.strip())
    text = _EMAIL.sub("<address>", text)
    text = _ID_VALUE.sub(lambda m: m.group(1) + "ID", text)
    text = _GSMTP.sub("ID", text)
    text = _ID_TOKEN.sub("ID", text)
    return _NUMBER.sub("N", text)


def summarize_queue(messages: Iterable[QueuedMessage], now: float) -> MailQueue:
    """The queue in figures at time `now` (epoch seconds).

    `deferred_reasons` counts recipients per normalised delay reason, whatever queue their
    message is in (a deferred message being retried passes through `active` with its reason).
    """
    messages = list(messages)
    by_queue = Counter(m.queue_name for m in messages)
    reasons = Counter(
        normalize_delay_reason(r.delay_reason)
        for m in messages for r in m.recipients if r.delay_reason
    )
    oldest = min((m.arrival_time for m in messages), default=None)
    return MailQueue(
        total=len(messages),
        by_queue=dict(sorted(by_queue.items())),
        oldest_age_seconds=None if oldest is None else max(0, int(now - oldest)),
        deferred_reasons=dict(reasons.most_common()),
    )


def _age(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


def judge_mail_queue(host: str, reading: MailQueue | CommandResult | Unavailable | SshError
                     | ValueError, thresholds: Thresholds) -> Check:
    """Total graded at mail_queue_warn/crit; the oldest older than mail_oldest_warn_seconds makes
    it at least WARN. No answer, a failed postqueue or output it cannot read: CRIT."""
    if isinstance(reading, Unavailable):
        return unreachable("postfix", host, reading.reason)
    if isinstance(reading, SshError):
        return Check("postfix", host, Verdict.CRIT, f"ssh refused: {reading}", {"reachable": False})
    if isinstance(reading, CommandResult):  # postqueue exited non-zero
        last = (reading.stderr.strip() or reading.stdout.strip() or "no output").splitlines()[-1]
        return Check("postfix", host, Verdict.CRIT,
                     f"`{reading.command}` failed (exit {reading.exit_status}): {last}",
                     {"reachable": True, "exit_status": reading.exit_status})
    if isinstance(reading, ValueError):
        return Check("postfix", host, Verdict.CRIT, f"unreadable queue listing: {reading}",
                     {"reachable": True})
    q = reading
    verdict = graded(q.total, thresholds.mail_queue_warn, thresholds.mail_queue_crit)
    reason = (f"{q.total} messages queued (warn {thresholds.mail_queue_warn},"
              f" crit {thresholds.mail_queue_crit})")
    if q.by_queue:
        reason += ": " + ", ".join(f"{n} {name}" for name, n in q.by_queue.items())
    if q.oldest_age_seconds is not None:
        reason += f"; oldest {_age(q.oldest_age_seconds)}"
        if q.oldest_age_seconds > thresholds.mail_oldest_warn_seconds:
            reason += f" (warn over {_age(thresholds.mail_oldest_warn_seconds)})"
            verdict = max(verdict, Verdict.WARN, key=lambda v: v.rank)
    if q.deferred_reasons:
        top, n = next(iter(q.deferred_reasons.items()))
        reason += f"; top delay reason ({n}): {top}"
    figures = {"total": q.total, "by_queue": dict(q.by_queue),
               "oldest_age_seconds": q.oldest_age_seconds,
               "deferred_reasons": dict(q.deferred_reasons)}
    return Check("postfix", host, verdict, reason, figures)


# -- reads ----------------------------------------------------------------------------------------


async def read_mail_queue(pool: SshPool, host: str) -> list[QueuedMessage] | CommandResult:
    """Run the inventory's `mail.queue` (postqueue -j) on `host`: the messages, or the
    CommandResult when postqueue exited non-zero (mail system down). Read-only; safe to retry.

    Raises SshUnavailable (transient) or another SshError, and ValueError for output that is not
    postqueue -j's.
    """
    result = await pool.run(host, QUEUE_COMMAND, timeout=QUEUE_READ_TIMEOUT)
    if not result.ok:
        return result
    return parse_postqueue_json(result.stdout)


# -- the fleet-status task ------------------------------------------------------------------------


def _logger() -> logging.Logger | logging.LoggerAdapter:
    """The run's logger, or this module's outside a flow or task run (a test calling `.fn`)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


@task(name="check-mail-queue", **READ)
async def check_mail_queue(inventory: Inventory, thresholds: Thresholds) -> list[Check]:
    """Read Postfix's queue on every mail host over SSH and judge each. Read-only.

    Ages are measured on this machine's clock against the messages' arrival times. A host that
    cannot be reached is a CRIT line, never a raise.
    """
    hosts = inventory.hosts_for("mail")

    async with SshPool(inventory) as pool:
        async def one(host: str) -> MailQueue | CommandResult | Unavailable | SshError | ValueError:
            try:
                read = await attempt(lambda: read_mail_queue(pool, host))
            except (Unavailable, SshError, ValueError) as e:
                return e
            if isinstance(read, CommandResult):
                return read
            return summarize_queue(read, time.time())

        readings = await asyncio.gather(*(one(h) for h in hosts))

    checks = [judge_mail_queue(h, r, thresholds) for h, r in zip(hosts, readings)]
    log = _logger()
    for c in checks:
        log.info("%s %s %s: %s", c.system, c.host, c.verdict.value, c.reason)
    return checks
