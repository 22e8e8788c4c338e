"""Invalid parameter sets for every runbook flow, generated from the flows' parameter models,
and a counter of the connections the lab's sshd daemons log.

`invalid_sets()` walks every field of every flow's model (flows.FLOWS) and makes sets that are
each one mutation away from a valid set: numbers out of range or of the wrong type, shell
metacharacters, unicode tricks, oversized strings, unknown fields, and the cross-field rules the
models enforce. Each set says which field the refusal must name. A field kind the generator does
not know fails loudly, so a new parameter is never silently left out.
"""

from __future__ import annotations

import json
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from flows import FLOWS, load_flow

# One valid set per flow: every mutation below starts from it (dry runs, so that even a set that
# wrongly passed would change nothing; the tests still check each is refused before running it).
VALID: dict[str, dict[str, Any]] = {
    "fleet-status": {},
    "restart-workers": {"dry_run": True},
    "restart-webs": {"dry_run": True},
    "restart-memcache": {"dry_run": True},
    "ensure-gearman": {"dry_run": True},
    "ensure-ddlockd": {"dry_run": True},
    "block-address": {"action": "block", "addresses": ["203.0.113.7"], "dry_run": True},
    "purge-cdn": {"paths": ["/stats/site"], "dry_run": True},
}

# Shell metacharacters and unicode tricks, as (label, how to apply it to a good value).
PWNED = "/tmp/dwops-guarantee-pwned"  # what every payload would create if a shell ever ran it
SHELL = [
    ("semicolon", lambda v: f"{v};touch {PWNED}"),
    ("command substitution", lambda v: f"{v}$(touch {PWNED})"),
    ("backticks", lambda v: f"{v}`touch {PWNED}`"),
    ("pipe", lambda v: f"{v}|touch {PWNED}"),
    ("newline", lambda v: f"{v}\ntouch {PWNED}"),
    ("trailing newline", lambda v: f"{v}\n"),
    ("and", lambda v: f"{v}&&touch {PWNED}"),
    ("redirect", lambda v: f"{v}>{PWNED}"),
    ("dollar variable", lambda v: f"{v}$HOME"),
    ("quote", lambda v: f"{v}'\"x"),
]
UNICODE = [
    ("cyrillic homoglyph", lambda v: v.replace("a", "\u0430", 1) if "a" in v else "\u0430" + v),
    ("zero-width space", lambda v: f"{v}\u200b"),
    ("right-to-left override", lambda v: f"\u202e{v}"),
    ("NUL", lambda v: f"{v}\x00"),
    ("fullwidth", lambda v: "".join(chr(ord(c) + 0xFEE0) if c.isascii() and c.isalnum() else c
                                    for c in v)),
    ("no-break space", lambda v: f"{v}\u00a0"),
]
WRONG_TYPES: list[tuple[str, Any]] = [
    ("null", None), ("object", {"a": 1}), ("list", [1]), ("number", 5), ("true", True),
]


@dataclass(frozen=True)
class BadSet:
    flow: str
    values: dict[str, Any]
    field: str  # the refusal names this field (loc prefix), or...
    why: str
    in_message: tuple[str, ...] = ()  # ...for a cross-field rule, the message names these
    value: Any = None  # the refused value the message shows, when it is one scalar

    @property
    def label(self) -> str:
        return f"{self.flow}: {self.why}"


def invalid_sets() -> list[BadSet]:
    out: list[BadSet] = []
    for name in FLOWS:
        _, model = load_flow(name)
        for fname, info in model.model_fields.items():
            out += _field_sets(name, fname, info.annotation, info.metadata)
        out += _unknown_fields(name, model)
        out += _cross_field(name)
    return out


def _with(flow: str, **changes: Any) -> dict[str, Any]:
    values = dict(VALID[flow])
    values.update(changes)
    return values


def _bounds(metadata: list[Any]) -> dict[str, Any]:
    """ge/gt/le/lt/min_length/max_length of a field, from its pydantic metadata."""
    b: dict[str, Any] = {}
    for m in metadata:
        for attr in ("ge", "gt", "le", "lt", "min_length", "max_length"):
            v = getattr(m, attr, None)
            if v is not None:
                b[attr] = v
    return b


