#!/usr/bin/env python3
"""A host's gate for dwops's SSH key: run the requested command only if the host's allowlist has it.

Installed on a host as the forced command of dwops's key, in root's authorized_keys:

    restrict,command="/usr/bin/python3 -IS /usr/local/lib/dwops/allowlist.py /etc/dwops/allowlist" ssh-ed25519 AAAA... dwops

sshd then runs this instead of whatever the client asked for, with the request in
SSH_ORIGINAL_COMMAND. A request that matches one of the allowlist's entries whole is run the way
sshd would have run it: the user's login shell with `-c`, in the folder sshd started us in (the
user's home). Anything else (no command, an interactive shell, a command with more appended) is
refused: a line on stderr, exit status 126, nothing run. Every decision is logged: to syslog's
auth facility, or with `--log FILE` to that file.

The allowlist (`dwops inventory allowlist HOST` prints it from the inventory): one entry a line,
`NAME TEMPLATE`, separated by one space; blank lines and lines starting with `#` are skipped.
TEMPLATE is the inventory's command template. In it `{name}` stands for exactly one word as dwops
writes a value (Python's `shlex.quote`): a bare word of `A-Z a-z 0-9 _ @ % + = : , . / -`, or a
single-quoted one, in which a quote is written '"'"'. Every other character must be there as it
is (`{{` and `}}` are a literal brace, as in Python's str.format). So that no value can land inside
quotes, an escape or a here-document, a template with placeholders has no quotes, backslashes,
backquotes or line breaks, and each placeholder is a word of its own (a space, or the template's
end, on either side). An allowlist that breaks these rules refuses every command.

Standalone on purpose: Python's standard library only, no dwops import, so a host needs only
python3 and this one file.
"""

from __future__ import annotations

import os
import pwd
import sys
import syslog
import time
from collections.abc import Callable

REFUSED = 126
# One word exactly as shlex.quote writes it: bare when every character is safe, else quoted.
WORD = r"""(?:[A-Za-z0-9_@%+=:,./-]+|'[^']*'(?:"'"'[^']*')*)"""
PLACEHOLDER_NAME = r"[a-z_][a-z0-9_]*"
NAME_CHARACTERS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
NOT_AROUND_VALUES = set("'\"\\`\n\r")  # no quoting, escape or here-document can hold a value


class BadAllowlist(ValueError):
    """An allowlist entry this gate cannot check exactly."""


def matcher(template: str) -> Callable[[str], object]:
    """What tells whether a command is one of `template`'s: equality for a template without
    braces, else its pattern, matched whole. (re is imported only for the second: a host starts
    this gate for every command, and most commands are literal; re is a third of its start-up.)"""
    if "{" not in template and "}" not in template:
        return template.__eq__
    return pattern(template).fullmatch


def pattern(template: str):
    """The regular expression (re.Pattern) a template's commands match, whole (raises
    BadAllowlist)."""
    import re
    import string

    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:
        raise BadAllowlist(f"bad template {template!r}: {e}") from None
    fields = [f for _, f, _, _ in parts if f is not None]
    if fields and NOT_AROUND_VALUES & set(template):
        raise BadAllowlist(f"template {template!r} has placeholders and quotes, backslashes, "
                           f"backquotes or line breaks")
    regex = []
    for i, (literal, field, spec, conversion) in enumerate(parts):
        regex.append(re.escape(literal))
        if field is None:
            continue
        after = parts[i + 1][0] if i + 1 < len(parts) else ""
        if spec or conversion or not re.fullmatch(PLACEHOLDER_NAME, field):
            raise BadAllowlist(f"template {template!r}: a placeholder is a bare {{name}}")
        if not literal.endswith(" ") or not (after.startswith(" ") or i + 1 == len(parts)):
            raise BadAllowlist(f"template {template!r}: {{{field}}} is not a word of its own")
        regex.append(WORD)
    return re.compile("".join(regex))


def render(commands: dict[str, str], header: str) -> str:
    """An allowlist file: `header` as comment lines, then `NAME TEMPLATE` for each command."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    for name, template in commands.items():
        if not _is_name(name) or "\n" in template or "\r" in template:
            raise BadAllowlist(f"{name}: cannot be an allowlist line")
        matcher(template)
        lines.append(f"{name} {template}")
    return "\n".join(lines) + "\n"


def _is_name(name: str) -> bool:
    """An inventory command's name, e.g. web.restart."""
    return bool(name) and set(name) <= NAME_CHARACTERS


def parse(text: str) -> list[tuple[str, Callable[[str], object]]]:
    """(name, matcher) of each entry of an allowlist file (raises BadAllowlist)."""
    entries = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, template = line.partition(" ")
        if not sep or not _is_name(name) or not template:
            raise BadAllowlist(f"line {number} is not NAME TEMPLATE")
        try:
            entries.append((name, matcher(template)))
        except BadAllowlist as e:
            raise BadAllowlist(f"line {number}: {e}") from None
    return entries


def allowed(entries: list[tuple[str, Callable[[str], object]]], command: str) -> str | None:
    """The name of the entry `command` matches whole, or None."""
    return next((name for name, matches in entries if matches(command)), None)


def main(argv: list[str]) -> int:
    args = argv[1:]
    log_file = None
    if args[:1] == ["--log"] and len(args) >= 2:
        log_file, args = args[1], args[2:]
    if len(args) != 1:
        sys.stderr.write("usage: allowlist.py [--log FILE] ALLOWLIST (the forced command of "
                         "dwops's key in authorized_keys)\n")
        return 2
    path = args[0]
    command = os.environ.get("SSH_ORIGINAL_COMMAND", "")
    client = " ".join(os.environ.get("SSH_CONNECTION", "unknown").split()[:2])

    def refuse(why: str) -> int:
        log(log_file, f"refused {client}: {why}: {command!r}", refused=True)
        sys.stderr.write(f"dwops allowlist: refused: {why}\n")
        return REFUSED

    if not command:
        return refuse(f"no interactive logins with this key; it runs only the commands of {path}")
    try:
        with open(path, encoding="utf-8") as f:
            entries = parse(f.read())
    except (OSError, UnicodeDecodeError, BadAllowlist) as e:
        return refuse(f"the allowlist {path} cannot be used ({e})")
    name = allowed(entries, command)
    if name is None:
        return refuse(f"not a command this host allows (see {path})")
    log(log_file, f"allowed {client}: {name}: {command!r}", refused=False)
    shell = pwd.getpwuid(os.getuid()).pw_shell or "/bin/sh"  # as sshd runs a command
    os.execv(shell, [os.path.basename(shell), "-c", command])
    return REFUSED  # not reached: execv replaces this process or raises


def log(log_file: str | None, message: str, *, refused: bool) -> None:
    """One line for the decision: in `log_file` when given, else to syslog (auth facility)."""
    if log_file:
        try:
            with open(log_file, "a", encoding="utf-8") as f:
                f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} [{os.getpid()}] {message}\n")
        except OSError as e:
            sys.stderr.write(f"dwops allowlist: cannot log to {log_file}: {e}\n")
        return
    syslog.openlog("dwops-allowlist", syslog.LOG_PID, syslog.LOG_AUTH)
    syslog.syslog(syslog.LOG_WARNING if refused else syslog.LOG_INFO, message)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
