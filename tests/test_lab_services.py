"""The lab's services answer their real protocols, to dwops's clients and to plain ones."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lab.config import LabConfig
from tasks.memcache import MemcacheUnavailable, read_memcache_stats

PROJECT = Path(__file__).resolve().parent.parent


def raw(address: str, port: int, request: bytes, until: bytes, timeout: float = 3.0) -> bytes:
    """Send one request on a plain socket and read until `until` ends the reply."""
    with socket.create_connection((address, port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while not data.endswith(until):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def test_lab_status_json_shows_every_host_and_service_up(lab: LabConfig):
    out = subprocess.run([sys.executable, "-m", "dwops.cli", "lab", "status", "--json"],
                         capture_output=True, text=True, timeout=60, cwd=PROJECT)
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout)
    assert {h["name"] for h in st["hosts"]} == {
        "va-admin01", "va-web01", "va-web02", "va-web03", "va-web04", "va-web05", "va-web06",
        "dfw-admin01", "dfw-jobs01", "dfw-jobs02", "dfw-memc01", "dfw-memc02", "dfw-mail01"}
    assert all(h["address"].startswith("127.") for h in st["hosts"])
    assert len({h["address"] for h in st["hosts"]}) == 13
    down = [s for s in st["services"] if not s["up"]]
    assert not down
    by = {(s["name"], s["host"]) for s in st["services"]}
    for host in ("dfw-jobs01", "dfw-jobs02"):
        assert {("gearman", host), ("ddlockd", host), ("dw-workers", host)} <= by
    assert {("memcached", "dfw-memc01"), ("memcached", "dfw-memc02"),
            ("postfix", "dfw-mail01"), ("mariadb", "aurora"), ("moto", "aws")} <= by
    assert sum(1 for s in st["services"] if s["name"] == "sshd") == 13
    assert sum(1 for s in st["services"] if s["name"] == "apache2") == 6
    for s in st["services"]:
        if s["address"]:
            assert s["address"].startswith("127.")
    for key in ("inventory", "known_hosts", "client_key", "oracle_key"):
        assert Path(st[key]).exists()
    assert st["aws_endpoint"].startswith("http://127.")
    assert st["database"]["dsn"].startswith("mysql://")
    assert lab.db.password() not in out.stdout  # the password is in a file, never printed


def test_memcached_stats_from_both_nodes(lab: LabConfig):
    for h in lab.hosts_with("memcache"):
        st = read_memcache_stats(h.address, lab.ports.memcached)
        assert st.pid > 0 and st.limit_maxbytes == 64 * 1024 * 1024
        assert st.version.startswith("1.6")


def test_memcached_speaks_its_text_protocol_on_a_raw_socket(lab: LabConfig):
    h = lab.hosts_with("memcache")[0]
    reply = raw(h.address, lab.ports.memcached, b"stats\r\n", b"END\r\n").decode()
    lines = reply.split("\r\n")
    assert lines[0].startswith("STAT pid ")
    assert "END" in lines
    assert any(line.startswith("STAT uptime ") for line in lines)


def test_memcached_down_is_a_clear_error(lab: LabConfig):
    with pytest.raises(MemcacheUnavailable, match="127.20.0.39:11211"):
        read_memcache_stats("127.20.0.39", lab.ports.memcached, timeout=1)


def mariadb(lab: LabConfig, sql: str) -> str:
    """The mariadb command-line client (not dwops), over TCP as the lab's application user."""
    out = subprocess.run(
        ["mariadb", "--no-defaults", "-h", lab.db.address, "-P", str(lab.ports.mysql),
         "-u", lab.db.user, f"--password={lab.db.password()}", "--batch", "-N", "-e", sql],
        capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_theschwartz_schema_is_the_real_one(lab: LabConfig):
    db = lab.db.schwartz_db
    tables = set(mariadb(lab, f"SHOW TABLES FROM {db}").split())
    assert tables == {"funcmap", "job", "note", "error", "exitstatus"}
    cols = mariadb(lab, f"SELECT column_name, column_type FROM information_schema.columns "
                        f"WHERE table_schema='{db}' AND table_name='job' ORDER BY ordinal_position")
    assert [tuple(line.split("\t")) for line in cols.strip().splitlines()] == [
        ("jobid", "bigint(20) unsigned"), ("funcid", "int(10) unsigned"), ("arg", "mediumblob"),
        ("uniqkey", "varchar(255)"), ("insert_time", "int(10) unsigned"),
        ("run_after", "int(10) unsigned"), ("grabbed_until", "int(10) unsigned"),
        ("priority", "smallint(5) unsigned"), ("coalesce", "varchar(255)")]
    idx = mariadb(lab, f"SELECT index_name, GROUP_CONCAT(column_name ORDER BY seq_in_index) "
                       f"FROM information_schema.statistics WHERE table_schema='{db}' "
                       f"AND table_name='job' GROUP BY index_name")
    assert dict(line.split("\t") for line in idx.strip().splitlines()) == {
        "PRIMARY": "jobid", "funcid": "funcid,run_after", "funcid_2": "funcid,uniqkey",
        "funcid_3": "funcid,coalesce"}


def test_dwops_database_user_can_only_read_theschwartz(lab: LabConfig, lab_inventory):
    from dwops.secrets import read_secret

    pw = read_secret(lab_inventory.database.password)
    out = subprocess.run(
        ["mariadb", "--no-defaults", "-h", lab.db.address, "-P", str(lab.ports.mysql),
         "-u", lab_inventory.database.user, f"--password={pw}", "--batch", "-N", "-e",
         f"SELECT COUNT(*) FROM {lab.db.schwartz_db}.job; "
         f"DELETE FROM {lab.db.schwartz_db}.job WHERE 1=0"],
        capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "DELETE command denied" in out.stderr
    assert out.stdout.strip().isdigit()


def _listening_sockets() -> dict[str, str]:
    """inode -> 'address:port' of every listening TCP socket (IPv4 and IPv6)."""
    import ipaddress

    found = {}
    for table, size in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] != "0A":  # LISTEN
                continue
            hex_ip, hex_port = f[1].split(":")
            raw_ip = bytes.fromhex(hex_ip)
            # /proc prints each 32-bit word in host (little-endian) order.
            raw_ip = b"".join(raw_ip[i:i + 4][::-1] for i in range(0, size, 4))
            ip = ipaddress.ip_address(raw_ip)
            found[f[9]] = f"{ip}:{int(hex_port, 16)}"
    return found


def test_every_lab_process_listens_on_loopback_only(lab: LabConfig):
    from lab import ctl, procs

    pids = set(procs.processes_under(str(lab.lab_dir)))
    for h in lab.hosts:
        pids |= ctl.host_pids(lab, h.name)
    sockets = _listening_sockets()
    listening: dict[int, list[str]] = {}
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = fd.readlink().name
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in sockets:
                listening.setdefault(pid, []).append(sockets[target[8:-1]])
    from lab import services

    with_ports = [d for d in services.daemons(lab) if d.port]
    assert len(listening) >= len(with_ports) + 1  # and Postfix's master
    outside = {pid: addrs for pid, addrs in listening.items()
               if not all(a.startswith("127.") or a.startswith("::ffff:127.") for a in addrs)}
    assert not outside, outside


def _selects(lab: LabConfig) -> int:
    import pymysql

    conn = pymysql.connect(host=lab.db.address, port=lab.ports.mysql, user=lab.db.user,
                           password=lab.db.password(), connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW GLOBAL STATUS LIKE 'Com_select'")
            return int(cur.fetchone()[1])
    finally:
        conn.close()


def _select_rate(lab: LabConfig, seconds: float = 3.0) -> float:
    import time

    a = _selects(lab)
    time.sleep(seconds)
    return (_selects(lab) - a) / seconds


def test_restart_memcache_puts_a_visible_load_on_the_database(lab: LabConfig, lab_inventory):
    """The notes: "Restarting memcache puts a heavy strain on the databases"."""
    import asyncio

    from tasks.ssh import SshPool
    from test_lab_web import warm_cache

    warm_cache(lab)  # as a long-running site has it (an earlier test may have emptied it)
    before = _select_rate(lab)

    async def restart():
        async with SshPool(lab_inventory) as pool:
            return await pool.run("dfw-admin01", "restart_memcache")

    result = asyncio.run(restart())
    assert result.exit_status == 0, result.stderr
    after = _select_rate(lab)
    assert after > 1.5 * before + 5, (before, after)
    print(f"SELECT/s before {before:.1f}, after restart-memcache {after:.1f}")
    for h in lab.hosts_with("memcache"):
        assert read_memcache_stats(h.address, lab.ports.memcached).uptime < 30
    warm_cache(lab)
