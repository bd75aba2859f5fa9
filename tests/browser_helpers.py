"""Headless Debian Chromium driven by Playwright (no browser download: the system's /usr/bin/chromium)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from playwright.async_api import Browser, Page, async_playwright, expect

# A busy 2-core CI machine renders slowly: page assertions wait up to 20 s instead of Playwright's 5 s.
expect.set_options(timeout=20_000)

CHROMIUM = os.environ.get("MPO_CHROMIUM", "/usr/bin/chromium")
#: Screenshots of the dashboard tests: CI keeps this folder as its artifacts.
SCREENSHOTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "dashboard"
# Without the background-networking flags Chromium keeps dialling Google on a closed network.
_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    if not Path(CHROMIUM).is_file():
        raise FileNotFoundError(f"{CHROMIUM} missing: `apt-get install chromium` (deploy/install.sh does, with dev)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=_FLAGS)
        try:
            yield browser
        finally:
            await browser.close()


async def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path
