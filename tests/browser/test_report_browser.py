"""The self-contained HTML report (`report.save_html`, `--html`, the dashboard's HTML download) opened from a file in
headless Chromium with every network request refused: the verdict, both texts with the first difference marked and
a token's numbers on hover, and every figure drawn by the page's own plotly.js."""

from __future__ import annotations

import pytest

from conftest import TINY

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tokenizer):
    from core import compare, port_from_hf
    from core.structured import random_gpt2

    hf = random_gpt2(seed=0, **TINY)
    report = compare((port_from_hf(hf), hf), "Hello, I'm a language model,", tokenizer=tokenizer, max_new_tokens=10,
                     num_return_sequences=3, fault="untied_lm_head")
    path = tmp_path_factory.mktemp("report") / "report.html"
    report.save_html(path)
    return report, path


def test_report_page_offline(saved):
    from playwright import sync_api

    from test_browser import CHROMIUM, CHROMIUM_ARGS

    report, path = saved
    asked = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
                          else (asked.append(route.request.url), route.abort()))
            page = context.new_page()
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(path.as_uri())
            expect = sync_api.expect
            expect(page.locator("#verdict")).to_contain_text(report.verdict)
            expect(page.locator("#verdict")).to_have_class("verdict-bad")
            expect(page.locator("#ours-text .pl-row")).to_have_count(3)
            expect(page.locator("#ours-text .tok.first[data-s]")).to_have_count(3)  # each row's first difference
            assert "HF:" in page.locator("#ours-text .tok[data-s]").first.get_attribute("title")  # hover text
            expect(page.locator(".js-plotly-plot")).to_have_count(5)
            for i in range(5):  # each figure drawn: its SVG and a trace (a heatmap draws into .hm)
                plot = page.locator(".js-plotly-plot").nth(i)
                expect(plot.locator(".main-svg").first).to_be_visible(timeout=30_000)
                expect(plot.locator(".trace, .hm").first).to_be_attached(timeout=30_000)
            names = page.locator(".js-plotly-plot .xtick text").all_text_contents()
            assert "lm_head" in names and "embeddings" in names  # the per-layer figure's axis, drawn
            expect(page.locator("#settings-table tr")).to_have_count(len(report.settings_table) + 1)
            assert errors == [] and asked == [], (errors, asked)
        finally:
            browser.close()
