"""parse_importer_ps on real `ps` output.

The fixtures under tests/fixtures/importers/ were recorded from the lab's worker processes with
`ps -o pid,tty,stat,bsdtime,args -p <manager and worker pids>` (and one
`ps -e -o pid,tty,stat,bsdtime,args | grep content-importer`, grep line included);
notes-importer-status.txt is the production notes' own `bin/importer-status` example, verbatim
(including the non-breaking spaces the wiki put after each pid).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.importers import ImporterProcess, parse_importer_ps, parse_importer_title

FIXTURES = Path(__file__).parent / "fixtures" / "importers"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_production_notes_example_is_all_bored() -> None:
    procs = parse_importer_ps(fixture("notes-importer-status.txt"))
    assert [p.pid for p in procs] == [4084, 5663, 25034, 28323, 28528]
    assert all(p.bored for p in procs)
    assert procs[0] == ImporterProcess(4084, "bored", None, None, "", "content-importer [bored]", "S")


def test_all_bored_lab_hosts_skip_manager_and_other_workers() -> None:
    procs = parse_importer_ps(fixture("ps-all-bored.txt"))
    assert [p.pid for p in procs] == [32092, 32151, 32153, 32274, 32356, 32425]
    assert all(p.bored and p.user is None and p.userid is None for p in procs)


def test_grep_pipeline_output_ignores_the_grep_itself() -> None:
    procs = parse_importer_ps(fixture("ps-grep-content-importer.txt"))
    assert len(procs) == 6
    assert 2489 not in [p.pid for p in procs]
    assert all(p.bored for p in procs)


def test_busy_mixed_kinds() -> None:
    by_pid = {p.pid: p for p in parse_importer_ps(fixture("ps-busy-mixed.txt"))}
    assert set(by_pid) == {32092, 32151, 32153, 32274, 32356, 32425}
    entries = by_pid[32092]
    assert (entries.state, entries.user, entries.userid, entries.progress) == (
        "entries", "user022716", 22716, "getevents - 900 to 999")
    assert not entries.bored
    assert entries.title == "content-importer [entries: user022716(22716) getevents - 900 to 999]"
    comments = by_pid[32153]
    assert (comments.state, comments.userid, comments.progress) == (
        "comments", 24543, "posting 400 comments")
    assert (by_pid[32151].state, by_pid[32151].progress) == ("userpics", "")
    assert (by_pid[32274].state, by_pid[32274].user) == ("bio", "user011121")
    assert by_pid[32356].state == "friends"
    assert by_pid[32425].state == "tags"
    assert not any(p.bored for p in by_pid.values())


def test_meta_fetch_post_prune_and_bored_together() -> None:
    procs = parse_importer_ps(fixture("ps-meta-fetch-post-prune.txt"))
    by_pid = {p.pid: p for p in procs}
    assert by_pid[32092].bored
    assert (by_pid[32151].state, by_pid[32151].user, by_pid[32151].userid,
            by_pid[32151].progress) == ("entries", "journaler", 77, "post-prune")
    assert (by_pid[32153].state, by_pid[32153].user, by_pid[32153].progress) == (
        "comments", "lab_commenter", "meta-fetch from id 1")
    assert [p.pid for p in procs if not p.bored] == [32151, 32153, 32274, 32356, 32425]


def test_posting_n_of_m_keeps_the_inner_brackets() -> None:
    by_pid = {p.pid: p for p in parse_importer_ps(fixture("ps-posting-comments.txt"))}
    comments = by_pid[32153]
    assert comments.state == "comments"
    assert comments.userid == 4242
    assert comments.progress == "posting 500/1800 comments [500]"
    assert by_pid[32151].progress == "getevents - 100 to 199"
    assert sum(p.bored for p in by_pid.values()) == 4


@pytest.mark.parametrize(
    "title, state, user, userid, progress",
    [
        ("content-importer [bored]", "bored", None, None, ""),
        ("content-importer [verify: someone(5)]", "verify", "someone", 5, ""),
        ("content-importer [friendgroups: a_b(12)]", "friendgroups", "a_b", 12, ""),
        ("content-importer [comments: x(1) body-fetch from id 501]", "comments", "x", 1,
         "body-fetch from id 501"),
        ("content-importer [something odd]", "unknown", None, None, ""),
    ],
)
def test_titles(title: str, state: str, user: str | None, userid: int | None,
                progress: str) -> None:
    p = parse_importer_title(1, title)
    assert (p.state, p.user, p.userid, p.progress, p.title) == (state, user, userid, progress,
                                                                title)
    assert p.bored is (state == "bored")


def test_empty_and_header_only() -> None:
    assert parse_importer_ps("") == []
    assert parse_importer_ps("  PID TT       STAT   TIME COMMAND\n") == []


def test_importer_process_is_frozen() -> None:
    p = parse_importer_title(1, "content-importer [bored]")
    with pytest.raises(AttributeError):
        p.pid = 2  # type: ignore[misc]


def test_ps_cut_at_80_columns_still_names_kind_and_user() -> None:
    """Recorded with `ps -o ...` (no -ww) run from pytest: ps cut every line at 80 columns."""
    by_pid = {p.pid: p for p in parse_importer_ps(fixture("ps-80-columns.txt"))}
    assert set(by_pid) == {12046, 12188, 12203}
    comments = by_pid[12046]
    assert (comments.state, comments.user, comments.userid, comments.progress) == (
        "comments", "user0042", 42, "body-fetch f")
    assert (by_pid[12188].state, by_pid[12188].progress) == ("friendgroups", "")
    entries = by_pid[12203]
    assert (entries.state, entries.user, entries.userid, entries.progress) == (
        "entries", "longusername_here", 490286, "")
    assert not any(p.bored for p in by_pid.values())
