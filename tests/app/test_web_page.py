"""The try-it page in a real browser (Debian's Chromium driven by Playwright).

A real uvicorn server serves the committed models on 127.0.0.1. The test draws a digit
with mouse events, then uploads a file, and checks that all three models answer with
their 28x28 preview; any console error, or any request leaving 127.0.0.1, fails it.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time
from urllib.parse import urlparse

import pytest
import uvicorn

from app.main import create_app
from app.settings import Settings
from digit_contract import Style
from tests.conftest import REPO_ROOT
from tests.images import draw_one, encode

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]

playwright_api = pytest.importorskip("playwright.sync_api")
if not shutil.which("chromium"):
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)",
                allow_module_level=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serving(**settings):
    port = free_port()
    settings = Settings(model_dir=REPO_ROOT / "models", device="cpu", access_log=False,
                        **settings)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def server_url():
    with serving() as url:
        yield url


@pytest.fixture
def problems() -> list[str]:
    """What went wrong in the browser; must be empty when the test ends."""
    return []


@contextlib.contextmanager
def browser_page(url: str, problems: list[str]):
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})

        def guard(route):
            url = urlparse(route.request.url)
            if url.scheme in ("data", "blob") or url.hostname == "127.0.0.1":
                route.continue_()
            else:
                problems.append(f"request left 127.0.0.1: {route.request.url}")
                route.abort()

        context.route("**/*", guard)
        page = context.new_page()
        page.on("console", lambda message: message.type == "error"
                and problems.append(f"console error: {message.text}"))
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        page.goto(url)
        yield page
        browser.close()


@pytest.fixture
def page(server_url, problems):
    with browser_page(server_url, problems) as page:
        page.wait_for_selector(".card .facts:has-text('params')")
        yield page
    assert problems == []


def assert_three_answers(page) -> list[str]:
    page.wait_for_function(
        "() => [...document.querySelectorAll('.card .preview')].filter(i => i.src.startsWith("
        "'data:image/png') && i.complete && i.naturalWidth === 28).length === 3")
    cards = page.locator(".card")
    assert cards.count() == 3
    assert [cards.nth(i).get_attribute("data-style") for i in range(3)] == [s.value for s in Style]
    digits = [cards.nth(i).locator(".digit").inner_text() for i in range(3)]
    assert all(d.isdigit() for d in digits)
    assert page.locator(".bars li.top").count() == 3
    return digits


def test_drawing_a_one_gets_three_answers(page):
    box = page.locator("#pad").bounding_box()
    x = box["x"] + box["width"] / 2
    page.mouse.move(x, box["y"] + 40)
    page.mouse.down()
    for step in range(1, 21):
        page.mouse.move(x + step * 0.5, box["y"] + 40 + step * 10)
    page.mouse.up()
    assert assert_three_answers(page) == ["1", "1", "1"]
    assert "sequential v4: 1" in page.locator("#status").inner_text()


def test_uploading_a_file_gets_three_answers(page, tmp_path):
    photo = tmp_path / "one.jpg"
    photo.write_bytes(encode(draw_one(mode="RGB", ink=(20, 20, 90), paper=(235, 230, 220)),
                             "JPEG"))
    page.set_input_files("#file", str(photo))
    assert assert_three_answers(page) == ["1", "1", "1"]


def test_summaries_and_facts_are_shown(page):
    page.locator(".card[data-style=sequential] summary").click()
    rows = page.locator(".card[data-style=sequential] tbody tr")
    assert rows.count() == 16  # fifteen layers and the total
    assert "242,218" in rows.nth(15).inner_text()
    facts = page.locator(".card[data-style=functional] .facts").inner_text()
    assert "validation" in facts and "/CPU:0" in facts


def test_an_unreadable_upload_shows_the_error(page, problems, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not really a png")
    page.set_input_files("#file", str(broken))
    page.wait_for_selector("#status.error")
    assert "not an image format" in page.locator("#status").inner_text()
    # Chromium logs each 4xx answer itself: wait for that one (it is expected), then drop it.
    expected = "status of 415"
    for _ in range(100):
        if any(expected in p for p in problems):
            break
        page.wait_for_timeout(50)
    problems[:] = [p for p in problems if expected not in p]


def test_several_files_get_a_row_each_and_a_bad_one_only_its_own_error(page, tmp_path):
    good = tmp_path / "one.png"
    good.write_bytes(encode(draw_one()))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not really a png")
    page.set_input_files("#file", [str(good), str(broken)])
    page.wait_for_selector("#batch:not([hidden]) tbody tr")
    rows = page.locator("#batch tbody tr")
    assert rows.count() == 2
    good_row = rows.nth(0).locator("td").all_inner_texts()
    bad_row = rows.nth(1).locator("td").all_inner_texts()
    assert good_row == ["one.png", "1", "1", "1"]
    assert bad_row[0] == "broken.png"
    assert all(cell.startswith("415: ") and "broken.png" in cell for cell in bad_row[1:])
    assert "1 of 2 images read" in page.locator("#status").inner_text()


def test_the_page_fits_a_phone_screen(page):
    page.set_viewport_size({"width": 360, "height": 740})  # reading sizes forces the layout
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    box = page.locator(".card[data-style=subclassed]").bounding_box()
    assert box["width"] <= 360


def test_the_controls_are_labelled_and_reachable_by_keyboard(page):
    assert page.locator("#pad").get_attribute("aria-label")
    assert page.locator("#status").get_attribute("aria-live") == "polite"
    focused = []
    for _ in range(3):
        page.keyboard.press("Tab")
        focused.append(page.evaluate("document.activeElement.id || document.activeElement.tagName"))
    assert focused == ["pad", "clear", "file"]


def test_a_service_with_keys_asks_for_one(problems):
    with serving(api_keys="page-key-123") as url, browser_page(url, problems) as page:
        page.wait_for_selector("#key-form:not([hidden])")
        assert "needs an API key" in page.locator("#status").inner_text()
        page.fill("#key", "wrong-key")
        page.press("#key", "Enter")
        page.wait_for_selector("#key-form:not([hidden])")
        assert "refused" in page.locator("#status").inner_text()
        page.fill("#key", "page-key-123")
        page.press("#key", "Enter")
        page.wait_for_selector(".card .facts:has-text('params')")
        page.set_input_files("#file", files=[{"name": "one.png", "mimeType": "image/png",
                                               "buffer": encode(draw_one(), "PNG")}])
        assert assert_three_answers(page) == ["1", "1", "1"]
    # Chromium logs each 401 itself; those were expected, nothing else is.
    assert [p for p in problems if "status of 401" not in p] == []


def test_two_versions_of_a_style_are_compared_side_by_side(problems):
    with serving(model_versions="sequential=all") as url, browser_page(url, problems) as page:
        page.wait_for_selector(".card .facts:has-text('params')")
        sequential = page.locator(".card[data-style=sequential]").first
        picker = sequential.locator("select.version")
        assert picker.locator("option").all_inner_texts() == ["v1", "v2", "v3", "v4 (default)"]
        assert picker.input_value() == "4"
        # The other styles serve one version: nothing to pick or compare.
        assert page.locator(".card[data-style=functional] select.version").is_disabled()
        assert page.locator(".card[data-style=functional] .compare").is_hidden()

        sequential.locator(".compare").click()
        cards = page.locator(".card")
        assert cards.count() == 4
        assert [cards.nth(i).get_attribute("data-version") for i in range(2)] == ["4", "1"]
        page.wait_for_function("document.querySelectorAll('.card')[1]"
                               ".querySelectorAll('tbody tr').length > 1")  # v1's summary

        page.set_input_files("#file", files=[{"name": "one.png", "mimeType": "image/png",
                                               "buffer": encode(draw_one(), "PNG")}])
        page.wait_for_function(
            "() => [...document.querySelectorAll('.card .preview')].filter(i => i.complete "
            "&& i.naturalWidth === 28).length === 4")
        status = page.locator("#status").inner_text()
        assert "sequential v4: 1" in status and "sequential v1: 1" in status

        # Pick v1 on the first card instead, and remove the added one.
        picker.select_option("1")
        assert sequential.get_attribute("data-version") == "1"
        cards.nth(1).locator(".remove").click()
        assert cards.count() == 3
    assert problems == []
