"""tasks.database, tasks.web and tasks.mail: parsers on replies recorded from the lab's real
servers, the judges, and the reads and checks against the running lab.

Recorded replies (tests/fixtures/mysql, web, postfix; how each was made is in the README beside
them) are data: real output in, expected result out. The lab tests talk to the lab's real MariaDB,
webs and Postfix (over SSH); the only state they add is a TheSchwartz function of their own, with
its jobs and error rows, removed again in a `finally`. The task functions are called through
`.fn`: no Prefect server is involved.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import uuid
from pathlib import Path

import pytest

from dwops.errors import Unavailable
from dwops.health import Thresholds, Verdict
from dwops.inventory import Inventory, SecretRef, load_inventory
from lab import jobs as lab_jobs
from lab.config import LabConfig
from tasks import database, mail, web
from tasks.common import attempt
from tasks.database import (
    DatabaseMisconfigured,
    DatabaseRefused,
    DatabaseUnavailable,
    DbLoad,
    FunctionQueue,
    GlobalStatus,
    db_load_between,
    judge_db_load,
    judge_schwartz,
    parse_global_status,
    parse_schwartz_errors,
    parse_schwartz_queue,
)
from tasks.mail import (
    MailQueue,
    QueuedMessage,
    QueuedRecipient,
    judge_mail_queue,
    normalize_delay_reason,
    parse_postqueue_json,
    summarize_queue,
)
from tasks.ssh import CommandResult, SshPool, SshUnavailable
from tasks.web import (
    Healthy,
    HealthReading,
    WebBadReply,
    WebUnavailable,
    judge_web,
    parse_healthy,
    parse_inflight,
)

FIXTURES = Path(__file__).parent / "fixtures"
NOTHING_LISTENS = "127.99.6.1"  # this file's address where nothing listens (127.99.6.x is ours)
DEFAULTS = Thresholds()


def fixture_json(name: str) -> dict:
    return json.loads((FIXTURES / "mysql" / name).read_text())


def fixture_text(path: str) -> str:
    return (FIXTURES / path).read_text()


# == tasks.database: parsers on recorded rows =====================================================


def test_schwartz_queue_rows_recorded_from_mariadb() -> None:
    rec = fixture_json("schwartz-queue.json")
    queue = parse_schwartz_queue(rec["rows"], rec["now"])
    by_name = {q.function: q for q in queue}
    assert [q.function for q in queue] == sorted(by_name)
    # The recording's own function: 3 due jobs (the oldest due 120 s before), 2 due in an hour,
    # 1 grabbed by a (pretend) worker.
    assert by_name["DWOps::Fixture::Recording"] == FunctionQueue(
        "DWOps::Fixture::Recording", total=6, ready=3, grabbed=1, delayed=2,
        oldest_ready_seconds=120)
    assert by_name["TheSchwartz::Worker::SendEmail"] == FunctionQueue(
        "TheSchwartz::Worker::SendEmail", 3, 0, 0, 3, None)
    assert all(q.ready + q.grabbed + q.delayed == q.total for q in queue)


def test_schwartz_queue_rows_as_tuples_and_empty() -> None:
    assert parse_schwartz_queue([], 1795850083) == []
    rows = [("b", 2, 1, 1, 0, 100), ("a", 1, 0, 0, 1, None)]
    assert parse_schwartz_queue(rows, 160) == [
        FunctionQueue("a", 1, 0, 0, 1, None), FunctionQueue("b", 2, 1, 1, 0, 60)]
    # A job whose run_after is ahead of the database's clock at parse time never has a negative age.
    assert parse_schwartz_queue([("c", 1, 1, 0, 0, 200)], 160)[0].oldest_ready_seconds == 0


@pytest.mark.parametrize("row, problem", [
    ({"function": "a", "total": 1, "ready": 1, "grabbed": 0}, "lacks delayed"),
    (("a", 1, 1, 0), "4 columns"),
    (("a", 3, 1, 1, 0, None), "!= total 3"),
    (("a", 1, "many", 0, 0, None), "not a number"),
    (("", 1, 1, 0, 0, None), "no function name"),
])
def test_malformed_schwartz_queue_rows(row: object, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_schwartz_queue([row], 1000)  # type: ignore[list-item]


def test_schwartz_errors_rows_recorded_from_mariadb() -> None:
    rec = fixture_json("schwartz-errors.json")
    assert parse_schwartz_errors(rec["rows"]) == {"TheSchwartz::Worker::SendEmail": 5}
    assert parse_schwartz_errors([]) == {}
    assert parse_schwartz_errors([("funcid 0", 2)]) == {"funcid 0": 2}


def test_global_status_recorded_from_mariadb() -> None:
    a = parse_global_status(fixture_json("global-status-a.json")["rows"])
    assert a == GlobalStatus(threads_running=1, threads_connected=24, questions=31767, uptime=1350)
    # (name, value) pairs, as the default cursor returns them, read the same.
    pairs = [(r["Variable_name"], r["Value"]) for r in fixture_json("global-status-a.json")["rows"]]
    assert parse_global_status(pairs) == a


def test_db_load_between_recorded_samples_leaves_the_reader_out() -> None:
    rec_b = fixture_json("global-status-b.json")
    a = parse_global_status(fixture_json("global-status-a.json")["rows"])
    b = parse_global_status(rec_b["rows"])
    seconds = rec_b["seconds_after_a"]
    load = db_load_between(a, b, seconds, own_queries=1, own_threads=1)
    assert load.threads_running == 0 and load.threads_connected == 24
    assert load.queries_per_second == pytest.approx((31800 - 31767 - 1) / seconds)
    raw = db_load_between(a, b, seconds)
    assert raw.threads_running == 1 and raw.queries_per_second == pytest.approx(33 / seconds)


def test_db_load_across_a_restart_has_no_rate() -> None:
    a = GlobalStatus(5, 10, 1_000_000, 86_400)
    b = GlobalStatus(1, 3, 40, 2)
    assert db_load_between(a, b, 5.0) == DbLoad(1, 3, None)
    assert db_load_between(a, a, 0.0).queries_per_second is None


@pytest.mark.parametrize("rows, problem", [
    ([], "lacks threads_running"),  # an empty reply
    ([("Threads_running", "3"), ("Uptime", "9")], "lacks threads_connected, questions"),
    ([("Threads_running", "3", "x")], "not a \\(name, value\\) pair"),
    ([("Threads_running", "n/a"), ("Threads_connected", "1"), ("Questions", "1"),
      ("Uptime", "1")], "not a number"),
])
def test_malformed_global_status(rows: list, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_global_status(rows)


# == tasks.database: judges =======================================================================


def queue_with_ready(n: int) -> list[FunctionQueue]:
    return [FunctionQueue("LJ::Worker::ProcessSub", n + 2, n, 1, 1, 30 if n else None),
            FunctionQueue("DW::Worker::Sphinx::Copier", 0, 0, 0, 0, None)]


@pytest.mark.parametrize("ready, verdict", [
    (0, Verdict.OK), (149, Verdict.OK), (150, Verdict.WARN), (299, Verdict.WARN),
    (300, Verdict.CRIT), (5000, Verdict.CRIT),
])
def test_schwartz_ready_graded_like_dw_ops_nagios(ready: int, verdict: Verdict) -> None:
    check = judge_schwartz("db", queue_with_ready(ready), {}, DEFAULTS)
    assert (check.system, check.host, check.verdict) == ("schwartz", "db", verdict)
    assert check.reason.startswith(f"{ready} jobs ready (warn 150, crit 300)")
    assert check.figures["ready"] == ready
    assert check.figures["functions"]["LJ::Worker::ProcessSub"] == {
        "total": ready + 2, "ready": ready, "grabbed": 1, "delayed": 1}
    assert set(check.figures) == {"ready", "total", "grabbed", "delayed", "oldest_ready_seconds",
                                  "errors_last_hour", "functions", "errors_by_function"}


def test_schwartz_errors_in_the_last_hour_warn() -> None:
    errors = {"TheSchwartz::Worker::SendEmail": 40, "LJ::Worker::FiredEvent": 10}
    check = judge_schwartz("db", queue_with_ready(3), errors, DEFAULTS)
    assert check.verdict is Verdict.WARN
    assert "50 errors in the last hour (warn 50): TheSchwartz::Worker::SendEmail 40" in check.reason
    assert check.figures["errors_by_function"] == errors
    below = judge_schwartz("db", queue_with_ready(3), {"x": 49}, DEFAULTS)
    assert below.verdict is Verdict.OK
    # Errors never lower a verdict the queue earned.
    assert judge_schwartz("db", queue_with_ready(300), errors, DEFAULTS).verdict is Verdict.CRIT


def test_schwartz_unreachable_is_crit() -> None:
    down = DatabaseUnavailable("10.0.0.1", 3306, "(2003) Can't connect")
    for queue, errors in ((down, {}), (queue_with_ready(1), down)):
        check = judge_schwartz("10.0.0.1", queue, errors, DEFAULTS)
        assert check.verdict is Verdict.CRIT and check.reason.startswith("unreachable: (2003)")
        assert check.figures == {"reachable": False}


@pytest.mark.parametrize("running, verdict", [
    (0, Verdict.OK), (19, Verdict.OK), (20, Verdict.WARN), (50, Verdict.CRIT)])
def test_db_load_graded_by_threads_running(running: int, verdict: Verdict) -> None:
    check = judge_db_load("db", DbLoad(running, 80, 123.45), DEFAULTS)
    assert (check.system, check.verdict) == ("aurora-sql", verdict)
    assert check.figures == {"threads_running": running, "threads_connected": 80, "qps": 123.5}
    restarted = judge_db_load("db", DbLoad(running, 80, None), DEFAULTS)
    assert restarted.figures["qps"] is None and "restarted" in restarted.reason


# == tasks.web: parsers on recorded pages =========================================================


def test_healthy_ok_recorded_from_a_lab_web() -> None:
    healthy = parse_healthy(fixture_text("web/healthy-ok.txt"))
    assert healthy.ok and healthy.failures == ()
    assert healthy.okay == ("global writer", "memcache 127.20.0.31:11211",
                            "memcache 127.20.0.32:11211", "gearman 127.20.0.21:7003",
                            "gearman 127.20.0.22:7003", "schwartz 0")
    assert parse_healthy("status=ok\n") == Healthy(True, (), ())


def test_healthy_fail_recorded_with_a_memcached_down() -> None:
    healthy = parse_healthy(fixture_text("web/healthy-fail-memcache.txt"))
    assert not healthy.ok
    assert healthy.failures == ("memcache 127.20.0.32:11211",)
    assert "memcache 127.20.0.31:11211" in healthy.okay and len(healthy.okay) == 5


@pytest.mark.parametrize("body, problem", [
    ("", "first line \\(empty reply\\)"),
    (fixture_text("web/not-found-404.txt"), "first line 'Not found'"),
    ("<html><body>502 Bad Gateway</body></html>\n", "first line '<html>"),
    ("status=maybe\n", "first line 'status=maybe'"),
    ("status=fail\n\n", "lists no failures"),
    ("status=ok\n\nfailures:\n  memcache a:1\n", "status=ok but lists failures"),
    ("status=fail\n  memcache a:1\n", "line 2 .* outside any section"),
    ("status=fail\n\nbroken:\n  memcache a:1\n", "line 3 'broken:'"),
])
def test_malformed_healthy_pages(body: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_healthy(body)


def test_inflight_recorded_from_a_lab_web() -> None:
    assert parse_inflight(fixture_text("web/inflight.txt")) == 0
    with pytest.raises(ValueError, match="first line 'Not found'"):
        parse_inflight(fixture_text("web/not-found-404.txt"))


def test_web_judge() -> None:
    ok = parse_healthy(fixture_text("web/healthy-ok.txt"))
    fail = parse_healthy(fixture_text("web/healthy-fail-memcache.txt"))
    fast = judge_web("va-web01", HealthReading(ok, 0.05, 200), DEFAULTS)
    assert (fast.system, fast.host, fast.verdict) == ("web", "va-web01", Verdict.OK)
    assert fast.figures == {"seconds": 0.05, "status_code": 200, "failures": [], "okay": 6}
    slow = judge_web("va-web01", HealthReading(ok, 1.5, 200), DEFAULTS)
    assert slow.verdict is Verdict.WARN and "slow: 1.50 s" in slow.reason
    failing = judge_web("va-web02", HealthReading(fail, 0.05, 200), DEFAULTS)
    assert failing.verdict is Verdict.CRIT
    assert failing.reason == "status=fail: memcache 127.20.0.32:11211"
    down = judge_web("va-web03", WebUnavailable("10.0.0.3", 80, "GET /admin/healthy: refused"),
                     DEFAULTS)
    assert down.verdict is Verdict.CRIT and down.figures == {"reachable": False}
    bad = judge_web("va-web04", WebBadReply("10.0.0.4", 80, "/admin/healthy", 404, "Not found"),
                    DEFAULTS)
    assert bad.verdict is Verdict.CRIT and "HTTP 404" in bad.reason


# == tasks.mail: parsers on recorded queues =======================================================


def test_postqueue_json_recorded_from_the_lab_postfix() -> None:
    messages = parse_postqueue_json(fixture_text("postfix/postqueue-j.txt"))
    assert len(messages) == 5 and {m.queue_name for m in messages} == {"deferred"}
    first = messages[0]
    assert first == QueuedMessage(
        queue_name="deferred", queue_id="360BC20C0C3", arrival_time=1795848733, message_size=545,
        sender="lab-seed@lab.dreamwidth.org", forced_expire=False,
        recipients=(QueuedRecipient(
            "user2@example.net", "connect to 127.99.4.19[127.99.4.19]:25: Connection refused"),))


def test_summarize_recorded_queue_groups_one_cause() -> None:
    messages = parse_postqueue_json(fixture_text("postfix/postqueue-j.txt"))
    now = 1795848739 + 60
    summary = summarize_queue(messages, now)
    # Four say "connect to ...", the fifth "delivery temporarily suspended: connect to ...":
    # one cause, one group.
    assert summary == MailQueue(
        total=5, by_queue={"deferred": 5}, oldest_age_seconds=now - 1795848733,
        deferred_reasons={"connect to 127.99.4.19[127.99.4.19]:25: Connection refused": 5})


def test_empty_queue_and_blank_lines() -> None:
    assert parse_postqueue_json(fixture_text("postfix/postqueue-j-empty.txt")) == []
    assert summarize_queue([], 1e9) == MailQueue(0, {}, None, {})
    text = fixture_text("postfix/postqueue-j.txt")
    spaced = "\n\n" + text.replace("\n", "\n   \n") + "\n"
    assert parse_postqueue_json(spaced) == parse_postqueue_json(text)


def test_unknown_members_are_ignored() -> None:
    line = ('{"queue_name": "hold", "queue_id": "ABC", "arrival_time": 10, "message_size": 1,'
            ' "sender": "", "future_member": [1, 2], "recipients": [{"address": "a@b",'
            ' "orcpt": "x"}]}')
    assert parse_postqueue_json(line) == [
        QueuedMessage("hold", "ABC", 10, 1, "", (QueuedRecipient("a@b", None),))]


@pytest.mark.parametrize("bad, problem", [
    ("{not json", "line 2: Expecting property name"),
    ("[1, 2]", "line 2: a JSON list, not an object"),
    ('{"queue_id": "X"}', "line 2: no member 'queue_name'"),
    ('{"queue_name": "active", "queue_id": "X", "recipients": [{"delay_reason": "x"}]}',
     "line 2: no member 'address'"),
    ('{"queue_name": "active", "queue_id": "X", "arrival_time": "soon"}',
     "line 2: invalid literal"),
])
def test_malformed_postqueue_line_names_its_number(bad: str, problem: str) -> None:
    first = fixture_text("postfix/postqueue-j.txt").splitlines()[0]
    with pytest.raises(ValueError, match=problem):
        parse_postqueue_json(first + "\n" + bad + "\n")


@pytest.mark.parametrize("a, b", [
    ("host mx.example.com[203.0.113.5] said: 450 4.2.0 <alice@example.net>: Recipient address"
     " rejected: Greylisted for 300 seconds (in reply to RCPT TO command)",
     "host mx.example.com[203.0.113.5] said: 450 4.2.0 <bob@example.org>: Recipient address"
     " rejected: Greylisted for 297 seconds (in reply to RCPT TO command)"),
    ("host relay.example[192.0.2.2] said: 421 4.7.0 Try again later (id=abc123XYZ)",
     "host relay.example[192.0.2.2] said: 421 4.7.0 Try again later (id=Q9x8y7z6)"),
    ("host mail.example.com[192.0.2.9] said: 452 4.3.1 Insufficient storage, queue id 4ABC123DEF",
     "host mail.example.com[192.0.2.9] said: 452 4.3.1 Insufficient storage, queue id 5F00D1E2A3"),
    ("host gmail-smtp-in.l.google.com[142.250.102.27] said: 421-4.7.0 Try again later."
     " d75a77b69052e-4a0e94f4b95si12345qtb.102 - gsmtp (in reply to end of DATA command)",
     "host gmail-smtp-in.l.google.com[142.250.102.27] said: 421-4.7.0 Try again later."
     " 5b1f17b1804b1-42b2f1a2b3csi99f.7 - gsmtp (in reply to end of DATA command)"),
])
def test_delay_reasons_of_one_cause_group(a: str, b: str) -> None:
    assert normalize_delay_reason(a) == normalize_delay_reason(b)


def test_delay_reasons_keep_what_makes_the_cause() -> None:
    refused = "connect to 127.99.4.19[127.99.4.19]:25: Connection refused"
    assert normalize_delay_reason(refused) == refused
    assert normalize_delay_reason("delivery temporarily suspended: " + refused) == refused
    other_host = refused.replace("127.99.4.19", "127.99.4.20")
    assert normalize_delay_reason(other_host) != normalize_delay_reason(refused)
    codes = "host mx.example[192.0.2.1] said: 550 5.1.1 user unknown"
    assert normalize_delay_reason(codes) == codes
    assert normalize_delay_reason(codes.replace("550 5.1.1", "450 4.2.0")) != codes


def mail_queue(total: int, oldest: int | None) -> MailQueue:
    return MailQueue(total, {"deferred": total} if total else {}, oldest,
                     {"connect to r[192.0.2.1]:25: Connection refused": total} if total else {})


@pytest.mark.parametrize("total, oldest, verdict", [
    (0, None, Verdict.OK), (49, 60, Verdict.OK), (50, 60, Verdict.WARN), (499, 60, Verdict.WARN),
    (500, 60, Verdict.CRIT), (1, 3601, Verdict.WARN), (500, 86400, Verdict.CRIT),
])
def test_mail_queue_judge(total: int, oldest: int | None, verdict: Verdict) -> None:
    check = judge_mail_queue("dfw-mail01", mail_queue(total, oldest), DEFAULTS)
    assert (check.system, check.host, check.verdict) == ("postfix", "dfw-mail01", verdict)
    assert set(check.figures) == {"total", "by_queue", "oldest_age_seconds", "deferred_reasons"}
    assert check.reason.startswith(f"{total} messages queued (warn 50, crit 500)")
    if oldest and oldest > 3600:
        assert "(warn over 60 min)" in check.reason


def test_mail_queue_judge_when_postfix_is_down_or_unreachable() -> None:
    down = CommandResult("dfw-mail01", "postqueue -j", 69, "",
                         fixture_text("postfix/postqueue-j-down-stderr.txt"), 0.01)
    check = judge_mail_queue("dfw-mail01", down, DEFAULTS)
    assert check.verdict is Verdict.CRIT
    assert check.reason == ("`postqueue -j` failed (exit 69): "
                            "postqueue: fatal: malformed showq server response")
    gone = judge_mail_queue("dfw-mail01", SshUnavailable("dfw-mail01", "refused"), DEFAULTS)
    assert gone.verdict is Verdict.CRIT and gone.reason == "unreachable: refused"
    garbled = judge_mail_queue("dfw-mail01", ValueError("postqueue -j line 1: ..."), DEFAULTS)
    assert garbled.verdict is Verdict.CRIT and "unreadable" in garbled.reason


# -- TLS to the database (database.ssl_ca) ---------------------------------------------------------


def write_ca(path: Path) -> Path:
    """A self-signed CA certificate (PEM) at `path`, made for the test."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dwops test CA")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def with_ssl_ca(inventory: Inventory, ssl_ca: str | Path | None) -> Inventory:
    return inventory.model_copy(update={"database": inventory.database.model_copy(
        update={"ssl_ca": None if ssl_ca is None else str(ssl_ca)})})


