"""A pre-imported `dwops` command for the tests: one fork per command instead of one new Python.

Starting `python -m dwops.cli` imports Prefect, asyncssh, boto3 and the flows: about 4.5 s of CPU
per command on a 2-core machine, and the suite runs about a hundred of them. The zygote imports
all of that once (no thread is started by those imports, so forking is safe), then serves
commands on a Unix socket: the launcher (`python tests/_dwops_zygote.py launch SOCKET ARGS...`,
which imports nothing heavy) hands over its stdin, stdout and stderr and its argv; the zygote forks
a child that runs the real CLI (`dwops.cli.app`) on them and exits with its exit code, which the
launcher exits with. To the tests a command is still a process with its own output and exit code.
Killing the launcher kills its command.

The zygote's Prefect settings are those of its start (the tests' session server); a command that
asks for another PREFECT_API_URL is refused rather than run against the wrong server.
"""

from __future__ import annotations

import array
import json
import os
import select
import signal
import socket
import sys


def _send(sock: socket.socket, data: dict, fds: list[int] | None = None) -> None:
    payload = json.dumps(data).encode() + b"\n"
    if fds:
        sock.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sock.sendall(payload)


def _receive(sock: socket.socket) -> tuple[dict, list[int]]:
    data, fds = b"", []
    while not data.endswith(b"\n"):
        msg, ancdata, _, _ = sock.recvmsg(1 << 20, socket.CMSG_LEN(3 * 4))
        if not msg:
            raise EOFError
        data += msg
        for level, kind, raw in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds += array.array("i", raw[: len(raw) - len(raw) % 4]).tolist()
    return json.loads(data), fds


def launch(path: str, argv: list[str]) -> int:
    """The launcher: hand our stdio and argv to the zygote, wait for the exit code."""
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(path)
    _send(sock, {"argv": argv, "env": dict(os.environ), "cwd": os.getcwd()}, [0, 1, 2])

    def stop(signum, frame):  # our command goes with us
        try:
            _send(sock, {"signal": signum})
        finally:
            os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        answer, _ = _receive(sock)
    except (EOFError, ConnectionError):
        return 70
    return int(answer["exit"])


def _child(request: dict, fds: list[int], api_url: str | None) -> None:
    """In the forked child: become the command."""
    os.setsid()
    for target, fd in zip((0, 1, 2), fds):
        os.dup2(fd, target)
        os.close(fd)
    env = request["env"]
    if env.get("PREFECT_API_URL") != api_url:
        sys.stderr.write(f"dwops zygote: started for PREFECT_API_URL={api_url}, asked for "
                         f"{env.get('PREFECT_API_URL')}\n")
        os._exit(70)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(request["cwd"])
    import random

    random.seed()
    from dwops.cli import app

    code = 0
    try:
        app(args=request["argv"], prog_name="dwops")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - as an uncaught exception would: traceback, exit 1
        import traceback

        traceback.print_exc()
        code = 1
    import atexit

    atexit._run_exitfuncs()  # as at a normal exit: Prefect sends the logs it still holds
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def serve(path: str) -> None:
    """The zygote: import everything, then fork one child per command."""
    import dwops.cli  # noqa: F401 - imported for the children
    from flows import FLOWS, load_flow

    for name in FLOWS:
        load_flow(name)
    import prefect.flow_engine  # noqa: F401

    api_url = os.environ.get("PREFECT_API_URL")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(64)
    print("ready", flush=True)
    running: dict[int, socket.socket] = {}  # child pid -> its launcher's connection
    while True:
        ready, _, _ = select.select([server, *running.values()], [], [], 0.1)
        for sock in ready:
            if sock is server:
                conn, _ = server.accept()
                request, fds = _receive(conn)
                pid = os.fork()
                if pid == 0:
                    for other in (server, conn, *running.values()):
                        other.close()
                    _child(request, fds, api_url)
                for fd in fds:
                    os.close(fd)
                running[pid] = conn
            else:  # a launcher sent a signal, or went away: its command goes too
                pid = next(p for p, c in running.items() if c is sock)
                try:
                    message, _ = _receive(sock)
                    sig = int(message.get("signal", signal.SIGTERM))
                except (EOFError, ConnectionError, ValueError):
                    sig = signal.SIGKILL
                try:
                    os.killpg(pid, sig)
                except ProcessLookupError:
                    pass
        while running:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = running.pop(pid, None)
            if conn is not None:
                try:
                    _send(conn, {"exit": os.waitstatus_to_exitcode(status) % 256})
                except OSError:
                    pass
                conn.close()


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        sys.exit(launch(sys.argv[2], sys.argv[3:]))
