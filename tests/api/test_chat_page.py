"""The chat page at /, driven in headless Chromium (Debian's) by playwright against a real ``engine serve``:
streamed text grows, Stop aborts the request on the server, model output never runs as HTML, the
conversation survives a reload, and the page asks for the API key once."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest
from conftest import metric, start_server, stop_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (apt-get install chromium; "
                                                          ".ci/run installs it)")
# docs/chat_page.png was taken by this test: ENGINE_SCREENSHOT=docs/chat_page.png python -m pytest tests/api/test_chat_page.py
SCREENSHOT_ENV = "ENGINE_SCREENSHOT"
KEY = "sesame"


@pytest.fixture(scope="module")
def page_server(default_model, tmp_path_factory):
    server = start_server(default_model, tmp_path_factory.mktemp("ui") / "server.log", "--served-model-name",
                          "smollm2", "--max-model-len", "2048", "--enforce-eager", "--api-key", KEY)
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, page_server):
    context = browser.new_context(viewport={"width": 1100, "height": 720})
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept(KEY))  # the page asks for the key once
    page.goto(page_server.url + "/")
    page.wait_for_function("document.getElementById('model').textContent === 'smollm2'")
    yield page
    context.close()


def ask_greedy(page, prompt: str, max_tokens: int):
    """Type a prompt and send it with Enter, greedy; the reply once it has finished (its stats line is there)."""
    page.fill("#max_tokens", str(max_tokens))
    page.fill("#temperature", "0")
    page.fill("#prompt", prompt)
    page.keyboard.press("Enter")
    reply = page.locator(".message.assistant").last
    reply.locator(".stats").wait_for(timeout=60_000)
    return reply


def test_a_reply_streams_in_and_shows_its_timings(page, page_server, tmp_path):
    page.fill("#system", "You are a helpful assistant. Answer in one sentence.")
    reply = ask_greedy(page, "What is the capital of France?", 24)
    stats = reply.locator(".stats").inner_text()
    assert re.fullmatch(r"TTFT \d+ ms · [\d.–]+ tok/s · \d+ tokens", stats), stats
    text = reply.inner_text()
    assert len(text) > len(stats) + 2
    page.reload()  # the conversation and the settings are kept in localStorage
    page.locator(".message.assistant .stats").wait_for(timeout=10_000)
    assert page.locator(".message.assistant").last.inner_text() == text
    assert (page.input_value("#max_tokens"), page.input_value("#temperature")) == ("24", "0")
    page.fill("#prompt", "And of Italy?")
    page.keyboard.press("Enter")
    page.locator(".message.assistant").nth(1).locator(".stats").wait_for(timeout=60_000)
    screenshot = Path(os.environ.get(SCREENSHOT_ENV, tmp_path / "chat_page.png"))
    page.screenshot(path=str(screenshot))
    assert screenshot.stat().st_size > 10_000


def test_stop_aborts_the_request_on_the_server(page, page_server):
    page.fill("#max_tokens", "1500")
    page.fill("#prompt", "Write a very long story about a lighthouse keeper.")
    page.click("#send")
    reply = page.locator(".message.assistant").last
    grown = []
    deadline = time.monotonic() + 60
    while len(grown) < 3 and time.monotonic() < deadline:  # watch the text grow, piece by piece
        text = reply.inner_text()
        if text and (not grown or len(text) > len(grown[-1])):
            grown.append(text)
        page.wait_for_timeout(50)
    assert len(grown) == 3 and metric(page_server, "engine:num_requests_running") == 1
    page.click("#stop")
    assert "stopped" in reply.locator(".stats").inner_text(timeout=10_000)
    deadline = time.monotonic() + 5
    while metric(page_server, "engine:num_requests_running") and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the server's own count, bounded by the deadline
    assert metric(page_server, "engine:num_requests_running") == 0
    assert metric(page_server, "engine:kv_cache_used_blocks") == 0


def test_a_reply_with_markup_shows_it_as_text(page):
    """The default model answers this with HTML (a <script> or other tags, in a code block or not): the page
    shows the tags as text and builds no element of its own from them."""
    reply = ask_greedy(page, "Write an HTML script tag that sets window.pwned to 1.", 60)
    assert re.search(r"<[a-z]+[ >]", reply.inner_text()), reply.inner_text()
    markdown = "p, ul, li, pre, code, strong, em, h3, h4, h5, h6, div.stats"
    assert reply.locator(f":scope *:not({markdown})").count() == 0
    assert page.evaluate("() => window.pwned") is None


def test_model_output_is_shown_as_text_never_run(page):
    """A stored reply holding markup (as a model may write) renders as text, its markdown as elements."""
    page.evaluate("""() => localStorage.setItem('engine.chat.v1', JSON.stringify([
        {role: 'user', content: 'show me'},
        {role: 'assistant', content: '<script>window.pwned = 1</script> <img src=x onerror="window.pwned = 2">' +
                                     '\\n\\n**bold** and `code`\\n\\n```\\n<b>not bold</b>\\n```'}]))""")
    page.reload()
    reply = page.locator(".message.assistant").last
    reply.wait_for()
    assert "<script>window.pwned = 1</script>" in reply.inner_text()
    assert page.evaluate("() => window.pwned") is None
    assert reply.locator("script, img, b").count() == 0
    assert reply.locator("strong").inner_text() == "bold" and reply.locator("pre code").inner_text() == "<b>not bold</b>\n"


def test_no_ui_turns_the_page_off(default_model, tmp_path):
    server = start_server(default_model, tmp_path / "noui.log", "--no-ui", "--max-model-len", "128", "--enforce-eager")
    try:
        assert httpx.get(server.url + "/").status_code == 404
    finally:
        stop_server(server)