def _field_sets(flow: str, fname: str, annotation: Any, metadata: list[Any],
                prefix: str = "") -> list[BadSet]:
    """Bad values for one field, from its type and bounds."""
    loc = f"{prefix}{fname}"

    def bad(value: Any, why: str, *, shown: Any = None) -> BadSet:
        if prefix:  # a nested model's field: thresholds.NAME
            outer = prefix.rstrip(".")
            values = _with(flow, **{outer: {fname: value}})
        else:
            values = _with(flow, **{fname: value})
        return BadSet(flow, values, loc, f"{loc} {why}", value=shown)

    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    out: list[BadSet] = []

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):  # nested model
        for sub, info in annotation.model_fields.items():
            out += _field_sets(flow, sub, info.annotation, info.metadata, prefix=f"{loc}.")
        out.append(BadSet(flow, _with(flow, **{loc: {"bogus_threshold": 1}}),
                          f"{loc}.bogus_threshold", f"{loc} unknown nested field", value=1))
        for label, value in WRONG_TYPES:
            if label != "object":
                out.append(bad(value, f"is a {label}", shown=value))
        return out

    if origin in (types.UnionType, typing.Union) and type(None) in args:  # optional number
        inner = next(a for a in args if a is not type(None))
        for s in _field_sets(flow, fname, inner, metadata, prefix):
            if s.value is not None or "null" not in s.why:
                out.append(s)
        return out

    if origin is Literal:
        for value in ("drop", args[0].upper(), f"{args[0]};touch {PWNED}", args[0].replace("o", "\u043e"),
                      f"{args[0]}\x00", "", 1, None, [args[0]]):
            out.append(bad(value, f"= {value!r}", shown=value))
        return out

    if annotation is bool:
        for value in ("maybe", 2, -1, 0.5, [], {}, None, f"true;touch {PWNED}", "tru\u0435",
                      "yes", "no", "true", "false", "on", 1, 0):  # strict: JSON true/false only
            out.append(bad(value, f"= {value!r} (not a boolean)", shown=value))
        return out

    if annotation in (int, float):
        b = _bounds(metadata)
        values: list[tuple[Any, str]] = []
        if "ge" in b:
            values.append((b["ge"] - 1, "below its minimum"))
        if "gt" in b:
            values += [(b["gt"], "at its exclusive minimum"), (b["gt"] - 1, "below its minimum")]
        if "le" in b:
            values += [(b["le"] + 1, "above its maximum"), (10 ** 30, "far above its maximum")]
        values += [(math.nan, "NaN"), (math.inf, "infinity"), (-math.inf, "minus infinity"),
                   ("abc", "a word"), (f"5; touch {PWNED}", "a number and a command"),
                   ([1], "a list"), ({"n": 1}, "an object"), (None, "null")]
        if annotation is int:
            values.append((1.5, "a fraction for an integer"))
        for value, why in values:
            out.append(bad(value, f"= {value!r}: {why}", shown=value))
        return out

    if origin is list:
        (item,) = args
        item_kind = _item_kind(item)
        good = {"host": "va-web01", "address": "198.51.100.7", "path": "/stats/site"}[item_kind]
        for label, make in SHELL + UNICODE:
            value = make(good)
            out.append(bad([value], f"element with {label}", shown=value))
        item_bad = {
            "host": ["VA-WEB01", "va_web01", "-va-web01", "1va", "a" * 64, "", "va-web01 ",
                     "va-web01.dreamwidth.org", "../va-web01"],
            "address": ["1" * 65, "", "127.0.0.1", "10.0.0.0/8", "0.0.0.0/0", "8.0.0.0/8",
                        "203.0.113.7/24", "::1", "fe80::1", "example.com", "999.1.1.1",
                        "1.2.3.4/33", "169.254.169.254", "fc00::1"],
            "path": ["a", "/a*b", "/a?x=1", "/%zz", "/" + "a" * 500, "", "/a b", "/a\tb",
                     "/a#frag"],
        }[item_kind]
        for value in item_bad:
            out.append(bad([value], f"element {value[:40]!r}", shown=value))
        for label, value in (("a bare string", good), ("a list of numbers", [1]),
                             ("a list with null", [None]), ("a list of lists", [[good]]),
                             ("an object", {good: 1}), ("a number", 5)):
            out.append(bad(value, f"is {label}", shown=value if isinstance(value, (str, int)) else None))
        b = _bounds(metadata)
        if "max_length" in b:
            many = {"host": [f"va-web{i:02d}" for i in range(int(b["max_length"]) + 1)],
                    "address": [f"198.51.100.{i}" for i in range(1, int(b["max_length"]) + 2)],
                    "path": [f"/p{i}" for i in range(int(b["max_length"]) + 1)]}[item_kind]
            out.append(bad(many, f"has {len(many)} elements, over its maximum"))
        if b.get("min_length"):
            out.append(bad([], "is empty"))
        return out

    if annotation is str:
        b = _bounds(metadata)
        good = "lab" if fname == "inventory" else "weekly restart"
        # `reason` is free text shown in the report and never reaches a shell: `;` and `()` are
        # allowed there (SAFE_TEXT); every other metacharacter is refused in every string field.
        for label, make in SHELL + UNICODE:
            if fname == "reason" and label in ("semicolon",):
                continue
            value = make(good)
            out.append(bad(value, f"with {label}", shown=value))
        if "max_length" in b:
            out.append(bad("a" * (int(b["max_length"]) + 1), "oversized"))
            out.append(bad("x" * 100_000, "100 000 characters"))
        if b.get("min_length"):
            out.append(bad("", "empty", shown=""))
        for label, value in WRONG_TYPES:
            out.append(bad(value, f"is a {label}", shown=value))
        return out

    raise AssertionError(f"{flow}.{loc}: no bad values known for {annotation!r}: teach "
                         f"tests/_guarantees_bad_input.py this kind of parameter")


