"""What every benchmark shares: timing, medians and percentiles, and one table format.

A benchmark module exposes `run(args) -> Section`; the runner (`python -m benchmarks`) prints
every section. The machine is shared and noisy: every comparison is measured in the same run,
several times, and reported as medians with their spread, plus ratios.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator


@dataclass
class Figure:
    """One measured quantity: its samples (seconds, bytes, ...), with a unit."""

    name: str
    samples: list[float]
    unit: str = "s"
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p90(self) -> float:
        return percentile(self.samples, 90)

    def cell(self) -> str:
        if len(self.samples) == 1:
            return f"{fmt(self.samples[0], self.unit)}"
        return (f"{fmt(self.median, self.unit)} (min {fmt(min(self.samples), self.unit)}, "
                f"max {fmt(max(self.samples), self.unit)}, n={len(self.samples)})")


@dataclass
class Section:
    """One benchmark's result: its figures, ratios, whether each target was met, and notes."""

    title: str
    figures: list[Figure] = field(default_factory=list)
    ratios: list[tuple[str, float]] = field(default_factory=list)
    targets: list[tuple[str, bool, str]] = field(default_factory=list)  # (target, met, measured)
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        lines = [f"== {self.title}"]
        width = max((len(f.name) for f in self.figures), default=0)
        lines += [f"  {f.name:<{width}}  {f.cell()}" + (f"   {f.note}" if f.note else "")
                  for f in self.figures]
        lines += [f"  ratio {name}: {value:.2f}x" for name, value in self.ratios]
        lines += [f"  target {'MET' if met else 'MISSED'}: {t} (measured: {got})"
                  for t, met, got in self.targets]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"title": self.title,
                "figures": [{"name": f.name, "unit": f.unit, "samples": f.samples,
                             "median": f.median, "p90": f.p90, "note": f.note}
                            for f in self.figures],
                "ratios": dict(self.ratios),
                "targets": [{"target": t, "met": m, "measured": g} for t, m, g in self.targets],
                "notes": self.notes}


def percentile(samples: list[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: a figure that was really measured)."""
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
    if unit == "B":
        return f"{value / 2**20:.1f} MiB"
    return f"{value:g} {unit}"


@contextmanager
def stopwatch() -> Iterator[list[float]]:
    """`with stopwatch() as t: ...` then `t[0]` is the wall time in seconds."""
    out: list[float] = []
    started = time.perf_counter()
    try:
        yield out
    finally:
        out.append(time.perf_counter() - started)
