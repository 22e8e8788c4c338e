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
