"""The lab's ddlockd: Danga's distributed lock daemon (Dreamwidth `bin/ddlockd`), in asyncio.

No Debian package exists, so this re-implements the "internal" lock type of the Perl daemon line
for line, quirks included:

- It reads at most 1024 bytes per read and handles at most ONE line per read (`s/^(.+?)\\r?\\n//`),
  so pipelined commands wait in the buffer until more data arrives, and a bare empty line (`\\n`
  at the start of the buffer) never matches: it wedges the connection, as in the original.
- Commands match `^(\\w+)\\s*(.*)`, case-insensitive: status, load, trylock, releaselock, locks,
  noop.
  Anything else: `ERR unknown_command Unknown+server+command\\r\\n`.
- Arguments are URL-encoded `k=v&k=v` ('+' is a space, %XX a byte); a repeated key joins its values
  with NUL. Lock names are bytes.
- `trylock`: `OK \\r\\n`, `ERR taken \\r\\n` (not re-entrant: also for the holder itself),
  `ERR empty_lock \\r\\n`. Every trylock, even an empty one, counts in LOAD and in SUCCESSES or
  FAILURES. `releaselock`: `OK \\r\\n`, `ERR didnthave \\r\\n`, `ERR empty_lock \\r\\n`.
- `status` is written line by line (separate TCP segments with TCP_NODELAY): RUNTIME is whole
  seconds since start (`time - $^T`); LOAD is the number of trylock calls in the 100 three-second
  buckets ending with the current one (about five minutes).
- `locks`: `LOCKS:\\n`, then `  NAME = Client::Internal(R): open to IP:PORT` lines sorted by name,
  joined by `\\n`, then `\\n` (so `LOCKS:\\n\\n` when none is held).
- Locks belong to the TCP connection: EOF, reset or error releases every lock it held.

Differences from the original, for the lab: `--listen ADDR` (the original binds every interface;
the lab must stay on loopback), no `-d` (lab.procs detaches daemons), SIGTERM/SIGINT exit cleanly,
and one line per connection open and close is logged to stdout.

Run: `python -m lab.ddlockd --listen 127.20.0.10 --port 7002`. Stdlib only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

READ_SIZE = 1024  # Danga::Socket read size of the original
LISTEN_BACKLOG = 10  # `Listen => 10` of the original

# The load measure of the original: 100 buckets of int(300 / 100) = 3 seconds each.
BUCKET_QTY = 100
TOTAL_DURATION = 60 * 5
IV_DURATION = TOTAL_DURATION // BUCKET_QTY
BUCKET_LIMIT = 2 * BUCKET_QTY

LINE = re.compile(rb"^(.+?)\r?\n")
COMMAND = re.compile(rb"^(\w+)\s*(.*)")
PERCENT_ESCAPE = re.compile(rb"%([a-fA-F0-9][a-fA-F0-9])")
# The server's eurl(): bytes outside [a-zA-Z0-9_,\-./\\: ] become %XX, then space becomes '+'.
EURL_UNSAFE = re.compile(rb"[^a-zA-Z0-9_,\-./\\: ]")

ERR_TEXT = {b"unknown_command": b"Unknown server command"}


def log(message: str) -> None:
    """Write one line to stdout, flushed at once (the lab keeps it in the daemon's log file)."""
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} ddlockd: {message}", flush=True)


# -- pure helpers, as in the Perl source -----------------------------------------------------------


def durl(value: bytes) -> bytes:
    """Decode one URL-encoded value: '+' is a space, %XX a byte."""
    value = value.replace(b"+", b" ")
    return PERCENT_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), value)


def eurl(value: bytes) -> bytes:
    """Encode like the server's eurl(): unsafe bytes as uppercase %XX, then spaces as '+'."""
    value = EURL_UNSAFE.sub(lambda m: b"%%%02X" % m.group(0)[0], value)
    return value.replace(b" ", b"+")


def perl_true(value: bytes | None) -> bool:
    """Perl truthiness of a string: undef, "" and "0" are false."""
    return value is not None and value not in (b"", b"0")


