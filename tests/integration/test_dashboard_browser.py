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
from workers.alerter.service import Alerter
from workers.dev.embedded import Broker

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

from selenium.common.exceptions import WebDriverException  # noqa: E402
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


#: Everything the test compares, read in ONE script: the page renders synchronously in the
#: same JavaScript thread, so a read sees one whole render (never half a redraw, never a
#: node replaced between finding and reading it).
READ_PAGE = """
const txt = (root, css) => { const e = root.querySelector(css); return e ? e.innerText : null; };
const body = document.body.dataset;
const out = {renders: +(body.renders || 0), metric: body.renderedMetric || null,
             title: txt(document, "#exp-title"), chart_metric: txt(document, "#chart-metric"),
             kpis: txt(document, ".kpis"), srm: txt(document, "#srm-status"),
             bayes_treatment: txt(document, '#bayes [data-k="treatment_posterior_mean"]'),
             selection: txt(document, "#selection"),
             primary_effect: txt(document, 'tr.primary td[data-k="effect"]'),
             estimators: {}, variations: {}, chart: null};
for (const tr of document.querySelectorAll("tr[data-estimator]")) {
  out.estimators[tr.dataset.estimator] = {effect: txt(tr, 'td[data-k="effect"]'),
    ci: txt(tr, 'td[data-k="ci"]'), seq_ci: txt(tr, 'td[data-k="seq_ci"]')};
}
for (const e of document.querySelectorAll("[data-variation-n]")) {
  out.variations[e.dataset.variationN] = e.innerText;
}
const svg = document.getElementById("chart");
if (svg) {
  const paths = {}, heights = {};
  for (const css of arguments[0]) {
    const e = svg.querySelector(css);
    paths[css] = e ? e.getAttribute("d") : null;
    heights[css] = e ? e.getBoundingClientRect().height : null;
  }
  out.chart = {points: svg.getAttribute("data-points"), paths: paths, heights: heights};
}
return out;
"""
CHART_PATHS = ("path.band-ci.adjusted", "path.band-seq.adjusted", "path.band-ci.unadjusted",
               "path.band-seq.unadjusted", "path.line.adjusted", "path.line.unadjusted")


def read_page(driver: Any) -> dict[str, Any]:
    """The displayed values of the latest render (see :data:`READ_PAGE`)."""
    page: dict[str, Any] = driver.execute_script(READ_PAGE, list(CHART_PATHS))
    return page


def check_chart(page: dict[str, Any]) -> None:
    """The SVG has history + live points, every band and line, and the adjusted CI band is
    narrower than the unadjusted one (variance reduction)."""
    chart = page["chart"]
    assert chart["points"] == str(CHUNKS + 1)  # history + live
    for css in CHART_PATHS:
        d = chart["paths"][css]
        assert d and d.startswith("M") and d.count("L") >= CHUNKS, (css, d)
    for css in ("path.band-ci.adjusted", "path.band-seq.adjusted"):
        assert chart["paths"][css].endswith("Z")
    # the adjusted band is narrower than the unadjusted one (variance reduction)
    adj = chart["heights"]["path.band-ci.adjusted"]
    raw = chart["heights"]["path.band-ci.unadjusted"]
    assert adj < raw


#: The slice table of the latest render, read in one script (as :data:`READ_PAGE`).
READ_SLICES = """
const txt = (root, css) => { const e = root.querySelector(css); return e ? e.innerText : null; };
const sel = document.getElementById("slice-dim");
const out = {metric: document.body.dataset.renderedMetric || null,
             dim: sel ? sel.value : null, rows: {}};
for (const tr of document.querySelectorAll("#slice-table tr[data-slice]")) {
  out.rows[tr.dataset.slice] = {n: txt(tr, 'td[data-k="n"]'),
    effect: txt(tr, 'td[data-k="effect"]'), ci: txt(tr, 'td[data-k="ci"]')};
}
return out;
"""


