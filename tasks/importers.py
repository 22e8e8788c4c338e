"""Content-importer processes as `ps` shows them: the production notes' `bin/importer-status`.

Pure parsing, no I/O and no Prefect: the caller runs
`ps -ww -o pid,tty,stat,bsdtime,args` (or `ps axww`, whose columns are the same) on a jobs host
and passes the output here.

Dreamwidth's importers name their state in their process title (`$0`):

    4084 ?        S      2:11 content-importer [bored]
    7310 ?        S      0:03 content-importer [entries: someone(1234) getevents - 100 to 199]
    7311 ?        S      0:09 content-importer [comments: other(99) posting 24/300 comments [50]]

`[bored]` is idle (safe to restart); anything else is busy with the named kind of import for the
user `USER(ID)`, with the step it is on after that.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

__all__ = ["ImporterProcess", "parse_importer_ps", "parse_importer_title", "BORED"]

BORED = "bored"
TITLE_PREFIX = "content-importer ["

# PID TTY STAT TIME COMMAND; TIME is bsdtime (M:SS, MMM:SS) or cputime ([DD-]HH:MM:SS).
_PS_LINE = re.compile(
    r"^\s*(?P<pid>\d+)\s+(?P<tty>\S+)\s+(?P<stat>\S+)\s+(?P<time>[\d:.-]+)\s+(?P<args>.*?)\s*$"
)
# content-importer [KIND: USER(ID)] or [KIND: USER(ID) STEP...]; STEP may itself end in "[B]".
# The closing bracket is optional: `ps` without `-ww` cuts lines at 80 columns when its output
# is not a terminal, and a cut title still names the kind and user.
_BUSY = re.compile(
    r"^content-importer \[(?P<kind>[a-z_-]+): (?P<user>[^\s()]+)\((?P<userid>\d+)\)"
    r"(?: (?P<progress>.*?))?\]?$"
)


@dataclass(frozen=True)
class ImporterProcess:
    """One content-importer process.

    `state` is `bored` or the busy kind (entries, comments, userpics, friends, friendgroups,
    tags, bio, verify); `user`/`userid` and `progress` (the title's step, e.g.
    `getevents - 0 to 99`, '' when none) are set only while busy. A title that is neither bored
    nor a known busy form gets state `unknown`, which does not count as bored.
    """

    pid: int
    state: str
    user: str | None
    userid: int | None
    progress: str
    title: str
    stat: str = ""  # ps's STAT: `T` while stopped (frozen by restart-workers)

    @property
    def bored(self) -> bool:
        return self.state == BORED

    @property
    def frozen(self) -> bool:
        return "T" in self.stat


def parse_importer_title(pid: int, title: str) -> ImporterProcess:
    """One importer's title (`content-importer [...]`) as an ImporterProcess."""
    title = title.strip()
    if title == "content-importer [bored]":
        return ImporterProcess(pid, BORED, None, None, "", title)
    m = _BUSY.match(title)
    if m:
        return ImporterProcess(
            pid,
            m.group("kind"),
            m.group("user"),
            int(m.group("userid")),
            (m.group("progress") or "").strip(),
            title,
        )
    return ImporterProcess(pid, "unknown", None, None, "", title)


def parse_importer_ps(output: str) -> list[ImporterProcess]:
    """The content-importers in `ps` output (`PID TTY STAT TIME COMMAND` lines), in order.

    Header lines, other processes (the worker-manager, other workers, the `grep` of a pipeline)
    and importers that have not set their title yet are left out. Run `ps -ww`: without a
    terminal ps cuts lines at 80 columns; a cut busy title still parses (its progress cut short),
    a title cut before `USER(ID)` is `unknown`.
    """
    found: list[ImporterProcess] = []
    for line in output.splitlines():
        m = _PS_LINE.match(line)
        if not m:
            continue
        args = m.group("args")
        if not args.startswith(TITLE_PREFIX):
            continue
        found.append(replace(parse_importer_title(int(m.group("pid")), args),
                             stat=m.group("stat")))
    return found
