"""A real browser (Debian's headless Chromium) submits a job, watches it finish and downloads the CSV.

The web app runs as a real HTTP server in a thread; the job runs on the real worker and model.
"""

from __future__ import annotations

import csv
import os
import shutil
import threading
import time

import pytest

from tests.fixtures.store import make_test_app

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

needs_chromium = pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                                    reason="needs Debian's chromium and chromium-driver: apt-get install -y chromium "
                                           "chromium-driver")


TOKEN = "browser-token-0123456789abcdef"


@pytest.fixture(scope="module", params=["open", "token"])
def live_server(request, celery_worker, pg_url):
    """The web app served over HTTP on a free local port (werkzeug, threaded): open, or with web.api_token set."""
    from werkzeug.serving import make_server

    config = {"API_TOKEN": TOKEN} if request.param == "token" else {}
    server = make_server("127.0.0.1", 0, make_test_app(pg_url, celery_worker.namespace, **config), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.token = config.get("API_TOKEN")
    yield f"http://127.0.0.1:{server.server_port}", server.token
    server.shutdown()
    thread.join(10)


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium through chromedriver, downloading into tmp_path/downloads."""
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager fetch a browser
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1000"):
        opts.add_argument(flag)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.downloads = downloads
    yield driver
    driver.quit()
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)


@needs_chromium
def test_browser_submits_watches_and_downloads(live_server, browser):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, token = live_server
    browser.get(base + "/")
    if token:  # a private deployment: the page sends the browser to the login form, and back after it
        assert "/login" in browser.current_url
        browser.find_element(By.ID, "token").send_keys("wrong")
        browser.find_element(By.ID, "login").click()
        assert "not the API token" in browser.find_element(By.ID, "login-error").text
        browser.find_element(By.ID, "token").send_keys(token)
        browser.find_element(By.ID, "login").click()
        WebDriverWait(browser, 20).until(lambda d: d.current_url.rstrip("/") == base)
        assert browser.find_element(By.ID, "logout").is_displayed()
    browser.find_element(By.ID, "instruction").send_keys("Answer only in French.")
    browser.find_element(By.ID, "query").send_keys("What is the capital of Italy?")
    multipliers = browser.find_element(By.ID, "multipliers")
    multipliers.clear()
    multipliers.send_keys("10")
    middle = browser.find_element(By.ID, "layer_modes-middle")
    if middle.is_selected():
        middle.click()
    assert browser.find_element(By.ID, "layer_modes-all").is_selected()
    browser.find_element(By.CSS_SELECTOR, "#advanced summary").click()
    tokens = browser.find_element(By.ID, "max_new_tokens")
    tokens.clear()
    tokens.send_keys("8")
    browser.find_element(By.ID, "submit").click()

    WebDriverWait(browser, 20).until(lambda d: "/jobs/" in d.current_url)
    job_id = browser.current_url.rstrip("/").rsplit("/", 1)[1]
    browser.execute_script("window.__notReloaded = true;")
    # job.js polls and updates the page in place; nobody reloads it.
    # job.js swaps in fresh server-rendered parts, so elements found a moment ago may go stale.
    wait = WebDriverWait(browser, 90, poll_frequency=0.3, ignored_exceptions=(StaleElementReferenceException,))
    wait.until(lambda d: d.find_element(By.ID, "job-status").text == "succeeded")
    # The final swap renders the finished job (data-finished="true") with every output.
    wait.until(lambda d: d.find_element(By.ID, "job").get_attribute("data-finished") == "true")
    assert browser.execute_script("return window.__notReloaded === true;")
    outputs = "#variant-all_x10 pre.output"  # original on the left, the boosted variant on the right
    original, boosted = wait.until(lambda d: [e.text for e in d.find_elements(By.CSS_SELECTOR, outputs)] or None)
    assert original.strip() and boosted.strip()

    browser.find_element(By.LINK_TEXT, "CSV").click()
    target = browser.downloads / "instaboost-runs.csv"
    deadline = time.monotonic() + 20
    while not target.exists():
        assert time.monotonic() < deadline, f"no download in {list(browser.downloads.iterdir())}"
        time.sleep(0.2)
    with open(target, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["variant"] for r in rows] == ["original", "all_x10"]
    assert {r["job_id"] for r in rows} == {job_id}
    assert rows[1]["multiplier"] == "10.0" and rows[1]["layers"] == "all" and rows[1]["max_new_tokens"] == "8"
    def squash(text: str) -> str:  # the DOM's rendered text may differ in whitespace only
        return " ".join(text.split())

    assert [squash(r["output_text"]) for r in rows] == [squash(original), squash(boosted)]

    if token:  # logging out closes the pages again
        browser.find_element(By.ID, "logout").click()
        WebDriverWait(browser, 20).until(lambda d: "/login" in d.current_url)
        browser.get(f"{base}/jobs/{job_id}")
        assert "/login" in browser.current_url
