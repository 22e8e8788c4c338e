"""The lab's ddlockd (lab/ddlockd.py) against the project's client (tasks/ddlockd.py), for real.

The module starts its own daemon (`python -m lab.ddlockd --listen 127.99.1.5 --port 17002`) and
stops it at teardown; nothing is mocked. Each test uses lock names of its own, since the daemon is
shared by the module.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.ddlockd import (
    DdlockdConnection,
    DdlockdUnavailable,
    read_ddlockd_status,
)

PROJECT_DIR = Path(__file__).resolve().parent.parent
ADDRESS = "127.99.1.5"
PORT = 17002


def start_daemon(address: str, port: int, log_path: Path) -> subprocess.Popen:
    """Start `python -m lab.ddlockd` and wait until it accepts connections."""
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lab.ddlockd", "--listen", address, "--port", str(port)],
        cwd=PROJECT_DIR,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ddlockd exited with {proc.returncode}: {log_path.read_text()}")
        try:
            socket.create_connection((address, port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    pytest.fail(f"ddlockd did not listen on {address}:{port}: {log_path.read_text()}")


def stop_daemon(proc: subprocess.Popen) -> int:
    """SIGTERM the daemon and return its exit code (KILL after 5 s)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        return -9


@pytest.fixture(scope="module")
def ddlockd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A ddlockd of this module's own at 127.99.1.5:17002."""
    proc = start_daemon(ADDRESS, PORT, tmp_path_factory.mktemp("ddlockd") / "ddlockd.log")
    try:
        yield ADDRESS, PORT
    finally:
        assert stop_daemon(proc) == 0


def run(coro):
    return asyncio.run(coro)


def test_trylock_is_exclusive_across_connections_and_not_reentrant(ddlockd) -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        async with DdlockdConnection(*ddlockd) as holder, DdlockdConnection(*ddlockd) as other:
            first = await holder.trylock("exclusive")
            from_other = await other.trylock("exclusive")
            from_holder_again = await holder.trylock("exclusive")
            return first, from_other, from_holder_again

    assert run(scenario()) == (True, False, False)


def test_release_then_release_again(ddlockd) -> None:
    async def scenario() -> list[str]:
        async with DdlockdConnection(*ddlockd) as conn, DdlockdConnection(*ddlockd) as other:
            assert await conn.trylock("release-me")
            assert not await other.releaselock("release-me")  # only the holder can release it
            replies = [await conn.command("releaselock lock=release-me")]
            replies.append(await conn.command("releaselock lock=release-me"))
            assert await other.trylock("release-me")  # free again
            return replies

    assert run(scenario()) == ["OK \r\n", "ERR didnthave \r\n"]


def test_releaselock_through_the_client(ddlockd) -> None:
    async def scenario() -> tuple[bool, bool]:
        async with DdlockdConnection(*ddlockd) as conn:
            await conn.trylock("client-release")
            first = await conn.releaselock("client-release")
            return first, await conn.releaselock("client-release")

    assert run(scenario()) == (True, False)


def test_locks_are_released_when_the_holding_connection_closes(ddlockd) -> None:
    async def scenario() -> None:
        holder = DdlockdConnection(*ddlockd)
        await holder.connect()
        assert await holder.trylock("dies-with-connection")
        assert await holder.trylock("dies-with-connection-2")
        async with DdlockdConnection(*ddlockd) as other:
            assert not await other.trylock("dies-with-connection")
            held = {lock.name for lock in await other.locks()}
            assert held >= {"dies-with-connection", "dies-with-connection-2"}
            await holder.close()
            # The daemon sees the close asynchronously: give it a moment.
            deadline = time.monotonic() + 2
            while not await other.trylock("dies-with-connection"):
                assert time.monotonic() < deadline, "lock still held after its connection closed"
                await asyncio.sleep(0.02)
            assert await other.trylock("dies-with-connection-2")
            holders = {l.name: l.holder for l in await other.locks()}
        assert holders["dies-with-connection"].startswith("Client::Internal(R): open to 127.0.0.1:")

    run(scenario())


def test_empty_lock(ddlockd) -> None:
    async def scenario() -> list[str]:
        async with DdlockdConnection(*ddlockd) as conn:
            with pytest.raises(ValueError):
                await conn.trylock("")
            return [
                await conn.command("trylock lock="),
                await conn.command("trylock"),
                await conn.command("releaselock lock="),
            ]

    assert run(scenario()) == ["ERR empty_lock \r\n"] * 3


def test_unknown_command(ddlockd) -> None:
    async def scenario() -> list[str]:
        async with DdlockdConnection(*ddlockd) as conn:
            return [await conn.command(line) for line in ("bogus lock=x", "%%%", "noop")]

    assert run(scenario()) == [
        "ERR unknown_command Unknown+server+command\r\n",
        "ERR unknown_command Unknown+server+command\r\n",
        "OK \r\n",
    ]