def decode_url_args(args: bytes) -> dict[bytes, bytes]:
    """Parse `k=v&k=v` like decode_url_args(): a repeated key joins its values with NUL."""
    result: dict[bytes, bytes] = {}
    pairs = args.split(b"&")
    while pairs and pairs[-1] == b"":  # Perl's split drops trailing empty fields
        pairs.pop()
    for pair in pairs:
        # `($name, $value) = split(/=/, $pair)`: at most 3 fields, extra ones dropped.
        parts = pair.split(b"=", 2) if pair else []
        name = durl(parts[0]) if parts else b""
        value = durl(parts[1]) if len(parts) > 1 else b""
        previous = result.get(name)
        result[name] = (previous or b"") + (b"\0" + value if perl_true(previous) else value)
    return result


def iv_for_time(now: int) -> int:
    """The start of the 3-second load bucket holding `now`."""
    return now - (now % IV_DURATION)


def latest_ivs(now: int) -> list[int]:
    """The 100 most recent load buckets, newest (the current one) first."""
    current = iv_for_time(now)
    return [current - i * IV_DURATION for i in range(BUCKET_QTY)]


# -- the daemon ------------------------------------------------------------------------------------


@dataclass(eq=False)
class Client:
    """One client connection and the locks it holds."""

    writer: asyncio.StreamWriter
    peer: str
    locks: dict[bytes, bool] = field(default_factory=dict)
    closed: bool = False

    def write(self, data: bytes) -> None:
        if not self.closed and not self.writer.is_closing():
            self.writer.write(data)

    def as_string(self) -> str:
        """Danga::Socket's as_string() of a watched-for-read internal-lock client."""
        return f"Client::Internal(R): {'closed' if self.closed else 'open'} to {self.peer}"