def _item_kind(item: Any) -> str:
    """host, address or path: the list element kinds the flows take."""
    meta = typing.get_args(item)[1:] if typing.get_origin(item) is typing.Annotated else ()
    described = " ".join(str(getattr(m, "description", "") or "") for m in meta)
    text = repr(meta) + described
    if "inventory host" in described:
        return "host"
    if "address" in described:
        return "address"
    if "path" in described or "check_path" in text:
        return "path"
    raise AssertionError(f"unknown list element kind {item!r}")


def _unknown_fields(flow: str, model: type[BaseModel]) -> list[BadSet]:
    known = set(model.model_fields)
    keys = ["bogus", "host", "dry-run", "DryRun", "dry_run ", "__class__", "inventory\u200b",
            "params", "a" * 1000, "hosts;touch"]
    keys += [k for k in ("hosts", "emergency_approved", "delay", "max_wait", "paths")
             if k not in known]
    out = []
    for k in keys:
        assert k not in known, (flow, k)
        out.append(BadSet(flow, _with(flow, **{k: 1}), k, f"unknown field {k[:30]!r}", value=1))
    return out


def _cross_field(flow: str) -> list[BadSet]:
    """The rules across fields each model enforces (its model validators)."""
    rules: dict[str, list[tuple[dict[str, Any], str, tuple[str, ...]]]] = {
        "fleet-status": [
            ({"thresholds": {"schwartz_ready_warn": 400}}, "ready jobs warn above crit",
             ("schwartz_ready_warn", "schwartz_ready_crit")),
            ({"thresholds": {"ses_bounce_warn": 0.5, "ses_bounce_crit": 0.2}},
             "bounce rate warn above crit", ("ses_bounce_warn", "ses_bounce_crit")),
        ],
        "restart-webs": [
            ({"emergency": True, "delay": 5}, "emergency with a delay", ("emergency", "delay")),
            ({"min_drain_seconds": 40, "drain_seconds": 30}, "min drain over drain",
             ("min_drain_seconds", "drain_seconds")),
            ({"hosts": ["va-web01", "va-web02", "va-web01"]}, "a web named twice",
             ("hosts", "va-web01 named more than once")),
            ({"put_back": ["va-web03", "va-web03"]}, "a web put back twice",
             ("put_back", "va-web03 named more than once")),
        ],
        "ensure-ddlockd": [
            ({"hosts": ["dfw-jobs02", "dfw-jobs02"]}, "a host named twice",
             ("hosts", "dfw-jobs02 named more than once")),
        ],
        "ensure-gearman": [
            ({"accept_lost_jobs": True}, "accept_lost_jobs without restart",
             ("accept_lost_jobs", "restart")),
        ],
        "restart-memcache": [
            ({"ceiling_cpu": 50}, "CPU ceiling under its threshold", ("ceiling_cpu", "max_cpu")),
            ({"ceiling_qps": 100}, "qps ceiling under its threshold", ("ceiling_qps", "max_qps")),
            ({"ceiling_threads_running": 5}, "threads ceiling under its threshold",
             ("ceiling_threads_running", "max_threads_running")),
        ],
        "block-address": [
            ({"action": "expire"}, "expire with addresses", ("addresses",)),
            ({"action": "unblock", "expires_in_hours": 5}, "expiry on unblock",
             ("expires_in_hours",)),
            ({"addresses": []}, "block with no address", ("addresses",)),
        ],
        "purge-cdn": [
            ({"paths": [f"/w{i}/*" for i in range(16)]}, "16 wildcard paths", ("paths",)),
        ],
    }
    out = []
    for changes, why, names in rules.get(flow, []):
        out.append(BadSet(flow, _with(flow, **changes), "", why, in_message=names))
    missing = {"block-address": "action", "purge-cdn": "paths"}.get(flow)
    if missing:
        values = dict(VALID[flow])
        del values[missing]
        out.append(BadSet(flow, values, missing, f"without {missing}"))
    return out