def production() -> Inventory:
    return load_inventory(Path(__file__).resolve().parent.parent / "inventory" / "production.toml")


def test_a_configured_ca_is_the_one_trusted_and_the_server_is_verified(tmp_path: Path) -> None:
    assert production().database.ssl_ca == "/etc/dwops/rds-global-bundle.pem"  # documented
    inventory = with_ssl_ca(production(), write_ca(tmp_path / "ca.pem"))
    tls = database.tls_context(inventory)
    assert tls is not None and tls.verify_mode is ssl.CERT_REQUIRED and tls.check_hostname
    assert [c["subject"] for c in tls.get_ca_certs()] == [((("commonName", "dwops test CA"),),)]
    assert database.tls_context(with_ssl_ca(production(), None)) is None


def test_a_ca_file_that_cannot_be_used_is_a_configuration_error_never_retried(
        tmp_path: Path) -> None:
    """Production's inventory: the error comes before the password is read or anything is
    sent, so no lab and no secret is needed."""
    not_pem = tmp_path / "not-a-ca.pem"
    not_pem.write_text("hello\n")
    for ca, why in ((tmp_path / "missing.pem", "No such file or directory"),
                    (not_pem, "NO_CERTIFICATE_OR_CRL_FOUND")):
        inventory = with_ssl_ca(production(), ca)
        tries = 0

        async def read():
            nonlocal tries
            tries += 1
            return await database.read_schwartz_queue(inventory)

        with pytest.raises(DatabaseMisconfigured) as e:
            asyncio.run(attempt(read, attempts=3, delay=0))
        assert tries == 1 and not isinstance(e.value, Unavailable)
        assert str(e.value).startswith(
            f"mysql dw-global.cluster.us-east-1.rds.amazonaws.com:3306: configuration error: "
            f"database.ssl_ca: cannot use {ca} as a CA bundle ("), str(e.value)
        assert why in str(e.value)
        [check] = asyncio.run(database.check_schwartz.fn(inventory, DEFAULTS))
        assert check.verdict is Verdict.CRIT and check.figures == {"reachable": False}
        assert f"database.ssl_ca: cannot use {ca}" in check.reason