def test_commands_are_case_insensitive(ddlockd) -> None:
    async def scenario() -> list[str]:
        async with DdlockdConnection(*ddlockd) as conn, DdlockdConnection(*ddlockd) as other:
            replies = [
                await conn.command("TRYLOCK lock=CaseTest"),
                await conn.command("NoOp"),
                await conn.command("STATUS", until=b"\n\n"),
                await conn.command("Load", until=b"\n\n"),
            ]
            assert not await other.trylock("CaseTest")  # the lock name itself keeps its case
            assert await other.trylock("casetest")
            replies.append(await conn.command("ReleaseLock lock=CaseTest"))
            return replies

    replies = run(scenario())
    assert replies[0] == replies[1] == replies[4] == "OK \r\n"
    assert replies[2].startswith("STATUS: OK\n") and replies[3].startswith("LOAD: ")


def test_status_counters_move(ddlockd) -> None:
    async def scenario() -> None:
        before = await read_ddlockd_status(*ddlockd)
        async with DdlockdConnection(*ddlockd) as conn, DdlockdConnection(*ddlockd) as other:
            assert await conn.trylock("counted")
            assert not await other.trylock("counted")
            assert not await conn.trylock("counted")
            await conn.command("trylock lock=")  # an empty lock is a failure too
            await conn.releaselock("counted")  # releases and noops are not counted
            await conn.noop()
            after = await conn.status()
            load = await conn.load()
        assert after.successes == before.successes + 1
        assert after.failures == before.failures + 3
        assert after.load == before.load + 4 == load
        assert after.runtime >= before.runtime >= 0

    run(scenario())


def test_url_encoded_names_with_spaces_and_ampersands(ddlockd) -> None:
    name = "import user 42 & friends=yes+1%"

    async def scenario() -> None:
        async with DdlockdConnection(*ddlockd) as holder, DdlockdConnection(*ddlockd) as other:
            assert await holder.trylock(name)
            assert name in {l.name for l in await other.locks()}
            assert not await other.trylock(name)
            # The same name in other spellings of the URL encoding is the same lock.
            for spelling in (
                "import%20user%2042%20%26%20friends%3Dyes%2B1%25",
                "import+user+42+%26+friends%3dyes%2b1%25",
            ):
                assert await other.command(f"trylock lock={spelling}") == "ERR taken \r\n"
            # Unencoded, '&' ends the argument: this is the different lock "import user 42 ".
            assert await other.command("trylock lock=import user 42 & friends") == "OK \r\n"
            assert "import user 42 " in {l.name for l in await other.locks()}
            assert await holder.releaselock(name)
            assert await other.trylock(name)

    run(scenario())


def test_exact_bytes_on_a_raw_socket(ddlockd) -> None:
    def exchange(sock: socket.socket, line: bytes, size: int) -> bytes:
        sock.sendall(line)
        data = b""
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            assert chunk, "ddlockd closed the connection"
            data += chunk
        return data

    with (
        socket.create_connection(ddlockd, timeout=3) as a,
        socket.create_connection(ddlockd, timeout=3) as b,
    ):
        assert exchange(a, b"noop\r\n", 5) == b"OK \r\n"
        assert exchange(a, b"trylock lock=raw-bytes\r\n", 5) == b"OK \r\n"
        assert exchange(b, b"trylock lock=raw-bytes\n", 12) == b"ERR taken \r\n"
        assert exchange(a, b"releaselock lock=raw-bytes\r\n", 5) == b"OK \r\n"
        assert exchange(a, b"releaselock lock=raw-bytes\r\n", 16) == b"ERR didnthave \r\n"
        assert exchange(b, b"load\r\n", 6)[:6] == b"LOAD: "


def test_one_line_per_read_like_the_original(ddlockd) -> None:
    """Two commands in one segment get one reply; the second waits for the next read."""
    with socket.create_connection(ddlockd, timeout=3) as sock:
        sock.sendall(b"noop\r\nnoop\r\n")
        assert sock.recv(100) == b"OK \r\n"
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(100)
        sock.settimeout(3)
        sock.sendall(b"noop\r\n")
        assert sock.recv(100) == b"OK \r\n"


def test_status_reply_is_read_whole(ddlockd) -> None:
    status = run(read_ddlockd_status(*ddlockd, timeout=2.0))
    assert status.successes >= 0 and status.failures >= 0 and status.runtime >= 0


def test_nothing_listening_raises_ddlockd_unavailable() -> None:
    with pytest.raises(DdlockdUnavailable) as caught:
        run(read_ddlockd_status(ADDRESS, PORT + 7, timeout=1.0))
    assert (caught.value.address, caught.value.port) == (ADDRESS, PORT + 7)
    assert caught.value.reason == "Connection refused"


def test_sigterm_exits_cleanly_and_connections_are_logged(tmp_path: Path) -> None:
    log_path = tmp_path / "ddlockd.log"
    proc = start_daemon("127.99.1.6", PORT, log_path)
    try:
        with socket.create_connection(("127.99.1.6", PORT), timeout=3) as sock:
            sock.sendall(b"trylock lock=held-at-shutdown\r\n")
            assert sock.recv(100) == b"OK \r\n"
        time.sleep(0.2)
    finally:
        code = stop_daemon(proc)
    log = log_path.read_text()
    assert code == 0, log
    assert " open 127.0.0.1:" in log
    assert " close 127.0.0.1:" in log and "released 1 locks" in log
