"""End to end: a simulated experiment streams through Kafka and a worker, the alerter records
history, ``liftstream api`` serves the dashboard, and headless Chromium shows the same numbers
as the API, with the CI and anytime-valid bands drawn. Screenshot: tests/artifacts/.

Needs Debian's ``chromium`` and ``chromium-driver`` (``make browser-deps`` installs them).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from state.definition import parse_definition
from state.registry import Registry
from workers.alerter import Alerter
from workers.embedded import Broker

from .apikit import (
    Population,
    api_server,
    auth,
    experiment_definition,
    experiment_messages,
    js_ci,
    js_fmt,
    series_of,
)
from .conftest import unique
from .streaming import create_topics, publish, redis_client, streaming_settings, wait_for_messages
from .streaming import worker_thread as ingest_thread

CHROMIUM = os.environ.get("LIFTSTREAM_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("LIFTSTREAM_CHROMEDRIVER", "/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
TOKEN = "dash-read-token"
CHUNKS, CHUNK = 6, 300

webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    pytest.skip(f"{CHROMIUM} / {CHROMEDRIVER} missing: `make browser-deps` installs Debian's "
                f"chromium and chromium-driver (apt); they could not be installed here",
                allow_module_level=True)

from selenium.common.exceptions import (  # noqa: E402
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture
def browser() -> Iterator[Any]:
    profile = tempfile.mkdtemp(prefix="liftstream-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                "--hide-scrollbars", "--window-size=1440,1900", f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    except WebDriverException as exc:
        shutil.rmtree(profile, ignore_errors=True)
        pytest.fail(f"headless chromium did not start: {exc}")
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def text(driver: Any, css: str) -> str:
    """An element's text; the page re-renders on every refresh, so a node found a moment ago
    may be replaced before it is read: look it up again."""
    for _ in range(10):
        try:
            return str(driver.find_element(By.CSS_SELECTOR, css).text)
        except StaleElementReferenceException:
            time.sleep(0.05)
    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def check_chart(browser: Any) -> None:
    """The SVG has history + live points, every band and line, and the adjusted CI band is
    narrower than the unadjusted one (variance reduction)."""
    svg = browser.find_element(By.ID, "chart")
    assert svg.get_attribute("data-points") == str(CHUNKS + 1)  # history + live
    for css in ("path.band-ci.adjusted", "path.band-seq.adjusted",
                "path.band-ci.unadjusted", "path.band-seq.unadjusted",
                "path.line.adjusted", "path.line.unadjusted"):
        d = svg.find_element(By.CSS_SELECTOR, css).get_attribute("d")
        assert d and d.startswith("M") and d.count("L") >= CHUNKS, (css, d)
    for css in ("path.band-ci.adjusted", "path.band-seq.adjusted"):
        assert svg.find_element(By.CSS_SELECTOR, css).get_attribute("d").endswith("Z")
    # the adjusted band is narrower than the unadjusted one (variance reduction)
    adj = svg.find_element(By.CSS_SELECTOR, "path.band-ci.adjusted").rect["height"]
    raw = svg.find_element(By.CSS_SELECTOR, "path.band-ci.unadjusted").rect["height"]
    assert adj < raw


def test_dashboard_matches_api(broker: Broker, redis_url: str, tmp_path: Path,
                               browser: Any) -> None:
    s = streaming_settings(broker.bootstrap, redis_url, unique("dash"),
                           api_read_tokens=(TOKEN,), api_admin_tokens=("dash-admin",),
                           results_cache_seconds=0.5, alert_interval_seconds=0.2)
    create_topics(s)
    client = redis_client(s)
    exp = "checkout-redesign"
    Registry(client).create(parse_definition(experiment_definition(exp)))
    pop = Population(exp, revenue_lift=(0.0, 0.8), signup_lift=(0.0, 0.02), seed=7)
    alerter = Alerter(s, client, sinks=[])
    applied, t0 = 0, time.time() - CHUNKS * CHUNK - 5  # event times end about now
    with ingest_thread(s):
        for k in range(CHUNKS):  # the experiment runs; the alerter snapshots it each step
            msgs = experiment_messages(pop, k * CHUNK, CHUNK, t0)
            publish(s, msgs)
            applied += len(msgs)
            wait_for_messages(client, applied, timeout=60)
            alerter.evaluate_once()
            time.sleep(0.3)  # distinct snapshot times on the chart's axis

        with api_server(s, tmp_path, "--lag-interval", "1", "--no-history") as server:
            browser.get(f"{server.url}/?token={TOKEN}#exp={exp}")
            wait = WebDriverWait(browser, 20,
                                 ignored_exceptions=(StaleElementReferenceException,))
            wait.until(lambda d: d.find_elements(
                By.CSS_SELECTOR, 'tr[data-estimator="adjusted"] td[data-k="effect"]'))
            wait.until(lambda d: "msgs" in text(d, ".kpis"))  # consumer lag measured
            assert "token=" not in browser.current_url  # moved out of the address bar

            api = httpx.get(f"{server.url}/v1/experiments/{exp}/results",
                            headers=auth(TOKEN)).json()
            comp = series_of(api, "revenue", "treatment")
            assert comp["primary"] == "adjusted"
            assert text(browser, "#exp-title") == exp
            assert text(browser, "#chart-metric") == "revenue"
            for name, e in comp["estimators"].items():
                row = f'tr[data-estimator="{name}"]'
                assert text(browser, f'{row} td[data-k="effect"]') == js_fmt(e["effect"])
                assert text(browser, f'{row} td[data-k="ci"]') == js_ci(e["ci_low"],
                                                                         e["ci_high"])
                assert text(browser, f'{row} td[data-k="seq_ci"]') == \
                    js_ci(e["seq_ci_low"], e["seq_ci_high"])
            for v in api["slices"][0]["variations"]:
                n = text(browser, f'[data-variation-n="{v["name"]}"]')
                assert n == f"{v['n']:,}"
            srm = api["slices"][0]["srm"]
            assert text(browser, "#srm-status") == ("Mismatch" if srm["flagged"] else "OK")
            bayes = comp["bayes"]
            assert text(browser, '#bayes [data-k="treatment_posterior_mean"]') == \
                js_fmt(bayes["treatment_posterior_mean"])
            assert "pageviews" in text(browser, "#selection")

            for attempt in range(10):  # the chart is redrawn on every refresh
                try:
                    check_chart(browser)
                    break
                except StaleElementReferenceException:
                    if attempt == 9:
                        raise
                    time.sleep(0.1)

            ARTIFACTS.mkdir(exist_ok=True)
            chrome = browser.execute_script("return window.outerHeight - window.innerHeight")
            height = browser.execute_script(
                "return document.getElementById('content').getBoundingClientRect().bottom + 40")
            browser.set_window_size(1440, int(height) + int(chrome))
            assert browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))

            # switching metric re-renders from the API
            wait.until(lambda d: d.find_element(  # retried if a redraw replaced the tab
                By.CSS_SELECTOR, 'button.tab[data-metric="converted"]').click() or True)
            wait.until(lambda d: text(d, "#chart-metric") == "converted")
            conv = series_of(api, "converted", "treatment")["estimators"][
                series_of(api, "converted", "treatment")["primary"]]
            wait.until(lambda d: text(
                d, 'tr.primary td[data-k="effect"]') == js_fmt(conv["effect"]))

            # without a token the page asks for one
            browser.execute_script("sessionStorage.clear()")
            browser.get(f"{server.url}/")
            wait.until(lambda d: d.find_element(By.ID, "login").is_displayed())