# == against the running lab ======================================================================


def dead_host(inventory: Inventory, host: str) -> Inventory:
    """A copy of the inventory with `host` at an address where nothing listens."""
    hosts = dict(inventory.hosts)
    hosts[host] = hosts[host].model_copy(update={"address": NOTHING_LISTENS})
    return inventory.model_copy(update={"hosts": hosts})


def dead_database(inventory: Inventory) -> Inventory:
    return inventory.model_copy(update={"database": inventory.database.model_copy(
        update={"address": NOTHING_LISTENS})})


@pytest.mark.lab
def test_enqueued_jobs_show_up_ready_and_their_errors_counted(
    lab: LabConfig, lab_inventory: Inventory
) -> None:
    func = f"DWOps::Test::Queue{uuid.uuid4().hex[:12]}"  # no worker serves it
    jobids: list[int] = []
    conn = lab_jobs.connect(lab)
    try:
        jobids = [lab_jobs.enqueue_job(lab, func, {"n": i}) for i in range(7)]
        funcid = lab_jobs.funcname_to_id(conn, func)
        with conn.cursor() as cur:  # two errors within the hour, one older
            cur.executemany(
                "INSERT INTO error (error_time, jobid, message, funcid)"
                " VALUES (UNIX_TIMESTAMP() - %s, %s, 'dwops test', %s)",
                [(5, jobids[0], funcid), (60, jobids[1], funcid), (7200, jobids[2], funcid)])

        queue = {q.function: q for q in asyncio.run(database.read_schwartz_queue(lab_inventory))}
        assert queue[func].total == 7 and queue[func].ready == 7
        assert queue[func].grabbed == 0 and queue[func].delayed == 0
        errors = asyncio.run(database.read_schwartz_errors(lab_inventory, since_seconds=3600))
        assert errors[func] == 2

        checks = asyncio.run(database.check_schwartz.fn(
            lab_inventory, Thresholds(schwartz_ready_warn=7, schwartz_ready_crit=1_000_000)))
        assert len(checks) == 1
        check = checks[0]
        assert (check.system, check.host) == ("schwartz", lab_inventory.database.address)
        assert check.verdict is Verdict.WARN, check  # at least our 7 are ready
        assert check.figures["functions"][func] == {"total": 7, "ready": 7, "grabbed": 0,
                                                    "delayed": 0}
        assert check.figures["errors_by_function"][func] == 2
    finally:
        with conn.cursor() as cur:
            if jobids:
                cur.execute("DELETE FROM job WHERE jobid IN %s", (jobids,))
            cur.execute("DELETE e FROM error e JOIN funcmap f ON f.funcid = e.funcid"
                        " WHERE f.funcname = %s", (func,))
            cur.execute("DELETE FROM funcmap WHERE funcname = %s", (func,))
        conn.close()
    gone = {q.function for q in asyncio.run(database.read_schwartz_queue(lab_inventory))}
    assert func not in gone


