"""The dashboard in real headless Chromium: it loads offline, shows the same numbers as
/api/status, draws its charts, and a screenshot is kept under artifacts/."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import TestDB
from monitoring import BAD_NAME, add_bad_constraint, bulk, configure_alerts, signups
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from test_web import get_json, serving

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


@pytest.fixture
def browser() -> Iterator[Any]:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.path.exists(path):
            pytest.fail(
                f"{path} is missing (Debian packages 'chromium' and 'chromium-driver'); "
                "run: .ci/install-deps",
                pytrace=False,
            )
    profile = tempfile.mkdtemp(prefix="profileguard-chromium-")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1440,1600",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # CSP reports land there
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def loaded(driver: Any, at_least: int = 1) -> None:
    WebDriverWait(driver, 60).until(
        lambda d: int(d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded")) >= at_least
    )


def shown(driver: Any, metric: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, f'[data-metric="{metric}"]').text)


def blocked(driver: Any) -> list[str]:
    """What the page's Content-Security-Policy refused since the last call (the console)."""
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if "Content Security Policy" in entry["message"] or "Refused to" in entry["message"]
    ]


def number(text: str) -> float:
    return float(text.replace(",", "").rstrip("%"))


def test_dashboard_shows_what_the_api_says(installed: TestDB, browser: Any) -> None:
    installed.scalar("select profileguard.stats()")  # first sample: the window starts here
    bulk(installed, 1234)
    add_bad_constraint(installed)
    signups(installed, 3, name=BAD_NAME)
    with installed.connect() as conn:
        conn.execute(
            "insert into profileguard.repair_state (user_id, attempts, last_sqlstate,"
            " last_message, quarantined_at) values"
            " ('11111111-2222-3333-4444-555555555555', 5, '23514',"
            " 'new row violates check constraint', now())"
        )
        conn.execute(
            "insert into profileguard.workers (worker_id, hostname, pid, stats) values"
            " ('host-a:101:5f2c', 'host-a', 101, '{\"state\": \"running\"}')"
        )
        conn.execute(
            "insert into profileguard.backfill_runs (state, total_estimate, scanned,"
            " created) values ('running', 2000, 1500, 3)"
        )
        conn.execute("select profileguard.refresh_stats()")
        # Two hours of history as the background loop would have left it.
        conn.execute(
            "insert into profileguard.stats_samples (taken_at, inserted, deleted, users,"
            " missing, quarantined, failures, repairs)"
            " select now() - make_interval(mins => 120 - g), 0, 0, 1000 + g,"
            " mod(abs(60 - g), 17), 0, g / 10, g / 5 from generate_series(0, 118, 2) g"
        )

    with serving(installed.settings, token="dash-token") as base:
        browser.get(f"{base}/#token=dash-token")
        loaded(browser)
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "dashboard.png"
        assert browser.save_screenshot(str(shot))
        api = get_json(f"{base}/api/status", token="dash-token")

        s = api["stats"]
        assert browser.find_element(By.ID, "error").is_displayed() is False
        assert browser.find_element(By.ID, "status").text.lower() == api["status"]
        assert number(shown(browser, "users")) == s["users"] == 1237
        assert shown(browser, "users") == "1,237"
        assert number(shown(browser, "profiles")) == s["profiles"] == 1234
        assert number(shown(browser, "missing")) == s["missing"] == 3
        assert number(shown(browser, "coverage_pct")) == round(s["coverage_pct"], 2)
        assert number(shown(browser, "success_rate_pct")) == round(s["success_rate_pct"], 2)
        assert number(shown(browser, "repairs_total")) == s["repairs_total"]
        assert number(shown(browser, "quarantined")) == s["quarantined"] == 1
        assert number(shown(browser, "live_workers")) == s["live_workers"] == 1

        # Charts and lists are drawn from the same data.
        bar = browser.find_element(By.CSS_SELECTOR, '#chart-failures [data-category="constraint"]')
        assert number(bar.text) == s["failures_by_category_total"]["constraint"] == 3
        assert browser.find_elements(By.CSS_SELECTOR, "#chart-failures rect")
        history = get_json(f"{base}/api/history", token="dash-token")["items"]
        assert len(history) >= 60
        drawn = int(browser.find_element(By.ID, "history-legend").text.split()[0])
        # The page fetched its history beside its status read, which may have recorded one
        # more sample (a read records at most one per 10 s).
        assert len(history) - drawn in (0, 1)
        assert len(browser.find_elements(By.CSS_SELECTOR, "#chart-missing path")) == 2
        assert (
            "11111111-2222-3333-4444-555555555555" in browser.find_element(By.ID, "quarantine").text
        )
        assert "host-a:101:5f2c" in browser.find_element(By.ID, "workers").text
        assert "1,500 of ~2,000" in browser.find_element(By.ID, "backfill").text
        progress = browser.find_element(By.CSS_SELECTOR, "#backfill .bar > div")
        assert progress.value_of_css_property("width") != "0px"
        assert "width: 75%" in (progress.get_attribute("style") or "")
        events = browser.find_element(By.ID, "events").text
        assert events.count("failure") >= 3 and "constraint" in events
        assert shot.stat().st_size > 10_000
        # Everything above ran under the page's policy, which refused nothing.
        assert blocked(browser) == []
        assert "frame-ancestors 'none'" in browser.execute_script(
            "return (await fetch('/')).headers.get('content-security-policy')"
        )

        # Without the token, the page says why it has no data instead of showing zeros.
        browser.execute_script("sessionStorage.clear()")
        browser.get(f"{base}/")
        loaded(browser)
        error = browser.find_element(By.ID, "error")
        assert error.is_displayed() and "401" in error.text and "#token=" in error.text
        assert shown(browser, "users") == "\u2013"  # the placeholder dash
        assert blocked(browser) == []


def test_dashboard_verdict_is_the_status_verdict(installed: TestDB, browser: Any) -> None:
    """With users the trigger never saw, the badge and the missing figure are those of
    `observe.status` and /api/status (the one evaluation), and so again once they are repaired."""
    from test_invariant import insert_users, poll, repair, replica_session

    from profileguard import observe

    settings = configure_alerts(installed, missing_grace_seconds=0)
    observe.status(settings)  # monitoring ran before the import
    with replica_session(installed) as replica:
        ids = insert_users(replica, 6, "dash")
    poll(settings, lambda r: r["missing"] == 6, 5.0)
    with serving(settings) as base:
        for expected in (("degraded", 6), ("healthy", 0)):
            browser.get(f"{base}/")
            loaded(browser)
            api = get_json(f"{base}/api/status")
            library = observe.status(settings)
            badge = browser.find_element(By.ID, "status").text.lower()
            assert (badge, int(number(shown(browser, "missing")))) == expected
            assert (api["status"], api["missing"]) == expected
            assert (library["status"], library["missing"]) == expected
            repair(installed, ids)
            poll(settings, lambda r: r["missing"] == 0, 5.0)
