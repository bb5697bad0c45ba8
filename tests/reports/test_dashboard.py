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

from reports.conftest import ADMIN_KEY, fresh_name, in_ci
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
    assert "……" not in page.inner_text("#keys") and "...…" not in page.inner_text("#keys")  # one ellipsis
    page.click("header nav a[href$='/live']")
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


def _signed_in(browser, live, width: int = 1360):
    page = browser.new_page()
    page.set_viewport_size({"width": width, "height": 900})
    page.goto(live.url + "/ui/login")
    page.fill("#admin_key", ADMIN_KEY)
    page.click("#sign_in")
    page.wait_for_selector("[data-testid=total-spend]")
    return page


def test_one_day_of_data_gets_an_hourly_axis_labelled_slices_and_stable_colours(live, browser):
    page = _signed_in(browser, live)
    page.wait_for_function("() => window.Chart && Chart.getChart('chart-spend') && Chart.getChart('chart-mix')")
    labels = page.evaluate("Chart.getChart('chart-spend').data.labels")
    assert 12 <= len(labels) <= 48 and all(label.endswith(":00") for label in labels), labels  # hours, not days
    assert "Spend per hour" in page.inner_text("main")
    mix = page.evaluate("(() => { const c = Chart.getChart('chart-mix'); return [c.data.labels, "
                        "c.data.datasets[0].backgroundColor]; })()")
    assert "(none)" not in mix[0]
    colours = dict(zip(*mix, strict=True))
    stacked = page.evaluate("Chart.getChart('chart-spend').data.datasets.map(d => [d.label, d.backgroundColor])")
    assert all(colours[name] == colour for name, colour in stacked)  # one colour per model on the page
    page.goto(live.url + "/ui/live")
    page.wait_for_function("() => window.Chart && Chart.getChart('chart-live')")
    live_mix = page.evaluate("(() => { const c = Chart.getChart('chart-live'); return [c.data.labels, "
                             "c.data.datasets[0].backgroundColor]; })()")
    assert all(colours[m] == c for m, c in zip(*live_mix, strict=True) if m in colours)  # and across pages
    # Group by model: one table, not the same table twice.
    page.goto(live.url + "/ui/?by=model")
    assert page.locator("#by-group").count() == 1 and page.locator("#by-model").count() == 0
    # One precision per money column.
    spend_cells = page.locator("#by-group tbody tr td:nth-child(5)").all_inner_texts()
    assert len({len(c.split(".")[-1]) for c in spend_cells}) == 1, spend_cells
    page.close()


@pytest.mark.parametrize("width", [1360, 390])
def test_no_page_overflows_and_the_header_stays_one_line(live, browser, artifacts, width):
    page = _signed_in(browser, live, width)
    for path in ("/ui/", "/ui/budgets", "/ui/keys", "/ui/requests", "/ui/live", "/ui/manage"):
        page.goto(live.url + path)
        page.wait_for_load_state("networkidle")
        scroll = page.evaluate("document.documentElement.scrollWidth")
        assert scroll <= width, (path, scroll)
        header = page.evaluate("document.querySelector('header.top').getBoundingClientRect().height")
        assert header < 56, (path, header)  # one line: the nav scrolls sideways instead of wrapping
        name = path.strip("/").replace("ui", "").strip("/") or "overview"
        page.screenshot(path=str(artifacts / f"dashboard-{name}-{width}.png"), full_page=True)
    page.close()


def test_requests_page_lists_the_ledger_with_filters_and_paging(live, browser):
    page = _signed_in(browser, live)
    page.goto(live.url + "/ui/requests")
    rows = page.locator("#requests tbody tr[data-request]")
    assert rows.count() == 50 and page.locator("#next-page").count() == 1
    first_page = set(rows.evaluate_all("rs => rs.map(r => r.dataset.request)"))
    page.click("#next-page")
    second = set(page.locator("#requests tbody tr[data-request]").evaluate_all("rs => rs.map(r => r.dataset.request)"))
    assert second and not first_page & second
    page.goto(live.url + "/ui/requests")
    page.fill("input[name=key]", live.key_ids["bob-key"])
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**key=**")
    n, _, _ = _sums(live, "key_id = ?", (live.key_ids["bob-key"],))
    assert page.locator("#requests tbody tr[data-request]").count() == min(n, 50)
    assert live.sent[0].prompt[:40] not in page.inner_text("main")  # no prompt text
    page.goto(live.url + "/ui/requests?status=abc")
    assert "status must be" in page.inner_text("main")
    page.close()


def test_admin_creates_and_revokes_keys_teams_and_budgets_csrf_safe(live, browser):
    import httpx

    page = _signed_in(browser, live)
    page.goto(live.url + "/ui/manage")
    team = fresh_name()
    page.fill("#create-team input[name=team_id]", team)
    page.click("#create-team button[type=submit]")
    assert f"Created team {team}" in page.inner_text("[data-testid=manage-result]")
    # The same checks as the admin API: a duplicate team is refused with its message.
    page.fill("#create-team input[name=team_id]", team)
    page.click("#create-team button[type=submit]")
    assert "already exists" in page.inner_text("[data-testid=manage-error]")
    page.select_option("#create-key select[name=team_id]", team)
    page.fill("#create-key input[name=name]", "from the dashboard")
    page.click("#create-key button[type=submit]")
    secret = page.inner_text("[data-testid=new-key]")
    assert secret.startswith("sk-thr-")
    models = httpx.get(live.url + "/v1/models", headers={"authorization": f"Bearer {secret}"})
    assert models.status_code == 200  # the new key works at once
    page.select_option("#set-budget select[name=scope]", "team")
    page.fill("#set-budget input[name=scope_id]", team)
    page.fill("#set-budget input[name=amount_usd]", "-3")
    page.click("#set-budget button[type=submit]")
    assert page.locator("[data-testid=manage-error]").count() == 1
    page.fill("#set-budget input[name=scope_id]", team)
    page.fill("#set-budget input[name=amount_usd]", "12.5")
    page.fill("#set-budget input[name=soft]", "0.8")
    page.click("#set-budget button[type=submit]")
    assert "Set budget" in page.inner_text("[data-testid=manage-result]")
    budget_row = page.locator("#manage-budgets tr", has_text=team)
    assert budget_row.count() == 1
    key_id = page.evaluate("[...document.querySelectorAll('#manage-keys tr[data-key]')].map(r => r.dataset.key)")
    new_id = [k for k in key_id if k not in live.key_ids.values()][-1]
    # CSRF: a post without the form's token (another site's form) is refused and changes nothing.
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    forged = httpx.post(live.url + f"/ui/manage/key/{new_id}/revoke", cookies=cookies, data={"csrf": "x"})
    assert forged.status_code == 403 and forged.json()["error"]["code"] == "csrf_failed"
    token = page.locator("#create-team input[name=csrf]").get_attribute("value")
    cross = httpx.post(live.url + f"/ui/manage/key/{new_id}/revoke", cookies=cookies, data={"csrf": token},
                       headers={"origin": "https://evil.example"})
    assert cross.status_code == 403
    assert httpx.get(live.url + "/v1/models", headers={"authorization": f"Bearer {secret}"}).status_code == 200
    page.locator(f"#manage-keys tr[data-key='{new_id}'] button").click()
    assert f"Revoked key {new_id}" in page.inner_text("[data-testid=manage-result]")
    assert httpx.get(live.url + "/v1/models", headers={"authorization": f"Bearer {secret}"}).status_code == 401
    page.locator("#manage-budgets tr", has_text=team).locator("button").click()
    assert "Deleted budget" in page.inner_text("[data-testid=manage-result]")
    page.close()
