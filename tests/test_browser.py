"""The page in a real browser: Debian's chromium, headless, its microphone fed from a file of
espeak-ng speech, driven by Playwright for Python (pointed at the system chromium: no browser
download). The page streams the microphone through an AudioWorklet to the segmented route
and must show what a recognizer with a command grammar heard, word for word; the actors
panel, the token subprotocol and the reconnect state are checked the same way."""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import soundfile
from playwright.sync_api import Browser, Page, WebSocket, expect, sync_playwright

from audio import speech
from conversation import Transcript, check_regions_answered
from server import Server, actor, wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
GRAMMAR = ("#JSGF V1.0;\ngrammar c;\npublic <c> = <verb> the <thing>;\n<verb> = open | close | start | stop;\n"
           "<thing> = door | window | music;\n")
SCREENSHOT = Path(os.environ.get("STREAMER_SCREENSHOT", "")) if os.environ.get("STREAMER_SCREENSHOT") else None


@pytest.fixture(scope="module")
def microphone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the fake microphone hears, over and over: two commands with pauses."""
    s = speech(("open the door", "stop the music"), gap_s=1.2, lead_s=1.0)
    wav = tmp_path_factory.mktemp("mic") / "speech.wav"
    soundfile.write(wav, s.samples, 16000, subtype="PCM_16")
    return wav


@pytest.fixture(scope="module")
def browser(microphone: Path) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is required (bash .ci/run installs it)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={microphone}", "--autoplay-policy=no-user-gesture-required",
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            yield b
        finally:
            b.close()


def recognizer(tmp_path: Path, **env: str) -> Server:
    return Server(tmp_path / "run", env={"STREAMER_MODEL_NAME": "pocketsphinx",
                                         "STREAMER_MODEL_POCKETSPHINX_GRAMMAR": GRAMMAR, **env}).start()


@pytest.fixture(autouse=True)
def pages_closed(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test's pages close with it: a page left open goes on reconnecting to a stopped
    server's port for the rest of the module, where another test's server may be listening."""
    yield
    if "browser" in request.fixturenames:
        for context in request.getfixturevalue("browser").contexts:
            context.close()


def open_page(browser: Browser, srv: Server) -> Page:
    page = browser.new_page()
    page.goto(f"{srv.http}/")
    return page


def heard(page: Page) -> list[dict[str, Any]]:
    """Every message the page's WebSockets receive, as the server sent it."""
    got: list[dict[str, Any]] = []

    def watch(ws: WebSocket) -> None:
        ws.on("framereceived", lambda payload: got.append(json.loads(payload)) if isinstance(payload, str) else None)

    page.on("websocket", watch)
    return got


def test_the_page_streams_the_microphone_and_shows_what_was_said(browser: Browser, tmp_path: Path) -> None:
    srv = recognizer(tmp_path)
    try:
        page = open_page(browser, srv)
        messages = heard(page)
        page.click("#start")
        finals = page.locator("#finals li")
        expect(finals.filter(has_text="open the door").first).to_be_visible(timeout=30_000)
        expect(finals.filter(has_text="stop the music").first).to_be_visible(timeout=30_000)
        expect(page.locator("#status")).to_contain_text("streaming to segmented")
        # The segmenter's row (by actor name: in a shard the process column names it in its front's rows too).
        expect(page.locator('#actors tbody tr[data-name="segmenter"]')).to_have_count(1)
        assert page.locator("#actors tbody tr canvas").count() >= 2 * 6  # CPU and RSS charts per process
        assert page.locator("#errors div").count() == 0
        if SCREENSHOT is not None:
            page.wait_for_timeout(4000)  # a few seconds of charts
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        page.click("#stop")
        expect(page.locator("#status")).to_have_text("done", timeout=15_000)
        finals, errors = check_regions_answered(Transcript(messages, 1000), 0)  # the page stopped: closed 1000
        assert finals >= 2 and errors == 0
    finally:
        srv.stop()


