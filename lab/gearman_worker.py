"""A minimal gearman worker and background-job client for the lab (binary protocol, stdlib only).

Packets (gearman PROTOCOL): 4-byte magic `\\0REQ` (to the server) or `\\0RES` (from it), 4-byte
big-endian type, 4-byte big-endian length, then the arguments separated by NUL.

The worker behaves like Perl's Gearman::Worker as Dreamwidth runs it: it sets a random 30-letter
client id (SET_CLIENT_ID, shown by the admin `workers` command), registers its function (CAN_DO)
on every job server, then loops GRAB_JOB -> NO_JOB -> PRE_SLEEP -> wait for NOOP -> GRAB_JOB.
A JOB_ASSIGN is worked for about 50 ms and answered with WORK_COMPLETE. It does one job at a time
across all servers. When a server is down or goes away it retries every second, so a gearmand
restart does not kill it. SIGTERM (or SIGINT) lets the current job finish, then exits 0.

    python -m lab.gearman_worker --servers 127.20.0.21:7003,127.20.0.22:7003 \\
        --function dw_lab_job --title "gearman-worker [dw_lab_job]"

`submit_background()` queues one background job (SUBMIT_JOB_BG) and returns its handle: the lab's
load generator uses it.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import socket
import string
import struct
import sys
import time

REQ = b"\0REQ"
RES = b"\0RES"
HEADER = struct.Struct(">4sII")

CAN_DO = 1
PRE_SLEEP = 4
NOOP = 6
JOB_CREATED = 8
GRAB_JOB = 9
NO_JOB = 10
JOB_ASSIGN = 11
WORK_COMPLETE = 13
SUBMIT_JOB_BG = 18
ERROR = 19
SET_CLIENT_ID = 22

WORK_SECONDS = 0.05
RECONNECT_SECONDS = 1.0
CONNECT_TIMEOUT = 3.0


class GearmanError(Exception):
    """The job server answered with an ERROR packet or something unexpected."""


def log(message: str) -> None:
    """One line on stdout, flushed (the lab keeps it in the worker's log file)."""
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} gearman-worker: {message}", flush=True)


# -- packets (pure) --------------------------------------------------------------------------------


def pack_request(packet_type: int, *args: bytes) -> bytes:
    """One request packet: magic, type, length, NUL-separated arguments."""
    body = b"\0".join(args)
    return HEADER.pack(REQ, packet_type, len(body)) + body


def unpack_header(header: bytes) -> tuple[int, int]:
    """(type, body length) of a response header; raises GearmanError on a bad magic."""
    magic, packet_type, length = HEADER.unpack(header)
    if magic != RES:
        raise GearmanError(f"bad packet magic {magic!r}")
    return packet_type, length


def parse_address(text: str, default_port: int = 4730) -> tuple[str, int]:
    """`ADDR[:PORT]` as (address, port)."""
    host, sep, port = text.strip().rpartition(":")
    return (host, int(port)) if sep else (text.strip(), default_port)


# -- background-job client (blocking, used by the load generator) ----------------------------------


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("job server closed the connection")
        data += chunk
    return data


