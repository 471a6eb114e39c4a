"""Screenshots of `mmlens serve` for the README (Playwright + Debian chromium, demo model on loopback).

    PYTHONPATH=src python docs/screenshots.py        # writes docs/serve-*.png
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from playwright.sync_api import sync_playwright

import mmlens

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update"]
OUT = Path(__file__).parent


def main() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = mmlens.serve("demo", port=port, block=False)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=FLAGS, headless=True)
            pg = browser.new_page(viewport={"width": 1360, "height": 900}, device_scale_factor=1)
            pg.set_default_timeout(60_000)
            pg.goto(f"http://127.0.0.1:{port}/")
            pg.wait_for_selector("#samples .thumbnail-item")
            pg.locator("#samples .thumbnail-item").nth(4).click()
            pg.wait_for_function("document.querySelector('#ask-msg').innerText.includes('loaded')")
            pg.click("#generate")
            pg.wait_for_selector("#answer-tokens label")
            pg.locator("#answer-tokens label").first.click()
            pg.click("#method input")
            pg.locator('#method li[role=option][aria-label^="integrated_gradients  ·"]').click()
            pg.click("#explain")
            pg.wait_for_selector("#heatmap .mm-heat")
            pg.wait_for_timeout(500)
            pg.screenshot(path=str(OUT / "serve-explain.png"), full_page=True)
            pg.get_by_role("tab", name="Inside").click()
            pg.click("#lens-run")
            pg.wait_for_selector("#lens-summary")
            for name, button, box in (("Causal tracing", "#trace-run", "#trace-grid table"),
                                      ("Attention knockout", "#knockout-run", "#knockout-grid table"),
                                      ("Heads: attention share on the image", "#heads-run", "#heads-grid table")):
                pg.get_by_text(name, exact=True).click()
                pg.click(button)
                pg.wait_for_selector(box)
            pg.wait_for_timeout(500)
            pg.screenshot(path=str(OUT / "serve-inside.png"), full_page=True)
            pg.get_by_role("tab", name="Export").click()
            pg.click("#save")
            pg.wait_for_selector("#download a")
            pg.wait_for_timeout(300)
            pg.screenshot(path=str(OUT / "serve-export.png"), full_page=True)
            browser.close()
    finally:
        server.close()
    print(*sorted(OUT.glob("serve-*.png")), sep="\n")


if __name__ == "__main__":
    main()
