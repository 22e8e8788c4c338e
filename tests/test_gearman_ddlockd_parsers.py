"""The pure gearman and ddlockd parsers, on replies recorded from the real servers.

The fixtures are exact bytes (see tests/fixtures/*/README.md for how they were recorded): read
them as bytes, since text mode would turn ddlockd's and gearmand's `\\r\\n` into `\\n`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.ddlockd import (
    DdlockdLock,
    DdlockdProtocolError,
    DdlockdStatus,
    encode_lock_name,
    parse_ddlockd_load,
    parse_ddlockd_locks,
    parse_ddlockd_status,
)
from tasks.gearman import (
    GearmanProtocolError,
    GearmanVersion,
    GearmanWorker,
    QueueDepth,
    parse_gearman_status,
    parse_gearman_version,
    parse_gearman_workers,
)

FIXTURES = Path(__file__).parent / "fixtures"


def recorded(system: str, name: str) -> str:
    """A recorded reply, byte for byte."""
    return (FIXTURES / system / name).read_bytes().decode("utf-8")


# -- gearman status --------------------------------------------------------------------------------


def test_perl_status_rows_are_sorted_and_total_includes_running() -> None:
    assert parse_gearman_status(recorded("gearman", "perl-status.txt")) == [
        QueueDepth(function="dw\tlab_prefixed", total=2, running=0, workers=0),
        QueueDepth(function="lab_noworker", total=5, running=0, workers=0),
        QueueDepth(function="lab_other", total=0, running=0, workers=1),
        QueueDepth(function="lab_work", total=28, running=1, workers=1),
    ]


def test_c_status_rows_come_in_hash_order() -> None:
    depths = {d.function: d for d in parse_gearman_status(recorded("gearman", "c-status.txt"))}
    assert depths == {
        "lab_work": QueueDepth("lab_work", total=30, running=1, workers=1),
        "lab_other": QueueDepth("lab_other", total=0, running=0, workers=1),
        "lab_noworker": QueueDepth("lab_noworker", total=5, running=0, workers=0),
        "dw\tlab_prefixed": QueueDepth("dw\tlab_prefixed", total=2, running=0, workers=0),
    }
    assert depths["lab_work"].waiting == 29
    assert depths["lab_noworker"].waiting == 5


@pytest.mark.parametrize("kind", ["perl", "c"])
def test_status_of_a_fresh_server_is_empty(kind: str) -> None:
    assert parse_gearman_status(recorded("gearman", f"{kind}-status-empty.txt")) == []


def test_after_workers_exit_perl_drops_functions_and_c_keeps_them_at_zero() -> None:
    perl = parse_gearman_status(recorded("gearman", "perl-status-after-workers-exit.txt"))
    c = parse_gearman_status(recorded("gearman", "c-status-after-workers-exit.txt"))
    assert [d.function for d in perl] == ["dw\tlab_prefixed", "lab_noworker"]
    assert {d.function for d in c} == {"lab_work", "lab_other", "lab_noworker", "dw\tlab_prefixed"}
    assert QueueDepth("lab_work", 0, 0, 0) in c
    assert QueueDepth("lab_noworker", 5, 0, 0) in perl and QueueDepth("lab_noworker", 5, 0, 0) in c


@pytest.mark.parametrize("kind", ["perl", "c"])
def test_error_replies_raise(kind: str) -> None:
    reply = recorded("gearman", f"{kind}-unknown-command.txt")
    with pytest.raises(GearmanProtocolError, match="(?i)unknown_command"):
        parse_gearman_status(reply)
    with pytest.raises(GearmanProtocolError):
        parse_gearman_workers(reply)


def test_status_without_terminator_or_with_a_bad_row_raises() -> None:
    with pytest.raises(GearmanProtocolError, match="no '.' line"):
        parse_gearman_status("lab_work\t1\t0\t1\n")
    with pytest.raises(GearmanProtocolError, match="unexpected gearman status row"):
        parse_gearman_status("lab_work\t1\tx\t1\n.\n")


# -- gearman workers -------------------------------------------------------------------------------


def test_perl_workers_include_the_admin_connection_with_a_trailing_space() -> None:
    reply = recorded("gearman", "perl-workers.txt")
    assert "8 127.0.0.1 - : \n" in reply
    assert parse_gearman_workers(reply) == [
        GearmanWorker(6, "127.0.0.1", "rkssqnjpexlriwfjewqdeanpemxtni", ("lab_work",)),
        GearmanWorker(7, "127.0.0.1", "ailblqyupitvuaynbiwhdatmlywufm", ("lab_other",)),
        GearmanWorker(8, "127.0.0.1", "-", ()),
    ]


def test_c_workers() -> None:
    assert parse_gearman_workers(recorded("gearman", "c-workers.txt")) == [
        GearmanWorker(22, "127.0.0.1", "-", ()),
        GearmanWorker(20, "127.0.0.1", "ailblqyupitvuaynbiwhdatmlywufm", ("lab_other",)),
        GearmanWorker(19, "127.0.0.1", "rkssqnjpexlriwfjewqdeanpemxtni", ("lab_work",)),
    ]


def test_workers_with_several_functions() -> None:
    reply = "12 10.0.0.5 abc : f1 f2 dw\tf3\n.\n"
    assert parse_gearman_workers(reply) == [
        GearmanWorker(12, "10.0.0.5", "abc", ("f1", "f2", "dw\tf3"))
    ]


# -- gearman version -------------------------------------------------------------------------------


def test_versions_tell_the_servers_apart() -> None:
    perl = parse_gearman_version(recorded("gearman", "perl-version.txt"))
    c = parse_gearman_version(recorded("gearman", "c-version.txt"))
    assert perl == GearmanVersion("perl", "1.130.1")
    assert c == GearmanVersion("c", "1.1.20+ds")


def test_version_error_raises() -> None:
    with pytest.raises(GearmanProtocolError):
        parse_gearman_version(recorded("gearman", "perl-unknown-command.txt"))


# -- ddlockd ---------------------------------------------------------------------------------------


def test_ddlockd_status() -> None:
    reply = recorded("ddlockd", "status.txt")
    assert reply.endswith("\n\n") and "\r" not in reply
    assert parse_ddlockd_status(reply) == DdlockdStatus(successes=3, failures=2, runtime=13, load=5)


def test_ddlockd_status_that_is_not_ok_raises() -> None:
    with pytest.raises(DdlockdProtocolError):
        parse_ddlockd_status("ERR unknown_command Unknown+server+command\r\n")
    with pytest.raises(DdlockdProtocolError, match="FAILURES"):
        parse_ddlockd_status("STATUS: OK\nSUCCESSES: 1\nRUNTIME: 3\nLOAD: 1\n\n")


def test_ddlockd_load() -> None:
    assert parse_ddlockd_load(recorded("ddlockd", "load.txt")) == 5


def test_ddlockd_locks_are_sorted_and_decoded() -> None:
    holder = "Client::Internal(R): open to 127.0.0.1:44112"
    assert parse_ddlockd_locks(recorded("ddlockd", "locks.txt")) == [
        DdlockdLock("a b&c", holder),
        DdlockdLock("import:1234", holder),
        DdlockdLock("lab job:recurring", holder),
    ]


def test_ddlockd_no_locks() -> None:
    assert parse_ddlockd_locks(recorded("ddlockd", "locks-empty.txt")) == []


def test_ddlockd_locks_followed_by_the_noop_sentinel() -> None:
    reply = recorded("ddlockd", "locks.txt") + "OK \r\n"
    names = [lock.name for lock in parse_ddlockd_locks(reply)]
    assert names == ["a b&c", "import:1234", "lab job:recurring"]


def test_lock_names_are_encoded_like_ddlockclient() -> None:
    assert encode_lock_name("import:1234") == "import:1234"
    assert encode_lock_name("a b&c=d") == "a+b%26c%3Dd"
    assert encode_lock_name("x+y%z\n") == "x%2By%25z%0A"
    assert encode_lock_name("é") == "%C3%A9"
