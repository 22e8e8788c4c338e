"""The inventory loader's rules, on production's own file with one change each (no lab needed):
command templates, clear errors instead of crashes, the never-block list, the database's TLS CA."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dwops.inventory import Inventory, InventoryError, load_inventory

PROJECT = Path(__file__).resolve().parent.parent
PRODUCTION = PROJECT / "inventory" / "production.toml"
RESTART_WEBS = 'restart_webs = "bin/restart-webs {delay}"'


def production_with(tmp_path: Path, old: str, new: str) -> Path:
    """production.toml with `old` (found exactly once) replaced by `new`."""
    text = PRODUCTION.read_text()
    assert text.count(old) == 1, old
    path = tmp_path / "inventory.toml"
    path.write_text(text.replace(old, new))
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(InventoryError) as e:
        load_inventory(path)
    return [line.strip() for line in str(e.value).splitlines()[1:]]


# -- command templates ----------------------------------------------------------------------------

ENTRY = "hosts.va-admin01.commands.restart_webs"


@pytest.mark.parametrize("template, why", [
    ("bin/restart-webs {delay!r}", "placeholder {delay!r} must be a plain name"),
    ("bin/restart-webs {delay!s}", "placeholder {delay!s} must be a plain name"),
    ("bin/restart-webs {delay:>5}", "placeholder {delay:>5} must be a plain name"),
    ("bin/restart-webs {delay[0]}", "placeholder {delay[0]} must be a plain name"),
    ("bin/restart-webs {delay.real}", "placeholder {delay.real} must be a plain name"),
    ("bin/restart-webs {0}", "placeholder {0} must be a plain name"),
    ("bin/restart-webs {}", "placeholder {} must be a plain name"),
    ('bin/restart-webs \\"{delay}\\"', "placeholder {delay} is inside \" quotes"),
    ("bin/restart-webs '{delay}'", "placeholder {delay} is inside ' quotes"),
    ('echo \\"waiting {delay} s\\"', "placeholder {delay} is inside \" quotes"),
    ("bin/restart-webs --delay={delay}", "placeholder {delay} must stand as its own shell word"),
    ("bin/restart-webs $({delay})", "placeholder {delay} must stand as its own shell word"),
    ("bin/restart-webs \\\\{delay}", "placeholder {delay} must stand as its own shell word"),
    ("bin/restart-webs {delay}{delay}", "placeholder {delay} must stand as its own shell word"),
    ("bin/restart-webs {delay", "unmatched '{'"),
    ("bin/restart-webs delay}", "unmatched '}'"),
    ("bin/restart-webs '{delay} ", "unterminated ' quote"),
    # Quotes elsewhere in a template with placeholders: the hosts' SSH gate could not check
    # such a command exactly (dwops/allowlist.py), so they are refused too.
    ("awk '{{print $1}}' {delay}", "has placeholders and quotes"),
    ('echo \\"it\'s\\" {delay}', "has placeholders and quotes"),
])
def test_a_template_with_anything_but_bare_placeholders_is_refused_at_load(
        tmp_path: Path, template: str, why: str) -> None:
    found = problems(production_with(tmp_path, RESTART_WEBS, f'restart_webs = "{template}"'))
    assert any(line.startswith(f"{tmp_path / 'inventory.toml'}: {ENTRY}: ") and why in line
               for line in found), found


@pytest.mark.parametrize("template, values, command", [
    ("bin/restart-webs {delay}", {"delay": "5; reboot"}, "bin/restart-webs '5; reboot'"),
    ("bin/restart-webs {delay} --then {delay}", {"delay": 0},
     "bin/restart-webs 0 --then 0"),
    ("bin/tool {{literal}} {delay}", {"delay": "$(id)"}, "bin/tool {literal} '$(id)'"),
])
def test_bare_placeholders_and_literal_braces_load_and_fill_quoted(
        tmp_path: Path, template: str, values: dict, command: str) -> None:
    inventory = load_inventory(production_with(tmp_path, RESTART_WEBS,
                                               f'restart_webs = "{template}"'))
    assert inventory.command("va-admin01", "restart_webs", **values) == command


# -- clear errors, never a crash ------------------------------------------------------------------


@pytest.mark.parametrize("nested", [
    "x = " + "[" * 50_000 + "]" * 50_000,  # arrays
    "x = " + "{a = " * 20_000 + "1" + "}" * 20_000,  # inline tables
])
def test_deeply_nested_values_are_a_loader_error_not_a_crash(tmp_path: Path, nested: str) -> None:
    path = tmp_path / "deep.toml"
    path.write_text(nested + "\n" + PRODUCTION.read_text())
    assert path.stat().st_size < 1_000_000  # under the size limit: the nesting is the problem
    assert problems(path) == [f"{path}: (top level): arrays or tables nested too deeply to read "
                              f"(an inventory needs a few levels)"]


# -- the never_block list -------------------------------------------------------------------------


def test_never_block_entries_must_be_networks(tmp_path: Path) -> None:
    path = production_with(tmp_path, 'office = ["198.51.100.0/24", "2001:db8:b::/48"]',
                           'office = ["198.51.100.7/24", "office.example", "2001:db8:b::/48"]\n'
                           'Lab = ["192.0.2.128/26"]\nempty = []')
    found = problems(path)
    for entry, problem in [
            ("never_block.office.0", "'198.51.100.7/24' is not a network (CIDR): 198.51.100.7/24 "
                                     "has host bits set"),
            ("never_block.office.1", "'office.example' is not a network (CIDR)"),
            ("never_block.Lab.[key]", "String should match pattern"),
            ("never_block.empty", "List should have at least 1 item")]:
        assert any(line.startswith(f"{path}: {entry}: ") and problem in line
                   for line in found), (entry, problem, found)