def test_with_a_token_the_page_authenticates_by_subprotocol(browser: Browser, tmp_path: Path) -> None:
    srv = recognizer(tmp_path, STREAMER_SECURITY_TOKEN="s3cret")
    try:
        page = open_page(browser, srv)
        page.fill("#token", "s3cret")
        page.click("#start")
        expect(page.locator("#finals li").first).to_be_visible(timeout=30_000)
        page.click("#stop")
        wrong = open_page(browser, srv)
        wrong.fill("#token", "guess")
        wrong.click("#start")
        expect(wrong.locator("#errors")).to_contain_text("authentication failed", timeout=15_000)
    finally:
        srv.stop()


def test_a_token_the_server_refuses_or_a_browser_cannot_send_ends_the_attempt(browser: Browser, tmp_path: Path) -> None:
    """A refused token is refused again on every retry: the page stops (microphone off, Start
    again) and says why, instead of reconnecting forever with it. A token a browser cannot put
    in a subprotocol (a space, a comma) is said so at once, not left as an exception."""
    srv = Server(tmp_path / "run", env={"STREAMER_SECURITY_TOKEN": "s3cret", "STREAMER_ACTORS_MODELS": "1",
                                        "STREAMER_ACTORS_FRONTS": "1"}).start()
    try:
        page = open_page(browser, srv)
        page.fill("#token", "guess")
        page.click("#start")
        expect(page.locator("#status")).to_contain_text("closed (1008: authentication failed), not reconnecting",
                                                            timeout=15_000)
        expect(page.locator("#status")).to_have_class("status bad")
        expect(page.locator("#start")).to_be_enabled()
        expect(page.locator("#stop")).to_be_disabled()
        expect(page.locator("#errors div")).to_have_count(1)
        page.fill("#token", "two words")
        page.click("#start")
        expect(page.locator("#status")).to_contain_text("cannot be sent", timeout=15_000)
        expect(page.locator("#start")).to_be_enabled()
        expect(page.locator("#stop")).to_be_disabled()
        page.fill("#token", "s3cret")  # and the right one still works after both
        page.click("#start")
        expect(page.locator("#status")).to_contain_text("streaming to segmented", timeout=15_000)
        page.click("#stop")
        expect(page.locator("#status")).to_have_text("done", timeout=15_000)
        # Nowhere for a token to stay behind: the address, cookies, storage, the server's log.
        kept = page.evaluate("() => JSON.stringify([location.href, document.cookie, {...localStorage}, "
                             "{...sessionStorage}])")
        for token in ("s3cret", "guess", "two words"):
            assert token not in kept and token not in srv.log(), token
    finally:
        srv.stop()


def test_the_page_says_when_its_socket_drops_and_reconnects(browser: Browser, tmp_path: Path) -> None:
    srv = recognizer(tmp_path, STREAMER_ACTORS_FRONTS="1")
    try:
        page = open_page(browser, srv)
        page.click("#start")
        expect(page.locator("#status")).to_contain_text("streaming", timeout=15_000)
        before = actor(srv, "front-0")["pid"]
        os.kill(before, signal.SIGKILL)
        # Both at once: the page retries after a second and the front may be back by then.
        expect(page.locator("#status.bad")).to_contain_text("reconnecting", timeout=10_000)
        wait_for(lambda: actor(srv, "front-0")["pid"] not in (None, before), 15)
        expect(page.locator("#status")).to_contain_text("streaming", timeout=20_000)
        count = page.locator("#finals li").count()
        expect(page.locator("#finals li")).not_to_have_count(count, timeout=30_000)  # results again
    finally:
        srv.stop()


def test_the_actors_panel_keeps_the_loopback_rule_and_says_so(browser: Browser, tmp_path: Path) -> None:
    from test_hostile import _outward_address

    outward = _outward_address()
    if outward is None:
        pytest.skip("this machine has no non-loopback address to open the page from")
    srv = recognizer(tmp_path, STREAMER_SERVER_HOST="0.0.0.0")
    try:
        page = browser.new_page()
        page.goto(f"http://{outward}:{srv.port}/")
        expect(page.locator("#actors-note")).to_contain_text("loopback clients only", timeout=10_000)
        assert page.locator("#actors tbody tr").count() == 0
    finally:
        srv.stop()
