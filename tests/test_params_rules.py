"""Rules of the parameter models (no lab needed): thresholds in order, strict safety flags."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from dwops.cli import app
from dwops.health import Thresholds, threshold_pairs

# -- thresholds: warn before crit -----------------------------------------------------------------


def test_every_warn_and_crit_pair_is_checked() -> None:
    assert {f for f, _, _ in threshold_pairs(Thresholds())} == {
        "schwartz_ready", "aurora_cpu", "aurora_threads_running", "mail_queue", "ses_bounce",
        "ses_complaint"}


@pytest.mark.parametrize("figure, warn, crit", [
    ("schwartz_ready", 301, 300), ("aurora_cpu", 95, 90), ("aurora_threads_running", 51, 50),
    ("mail_queue", 600, 500), ("ses_bounce", 0.2, 0.1), ("ses_complaint", 0.01, 0.005),
])
def test_a_warning_threshold_above_its_critical_one_is_refused(figure: str, warn: float,
                                                               crit: float) -> None:
    with pytest.raises(ValidationError) as e:
        Thresholds(**{f"{figure}_warn": warn, f"{figure}_crit": crit})
    [error] = e.value.errors()
    assert error["msg"] == (f"Value error, a warning threshold must come before its critical "
                            f"one: {figure}_warn ({warn:g}) is above {figure}_crit ({crit:g})")
    Thresholds(**{f"{figure}_warn": crit, f"{figure}_crit": crit})  # equal: CRIT wins, allowed


def test_the_cli_refuses_crossed_thresholds_before_any_run() -> None:
    result = CliRunner().invoke(app, ["run", "fleet-status", "-p", "thresholds.aurora_cpu_warn=95",
                                      "-p", "thresholds.aurora_cpu_crit=90"])
    assert result.exit_code == 2, result.output
    assert "bad parameters for fleet-status:" in result.stderr
    assert "aurora_cpu_warn (95) is above aurora_cpu_crit (90)" in " ".join(result.stderr.split())


# -- safety flags: strict booleans ----------------------------------------------------------------

LOOSE = ["yes", "no", "true", "false", "on", "1", 1, 0, 1.0, "True"]


def _flags() -> list[tuple[str, str]]:
    """(flow, field) of every boolean parameter of every flow."""
    from flows import FLOWS, load_flow

    return [(name, field) for name in FLOWS
            for field, info in load_flow(name)[1].model_fields.items()
            if info.annotation is bool]


def test_the_safety_flags_are_the_ones_expected() -> None:
    flags = _flags()
    assert {f for _, f in flags} == {"dry_run", "emergency", "restart", "accept_lost_jobs",
                                     "allow_broad"}
    assert len(flags) == 12  # dry_run in the seven change flows, emergency in two, three others


@pytest.mark.parametrize("flow, field", _flags())
def test_a_safety_flag_takes_only_true_or_false(flow: str, field: str) -> None:
    from flows import load_flow

    model = load_flow(flow)[1]
    base = {"block-address": {"action": "unblock", "addresses": ["203.0.113.7"]},
            "purge-cdn": {"paths": ["/stats/site"]}}.get(flow, {})
    needs = {"accept_lost_jobs": {"restart": True},  # what the flag needs beside it when true
             "emergency": {"delay": 0} if flow == "restart-webs" else {}}.get(field, {})
    for value in LOOSE:
        with pytest.raises(ValidationError) as e:
            model.model_validate({**base, **needs, field: value})
        assert [(err["loc"], err["type"]) for err in e.value.errors()] == [
            ((field,), "bool_type")], (value, e.value.errors())
    assert getattr(model.model_validate({**base, **needs, field: True}), field) is True
    assert getattr(model.model_validate({**base, field: False}), field) is False


def test_the_cli_turns_true_into_a_json_boolean_and_refuses_yes() -> None:
    from dwops.cli import parse_assignments

    assert parse_assignments(["dry_run=true", "restart=false"]) == {"dry_run": True,
                                                                     "restart": False}
    assert parse_assignments(['dry_run="true"']) == {"dry_run": "true"}
    for loose in ("yes", "1", '"true"'):
        result = CliRunner().invoke(app, ["run", "ensure-gearman", "-p", f"restart={loose}",
                                          "-p", "dry_run=true"])
        assert result.exit_code == 2, result.output
        assert "restart: Input should be a valid boolean" in result.stderr, result.stderr
