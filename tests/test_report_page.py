"""The night's HTML report of ``make demo``'s backlog in a real headless browser (Debian's
chromium through chromedriver): no console errors, the urgent calls in rank order, every call's
section and timeline reachable, the unscored calls listed, a screenshot that is not blank, and the
index page linking to the night."""

from __future__ import annotations

import io as _io
from pathlib import Path

import numpy as np
import pytest
from browser_helpers import chrome, console_errors

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser():
    b = chrome("--window-size=1280,1600")
    yield b
    b.quit()


@pytest.fixture(scope="module")
def demo_night(ray_session, score_model, tmp_path_factory):
    """``make demo``'s backlog (ser_ray.demo.demo_backlog) scored like the demo scores it."""
    from ser_ray.config import ScoreConfig
    from ser_ray.demo import DEMO_NIGHT, demo_backlog
    from ser_ray.score import read_calls, run_score

    root = tmp_path_factory.mktemp("demo-night")
    backlog, metadata, _ = demo_backlog(root)
    run = run_score(ScoreConfig(model=str(score_model), inputs=(str(backlog),),
                                output=str(root / "scored"), run_date=DEMO_NIGHT,
                                customer_channel="right", metadata=str(metadata)), progress=False)
    return {"run": run, "calls": read_calls(root / "scored", DEMO_NIGHT), "out": root / "scored"}


def test_the_report_page_loads_clean_with_the_calls_in_rank_order(browser, demo_night):
    from selenium.webdriver.common.by import By

    page = Path(demo_night["run"]["outputs"]["report_html"])
    browser.get(page.as_uri())
    assert console_errors(browser) == []
    calls = demo_night["calls"]
    scored = calls[calls["status"] == "scored"].sort_values("urgency_rank")
    rows = browser.find_elements(By.CSS_SELECTOR, "table#urgent tbody tr")
    shown = [r.find_element(By.CSS_SELECTOR, "td.call-id").text for r in rows]
    assert shown == list(scored["call_id"].head(len(rows))) and len(rows) == min(len(scored), 20)
    # The metadata columns are shown with the calls.
    head = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "table#urgent thead th")]
    assert {"agent", "queue"} <= set(head)
    # Each ranked call links to its section, which holds a timeline with a peak marker.
    for r in rows:
        target = r.find_element(By.CSS_SELECTOR, "td.call-id a").get_attribute("href").split("#")[1]
        section = browser.find_element(By.ID, target)
        assert section.find_elements(By.CSS_SELECTOR, "svg polyline.negative")
        assert section.find_elements(By.CSS_SELECTOR, "svg line.peak")
    # The calls that were not scored, each with its reason.
    unscored = calls[calls["status"] != "scored"]
    listed = browser.find_elements(By.CSS_SELECTOR, "table#unscored tbody tr")
    assert sorted(r.find_element(By.CSS_SELECTOR, "td").text for r in listed) == sorted(unscored["call_id"])
    assert "How urgency is computed" in browser.find_element(By.TAG_NAME, "body").text
    # the night's cost, and each top call's worst moment as a clip the browser can play
    assert "per audio hour" in browser.find_element(By.CSS_SELECTOR, "li.cost").text
    assert len(browser.find_elements(By.CSS_SELECTOR, "audio.clip")) == 2 * len(rows)
    browser.set_script_timeout(30)
    loaded = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const a = document.querySelector('audio.clip');
        a.addEventListener('loadedmetadata', () => done(['ok', a.duration]));
        a.addEventListener('error', () => done(['error', a.error && a.error.code]));
        a.preload = 'metadata'; a.load();""")
    assert loaded[0] == "ok" and loaded[1] > 1, loaded


def test_a_screenshot_of_the_page_is_not_blank(browser, demo_night):
    from PIL import Image

    browser.get(Path(demo_night["run"]["outputs"]["report_html"]).as_uri())
    img = np.asarray(Image.open(_io.BytesIO(browser.get_screenshot_as_png())).convert("RGB"), float)
    assert img.shape[0] > 500 and img.shape[1] > 800
    assert img.std() > 10  # text, tables and lines, not one flat colour
    non_white = (img.min(axis=2) < 200).mean()
    assert 0.01 < non_white < 0.6


def test_the_index_lists_the_night_and_links_to_its_page(browser, demo_night):
    from selenium.webdriver.common.by import By

    run = demo_night["run"]
    browser.get(Path(run["outputs"]["report_index"]).as_uri())
    assert console_errors(browser) == []
    rows = browser.find_elements(By.CSS_SELECTOR, "table#nights tbody tr")
    assert len(rows) == 1 and run["run_date"] in rows[0].text
    rows[0].find_element(By.TAG_NAME, "a").click()
    assert Path(browser.current_url.replace("file://", "")).name == f"{run['run_id']}.html"
    assert browser.find_elements(By.CSS_SELECTOR, "table#urgent tbody tr")
    assert console_errors(browser) == []
