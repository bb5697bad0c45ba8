"""/ui/router in a real headless Chromium: the learned-routing status of a gateway whose auto
traffic was rated through /v1/feedback, equal to ``thrifty.router.status``; at desktop and phone
width without horizontal overflow or console errors."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from reports.test_dashboard import browser  # noqa: F401 (the shared Chromium fixture)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "router"))
from rated_gateway import ADMIN, rated_gateway


@pytest.fixture(scope="module")
def rated(tmp_path_factory):
    yield from rated_gateway(tmp_path_factory)


def _expected(rated):
    from thrifty.router.status import status

    db = rated.db()
    try:
        return status(db, now=time.time())
    finally:
        db.close()


@pytest.mark.parametrize("width", [1360, 390])
def test_router_page(rated, browser, artifacts, width):  # noqa: F811
    from thrifty.reports.format import usd_nanos

    page = browser.new_page()
    page.set_viewport_size({"width": width, "height": 900})
    outside: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(rated.url) else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(rated.url + "/ui/login")
    page.fill("#admin_key", ADMIN)
    page.click("#sign_in")
    page.wait_for_selector("[data-testid=total-spend]")
    page.click("header nav a[href$='/router']")  # linked from the nav like the other pages
    page.wait_for_selector("#router-models")
    assert page.locator("header nav a.on").inner_text() == "Router"

    want = _expected(rated)
    assert page.locator("[data-testid=routed]").inner_text() == f"{want.routed:,}" == f"{len(rated.sent):,}"
    spend = page.locator("[data-testid=exploration-spend]")
    assert int(spend.get_attribute("data-nanos")) == want.exploration_cost_nanos
    assert spend.inner_text() == usd_nanos(want.exploration_cost_nanos)
    rows = page.locator("#router-models tbody tr[data-model]")
    assert rows.count() == len(want.models)
    for m in want.models:
        row = page.locator(f"#router-models tr[data-model='{m.model}']")
        assert int(row.get_attribute("data-routed")) == m.routed
        assert int(row.get_attribute("data-explored")) == m.explored
        assert int(row.get_attribute("data-feedback")) == m.labels["feedback"]
        assert int(row.get_attribute("data-cost-nanos")) == m.exploration_cost_nanos
        if m.interval:
            assert float(row.get_attribute("data-lo")) == pytest.approx(m.interval[0])
            band = row.locator(".band .range").bounding_box()
            full = row.locator(".band").bounding_box()
            assert band["width"] == pytest.approx(full["width"] * (m.interval[1] - m.interval[0]), abs=1.5)
    heads = page.locator("#router-clusters thead th[data-cluster]")
    assert heads.count() == len(want.clusters) >= 2
    assert sum(int(h) for h in heads.evaluate_all("hs => hs.map(h => h.dataset.labels)")) == (
        len(rated.feedback) + len(rated.judge))
    assert "not per cluster" in page.inner_text("main")

    scroll = page.evaluate("document.documentElement.scrollWidth")
    assert scroll <= width, scroll
    header = page.evaluate("document.querySelector('header.top').getBoundingClientRect().height")
    assert header < 56, header
    page.screenshot(path=str(artifacts / f"dashboard-router-{width}.png"), full_page=True)

    assert outside == [] and errors == []
    # A team filter and a bad window (a 400 page, the browser logs its status).
    page.goto(rated.url + "/ui/router?team=nobody")
    assert page.locator("[data-testid=routed]").inner_text() == "0"
    page.goto(rated.url + "/ui/router?days=-3")
    assert "days must be a positive number" in page.inner_text("main")
    assert outside == [] and all("400" in e for e in errors)
    page.close()
