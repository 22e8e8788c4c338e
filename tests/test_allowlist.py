"""dwops's SSH gate (dwops/allowlist.py) and the allowlists the inventory gives each host: pure
tests, no lab. What the lab's hosts do with them is tests/test_lab_ssh_gate.py.

A template becomes a pattern in which each `{name}` matches exactly one word as `shlex.quote`
writes it; everything else must be there as it is. So every command dwops can build from the
inventory matches, each value is one shell word however it is spelled, and nothing appended,
substituted or quoted differently does.
"""

from __future__ import annotations

import os
import random
import shlex
import shutil
import string
import subprocess
from pathlib import Path

import pytest

from dwops import allowlist
from dwops.allowlist import BadAllowlist, pattern
from dwops.inventory import Inventory, load_inventory

PROJECT = Path(__file__).resolve().parent.parent
HOST_PYTHON = "/usr/bin/python3"  # the hosts' own python3 (lab.hostfiles.HOST_PYTHON)

# Values a caller might pass, the hostile ones first.
NASTY = ["5; id", "5 && id", "$(id)", "`id`", "5 | id", "5\nid", "it's", "'", "''", '"', "\\",
         "a b", "", " ", "*", "~", "-rf /", "${IFS}id", "$'\\x27'", "5#", "5 #", "é", "\t",
         "'; id; '", "'\"'\"'; id #", "a\r", "{delay}", "%s", "\u2028"]
# Appended to or around an allowed command: each must make it refused.
INJECTIONS = ["; id", " ; id", "&& id", " && id", "|id", " | id", " $(id)", " `id`", "\nid",
              "\n", " #", "'", " '", '"', " &", "&", ";", " >/tmp/x", " </etc/passwd", "\\",
              " 2>&1", " x"]


def matches(template: str, command: str) -> bool:
    return pattern(template).fullmatch(command) is not None


def random_value(rng: random.Random) -> str:
    alphabet = "ab5 '\"\\$`;&|()<>#*?~{}\n\t=-./,:%@+_é"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))


# -- templates -> patterns --------------------------------------------------------------------------

def test_a_template_without_placeholders_matches_only_itself():
    t = "ps -ww -eo pid,tty,stat,bsdtime,args"
    assert matches(t, t)
    for other in [t + " ", " " + t, t.replace(" ", "  "), t.upper(), t[:-1], "ps"]:
        assert not matches(t, other), other
    for tail in INJECTIONS:
        assert not matches(t, t + tail), tail
    # Regular-expression characters in a template are literal.
    assert matches("a.b* [x]", "a.b* [x]") and not matches("a.b* [x]", "axbbb x")
    assert matches("echo {{x}}", "echo {x}")  # a doubled brace is a brace, as in str.format


def test_each_value_dwops_quotes_matches_as_exactly_one_word():
    t = "bin/restart-webs {delay}"
    rng = random.Random(12)
    values = NASTY + [random_value(rng) for _ in range(3000)]
    for v in values:
        command = t.format(delay=shlex.quote(v))
        assert matches(t, command), (v, command)
        assert shlex.split(command) == ["bin/restart-webs", v], v  # one word, the value itself
        for tail in INJECTIONS:
            assert not matches(t, command + tail), (v, tail)


def test_words_that_are_not_one_quoted_value_do_not_match():
    t = "bin/restart-webs {delay}"
    for word in ["5 6", "'5' '6'", "'5'6'", "'5", "5'", '"5"', "$(id)", "`id`", "5;id", "${x}",
                 "$'x'", "'5'\"'\"", "\\5", "5\\", "a\nb", "", " 5", "5 ", "~root", "*", "5#",
                 "'a'\"'\"'b", "'$(id)'x", "x'$(id)'"]:
        assert not matches(t, f"bin/restart-webs {word}"), word
    assert not matches(t, "bin/restart-webs"), "a placeholder is a word, not nothing"
    assert matches(t, "bin/restart-webs ''")  # shlex.quote('')


def test_two_placeholders_each_take_one_word():
    t = "tool --from {a} --to {b} now"
    for a, b in [("x", "y"), ("a b", "c"), ("it's", "--to z"), ("", "")]:
        assert matches(t, t.format(a=shlex.quote(a), b=shlex.quote(b))), (a, b)
    assert not matches(t, "tool --from x y --to z now")
    assert not matches(t, "tool --from x --to y; id now")


@pytest.mark.parametrize("template", [
    'echo "{x}"', "echo '{x}'", "echo a{x}", "echo {x}b", "echo ${x}", "echo \\{x}",
    'echo "a {x} b"', "echo `a {x} b`", "cat <<EOF\n{x}\nEOF", "echo {x!r}", "echo {x:>5}",
    "echo {0}", "echo {}", "echo {X}", "echo {x.y}", "echo {x[0]}", "echo {x}{y}", "echo {",
    "echo }", "echo {x}\techo",
])
def test_templates_whose_values_could_escape_their_word_are_refused(template: str):
    with pytest.raises(BadAllowlist):
        pattern(template)


