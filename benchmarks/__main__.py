"""`python -m benchmarks [--only fanout,roll,cost,trigger] [--repeat N] [--hosts N] [--json FILE]`

Runs every benchmark section on the running lab (one at a time, in that order), prints each
section's figures, ratios and targets, then a summary of every target. The sections that need a
Prefect platform share one private `dwops up` (its own folder and port), started on first use
and stopped with `dwops down --keep-lab` at the end, whatever happens. `trigger` runs last: it
replaces that platform's deployments with served ones to compare.

Run it alone on the lab (nothing else changing the lab meanwhile): `scripts/bench`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from contextlib import ExitStack

from benchmarks.common import Section

SECTIONS = ["fanout", "roll", "cost", "trigger"]


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help=f"comma-separated sections (default: all of {','.join(SECTIONS)})")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement (at least 3)")
    ap.add_argument("--hosts", type=int, default=200, help="hosts of the scaled lab (fanout)")
    ap.add_argument("--triggers", type=int, default=20,
                    help="triggers per set-up (trigger; at least 20)")
    ap.add_argument("--json", metavar="FILE", help="also write every section as JSON here")
    args = ap.parse_args(argv)
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    args.sections = [s for s in SECTIONS if s in wanted]
    return args


def run_section(name: str, args: argparse.Namespace) -> Section:
    try:
        module = importlib.import_module(f"benchmarks.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"benchmarks.{name}":
            raise
        return Section(name, notes=[f"benchmarks/{name}.py is not there yet: not measured"])
    started = time.monotonic()
    try:
        section = module.run(args)
    except Exception as e:  # noqa: BLE001 - one section failing does not hide the others
        section = Section(name, notes=[f"FAILED: {type(e).__name__}: {e}",
                                       traceback.format_exc(limit=6).strip()])
    section.notes.append(f"section took {time.monotonic() - started:.0f} s")
    return section


def summary(sections: list[Section]) -> str:
    lines = ["== summary of targets"]
    for s in sections:
        for target, met, measured in s.targets:
            lines.append(f"  {'MET   ' if met else 'MISSED'} {s.title.split(':')[0]}: {target} "
                         f"({measured})")
        if not s.targets:
            lines.append(f"  -      {s.title.split(':')[0]}: no target measured"
                         + (f" ({s.notes[0]})" if s.notes else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    sections: list[Section] = []
    with ExitStack() as stack:
        args.platform_stack, args.platform = stack, None
        for name in args.sections:
            print(f"-- {name} ...", file=sys.stderr, flush=True)
            section = run_section(name, args)
            sections.append(section)
            print(section.render(), flush=True)
            print(flush=True)
    print(summary(sections))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": {k: v for k, v in vars(args).items()
                                if k not in ("platform_stack", "platform")},
                       "sections": [s.as_dict() for s in sections]}, f, indent=2)
    return 0 if all(met for s in sections for _, met, _ in s.targets) else 1


if __name__ == "__main__":
    sys.exit(main())