@pytest.mark.lab
def test_db_load_of_the_lab(lab_inventory: Inventory) -> None:
    load = asyncio.run(database.read_db_load(lab_inventory, window=0.2))
    assert load.threads_connected >= 1  # the lab's webs and workers hold connections
    assert load.queries_per_second is not None and load.queries_per_second >= 0
    [check] = asyncio.run(database.check_db_load.fn(lab_inventory, DEFAULTS, window=0.2))
    assert (check.system, check.host) == ("aurora-sql", lab_inventory.database.address)
    assert set(check.figures) == {"threads_running", "threads_connected", "qps"}
    expected = judge_db_load(check.host, DbLoad(check.figures["threads_running"],
                                                check.figures["threads_connected"], 0), DEFAULTS)
    assert check.verdict is expected.verdict


@pytest.mark.lab
def test_database_where_nothing_listens_gives_crit_lines(lab_inventory: Inventory) -> None:
    inventory = dead_database(lab_inventory)
    with pytest.raises(DatabaseUnavailable, match="2003"):
        asyncio.run(database.read_schwartz_queue(inventory))
    checks = (asyncio.run(database.check_schwartz.fn(inventory, DEFAULTS))
              + asyncio.run(database.check_db_load.fn(inventory, DEFAULTS, window=0.1)))
    assert [(c.system, c.host, c.verdict) for c in checks] == [
        ("schwartz", NOTHING_LISTENS, Verdict.CRIT), ("aurora-sql", NOTHING_LISTENS, Verdict.CRIT)]
    assert all(c.reason.startswith("unreachable: ") and "Connection refused" in c.reason
               for c in checks), checks


