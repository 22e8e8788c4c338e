"""Errors every tasks module shares."""

from __future__ import annotations


class Unavailable(RuntimeError):
    """A host or service did not answer (refused, reset, timed out): transient, safe to retry a
    read. Fleet-wide reads return it as a value for that host instead of raising."""

    def __init__(self, target: str, reason: str):
        self.target = target
        self.reason = reason
        super().__init__(f"{target} unavailable: {reason}")
