"""An operator can drive dwops from the Prefect UI, in a real headless browser.

Debian's chromium, driven by Playwright, against the `platform` fixture's `dwops up` (the proxy
in front of a real Prefect server, its worker and the deployments, on the running lab), signed in
as the first operator account. The browser
only reaches 127.0.0.1: any other request is aborted (the Prefect UI's bundled telemetry asks
amplitude.com for its config on every page load, whatever the server's analytics setting), so
this also proves the UI needs nothing off the machine.

One walk through the UI, as an operator does it:
1. sign in: the login page asks for the whole `NAME:SECRET` of an operator account in one field
   (an integration account is refused there);
2. Deployments -> restart-webs;
3. Run -> Custom run: the form renders `params` as fields; the run is named, Delay set to 1
   (default 5), submitted;
4. the flow-run page shows the run Completed (a real roll of the lab's webs, about 40 s), its
   Artifacts tab shows the `restart-webs-report` card with the report's summary, and the card
   opens the report itself: every web done, and the delay=1.0 the flow was given.
Then REST says the same: the run the browser created has params.delay == 1, is COMPLETED and has
its report artifact. Every step leaves a screenshot in the test's tmp_path; a failure lists them.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
# This machine has no network: nothing in the background, nothing but the page.
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
DEPLOYMENT = "restart-webs"
REPORT_KEY = "restart-webs-report"
STEP_TIMEOUT_MS = 20_000
# A roll of six webs with delay 1 takes 30-40 s; the worker polls every second.
RUN_TIMEOUT_MS = 150_000
# The run's state badge stops the wait on any of these, so a failed run fails the test at once.
SETTLED = re.compile(r"^\s*(Completed|Failed|Crashed|Cancelled|Cancelling|Paused)\s*$")


class Screenshots:
    """Numbered full-page screenshots, one per step, listed in failure messages."""

    def __init__(self, folder: Path, page: Page):
        self.folder, self.page, self.paths = folder, page, []

    def take(self, step: str) -> None:
        path = self.folder / f"{len(self.paths) + 1:02d}-{step}.png"
        try:
            self.page.screenshot(path=str(path), full_page=True)
        except PlaywrightError as e:  # a dead page must not hide the failure being reported
            path = path.with_suffix(".txt")
            path.write_text(f"no screenshot: {e}\n")
        self.paths.append(path)

    def listing(self) -> str:
        return "\n".join(f"  {p}" for p in self.paths)


@pytest.mark.timeout(420)  # the platform fixture's `dwops up` (~60-90 s) counts too
def test_operator_signs_in_and_runs_restart_webs_with_a_custom_delay(platform, lab_inventory,
                                                                     tmp_path):
    run_name = f"ui-restart-webs-{uuid.uuid4().hex[:8]}"
    webs = lab_inventory.hosts_for("web")
    blocked: list[str] = []

    def loopback_only(route):
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            context.route("**/*", loopback_only)
            page = context.new_page()
            page.set_default_timeout(STEP_TIMEOUT_MS)
            shots = Screenshots(tmp_path, page)
            try:
                run_id = operate(page, shots, platform, run_name, webs)
            except (AssertionError, PlaywrightError) as e:
                shots.take("failure")
                raise AssertionError(f"{e}\nscreenshots:\n{shots.listing()}\n"
                                     f"worker log: {platform.home / 'worker.log'}") from e
        finally:
            browser.close()
    print(f"requests off 127.0.0.1 aborted: {sorted({urlsplit(u).hostname for u in blocked})}")

    # REST: the run the browser created is the one that ran, with the operator's delay.
    where = f"run {run_name} ({run_id}); screenshots:\n{shots.listing()}"
    run = platform.run(run_id)
    assert run["name"] == run_name, where
    assert run["deployment_id"] == platform.deployment(DEPLOYMENT)["id"], where
    assert run["parameters"]["params"]["delay"] == 1, f"{run['parameters']}\n{where}"
    assert run["state_type"] == "COMPLETED", f"{run['state_name']}\n{where}"
    assert "created-by:admin" in run["tags"], f"{run['tags']}\n{where}"
    reports = [a for a in platform.artifacts(run_id) if a.get("key") == REPORT_KEY]
    assert reports, f"no {REPORT_KEY} artifact\n{where}"
    report = reports[-1]
    assert f"completed - {len(webs)} done, 0 failed" in report["description"], f"{report}\n{where}"


def operate(page: Page, shots: Screenshots, platform, run_name: str, webs: list[str]) -> str:
    """The operator's walk through the UI; returns the id of the run it started."""
    # 1. Sign in: one field, placeholder `admin:pass`, for the whole credential. An integration
    # account (other systems') is refused; the operator's signs in.
    page.goto(platform.ui_url)
    credential = page.get_by_placeholder("admin:pass")
    expect(credential).to_be_visible()
    shots.take("login")
    with page.expect_response(lambda r: r.url.endswith("/api/admin/version")) as checked:
        credential.fill(platform.account("ui-ci", "integration", "fleet-status"))
        page.get_by_role("button", name="Login").click()
    assert checked.value.status == 403, checked.value.status
    expect(page.get_by_role("link", name="Deployments", exact=True)).not_to_be_visible()
    shots.take("integration-refused")
    page.goto(platform.ui_url)
    credential = page.get_by_placeholder("admin:pass")
    credential.fill(platform.credential)
    page.get_by_role("button", name="Login").click()
    deployments = page.get_by_role("link", name="Deployments", exact=True)
    expect(deployments).to_be_visible()
    shots.take("signed-in")

    # 2. Deployments -> restart-webs.
    deployments.click()
    page.get_by_role("link", name=DEPLOYMENT, exact=True).first.click()
    run_menu = page.get_by_role("button", name="Run", exact=True)
    expect(run_menu).to_be_visible()
    shots.take("deployment")

    # 3. Run -> Custom run: the form's fields for `params`; name the run, Delay 1, submit.
    run_menu.click()
    page.get_by_role("menuitem", name="Custom run").click()
    delay = page.get_by_label("Delay (Optional)", exact=True)
    expect(delay).to_have_value("5")
    page.get_by_label("Run Name", exact=True).fill(run_name)
    delay.fill("1")
    expect(delay).to_have_value("1")
    shots.take("custom-run-form")
    with page.expect_response(lambda r: r.request.method == "POST"
                              and r.url.endswith("/create_flow_run")) as created:
        page.get_by_role("button", name="Submit", exact=True).click()
    assert created.value.ok, f"create_flow_run: HTTP {created.value.status} {created.value.text()}"
    run_id = created.value.json()["id"]
    shots.take("submitted")

    # 4. The run's page (the notification's "View run"): its state badge until it settles.
    page.get_by_role("button", name="View run").click()
    expect(page).to_have_url(re.compile(rf"/runs/flow-run/{run_id}(\?|$)"))
    main = page.get_by_role("main")
    # (the first breadcrumb is the run page's own; the deployment page it replaces lists many)
    expect(main.get_by_role("navigation", name="breadcrumb").first).to_contain_text(run_name)
    shots.take("run-page")
    state = main.locator('[data-slot="badge"]').filter(has_text=SETTLED)
    expect(state).to_be_visible(timeout=RUN_TIMEOUT_MS)
    shots.take("run-finished")
    expect(state).to_have_text("Completed")
    expect(main).to_contain_text("created-by:admin")  # the account the proxy authenticated

    # Its Artifacts tab: the report's card with its summary; the card opens the report.
    page.get_by_role("tab", name="Artifacts").click()
    card = page.get_by_role("link").filter(has=page.get_by_role("heading", name=REPORT_KEY,
                                                                 exact=True))
    expect(card).to_contain_text(f"restart-webs on lab: completed - {len(webs)} done, 0 failed")
    shots.take("artifacts-tab")
    card.click()
    report = page.get_by_role("tabpanel", name="Artifact")
    expect(report.get_by_role("heading", level=1)).to_contain_text(
        f"completed - {len(webs)} done, 0 failed")
    for web in webs:
        step = report.get_by_role("row").filter(has=page.get_by_role("cell", name=web, exact=True))
        expect(step.first).to_contain_text("done")  # the Steps table comes first
    expect(report).to_contain_text("delay=1.0")  # the run's parameters, as the flow read them
    shots.take("report")
    return run_id
