"""The /ui dashboard in a real headless Chromium (Debian's package, driven by Playwright).

Signs in with the admin key, checks that the numbers on the page equal the ledger's
(also under a team filter), visits every page, checks that no request leaves the
gateway (no CDN) and that the charts drew, and saves screenshots under artifacts/.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from reports.conftest import ADMIN_KEY, in_ci
from thrifty.reports.render import usd

CHROMIUM = os.environ.get("THRIFTY_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        if in_ci():
            pytest.fail(f"{CHROMIUM} missing; scripts/test-services.sh installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} missing (run scripts/test-services.sh)")
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="thrifty-chromium-")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=FLAGS, ignore_default_args=["--headless=new"],
            viewport={"width": 1360, "height": 1000})
        yield context
        context.close()
    shutil.rmtree(profile, ignore_errors=True)


def _sums(live, where: str = "1=1", params: tuple = ()) -> tuple[int, int, int]:
    db = live.db()
    try:
        row = db.one("SELECT COUNT(*), SUM(cost_nanos), SUM(frontier_cost_nanos) - SUM(cost_nanos) FROM ledger"
                     f" WHERE {where}", params)
        return int(row[0]), int(row[1] or 0), int(row[2] or 0)
    finally:
        db.close()


def test_dashboard_in_chromium(live, browser, artifacts):
    page = browser.new_page()
    outside: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(live.url) else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "Failed to load" not in m.text
            else None)
    failed: list[tuple[int, str]] = []
    page.on("response", lambda r: failed.append((r.status, r.url)) if r.status >= 400 else None)

    # Not signed in: the login page. A wrong key is refused.
    page.goto(live.url + "/ui/")
    assert "/ui/login" in page.url
    page.fill("#admin_key", "sk-wrong")
    page.click("#sign_in")
    assert "not a valid admin key" in page.inner_text("[role=alert]")
    # A virtual key is not an admin key either.
    page.fill("#admin_key", live.keys["ada-key"])
    page.click("#sign_in")
    assert page.locator("[role=alert]").count() == 1
    page.fill("#admin_key", ADMIN_KEY)
    page.click("#sign_in")
    page.wait_for_selector("[data-testid=total-spend]")
    assert page.url.rstrip("/").endswith("/ui")

    n, cost, saved = _sums(live)
    spend_el = page.locator("[data-testid=total-spend]")
    assert int(spend_el.get_attribute("data-nanos")) == cost
    assert spend_el.inner_text() == usd(cost)
    assert page.locator("[data-testid=total-requests]").inner_text() == f"{n:,}"
    assert int(page.locator("[data-testid=total-savings]").get_attribute("data-nanos")) == saved
    # Per-team table rows equal the ledger's per-team sums.
    for row in page.locator("#by-group tbody tr").all():
        team = row.get_attribute("data-name")
        tn, tcost, _ = _sums(live, "team_id = ?", (team,))
        assert (int(row.get_attribute("data-requests")), int(row.get_attribute("data-cost-nanos"))) == (tn, tcost)
    # Charts drew on their canvases (Chart.js from the package, not a CDN).
    page.wait_for_function("() => window.Chart && Chart.getChart('chart-spend') && Chart.getChart('chart-mix')")
    assert page.evaluate("Chart.getChart('chart-mix').data.datasets[0].data.reduce((a, b) => a + b, 0)") == n
    page.screenshot(path=str(artifacts / "dashboard.png"), full_page=True)

    # Filter by team through the form: the numbers follow.
    page.select_option("select[name=team]", "support")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**team=support**")
    sn, scost, _ = _sums(live, "team_id = 'support'")
    assert int(page.locator("[data-testid=total-spend]").get_attribute("data-nanos")) == scost
    assert page.locator("[data-testid=total-requests]").inner_text() == f"{sn:,}"

    # Budgets: spent equals the ledger's spend of the team, with a burn-down chart.
    page.click("text=Budgets")
    page.wait_for_selector("canvas.burndown")
    _, rcost, _ = _sums(live, "team_id = 'research'")
    assert int(page.locator("[data-testid=budget-spent]").get_attribute("data-nanos")) == rcost
    page.wait_for_function("() => Chart.getChart(document.querySelector('canvas.burndown'))")
    page.screenshot(path=str(artifacts / "dashboard-budgets.png"), full_page=True)

    # Keys: every virtual key with its spend.
    page.click("text=Keys")
    for key_id in live.key_ids.values():
        row = page.locator(f"tr[data-key='{key_id}']")
        _, kcost, _ = _sums(live, "key_id = ?", (key_id,))
        assert int(row.get_attribute("data-cost-nanos")) == kcost

    # Live routing mix: the latest requests, no prompt text anywhere.
    page.click("text=Live routing")
    page.wait_for_selector("#live-recent tbody tr")
    text = page.inner_text("main")
    assert live.sent[0].prompt[:40] not in text
    page.wait_for_function("() => Chart.getChart('chart-live')")
    page.screenshot(path=str(artifacts / "dashboard-live.png"), full_page=True)

    # Sign out: back to the login page.
    page.click("header .logout button")
    page.goto(live.url + "/ui/budgets")
    assert "/ui/login" in page.url
    assert outside == [] and errors == []
    assert failed == [(401, live.url + "/ui/login")] * 2  # the two refused sign-ins, nothing else
    page.close()
