"""Open an HTML report in real headless Chromium (Debian's chromium + chromedriver, via Selenium)
and report what a reader would see: which images loaded, which tables are there."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("DYNSPARSE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("DYNSPARSE_CHROMEDRIVER", "/usr/bin/chromedriver")
#: where screenshots go (a CI artifact folder, for instance); default: the test's tmp_path
SCREENSHOT_DIR = os.environ.get("DYNSPARSE_SCREENSHOT_DIR")


def require_chromium() -> None:
    """Skip when Chromium is missing on a developer machine; fail in CI (``CI`` set), which must
    install it (``.ci/run`` does)."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (Path(p).exists() or shutil.which(p))]
    if missing:
        message = f"headless Chromium not installed ({', '.join(missing)} missing; apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def inspect(page: Path, screenshot: Path) -> dict[str, Any]:
    """Load ``page`` (file://) and return ``{"images": [{"kind", "complete", "width", "height"}],
    "tables": {class: count}, "title": str, "sections": int, "overflow_x": px}`` (``overflow_x`` > 0:
    a horizontal scroll bar at the 1400-px window); save a full-width screenshot."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    require_chromium()
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    try:
        driver.set_page_load_timeout(60)
        driver.get(page.resolve().as_uri())
        info = driver.execute_async_script(
            """
            const done = arguments[arguments.length - 1];
            const imgs = Array.from(document.images);
            Promise.all(imgs.map(i => i.decode().catch(() => null))).then(() => done({
              images: imgs.map(i => ({kind: i.dataset.kind, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight})),
              tables: Object.fromEntries(Array.from(new Set(Array.from(document.querySelectorAll('table')).map(t => t.className)))
                        .map(c => [c, document.querySelectorAll('table.' + c).length])),
              rows: document.querySelectorAll('table.cross-env tbody tr').length,
              title: document.title,
              sections: document.querySelectorAll('section.env').length,
              overflow_x: document.documentElement.scrollWidth - document.documentElement.clientWidth,
            }));
            """
        )
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(screenshot))
        return info
    finally:
        driver.quit()


def screenshot_path(tmp_path: Path, name: str) -> Path:
    return Path(SCREENSHOT_DIR) / name if SCREENSHOT_DIR else tmp_path / name