# -- the allowlist file -----------------------------------------------------------------------------

def test_an_allowlist_reads_back_as_it_was_written():
    commands = {"hostname": "hostname", "web.restart": "bin/bounce-apache",
                "restart_webs": "bin/restart-webs {delay}", "odd": " two  spaces "}
    text = allowlist.render(commands, header="a header\nof two lines")
    assert text.startswith("# a header\n# of two lines\n")
    entries = allowlist.parse(text)
    assert [n for n, _ in entries] == list(commands)
    assert allowlist.allowed(entries, "bin/restart-webs '1 2'") == "restart_webs"
    assert allowlist.allowed(entries, " two  spaces ") == "odd"
    assert allowlist.allowed(entries, "two spaces") is None
    assert allowlist.allowed(entries, "hostname; id") is None


@pytest.mark.parametrize("text, problem", [
    ("hostname", "not NAME TEMPLATE"),
    ("a;b hostname", "not NAME TEMPLATE"),
    ("web.restart ", "not NAME TEMPLATE"),
    ("x echo \"{v}\"", "line 1"),
    ("# fine\nx echo {v!r}", "line 2"),
])
def test_a_bad_allowlist_line_is_named(text: str, problem: str):
    with pytest.raises(BadAllowlist, match=problem):
        allowlist.parse(text)


def test_render_refuses_what_it_could_not_write_as_one_line():
    for commands in [{"x": "echo a\necho b"}, {"b a": "echo"}, {"x": 'echo "{v}"'}]:
        with pytest.raises(BadAllowlist):
            allowlist.render(commands, header="")


# -- allowlists from the inventory -----------------------------------------------------------------

@pytest.fixture(scope="module")
def production() -> Inventory:
    return load_inventory(PROJECT / "inventory" / "production.toml")


def test_each_host_gets_exactly_the_commands_it_allows(production: Inventory):
    for host in production.hosts:
        entries = allowlist.parse(production.allowlist(host))
        assert [n for n, _ in entries] == list(production.allowed_commands(host)), host
    names = lambda h: {n for n, _ in allowlist.parse(production.allowlist(h))}  # noqa: E731
    assert names("va-web01") == {"hostname", "uptime", "web.restart", "web.status"}
    assert names("va-admin01") == {"hostname", "uptime", "restart_webs"}
    assert {"restart_jobs", "importer_status"} <= names("dfw-admin01")
    assert not names("dfw-memc01") & {"gearman.restart", "workers.ps", "restart_jobs"}
    assert "workers.freeze_importers" in names("dfw-jobs02")


def test_every_command_dwops_builds_is_allowed_on_its_host_and_only_where_named(
        production: Inventory):
    entries = {h: allowlist.parse(production.allowlist(h)) for h in production.hosts}
    rng = random.Random(7)
    for host in production.hosts:
        for name, template in production.allowed_commands(host).items():
            fields = {f for _, f, _, _ in string.Formatter().parse(template) if f}
            for _ in range(20 if fields else 1):
                values = {f: random_value(rng) for f in fields}
                command = production.command(host, name, **values)
                assert allowlist.allowed(entries[host], command) == name, (host, command)
                for tail in INJECTIONS:
                    assert allowlist.allowed(entries[host], command + tail) is None, (host, tail)
    restart = production.command("va-admin01", "restart_webs", delay=5)
    assert allowlist.allowed(entries["va-web01"], restart) is None
    assert allowlist.allowed(entries["dfw-memc01"], "/etc/init.d/gearman-server restart") is None
    for host in production.hosts:
        for probe in ["id", "cat /etc/passwd", "sh", "bash -i", ""]:
            assert allowlist.allowed(entries[host], probe) is None, (host, probe)