@pytest.mark.lab
def test_database_that_refuses_us_gives_a_crit_line(
    lab_inventory: Inventory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DWOPS_TEST_WRONG_PASSWORD", "not-the-password")
    inventory = lab_inventory.model_copy(update={"database": lab_inventory.database.model_copy(
        update={"password": SecretRef(env="DWOPS_TEST_WRONG_PASSWORD")})})
    [check] = asyncio.run(database.check_db_load.fn(inventory, DEFAULTS, window=0.1))
    assert check.verdict is Verdict.CRIT
    assert check.reason.startswith("refused: (1045) Access denied for user 'dwops'"), check
    assert "not-the-password" not in check.reason
    assert check.figures == {"reachable": True}
    # A password that cannot be read is a CRIT line too, naming only where it should be.
    monkeypatch.delenv("DWOPS_TEST_WRONG_PASSWORD")
    [check] = asyncio.run(database.check_schwartz.fn(inventory, DEFAULTS))
    assert check.verdict is Verdict.CRIT
    assert check.reason == ("refused: no password (environment variable DWOPS_TEST_WRONG_PASSWORD"
                            " is not set)")
    assert check.figures == {"reachable": False}


@pytest.mark.lab
def test_with_a_ca_the_connection_requires_tls(lab_inventory: Inventory, tmp_path: Path) -> None:
    """The lab's MariaDB speaks no TLS (have_ssl=DISABLED): with ssl_ca set, the read is refused
    rather than made in the clear; without it, the same read works."""
    inventory = with_ssl_ca(lab_inventory, write_ca(tmp_path / "ca.pem"))
    with pytest.raises(DatabaseRefused,
                       match=r"refused: \(2026\) SSL is required but the server doesn't support it"):
        asyncio.run(database.read_schwartz_queue(inventory))
    assert isinstance(asyncio.run(database.read_schwartz_queue(lab_inventory)), list)


@pytest.mark.lab
def test_every_lab_web_is_healthy(lab_inventory: Inventory) -> None:
    # Other test files may restart a web now and then: allow a few seconds for it to come back.
    deadline = time.monotonic() + 10
    while True:
        checks = asyncio.run(web.check_webs.fn(lab_inventory, Thresholds(web_slow_seconds=5)))
        if all(c.verdict is Verdict.OK for c in checks) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert [c.host for c in checks] == lab_inventory.hosts_for("web")
    assert all(c.system == "web" and c.verdict is Verdict.OK for c in checks), checks
    assert all(c.figures["status_code"] == 200 and c.figures["failures"] == [] for c in checks)
    address = lab_inventory.host("va-web01").address
    assert asyncio.run(web.read_inflight(address, lab_inventory.service("web").port or 80)) >= 0


@pytest.mark.lab
def test_web_where_nothing_listens_is_a_crit_line(lab_inventory: Inventory) -> None:
    inventory = dead_host(lab_inventory, "va-web03")
    with pytest.raises(WebUnavailable, match="Connection refused"):
        asyncio.run(web.read_healthy(NOTHING_LISTENS, 80, "/admin/healthy", timeout=2))
    checks = {c.host: c for c in asyncio.run(web.check_webs.fn(inventory, DEFAULTS))}
    assert len(checks) == 6
    dead = checks["va-web03"]
    assert dead.verdict is Verdict.CRIT and dead.figures == {"reachable": False}
    assert dead.reason == "unreachable: GET /admin/healthy: ConnectError: Connection refused"


@pytest.mark.lab
def test_mail_queue_shows_the_lab_mail_deferred_at_the_dead_relay(
    lab: LabConfig, lab_inventory: Inventory
) -> None:
    cause = f"connect to {lab.dead_relay}[{lab.dead_relay}]:{lab.ports.smtp}: Connection refused"
    [check] = asyncio.run(mail.check_mail_queue.fn(
        lab_inventory, Thresholds(mail_oldest_warn_seconds=30 * 86400)))
    assert (check.system, check.host, check.verdict) == ("postfix", "dfw-mail01", Verdict.OK)
    f = check.figures
    assert f["total"] >= 5 and sum(f["by_queue"].values()) == f["total"], f  # lab up defers five
    assert set(f["by_queue"]) <= {"deferred", "active"}, f  # deferred, or being retried
    assert list(f["deferred_reasons"]) == [cause], f
    assert f["deferred_reasons"][cause] >= 5 and f["oldest_age_seconds"] >= 0

    # The same reading judged with tighter thresholds.
    async def read() -> list[QueuedMessage] | CommandResult:
        async with SshPool(lab_inventory) as pool:
            return await mail.read_mail_queue(pool, "dfw-mail01")

    messages = asyncio.run(read())
    assert isinstance(messages, list) and len(messages) >= 5
    summary = summarize_queue(messages, time.time())
    tight = Thresholds(mail_queue_warn=1, mail_queue_crit=len(messages))
    assert judge_mail_queue("dfw-mail01", summary, tight).verdict is Verdict.CRIT
    old = Thresholds(mail_oldest_warn_seconds=60)
    in_a_day = summarize_queue(messages, max(m.arrival_time for m in messages) + 86400)
    assert judge_mail_queue("dfw-mail01", in_a_day, old).verdict is Verdict.WARN


@pytest.mark.lab
def test_mail_host_where_nothing_listens_is_a_crit_line(lab_inventory: Inventory) -> None:
    [check] = asyncio.run(mail.check_mail_queue.fn(dead_host(lab_inventory, "dfw-mail01"),
                                                   DEFAULTS))
    assert (check.system, check.host, check.verdict) == ("postfix", "dfw-mail01", Verdict.CRIT)
    assert check.reason.startswith(f"unreachable: cannot connect to {NOTHING_LISTENS}:")
    assert check.figures == {"reachable": False}