class LockDaemon:
    """The lock table, counters and command handlers shared by every connection."""

    def __init__(self) -> None:
        self.started = int(time.time())
        self.holder: dict[bytes, Client] = {}
        self.successes = 0
        self.failures = 0
        self.ivs: dict[int, int | None] = {}
        self.clients: set[Client] = set()

    # -- load -------------------------------------------------------------------------------------
    def current_load(self) -> int:
        return sum(self.ivs.get(iv) or 0 for iv in latest_ivs(int(time.time())))

    def increase_load(self) -> None:
        now = int(time.time())
        iv = iv_for_time(now)
        self.ivs[iv] = (self.ivs.get(iv) or 0) + 1
        if len(self.ivs) > BUCKET_LIMIT:  # purge, keeping the latest buckets (even empty ones)
            self.ivs = {i: self.ivs.get(i) for i in latest_ivs(now)}

    # -- replies ----------------------------------------------------------------------------------
    @staticmethod
    def ok_line(client: Client) -> bool:
        client.write(b"OK \r\n")
        return True

    @staticmethod
    def err_line(client: Client, code: bytes) -> bool:
        client.write(b"ERR " + code + b" " + eurl(ERR_TEXT.get(code, b"")) + b"\r\n")
        return False

    # -- commands ---------------------------------------------------------------------------------
    def process_line(self, client: Client, line: bytes) -> None:
        match = COMMAND.match(line)
        if match:
            handler = getattr(self, "cmd_" + match.group(1).lower().decode("ascii"), None)
            if handler is not None:
                handler(client, decode_url_args(match.group(2)))
                return
        self.err_line(client, b"unknown_command")

    def cmd_status(self, client: Client, args: dict[bytes, bytes]) -> None:
        runtime = int(time.time()) - self.started
        load = self.current_load()
        client.write(b"STATUS: OK\n")
        client.write(b"SUCCESSES: %d\n" % self.successes)
        client.write(b"FAILURES: %d\n" % self.failures)
        client.write(b"RUNTIME: %d\n" % runtime)
        client.write(b"LOAD: %d\n" % load)
        client.write(b"\n")

    def cmd_load(self, client: Client, args: dict[bytes, bytes]) -> None:
        client.write(b"LOAD: %d\n" % self.current_load())
        client.write(b"\n")

    def cmd_trylock(self, client: Client, args: dict[bytes, bytes]) -> None:
        lock = args.get(b"lock", b"")
        if not lock:
            taken = self.err_line(client, b"empty_lock")
        elif lock in self.holder:
            taken = self.err_line(client, b"taken")
        else:
            self.holder[lock] = client
            client.locks[lock] = True
            taken = self.ok_line(client)
        self.increase_load()
        if taken:
            self.successes += 1
        else:
            self.failures += 1

    def cmd_releaselock(self, client: Client, args: dict[bytes, bytes]) -> None:
        lock = args.get(b"lock", b"")
        if not lock:
            self.err_line(client, b"empty_lock")
        elif not client.locks.get(lock):
            self.err_line(client, b"didnthave")
        else:
            self.release_lock(client, lock)
            self.ok_line(client)

    def cmd_locks(self, client: Client, args: dict[bytes, bytes]) -> None:
        lines = [
            b"  " + name + b" = " + self.holder[name].as_string().encode("ascii")
            for name in sorted(self.holder)
        ]
        client.write(b"LOCKS:\n")
        client.write(b"\n".join(lines))
        client.write(b"\n")

    def cmd_noop(self, client: Client, args: dict[bytes, bytes]) -> None:
        self.ok_line(client)

    def release_lock(self, client: Client, lock: bytes) -> None:
        client.locks.pop(lock, None)
        if self.holder.get(lock) is client:
            del self.holder[lock]

    # -- connections ------------------------------------------------------------------------------
    async def serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Handle one connection until EOF or error, then release every lock it held."""
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        peername = writer.get_extra_info("peername") or ("?", 0)
        client = Client(writer=writer, peer=f"{peername[0]}:{peername[1]}")
        self.clients.add(client)
        log(f"open {client.peer}")
        buffer = b""
        reason = "eof"
        try:
            while True:
                data = await reader.read(READ_SIZE)
                if not data:
                    break
                buffer += data
                match = LINE.match(buffer)  # one line per read, as the original
                if match:
                    buffer = buffer[match.end():]
                    self.process_line(client, match.group(1))
        except (ConnectionError, OSError) as exc:
            reason = type(exc).__name__
        except asyncio.CancelledError:
            reason = "shutdown"
            raise
        finally:
            released = len(client.locks)
            for lock in list(client.locks):
                self.release_lock(client, lock)
            client.closed = True
            self.clients.discard(client)
            writer.close()
            log(f"close {client.peer} ({reason}, released {released} locks)")


async def serve(listen: str, port: int) -> None:
    """Listen on `listen`:`port` until SIGTERM or SIGINT, then close every connection."""
    daemon = LockDaemon()
    server = await asyncio.start_server(
        daemon.serve_client, host=listen, port=port, backlog=LISTEN_BACKLOG, reuse_address=True
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log(f"listening on {listen}:{port} (pid {os.getpid()})")
    async with server:
        await stop.wait()
        log("stopping")
        server.close()
        for client in list(daemon.clients):
            client.writer.close()
        deadline = loop.time() + 1.0
        while daemon.clients and loop.time() < deadline:  # let each connection log its close
            await asyncio.sleep(0.01)
    log("stopped")


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the daemon in the foreground."""
    parser = argparse.ArgumentParser(
        prog="python -m lab.ddlockd", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--listen", "-L", default="127.0.0.1", help="address to bind (loopback only)"
    )
    parser.add_argument("--port", "-p", type=int, default=7002, help="TCP port (default 7002)")
    args = parser.parse_args(argv)
    if not args.listen.startswith("127."):
        parser.error(f"--listen {args.listen}: the lab listens only on 127.0.0.0/8")
    try:
        asyncio.run(serve(args.listen, args.port))
    except OSError as exc:
        print(f"ddlockd: cannot listen on {args.listen}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
