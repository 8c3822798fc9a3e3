"""Take docs/page.png: the try-it page after drawing a digit, in Debian's Chromium.

    python -m scripts.page_screenshot
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from pathlib import Path

import uvicorn
from playwright.sync_api import sync_playwright

from app.main import create_app
from app.settings import Settings

REPO = Path(__file__).resolve().parent.parent
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]


def draw_seven(page) -> None:
    box = page.locator("#pad").bounding_box()
    left, top = box["x"], box["y"]
    page.mouse.move(left + 70, top + 60)
    page.mouse.down()
    for x in range(70, 215, 8):
        page.mouse.move(left + x, top + 60)
    for step in range(1, 21):
        page.mouse.move(left + 210 - step * 5, top + 60 + step * 9.5)
    page.mouse.up()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "page.png")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = Settings(model_dir=REPO / "models", device="cpu", access_log=False)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, args=LAUNCH_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 820})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector(".card .facts:has-text('params')")
            draw_seven(page)
            page.wait_for_function("document.querySelectorAll('.preview[src^=\"data:\"]')"
                                   ".length === 3")
            page.locator(".card[data-style=sequential] summary").click()
            page.wait_for_timeout(300)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=True)
            browser.close()
    finally:
        server.should_exit = True
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
