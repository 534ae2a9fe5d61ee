"""The search page in a real headless Chromium (Debian's chromium + chromium-driver, driven by selenium):
typing a query shows result images with scores, fetched from the index's files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

webdriver = pytest.importorskip("selenium.webdriver")

from mope_deploy.serve.server import build_app, serve_in_thread  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (Path(CHROMIUM).is_file() and Path(DRIVER).is_file()),
                                 reason="Debian's chromium and chromium-driver are not installed (.ci/run installs "
                                        "them: apt-get install -y chromium chromium-driver)")]


@pytest.fixture
def browser(tmp_path):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1200,900", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def test_query_shows_result_images(browser, demo_index, demo_encoder, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    app = build_app("demo", backend="torch", index=demo_index, encoder=demo_encoder)
    with serve_in_thread(app) as url:
        browser.get(url + "/")
        assert browser.title == "mope search"
        browser.find_element(By.ID, "q").send_keys("a large red star")
        browser.find_element(By.ID, "k").clear()
        browser.find_element(By.ID, "k").send_keys("8")
        browser.find_element(By.ID, "go").click()
        loaded = "return Array.from(document.querySelectorAll('img.result-image'))" \
                 ".filter(i => i.dataset.loaded === '1' && i.complete && i.naturalWidth > 0).length"
        WebDriverWait(browser, 60).until(lambda d: d.execute_script(loaded) == 8)
        scores = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".hit .score")]
        status = browser.find_element(By.ID, "status").text
        shot = tmp_path / "search-page.png"
        browser.save_screenshot(str(shot))
        if os.environ.get("MOPE_SCREENSHOT"):
            shutil.copy(shot, os.environ["MOPE_SCREENSHOT"])
    assert len(scores) == 8 and scores[0].startswith("#1") and "score 0." in scores[0]
    assert status.startswith("8 results")
    assert shot.stat().st_size > 10_000
