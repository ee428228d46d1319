"""End to end in a real browser: the dashboard served by `python app.py`, driven by headless Chromium.

One test walks a user's path: type a prompt, Generate, read the verdict and both texts, look at every plot
(each tab; Gradio renders only the visible tab), move the step slider, download the run as JSON and as one HTML
page, and inject a bug-lab fault. Others: a shared link restores the inputs and a fault's divergence panel is never blank, a click on
a token opens its step and row, an error replaces the verdict and stays, and a phone-width page shows the verdict
on its first screen after Generate. One server for the whole module.

At a laptop's width (1280 px) and a phone's (420 px): a refused input is one message, in the verdict panel (no
error badges, no toasts); every tab is reachable, the log-scale box keeps its label, no plot's toolbar covers its
title and no step label its legend; "Check a result file" sits by the verdict, which comes into view after Check;
"The seed's case" runs the seed's call in one click and shows what HF's own settings do.

The end-to-end test saves a screenshot of the dashboard to a temporary folder, or to $PARITY_SCREENSHOT when set
(`make screenshot` sets it to docs/screenshot.png, the README's picture; `make test` never rewrites it). The
width tests save theirs to a temporary folder, or to $PARITY_SHOTS_DIR when set (never into docs/).

Needs the `playwright` Python package and a Chromium binary ($CHROMIUM, else /usr/bin/chromium or `chromium`
on PATH); `make test` installs both, and a missing one fails the test (never a silent skip). Run: `python -m pytest -m browser tests/browser/test_browser.py`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from apphelper import start_app
from core.faults import FAULTS
from demo.handlers import expand_report

pytestmark = pytest.mark.browser

CHROMIUM = (os.environ.get("CHROMIUM") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None)
            or shutil.which("chromium") or "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
PROMPT = "The meaning of life is"
FAULT = "qk_swapped"  # "q and k swapped" in the bug-lab dropdown
RUN_TIMEOUT_MS = 90_000  # one Generate on the tiny model: ~5 s warm, ~15 s for the first, more under load
UI_TIMEOUT_MS = 15_000
PLOT_TIMEOUT_MS = 40_000  # a plot arrives after the verdict; on a busy 2-core machine it can take a while
TABS = {  # tab label -> the plots (elem_ids) it shows
    "Per step": ["step-fig"],
    "Top-50 at a step": ["top50-fig"],
    "Over steps": ["heat-fig", "entropy-fig"],
    "Per layer": ["layers-fig"],
}


@pytest.fixture(scope="module")
def app(request, bpe_dir, tmp_path_factory):
    return start_app(request, bpe_dir, log_dir=tmp_path_factory.mktemp("app-log"))


@pytest.fixture(scope="module")
def browser():
    from playwright import sync_api

    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no Chromium at {CHROMIUM} (install it, e.g. `make chromium`, or set $CHROMIUM)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, app):
    context = browser.new_context(viewport={"width": 1440, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    page.js_errors = []  # uncaught exceptions in the page: a broken front end
    page.on("pageerror", lambda exc: page.js_errors.append(str(exc)))
    yield page
    context.close()


def _expect():
    from playwright.sync_api import expect

    return expect


def plot_title(page, elem_id: str) -> str:
    """The rendered plotly title of one gr.Plot (SVG text, so textContent rather than innerText)."""
    return page.locator(f"#{elem_id} .gtitle").first.text_content() or ""


def expect_plot(page, elem_id: str, title: str | re.Pattern | None = None) -> None:
    """The gr.Plot `elem_id` has a rendered plotly SVG with at least one trace (and the given title)."""
    expect = _expect()
    plot = page.locator(f"#{elem_id}")
    expect(plot.locator(".js-plotly-plot .main-svg").first).to_be_visible(timeout=PLOT_TIMEOUT_MS)
    expect(plot.locator(".js-plotly-plot .trace").first).to_be_attached(timeout=PLOT_TIMEOUT_MS)
    if title is not None:
        expect(plot.locator(".gtitle").first).to_have_text(title)


def open_tab(page, name: str) -> None:
    tab = page.get_by_role("tab", name=name, exact=True)
    tab.click()
    _expect()(tab).to_have_attribute("aria-selected", "true")


def generate(page) -> None:
    page.locator("#generate").click()


def app_log_on_failure(app) -> str:
    return f"\n--- app log ({app.log_path}) ---\n{app.log()[-4000:]}"


def wait_verdict(page, app, text: str | re.Pattern, timeout: int = RUN_TIMEOUT_MS) -> None:
    try:
        _expect()(page.locator("#verdict")).to_contain_text(text, timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}{app_log_on_failure(app)}") from None


def set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def test_dashboard_end_to_end(page, app, tmp_path):
    expect = _expect()
    page.goto(app.url)
    expect(page.locator("#generate")).to_be_visible(timeout=30_000)
    expect(page.locator("#verdict")).to_contain_text("Press Generate")

    # 1. A clean run: our GPT-2 agrees with HF's token for token.
    prompt = page.locator("#prompt textarea")
    prompt.fill(PROMPT)
    expect(prompt).to_have_value(PROMPT)
    generate(page)
    try:
        expect(page.locator("#verdict")).to_contain_text("identical to HuggingFace", timeout=RUN_TIMEOUT_MS)
    except AssertionError as exc:
        raise AssertionError(f"{exc}{app_log_on_failure(app)}") from None
    expect(page.locator("#verdict")).to_contain_text("max |Δlogit|")
    for side in ("ours-text", "hf-text"):
        expect(page.locator(f"#{side}")).to_contain_text(f"[1] {PROMPT}")
        expect(page.locator(f"#{side}")).to_contain_text(f"[5] {PROMPT}")  # 5 rows by default
    ours = page.locator("#ours-text").inner_text().replace("Ours", "", 1).strip()
    hf = page.locator("#hf-text").inner_text().replace("HuggingFace", "", 1).strip()
    assert ours == hf and len(ours) > 5 * (len(PROMPT) + 4), (ours, hf)

    expect(page.locator("#ours-text")).not_to_contain_text("first difference")  # no legend chips: nothing to mark

    # The default tab's plot, then a screenshot (the README's, under `make screenshot`).
    expect_plot(page, "step-fig", "Where the two models differ, step by step")
    shot = Path(os.environ.get("PARITY_SCREENSHOT") or tmp_path / "screenshot.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(300)  # let plotly finish laying out legends/annotations before the picture
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000

    # 2. Every tab's plot(s) render.
    for tab, plots in TABS.items():
        open_tab(page, tab)
        for elem_id in plots:
            expect_plot(page, elem_id)
    expect(page.locator("#layers-fig .gtitle")).to_have_text("Per layer: every layer within tolerance")
    expect(page.locator("#heat-fig .hm").first).to_be_attached()  # the heatmap itself, not just the markers
    open_tab(page, "Settings")
    table = page.locator("#settings-table")
    expect(table).to_be_visible()
    for setting in ("do_sample", "temperature", "top_k", "top_p", "max_new_tokens", "num_return_sequences"):
        expect(table).to_contain_text(setting)
    # max_length's source: the prompt plus the new tokens the user chose, not transformers' default (20)
    max_length_row = table.get_by_role("row").filter(has_text="max_length").first
    expect(max_length_row).to_contain_text(re.compile(r"you: prompt \(\d+ tokens\) \+ 22 new tokens"))
    expect(max_length_row).not_to_contain_text("default")

    # 3. The step slider redraws the top-50 chart for another step.
    open_tab(page, "Top-50 at a step")
    expect(page.locator("#top50-fig .gtitle")).to_have_text(re.compile(r"^Step 0, row 1: sampled "))
    before = plot_title(page, "top50-fig")
    number = page.locator("#step-slider input[type=number]")
    expect(number).to_have_attribute("max", "21")  # 22 new tokens -> steps 0..21
    number.fill("7")
    number.press("Enter")
    expect(page.locator("#top50-fig .gtitle")).to_have_text(re.compile(r"^Step 7, row 1: sampled "))
    assert plot_title(page, "top50-fig") != before
    expect(page.locator("#step-slider input[type=range]")).to_have_value("7")
    # ... and the keyboard on the range input does too.
    page.locator("#step-slider input[type=range]").press("ArrowRight")
    expect(page.locator("#top50-fig .gtitle")).to_have_text(re.compile(r"^Step 8, row 1: sampled "))

    # 4. The run downloads as JSON with the full report.
    open_tab(page, "Download")
    link = page.locator("#json-file a[download]").first
    expect(link).to_be_visible()
    with page.expect_download() as info:
        link.click()
    download = info.value
    assert download.suggested_filename == "parity_report.json"
    report = expand_report(json.loads(Path(download.path()).read_text(encoding="utf-8")))
    assert {"verdict", "layers", "steps", "rows"} <= report.keys()
    assert report["verdict"] == "identical to HuggingFace"
    assert report["prompt"] == PROMPT and len(report["rows"]) == 5 and len(report["steps"]) == 22
    expect(page.locator("#csv-file a[download]").first).to_be_visible()
    # ... and, on request, as one HTML page carrying the same run
    page.locator("#html-button").click()
    link = page.locator("#html-file a[download]").first
    expect(link).to_be_visible(timeout=UI_TIMEOUT_MS)
    with page.expect_download() as info:
        link.click()
    assert info.value.suggested_filename == "parity_report.html"
    from demo.report import read_report_html

    assert read_report_html(Path(info.value.path()).read_text(encoding="utf-8"))["rows"] == report["rows"]

    # 5. Bug lab: swap q and k in our model; the verdict names the first diverging layer.
    page.locator("#fault input").click()
    page.get_by_role("option", name=FAULTS[FAULT].title, exact=True).click()
    expect(page.locator("#fault input")).to_have_value(FAULTS[FAULT].title)
    generate(page)
    verdict = page.locator("#verdict")
    try:
        expect(verdict).to_contain_text("logits differ", timeout=RUN_TIMEOUT_MS)
    except AssertionError as exc:
        raise AssertionError(f"{exc}{app_log_on_failure(app)}") from None
    expect(verdict).to_contain_text("first diverging layer")
    expect(verdict).to_contain_text(f"bug lab: {FAULTS[FAULT].title}")
    open_tab(page, "Per layer")
    expect_plot(page, "layers-fig", re.compile(r"^Per layer: first diverging layer "))
    expected_layer = FAULTS[FAULT].first_layer  # where this mistake first shows ("block 0")
    expect(verdict).to_contain_text(f"first diverging layer {expected_layer}")
    expect(page.locator("#layers-fig .gtitle")).to_have_text(f"Per layer: first diverging layer {expected_layer}")
    # then localised: the sub-layer, every block on HF's own input, the mistake by name, and both readings drawn
    expect(page.locator("#diagnosis")).to_contain_text("likely mistake", timeout=RUN_TIMEOUT_MS)
    expect(verdict).to_contain_text("first diverging sub-layer: block 0 attention")
    expect(page.locator("#diagnosis li").first).to_contain_text("match HuggingFace with c_attn's output split as "
                                                               "(k, q, v) instead of (q, k, v)")
    page.wait_for_function("() => { const gd = document.querySelector('#layers-fig .js-plotly-plot');"
                           " return gd && gd.data.some((d) => d.name === 'block alone: differs'); }")
    expect(page.locator("#layers-fig .legend")).to_contain_text("isolated: each block on HF's own input")
    expect(page.locator("#layers-fig .legend")).to_contain_text("accumulated: the model on its own stream")

    assert not page.js_errors, page.js_errors
    assert app.alive(), app_log_on_failure(app)


def test_shared_link_restores_inputs_fault_panel_and_token_click(page, app):
    """A link with query parameters restores the inputs; under a fault that makes every KL infinite the
    divergence panel still has a point per step; a click on a token opens the top-50 view at its step and row."""
    expect = _expect()
    page.goto(app.url + "?prompt=The%20meaning%20of%20life&fault=no_causal_mask&num_sequences=2&max_new_tokens=6&seed=7")
    expect(page.locator("#prompt textarea")).to_have_value("The meaning of life", timeout=30_000)
    expect(page.locator("#fault input")).to_have_value(FAULTS["no_causal_mask"].title)
    expect(page.locator("#num_sequences input[type=number]")).to_have_value("2")
    expect(page.locator("#max_new_tokens input[type=number]")).to_have_value("6")
    expect(page.locator("#seed input")).to_have_value("7")
    generate(page)
    wait_verdict(page, app, "logits differ")
    assert "fault=no_causal_mask" in page.url and "seed=7" in page.url  # the run is in the address: shareable
    expect_plot(page, "step-fig")
    page.wait_for_function("() => { const gd = document.querySelector('#step-fig .js-plotly-plot');"
                           " return gd && gd.data && gd.data.some((d) => d.name === 'total variation'); }")

    tv = page.evaluate("""() => {
        const gd = document.querySelector('#step-fig .js-plotly-plot');
        const t = gd.data.find((d) => d.name === 'total variation');
        const marks = gd.data.find((d) => d.name && d.name.startsWith('supports differ'));
        return {y: t ? Array.from(t.y) : null, marked: marks ? marks.x.length : 0};
    }""")
    assert tv["y"] is not None and len(tv["y"]) == 6, tv
    assert all(y is not None and 0 < y <= 1 for y in tv["y"]), tv  # a point at every step: never blank

    token = page.locator('#hf-text .tok[data-s="3"][data-r="1"]')
    assert "id " in (token.get_attribute("title") or "")
    hover = page.locator('#ours-text .tok[data-s="3"][data-r="1"]').get_attribute("title")
    assert re.search(r"ours: sampling p \S+, model p \S+, rank \d+\nHF: +sampling p \S+, rank \d+", hover), hover
    token.click()
    expect(page.get_by_role("tab", name="Top-50 at a step", exact=True)).to_have_attribute("aria-selected", "true")
    expect(page.locator("#top50-fig .gtitle")).to_have_text(re.compile(r"^Step 3, row 2: sampled "))
    expect(page.locator("#step-slider input[type=number]")).to_have_value("3")
    expect(page.locator("#row-dd input")).to_have_value("row 2")
    page.locator("#log-scale input").check()
    page.wait_for_function("() => document.querySelector('#top50-fig .js-plotly-plot').layout.xaxis.type === 'log'")
    assert not page.js_errors, page.js_errors


def test_error_replaces_the_verdict_and_stays(page, app):
    expect = _expect()
    page.goto(app.url + "?num_sequences=1&max_new_tokens=3")
    expect(page.locator("#num_sequences input[type=number]")).to_have_value("1", timeout=30_000)
    generate(page)
    wait_verdict(page, app, "identical to HuggingFace")
    page.locator("#prompt textarea").fill("   ")
    generate(page)
    wait_verdict(page, app, "Not run: the prompt is only whitespace", timeout=UI_TIMEOUT_MS)
    expect(page.locator("#ours-text .pl-row")).to_have_count(0)  # the previous run's texts are gone
    expect(page.locator("#verdict")).not_to_contain_text("identical")
    page.wait_for_timeout(11_000)  # the toast lasts 10 s; the reason must outlive it
    expect(page.locator("#verdict")).to_contain_text("Not run: the prompt is only whitespace")
    assert app.alive(), app_log_on_failure(app)
    log = app.log()
    assert "Traceback" not in log and "request refused: the prompt is only whitespace" in log, log[-2000:]


def test_phone_width_shows_the_verdict_on_the_first_screen(browser, app):
    context = browser.new_context(viewport={"width": 420, "height": 860})
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    try:
        page.goto(app.url + "?num_sequences=2&max_new_tokens=4")
        expect = _expect()
        expect(page.locator("#max_new_tokens input[type=number]")).to_have_value("4", timeout=30_000)
        page.locator("#generate").scroll_into_view_if_needed()
        generate(page)
        wait_verdict(page, app, "identical to HuggingFace")
        box = page.locator("#verdict").bounding_box()
        scroll = page.evaluate("window.scrollY")
        assert box is not None and box["y"] + box["height"] <= 860, (box, scroll)  # on screen where Generate was
        assert page.locator("#verdict").bounding_box()["y"] > page.locator("#generate").bounding_box()["y"]
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 420, f"the page scrolls sideways: {width}px"
    finally:
        context.close()


# ---------------------------------------------------------------------------------------------------------
# A laptop's and a phone's width

WIDTHS = [1280, 420]
HEIGHT = 860
ALL_TABS = [*TABS, "Training step", "Settings", "Download"]
# Elements showing exactly the word "Error" (Gradio's badge over a panel whose event failed, a toast's title) that
# take room on the page (not the 1-px screen-reader status).
VISIBLE_ERROR_WORDS_JS = """() => [...document.querySelectorAll('body *')].filter((e) => e.children.length === 0
    && e.textContent.trim() === 'Error' && e.getBoundingClientRect().width > 2
    && e.getBoundingClientRect().height > 2).length"""
TOASTS_JS = "() => document.querySelectorAll('.toast-item, .toast-body, [data-testid=\"toast-body\"]').length"


@pytest.fixture(params=WIDTHS, ids=[f"{w}px" for w in WIDTHS])
def sized_page(request, browser, app):
    context = browser.new_context(viewport={"width": request.param, "height": HEIGHT}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    page.width = request.param
    page.js_errors = []
    page.on("pageerror", lambda exc: page.js_errors.append(str(exc)))
    yield page
    context.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    """Where the width tests save their screenshots: $PARITY_SHOTS_DIR if set, else the test's temporary folder."""
    folder = Path(os.environ.get("PARITY_SHOTS_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def box(page, selector: str) -> dict:
    b = page.locator(selector).first.bounding_box()
    assert b is not None, f"{selector} is not on the page"
    return b


def overlap(a: dict, b: dict) -> bool:
    return a["x"] < b["x"] + b["width"] and b["x"] < a["x"] + a["width"] and \
        a["y"] < b["y"] + b["height"] and b["y"] < a["y"] + a["height"]


def in_viewport(page, selector: str) -> bool:
    b = box(page, selector)
    return b["y"] >= -1 and b["y"] + b["height"] <= HEIGHT + 1


def no_error_badges_or_toasts(page) -> None:
    assert page.evaluate(VISIBLE_ERROR_WORDS_JS) == 0, "an 'Error' badge or toast is on the page"
    assert page.evaluate(TOASTS_JS) == 0, "a toast is on the page"


def test_a_refused_input_is_one_message_in_the_verdict(sized_page, app, shots):
    page, expect = sized_page, _expect()
    page.goto(app.url + "?num_sequences=1&max_new_tokens=3")
    expect(page.locator("#num_sequences input[type=number]")).to_have_value("1", timeout=30_000)
    generate(page)
    wait_verdict(page, app, "identical to HuggingFace")
    page.locator("#prompt textarea").fill("   ")
    for _ in range(3):  # pressed again and again: still one message, nothing piling up
        generate(page)
        wait_verdict(page, app, "Not run: the prompt is only whitespace", timeout=UI_TIMEOUT_MS)
        page.wait_for_timeout(700)
    reason = page.get_by_text("the prompt is only whitespace")
    assert reason.count() == 1, reason.all_inner_texts()  # the verdict's, and no other copy (toast, badge)
    expect(page.locator("#verdict")).to_contain_text("press Generate again")
    no_error_badges_or_toasts(page)
    title = box(page, "h1")  # nothing covers the page's title (a pile of toasts did, on a phone)
    covered = page.evaluate("([x, y]) => !document.elementFromPoint(x, y).closest('h1')",
                            [title["x"] + 10, title["y"] + title["height"] / 2])
    assert not covered
    page.screenshot(path=str(shots / f"refused-{page.width}.png"), full_page=False)
    assert not page.js_errors, page.js_errors


def test_every_tab_label_and_plot_title_is_readable(sized_page, app, shots):
    page, expect = sized_page, _expect()
    page.goto(app.url + f"?fault={FAULT}&num_sequences=2&max_new_tokens=6")
    expect(page.locator("#fault input")).to_have_value(FAULTS[FAULT].title, timeout=30_000)
    generate(page)
    wait_verdict(page, app, "logits differ")
    # every tab reachable without an overflow menu, inside the page's width
    for name in ALL_TABS:
        tab = page.get_by_role("tab", name=name, exact=True)
        expect(tab).to_be_visible()
        b = tab.bounding_box()
        assert b["x"] >= 0 and b["x"] + b["width"] <= page.width, (name, b)
    expect(page.locator("#views .overflow-menu")).to_have_count(0)  # no "•••" menu to hide tabs in
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= page.width, f"the page scrolls sideways: {width}px"
    for tab, plots in TABS.items():
        open_tab(page, tab)
        for elem_id in plots:
            expect_plot(page, elem_id)
            page.locator(f"#{elem_id} .js-plotly-plot").hover()  # the toolbar shows on hover
            expect(page.locator(f"#{elem_id} .modebar").first).to_be_visible()
            page.wait_for_timeout(200)
            title, toolbar = box(page, f"#{elem_id} .gtitle"), box(page, f"#{elem_id} .modebar")
            assert not overlap(title, toolbar), (elem_id, title, toolbar)
            legend = page.locator(f"#{elem_id} .legend")
            if legend.count():
                assert not overlap(title, legend.first.bounding_box()), elem_id
                label = page.locator(f"#{elem_id} .annotation-text", has_text=re.compile(r"^step \d+$"))
                if label.count():
                    assert not overlap(label.first.bounding_box(), legend.first.bounding_box()), elem_id
            page.locator(f"#{elem_id}").screenshot(path=str(shots / f"{elem_id}-{page.width}.png"))
        if tab == "Top-50 at a step":
            label = page.get_by_text("log scale", exact=True)
            expect(label).to_be_visible()
            assert label.bounding_box()["width"] > 30  # the whole label, not squeezed to nothing
            plot = box(page, "#top50-fig .js-plotly-plot")
            for tick in page.locator("#top50-fig .ytick text").all():
                b = tick.bounding_box()
                assert b["x"] >= plot["x"] - 1, (tick.text_content(), b, plot)  # no label cut at the left edge
    # an exact 0 (the embeddings) is marked on the axis floor, not drawn as a bar at 1e-12
    open_tab(page, "Per layer")
    names = page.evaluate("() => document.querySelector('#layers-fig .js-plotly-plot').data.map((d) => d.name)")
    assert "exact 0 (bit-identical)" in names
    expect(page.locator("#layers-fig .ytitle")).to_have_text(re.compile(r"\(Ours vs HF\)$"))
    expect(page.locator("#layers-caption")).to_contain_text("worst place")
    first = FAULTS[FAULT].first_layer
    expect(page.locator("#layers-fig .gtitle")).to_have_text(f"Per layer: first diverging layer {first}")
    assert not page.js_errors, page.js_errors


def test_the_seed_case_in_one_click(sized_page, app, shots):
    page, expect = sized_page, _expect()
    page.goto(app.url)
    button = page.locator("#seed-case")
    expect(button).to_be_visible(timeout=30_000)
    assert in_viewport(page, "#seed-case")  # on the first screen, beside Generate
    page.wait_for_timeout(500)  # the page's own load events (model, link) settle first
    button.click()
    wait_verdict(page, app, "temperature: ours 1.0 vs HF 0.7")
    expect(page.locator("#method input[value=nanogpt]")).to_be_checked()
    expect(page.locator("#reference input[value=pipeline]")).to_be_checked()
    expect(page.locator("#max_new_tokens input[type=number]")).to_have_value("22")
    expect(page.locator("#num_sequences input[type=number]")).to_have_value("5")
    expect(page.locator("#seed input")).to_have_value("42")
    expect(page.locator("#prompt textarea")).to_have_value("Hello, I'm a language model,")
    assert "reference=pipeline" in page.url and "method=nanogpt" in page.url  # the link reruns it
    assert in_viewport(page, "#verdict")
    expect_plot(page, "step-fig")
    page.wait_for_function("() => { const gd = document.querySelector('#step-fig .js-plotly-plot');"
                           " return gd && gd.data && gd.data.some((d) => (d.name || '').startsWith('with HF')); }")
    lines = page.evaluate("""() => {
        const gd = document.querySelector('#step-fig .js-plotly-plot');
        const y = (name) => Array.from(gd.data.find((d) => d.name === name).y);
        return {ours: y('total variation'), theirs: y("with HF's own settings (temperature 0.7)")};
    }""")
    assert max(lines["ours"]) < 1e-3 < 0.05 < max(lines["theirs"]), lines  # noise vs what the settings do
    expect(page.locator("#steps-caption")).to_contain_text("could never pick the same one")
    page.wait_for_timeout(300)
    page.screenshot(path=str(shots / f"seed-case-{page.width}.png"), full_page=True)
    assert not page.js_errors, page.js_errors


def test_check_a_result_file_sits_by_the_verdict_and_says_which_button(sized_page, app, shots, tmp_path):
    page, expect = sized_page, _expect()
    page.goto(app.url)
    expect(page.locator("#upload-panel")).to_be_visible(timeout=30_000)
    verdict, panel = box(page, "#verdict"), box(page, "#upload-panel")
    assert 0 <= panel["y"] - (verdict["y"] + verdict["height"]) < 60, (verdict, panel)  # right under the verdict
    assert panel["y"] < box(page, "#ours-text")["y"]  # before the texts and the views it fills
    garbage = tmp_path / "result.safetensors"
    garbage.write_text("not tensors at all")
    page.get_by_text("Check a result file (any language)").click()
    page.locator("#result-upload input[type=file]").set_input_files(str(garbage))
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")  # the verdict off-screen
    page.locator("#check-result").click()
    wait_verdict(page, app, "Not checked:", timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#verdict")).to_contain_text("press Check result again")
    expect(page.locator("#verdict")).not_to_contain_text("Generate")
    expect(page.locator("#upload-status")).to_contain_text("❌ Not checked: the reason is in the verdict panel")
    assert page.get_by_text("not a safetensors file").count() == 1  # said once, in the verdict panel
    page.wait_for_timeout(500)
    assert in_viewport(page, "#verdict"), box(page, "#verdict")  # brought into view
    no_error_badges_or_toasts(page)
    page.screenshot(path=str(shots / f"check-refused-{page.width}.png"), full_page=False)
    assert not page.js_errors, page.js_errors


# ---------------------------------------------------------------------------------------------------------
# The "Check a result file" panel (its handlers in-process: tests/app/test_upload.py)


@pytest.mark.browser
def test_upload_in_browser(browser, app, upload_files):
    """A result file through the page: the panel reports it, the verdict names the layer once, the views draw it
    (on the module's browser: one Playwright per process)."""
    expect = _expect()
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    try:
        page = context.new_page()
        page.set_default_timeout(15_000)
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(app.url)
        page.get_by_text("Check a result file (any language)").click()
        page.locator("#result-upload input[type=file]").set_input_files(str(upload_files["bad"]))
        page.locator("#check-result").click()
        expect(page.locator("#upload-status")).to_contain_text("differs", timeout=90_000)
        expect(page.locator("#verdict")).to_contain_text("lm_head")
        assert page.locator("#upload-status").inner_text().count("lm_head") == 1
        open_tab(page, "Per layer")
        expect_plot(page, "layers-fig")
        assert not errors, errors
    finally:
        context.close()


def test_precision_choice_names_the_regime_and_draws_hfs_own_error(page, app):
    """The precision input (here from a link): the verdict says the run is consistent with bfloat16 and names the
    yardstick and the float32 re-check; the per-layer view draws HF's own error at bfloat16."""
    expect = _expect()
    page.goto(app.url + "?precision=bfloat16&num_sequences=2&max_new_tokens=6")
    expect(page.locator("#precision input")).to_have_value(re.compile("bfloat16"), timeout=30_000)
    generate(page)
    wait_verdict(page, app, "consistent with bfloat16 precision")
    expect(page.locator("#verdict")).to_contain_text("HF's own error at bfloat16")
    expect(page.locator("#verdict")).to_contain_text("float32 re-check")
    open_tab(page, "Per layer")
    expect_plot(page, "layers-fig")
    page.wait_for_function("() => { const gd = document.querySelector('#layers-fig .js-plotly-plot');"
                           " return gd && gd.data && gd.data.some((d) => d.name === \"HF's own error at bfloat16\"); }")


def test_training_step_tab_draws_the_loss_and_the_gradients(page, app):
    """The Training step tab on the built-in model: a .detach() in the last block is flagged there, with both
    plots drawn; the page's own Generate views are untouched by it."""
    expect = _expect()
    page.goto(app.url)
    open_tab(page, "Training step")
    set_number(page, "train_steps", 1)
    set_number(page, "train_seq", 8)
    page.locator("#train_fault input").click()
    page.get_by_role("option", name=".detach() in a block, the last block only").click()
    page.locator("#train-run").click()
    try:
        expect(page.locator("#train-verdict")).to_contain_text("DIFFER", timeout=RUN_TIMEOUT_MS)
    except AssertionError as exc:
        raise AssertionError(f"{exc}{app_log_on_failure(app)}") from None
    expect(page.locator("#train-verdict")).to_contain_text("block 3")
    expect_plot(page, "train-loss-fig", "Loss on the batch, step by step")
    expect_plot(page, "train-grads-fig")
    expect(page.locator("#train-caption")).to_contain_text("from the loss towards the embeddings")
    assert not page.js_errors, page.js_errors