# -- the CLI's form of a parameter set ------------------------------------------------------------


def cli_params(values: dict[str, Any]) -> list[str]:
    """`key=value` arguments for `dwops run -p`, in the form an operator would type: a string
    as it is when the CLI keeps it a string, else JSON (which the CLI decodes)."""
    out = []
    for k, v in values.items():
        if isinstance(v, str) and not _parses_as_json(v) and not re.search(r"[\x00-\x1f]", v):
            out.append(f"{k}={v}")
        else:
            out.append(f"{k}={json.dumps(v, ensure_ascii=False)}")
    return out


def _parses_as_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def same(a: Any, b: Any) -> bool:
    """Equal, NaN included."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


# -- the lab's sshd logs --------------------------------------------------------------------------

CONNECTION = re.compile(r"^Connection from (\S+) port (\d+) on (\S+) port (\d+)", re.M)


class SshdLogs:
    """The lab's sshd logs (sshd -e, LogLevel VERBOSE: one `Connection from` line per TCP
    connection, `Accepted publickey` per login), read from a mark onwards."""

    def __init__(self, files: dict[str, Path]):
        self.files = files
        self.mark = {h: f.stat().st_size for h, f in files.items()}
        self.lines_at_mark = {h: _count_lines(f) for h, f in files.items()}

    def new_text(self) -> dict[str, str]:
        out = {}
        for h, f in self.files.items():
            size = f.stat().st_size
            assert size >= self.mark[h], f"{f} shrank: sshd's log was replaced"
            with f.open("rb") as fh:
                fh.seek(self.mark[h])
                out[h] = fh.read().decode(errors="replace")
        return out

    def new_connections(self) -> dict[str, list[tuple[str, int]]]:
        """host -> [(client address, client port)] of every connection logged since the mark."""
        return {h: [(m[0], int(m[1])) for m in CONNECTION.findall(text)]
                for h, text in self.new_text().items()}


def _count_lines(f: Path) -> int:
    with f.open("rb") as fh:
        return sum(1 for _ in fh)


def count(text: str, what: str) -> int:
    return sum(1 for line in text.splitlines() if what in line)
