"""`python app.py --yours FILE.py:NAME` in headless Chromium: the dashboard labels the user's model "Yours", draws
its per-layer view from the user's own blocks, and turns the bug lab off. The same server through gradio_client:
tests/app/test_client.py."""

from __future__ import annotations

import re

import pytest

from apphelper import start_yours_app, write_yours_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def user_file(tmp_path_factory):
    return write_yours_file(tmp_path_factory.mktemp("user"))


@pytest.fixture(scope="module")
def app(request, bpe_dir, user_file, tmp_path_factory):
    return start_yours_app(request, bpe_dir, user_file, log_dir=tmp_path_factory.mktemp("app-log"))


@pytest.mark.browser
def test_browser_shows_yours_and_its_per_layer_view(app):
    """In Chromium: the --yours dashboard labels the text panel "Yours", says identical, and draws the per-layer
    view from the user's own blocks (found by hooks on decoder.blocks)."""
    from playwright import sync_api

    from test_browser import CHROMIUM, CHROMIUM_ARGS, expect_plot, generate, open_tab, wait_verdict

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_context(viewport={"width": 1440, "height": 900}).new_page()
            page.set_default_timeout(15_000)
            page.goto(app.url)
            generate(page)
            wait_verdict(page, app, "identical to HuggingFace")
            sync_api.expect(page.locator("#ours-text .pl-head")).to_contain_text("Yours")
            sync_api.expect(page.locator("#ours-text .pl-row")).to_have_count(5)
            open_tab(page, "Per layer")
            expect_plot(page, "layers-fig")
            names = page.locator("#layers-fig .xtick text").all_text_contents()
            assert "embeddings" in names and "block 3" in names and "ln_f" in names, names
        finally:
            browser.close()


@pytest.mark.browser
@pytest.mark.parametrize("width", [1280, 420])
def test_browser_yours_mode_speaks_of_your_model_and_turns_the_bug_lab_off(app, user_file, width, tmp_path):
    """At a laptop's and a phone's width: the introduction is about the user's model, the bug lab (which changes
    our model only) is off with a note, and the per-layer axis names the model under test."""
    import os
    from pathlib import Path

    from playwright import sync_api

    from test_browser import CHROMIUM, CHROMIUM_ARGS, expect_plot, generate, open_tab, wait_verdict

    expect = sync_api.expect
    shots = Path(os.environ.get("PARITY_SHOTS_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_context(viewport={"width": width, "height": 860}).new_page()
            page.set_default_timeout(15_000)
            page.goto(app.url + "?num_sequences=2&max_new_tokens=4")
            expect(page.locator("#max_new_tokens input[type=number]")).to_have_value("4", timeout=30_000)
            intro = page.locator("h1").locator("xpath=..")
            expect(intro).to_contain_text(f"Your GPT-2 ({user_file.name}:model)")
            expect(intro).not_to_contain_text("Our from-scratch")
            expect(page.locator("#fault input")).to_be_disabled()
            expect(page.locator("#fault")).to_contain_text("Off: the bug lab injects its mistakes into our")
            expect(page.locator("#steps-caption")).to_contain_text("your next-token scores")
            generate(page)
            wait_verdict(page, app, "identical to HuggingFace")
            open_tab(page, "Per layer")
            expect_plot(page, "layers-fig")
            expect(page.locator("#layers-fig .ytitle")).to_have_text(re.compile(r"\(Yours vs HF\)$"))
            page.screenshot(path=str(shots / f"yours-{width}.png"), full_page=True)
        finally:
            browser.close()