def submit_background(
    address: str, port: int, function: str, payload: bytes, timeout: float = 3.0
) -> str:
    """Queue one background job for `function` on the job server; return its job handle.

    Changes the server's queue (a new job each call: not safe to blindly retry). Raises OSError
    when the server is unreachable, GearmanError when it refuses the job.
    """
    with socket.create_connection((address, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(pack_request(SUBMIT_JOB_BG, function.encode(), b"", payload))
        while True:
            packet_type, length = unpack_header(_recv_exactly(sock, HEADER.size))
            body = _recv_exactly(sock, length) if length else b""
            if packet_type == JOB_CREATED:
                return body.decode()
            if packet_type == ERROR:
                raise GearmanError(body.replace(b"\0", b": ").decode(errors="replace"))
            if packet_type != NOOP:
                raise GearmanError(f"unexpected packet type {packet_type} after SUBMIT_JOB_BG")


# -- worker ----------------------------------------------------------------------------------------


class Worker:
    """Works jobs of one function from several job servers, one job at a time."""

    def __init__(self, servers: list[tuple[str, int]], function: str) -> None:
        self.servers = servers
        self.function = function.encode()
        self.client_id = "".join(random.choice(string.ascii_lowercase) for _ in range(30)).encode()
        self.stopping = asyncio.Event()
        self.one_job_at_a_time = asyncio.Lock()
        self.jobs_done = 0

    async def run(self) -> None:
        """Serve every job server until `stopping` is set."""
        await asyncio.gather(*(self.serve(address, port) for address, port in self.servers))

    async def serve(self, address: str, port: int) -> None:
        """Keep one job server's connection up (retrying every second) and work its jobs."""
        down_logged = False
        while not self.stopping.is_set():
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(address, port), CONNECT_TIMEOUT
                )
            except (OSError, asyncio.TimeoutError) as exc:
                if not down_logged:
                    log(f"{address}:{port} down ({exc}); retrying every {RECONNECT_SECONDS:g} s")
                    down_logged = True
                await self.pause(RECONNECT_SECONDS)
                continue
            down_logged = False
            log(f"{address}:{port} connected, can_do {self.function.decode()}")
            try:
                await self.work(reader, writer)
            except (OSError, asyncio.IncompleteReadError, GearmanError) as exc:
                log(f"{address}:{port} lost ({type(exc).__name__}: {exc})")
            finally:
                writer.close()
            await self.pause(RECONNECT_SECONDS)

    async def pause(self, seconds: float) -> None:
        """Sleep `seconds`, or less if the worker is stopping."""
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def work(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The grab / sleep / work loop on one connection, until it breaks or the worker stops."""
        writer.write(pack_request(SET_CLIENT_ID, self.client_id))
        writer.write(pack_request(CAN_DO, self.function))
        while not self.stopping.is_set():
            writer.write(pack_request(GRAB_JOB))
            await writer.drain()
            packet_type, body = await self.read_packet(reader, skip_noop=True)
            if packet_type == NO_JOB:
                writer.write(pack_request(PRE_SLEEP))
                await writer.drain()
                if not await self.wait_for_wakeup(reader):
                    return
            elif packet_type == JOB_ASSIGN:
                handle, _function, _payload = body.split(b"\0", 2)
                async with self.one_job_at_a_time:
                    await asyncio.sleep(WORK_SECONDS)
                    writer.write(pack_request(WORK_COMPLETE, handle, b""))
                    await writer.drain()
                    self.jobs_done += 1
            elif packet_type == ERROR:
                raise GearmanError(body.replace(b"\0", b": ").decode(errors="replace"))
            else:
                raise GearmanError(f"unexpected packet type {packet_type} after GRAB_JOB")

    async def wait_for_wakeup(self, reader: asyncio.StreamReader) -> bool:
        """Sleep until the server sends NOOP (True) or the worker is stopping (False)."""
        packet = asyncio.ensure_future(self.read_packet(reader))
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({packet, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not packet.done():
                packet.cancel()
        if not packet.done() or packet.cancelled():
            return False
        packet_type, body = packet.result()
        if packet_type == ERROR:
            raise GearmanError(body.replace(b"\0", b": ").decode(errors="replace"))
        return True

    @staticmethod
    async def read_packet(
        reader: asyncio.StreamReader, *, skip_noop: bool = False
    ) -> tuple[int, bytes]:
        """Read one response packet (type, body), skipping NOOPs when asked."""
        while True:
            packet_type, length = unpack_header(await reader.readexactly(HEADER.size))
            body = await reader.readexactly(length) if length else b""
            if not (skip_noop and packet_type == NOOP):
                return packet_type, body


async def run_worker(servers: list[tuple[str, int]], function: str) -> int:
    """Run a worker until SIGTERM or SIGINT; return the number of jobs it completed."""
    worker = Worker(servers, function)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.stopping.set)
    log(f"started: function {function}, servers {', '.join(f'{a}:{p}' for a, p in servers)}")
    await worker.run()
    log(f"stopped after {worker.jobs_done} jobs")
    return worker.jobs_done


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, set the process title, run the worker in the foreground."""
    parser = argparse.ArgumentParser(
        prog="python -m lab.gearman_worker", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--servers", required=True, help="ADDR:PORT[,ADDR:PORT...]")
    parser.add_argument("--function", required=True, help="the gearman function to register")
    parser.add_argument("--title", help="process title (as seen by ps)")
    args = parser.parse_args(argv)
    servers = [parse_address(s) for s in args.servers.split(",") if s.strip()]
    if args.title:
        import setproctitle

        setproctitle.setproctitle(args.title)
    asyncio.run(run_worker(servers, args.function))
    return 0


if __name__ == "__main__":
    sys.exit(main())
