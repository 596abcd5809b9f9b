"""Headless Chromium for the dashboard tests (Selenium + Debian chromium/chromium-driver).

:func:`require_browser` skips with a reason when chromium, chromedriver, the
selenium package or axe-core (npm) are missing; with ``NBGW_REQUIRE_INTEROP=1``
it fails instead, so CI cannot pass by skipping.  axe-core comes from
``$NBGW_AXE_DIR`` (default ``/tmp/nbgw-axe``), installed there with npm on first
use.  Screenshots go to ``$NBGW_UI_SCREENSHOTS`` (default: a new temporary
directory, printed once).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from typing import Any

import pytest

REQUIRE = os.environ.get("NBGW_REQUIRE_INTEROP") == "1"
AXE_DIR = os.environ.get("NBGW_AXE_DIR", "/tmp/nbgw-axe")
AXE_JS = os.path.join(AXE_DIR, "node_modules", "axe-core", "axe.min.js")
DESKTOP = (1280, 900)
PHONE = (390, 844)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]
_shots: list[str] = []


def _missing(reason: str) -> None:
    if REQUIRE:
        pytest.fail(f"browser test cannot run but NBGW_REQUIRE_INTEROP=1: {reason}")
    pytest.skip(reason)


def require_browser() -> tuple[str, str]:
    """Paths of chromium and chromedriver, with axe-core available (or skip/fail)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        _missing("chromium and chromium-driver (Debian packages) are not installed")
    try:
        import selenium  # noqa: F401
    except ImportError:
        _missing("the selenium package is not installed (pip install -e '.[test]')")
    if not os.path.exists(AXE_JS):
        npm = shutil.which("npm")
        if not npm:
            _missing("axe-core is not in $NBGW_AXE_DIR and npm is not installed")
        os.makedirs(AXE_DIR, exist_ok=True)
        r = subprocess.run([npm, "install", "-s", "--no-audit", "--no-fund", "--prefix",
                            AXE_DIR, "axe-core"], capture_output=True, text=True, timeout=300)
        if r.returncode != 0 or not os.path.exists(AXE_JS):
            _missing(f"npm install axe-core failed: {r.stderr[-300:]}")
    return chromium, driver


def screenshot_dir() -> str:
    if not _shots:
        path = os.environ.get("NBGW_UI_SCREENSHOTS") or tempfile.mkdtemp(prefix="nbgw-ui-shots-")
        os.makedirs(path, exist_ok=True)
        print(f"dashboard screenshots in {path}")
        _shots.append(path)
    return _shots[0]


class Browser:
    """One headless Chromium with a new empty profile."""

    def __init__(self) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        chromium, driver = require_browser()
        self.profile = tempfile.mkdtemp(prefix="nbgw-chromium-")
        opts = webdriver.ChromeOptions()
        opts.binary_location = chromium
        for flag in FLAGS:
            opts.add_argument(flag)
        opts.add_argument(f"--user-data-dir={self.profile}")
        opts.add_argument(f"--window-size={DESKTOP[0]},{DESKTOP[1]}")
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(driver), options=opts)
        self.driver.set_page_load_timeout(20)
        with open(AXE_JS) as f:
            self._axe = f.read()

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)

    def shoot(self, name: str) -> None:
        """Full-page screenshots of the current page at desktop and phone width
        (the window is made as tall as the page, up to 10000 px)."""
        d = self.driver
        for label, (w, h) in (("desktop", DESKTOP), ("phone", PHONE)):
            d.set_window_size(w, h)
            inner = d.execute_script("return window.innerHeight") or h
            full = d.execute_script("return document.documentElement.scrollHeight") or h
            if full > inner:  # the outer window also holds the (headless) chrome
                d.set_window_size(w, min(10000, h + full - inner))
            d.save_screenshot(os.path.join(screenshot_dir(), f"{name}-{label}.png"))
        d.set_window_size(*DESKTOP)

    def phone_fits(self) -> bool:
        """At phone width the page itself does not scroll sideways (tables may)."""
        d = self.driver
        d.set_window_size(*PHONE)
        try:
            return d.execute_script(
                "return document.documentElement.scrollWidth <= window.innerWidth + 1")
        finally:
            d.set_window_size(*DESKTOP)

    def axe(self) -> list[dict]:
        """Serious and critical axe-core violations on the current page."""
        d = self.driver
        d.execute_script(self._axe)
        d.set_script_timeout(30)
        result = d.execute_async_script(
            "var done = arguments[arguments.length - 1];"
            "axe.run(document).then(function (r) { done(r.violations); })"
            ".catch(function (e) { done([{id: 'axe-error', impact: 'critical',"
            " help: String(e), nodes: []}]); });")
        return [{"id": v["id"], "impact": v["impact"], "help": v["help"],
                 "nodes": [n.get("html", "")[:200] for n in v.get("nodes", [])][:3]}
                for v in result if v.get("impact") in ("serious", "critical")]

    def click_and_wait(self, selector: str, timeout: float = 15) -> None:
        """Click *selector* and wait until a new document has loaded."""
        click_and_wait(self.driver, selector, timeout)

    def console(self) -> list[str]:
        return [e["message"] for e in self.driver.get_log("browser")]


def click_and_wait(driver: Any, selector: str, timeout: float = 15) -> None:
    """Click *selector* in *driver* and wait until a new document has loaded
    (a navigation started before the form's answer would abort it)."""
    import time

    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    driver.execute_script("window.__nbgwOld = true;")
    driver.find_element(By.CSS_SELECTOR, selector).click()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if driver.execute_script("return window.__nbgwOld !== true && "
                                     "document.readyState === 'complete';"):
                return
        except WebDriverException:  # between documents
            pass
        time.sleep(0.05)
    raise AssertionError(f"clicking {selector} loaded no new page")