def check_slices(browser: Any, wait: Any, url: str, exp: str) -> None:
    """The slice selector asks the API for ``?by=platform`` and shows one row per value with
    the API's effect, CI and BH-adjusted p of the shown metric's recommended estimator."""
    # chosen in the page's own thread (no handle to a select a redraw may have replaced)
    browser.execute_script(
        'const s = document.getElementById("slice-dim"); s.value = "platform";'
        ' s.dispatchEvent(new Event("change", {bubbles: true}));')
    page = wait.until(lambda d: (p := d.execute_script(READ_SLICES))["dim"] == "platform"
                      and len(p["rows"]) == 3 and p)
    metric = page["metric"]
    api = httpx.get(f"{url}/v1/experiments/{exp}/results", params={"by": "platform"},
                    headers=auth(TOKEN)).json()
    # kept first come, first kept: the order depends on which partition applied first
    assert sorted(sl["by"]["platform"] for sl in api["slices"]) == ["android", "ios", "web"]
    assert sorted(page["rows"]) == ["android", "ios", "web"]
    for sl in api["slices"]:
        value = sl["by"]["platform"]
        comp = next(c for m in sl["metrics"] if m["metric"] == metric
                    for c in m["comparisons"] if c["treatment"] == "treatment")
        e = comp["estimators"][comp["primary"]]
        row = page["rows"][value]
        units = sum(v["n"] for v in sl["variations"])
        assert row["n"] == f"{units:,}"
        assert row["effect"] == js_fmt(e["effect"])
        assert row["ci"] == js_ci(e["ci_low"], e["ci_high"])
        assert e["slice_bh_p_value"] >= e["p_value"]  # BH never lowers a p-value
    bad = httpx.get(f"{url}/v1/experiments/{exp}/results", params={"by": "country"},
                    headers=auth(TOKEN))
    assert bad.status_code == 404 and "platform" in bad.json()["detail"]


def test_dashboard_matches_api(broker: Broker, redis_url: str, tmp_path: Path,
                               browser: Any) -> None:
    s = streaming_settings(broker.bootstrap, redis_url, unique("dash"),
                           api_read_tokens=(TOKEN,), api_admin_tokens=("dash-admin",),
                           results_cache_seconds=0.5, alert_interval_seconds=0.2)
    create_topics(s)
    client = redis_client(s)
    exp = "checkout-redesign"
    Registry(client).create(parse_definition(experiment_definition(
        exp, dimensions=["platform"])))
    pop = Population(exp, revenue_lift=(0.0, 0.8), signup_lift=(0.0, 0.02), seed=7,
                     platforms=("ios", "android", "web"))
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
            wait = WebDriverWait(browser, 20)
            # a render after the consumer lag was measured (the page sets data-renders)
            page = wait.until(lambda d: (p := read_page(d))["renders"] > 0
                              and "msgs" in (p["kpis"] or "") and p)
            assert "token=" not in browser.current_url  # moved out of the address bar

            api = httpx.get(f"{server.url}/v1/experiments/{exp}/results",
                            headers=auth(TOKEN)).json()
            comp = series_of(api, "revenue", "treatment")
            assert comp["primary"] == "adjusted"
            assert page["title"] == exp
            assert page["chart_metric"] == "revenue"
            for name, e in comp["estimators"].items():
                row = page["estimators"][name]
                assert row["effect"] == js_fmt(e["effect"])
                assert row["ci"] == js_ci(e["ci_low"], e["ci_high"])
                assert row["seq_ci"] == js_ci(e["seq_ci_low"], e["seq_ci_high"])
            for v in api["slices"][0]["variations"]:
                n = page["variations"][v["name"]]
                assert n == f"{v['n']:,}"
            srm = api["slices"][0]["srm"]
            assert page["srm"] == ("Mismatch" if srm["flagged"] else "OK")
            bayes = comp["bayes"]
            assert page["bayes_treatment"] == js_fmt(bayes["treatment_posterior_mean"])
            assert "pageviews" in page["selection"]
            check_chart(page)

            ARTIFACTS.mkdir(exist_ok=True)
            chrome = browser.execute_script("return window.outerHeight - window.innerHeight")
            height = browser.execute_script(
                "return document.getElementById('content').getBoundingClientRect().bottom + 40")
            browser.set_window_size(1440, int(height) + int(chrome))
            assert browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))

            # switching metric re-renders from the API (clicked in the page's own thread: no
            # handle to a tab a redraw may have replaced)
            browser.execute_script(
                'document.querySelector(\'button.tab[data-metric="converted"]\').click()')
            conv = series_of(api, "converted", "treatment")["estimators"][
                series_of(api, "converted", "treatment")["primary"]]
            page = wait.until(lambda d: (p := read_page(d))["metric"] == "converted" and p)
            assert page["chart_metric"] == "converted"
            assert page["primary_effect"] == js_fmt(conv["effect"])

            check_slices(browser, wait, server.url, exp)

            # without a token the page asks for one
            browser.execute_script("sessionStorage.clear()")
            browser.get(f"{server.url}/")
            wait.until(lambda d: d.find_element(By.ID, "login").is_displayed())
