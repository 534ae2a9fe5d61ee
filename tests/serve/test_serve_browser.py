"""The search page in a real headless Chromium (Debian's chromium + chromium-driver, driven by selenium):
a text query, an image query (file picker and drag-and-drop) and a caption search show results fetched from the
index's files; a 401 points at the API-key box; the favicon is served."""

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


LOADED = ("return Array.from(document.querySelectorAll('img.result-image'))"
          ".filter(i => i.dataset.loaded === '1' && i.complete && i.naturalWidth > 0).length")


@pytest.fixture
def page(browser, demo_index, demo_encoder):
    """The page of a server over the demo index, opened in the browser."""
    app = build_app("demo", backend="torch", index=demo_index, encoder=demo_encoder)
    with serve_in_thread(app) as url:
        browser.get(url + "/")
        yield browser


def _first_hit(driver) -> str:
    from selenium.webdriver.common.by import By
    return driver.find_elements(By.CSS_SELECTOR, ".hit .caption")[0].text


def test_image_query_by_file_picker(page, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from mope_deploy.serve.build import load_collection

    query = tmp_path / "query.png"
    load_collection("synthetic:test").images[42].save(query)
    page.find_element(By.ID, "k").clear()
    page.find_element(By.ID, "k").send_keys("6")
    page.find_element(By.ID, "file").send_keys(str(query))
    WebDriverWait(page, 60).until(lambda d: d.execute_script(LOADED) == 6)
    assert page.find_element(By.ID, "status").text.startswith("6 results")
    assert "(image query)" in page.find_element(By.ID, "status").text
    assert _first_hit(page).startswith("42")                      # the image itself is the best match
    assert "score 1.000" in page.find_elements(By.CSS_SELECTOR, ".hit .score")[0].text


def test_image_query_by_drag_and_drop(page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    page.execute_script("""
        const done = arguments[0];
        fetch('/images/7').then(r => r.blob()).then(blob => {
          const dt = new DataTransfer();
          dt.items.add(new File([blob], 'seven.png', {type: 'image/png'}));
          const drop = document.getElementById('drop');
          drop.dispatchEvent(new DragEvent('dragover', {dataTransfer: dt, bubbles: true, cancelable: true}));
          drop.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
        });
    """)
    WebDriverWait(page, 60).until(lambda d: d.execute_script(LOADED) == 12)
    assert _first_hit(page).startswith("7")
    assert page.find_element(By.ID, "preview").is_displayed()


def test_caption_search_shows_matched_captions(page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    Select(page.find_element(By.ID, "over")).select_by_value("captions")
    page.find_element(By.ID, "q").send_keys("a large red star")
    page.find_element(By.ID, "go").click()
    WebDriverWait(page, 60).until(lambda d: d.execute_script(LOADED) == 12)
    matched = [e.text for e in page.find_elements(By.CSS_SELECTOR, ".hit .matched")]
    assert len(matched) == 12 and all(m.startswith("\u201c") and len(m) > 4 for m in matched)


def test_401_points_at_the_api_key_box(browser, demo_index, demo_encoder, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    keyfile = tmp_path / "key"
    keyfile.write_text("browser-test-key-0123456789")
    app = build_app("demo", backend="torch", index=demo_index, encoder=demo_encoder, api_key_file=keyfile)
    with serve_in_thread(app) as url:
        browser.get(url + "/")
        icon = browser.execute_script("return fetch('/favicon.ico').then(r => r.status + ' ' + "
                                      "r.headers.get('content-type'))")
        assert icon == "200 image/svg+xml"
        browser.find_element(By.ID, "q").send_keys("a red star")
        browser.find_element(By.ID, "go").click()
        WebDriverWait(browser, 60).until(lambda d: "API key box" in d.find_element(By.ID, "status").text)
        assert browser.find_element(By.ID, "keybox").get_attribute("open") is not None
        assert browser.switch_to.active_element.get_attribute("id") == "key"
        browser.find_element(By.ID, "key").send_keys("browser-test-key-0123456789")
        browser.find_element(By.ID, "go").click()
        WebDriverWait(browser, 60).until(lambda d: d.execute_script(LOADED) == 12)
