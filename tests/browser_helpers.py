"""Headless chromium for the page tests (Debian's chromium through chromedriver)."""

from __future__ import annotations

import os
import shutil

import pytest


def browser_or_skip() -> tuple[str, str]:
    """(chromium, chromedriver), or a skip (a failure under ``CI=true``) when they are absent."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    reason = "chromium/chromedriver absent; install with `sudo sh tests/browser/install.sh`"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: browser tests must run)", pytrace=False)
    pytest.skip(reason)


def chrome(*args: str):
    """A headless chromium driven by selenium, its console log kept; ``args`` add flags."""
    chromium, driver = browser_or_skip()
    from selenium import webdriver

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", *args):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=driver))


def console_errors(browser) -> list[dict]:
    return [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