def test_dwops_inventory_allowlist_prints_it(production: Inventory):
    dwops = str(PROJECT / ".venv" / "bin" / "dwops")
    out = subprocess.run([dwops, "inventory", "allowlist", "dfw-jobs01", "-i", "production"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == production.allowlist("dfw-jobs01")
    bad = subprocess.run([dwops, "inventory", "allowlist", "dfw-jobs09", "-i", "production"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no host 'dfw-jobs09'" in bad.stderr and not bad.stdout


# -- the gate as a host runs it: the host's python3, this one file, nothing else --------------------

@pytest.fixture()
def gate(tmp_path: Path):
    """Run a copy of the gate outside the project (no dwops to import), as sshd would: the
    request in SSH_ORIGINAL_COMMAND, a working folder, an allowlist file."""
    copy = tmp_path / "gate" / "allowlist.py"
    copy.parent.mkdir()
    shutil.copy(PROJECT / "dwops" / "allowlist.py", copy)
    home = tmp_path / "home"
    home.mkdir()
    lists = tmp_path / "allowlist"
    lists.write_text(allowlist.render({"hostname": "hostname", "say": "echo said {words}",
                                       "where": "pwd"}, header="test"))
    log = tmp_path / "gate.log"

    def run(command: str | None, *, allowlist_file: Path = lists) -> subprocess.CompletedProcess:
        env = {"PATH": "/usr/bin:/bin", "SSH_CONNECTION": "127.0.0.1 40000 127.10.0.11 22"}
        if command is not None:
            env["SSH_ORIGINAL_COMMAND"] = command
        return subprocess.run([HOST_PYTHON, "-IS", str(copy), "--log", str(log),
                               str(allowlist_file)], env=env, cwd=home, capture_output=True,
                              text=True, timeout=30)

    run.log, run.home, run.tmp = log, home, tmp_path
    return run


def test_the_gate_runs_an_allowed_command_in_the_shell_from_its_folder(gate):
    said = gate("echo said " + shlex.quote("it's $(id) ; fine"))
    assert said.returncode == 0, said.stderr
    assert said.stdout == "said it's $(id) ; fine\n" and said.stderr == ""
    where = gate("pwd")
    assert where.stdout.strip() == str(gate.home)
    assert gate.log.read_text().count(" allowed 127.0.0.1 40000: ") == 2


@pytest.mark.parametrize("command", [
    None, "", "id", "cat /etc/passwd", "hostname; id", "hostname && id", "hostname\nid",
    "hostname $(id)", "echo said $(id)", "echo said `id`", "echo said a b", "echo said 'a'; id",
    "sh", "/bin/bash -i", "exec id",
])
def test_the_gate_refuses_anything_else_and_logs_it(gate, command: str | None):
    out = gate(command)
    assert out.returncode == allowlist.REFUSED
    assert out.stdout == "" and "uid=" not in out.stderr
    assert out.stderr.startswith("dwops allowlist: refused: ")
    assert ("no interactive logins" in out.stderr) == (not command)
    line = gate.log.read_text().splitlines()[-1]
    assert " refused 127.0.0.1 40000: " in line and line.endswith(repr(command or ""))


def test_an_unusable_allowlist_refuses_everything(gate):
    bad = gate.tmp / "bad"
    bad.write_text('say echo "{words}"\n')
    for allowlist_file in (bad, gate.tmp / "missing"):
        out = gate("hostname", allowlist_file=allowlist_file)
        assert out.returncode == allowlist.REFUSED and out.stdout == ""
        assert "cannot be used" in out.stderr


def test_the_gate_logs_to_syslog_without_a_log_file(tmp_path: Path):
    """Production's hosts log to syslog (auth): with no --log the gate still decides and exits."""
    lists = tmp_path / "allowlist"
    lists.write_text("hostname hostname\n")
    env = {"PATH": "/usr/bin:/bin", "SSH_ORIGINAL_COMMAND": "id"}
    out = subprocess.run([HOST_PYTHON, "-IS", str(PROJECT / "dwops" / "allowlist.py"), str(lists)],
                         env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == allowlist.REFUSED and out.stdout == ""
    ok = subprocess.run([HOST_PYTHON, "-IS", str(PROJECT / "dwops" / "allowlist.py"), str(lists)],
                        env=dict(env, SSH_ORIGINAL_COMMAND="hostname"), capture_output=True,
                        text=True, timeout=30)
    assert ok.returncode == 0 and ok.stdout.strip() == os.uname().nodename


def test_an_inventory_whose_template_the_gate_could_not_check_is_refused_at_load(tmp_path: Path):
    from dwops.inventory import InventoryError

    text = (PROJECT / "inventory" / "production.toml").read_text()
    # A placeholder in quotes or glued to text is refused by the template rule
    # (dwops.inventory.template_problems); quotes elsewhere in a template with placeholders, by
    # the gate's own rule.
    for bad, why in [('bin/restart-webs \\"{delay}\\"', "inside \" quotes"),
                     ("bin/restart-webs x{delay}", "must stand as its own shell word"),
                     ("bin/restart-webs '{delay}'", "inside ' quotes"),
                     ("awk '{{print $1}}' {delay}", "template .* has placeholders and quotes")]:
        path = tmp_path / "inventory.toml"
        path.write_text(text.replace('"bin/restart-webs {delay}"', f'"{bad}"'))
        with pytest.raises(InventoryError,
                           match=f"hosts.va-admin01.commands.restart_webs: .*{why}"):
            load_inventory(path)
