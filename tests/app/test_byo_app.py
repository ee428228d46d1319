"""`python app.py --yours FILE.py:NAME`: the dashboard compares the user's own model, labelled "Yours", through
gradio_client on a real server; a bad --yours stops the start with one line and exit status 2."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from apphelper import ROOT, TINY_MODEL, AppServer

pytestmark = pytest.mark.slow

USER_FILE = '''
import sys
sys.path.insert(0, {root!r})
from demo.models import build_tiny_pair
from examples.my_gpt2 import from_hf_state_dict

_, hf = build_tiny_pair()
model = from_hf_state_dict(hf.state_dict(), hf.config)
'''
SUMMARY, OURS, VERDICT = 11, 1, 0


@pytest.fixture(scope="module")
def user_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("user") / "mine.py"
    path.write_text(USER_FILE.format(root=str(ROOT)))
    return path


@pytest.fixture(scope="module")
def app(request, bpe_dir, user_file, tmp_path_factory):
    server = AppServer(bpe_dir, model=TINY_MODEL, log_dir=tmp_path_factory.mktemp("app-log"))
    server.cmd += ["--yours", f"{user_file}:model"]
    request.addfinalizer(server.stop)
    return server.start(120)


def test_dashboard_with_yours_labels_and_compares_the_users_model(app, user_file, tokenizer):
    import gradio_client

    import core
    from core.usercode import load_model
    from demo.models import build_tiny_pair

    client = gradio_client.Client(app.url, verbose=False)
    prompt = "Hello, I'm a language model,"
    job = client.submit(prompt, TINY_MODEL, "hf", "generate", "none", 50, 1.0, 1.0, 42, 3, 8, api_name="/run")
    _, hf = build_tiny_pair()
    mine = load_model(f"{user_file}:model")
    expected = core.compare(mine, prompt, hf_model=hf, tokenizer=tokenizer, num_return_sequences=3,
                            max_new_tokens=8, seed=42)
    result = job.result(timeout=180)
    summary = result[SUMMARY]
    assert summary["subject"] == "Yours", app.log()[-2000:]
    assert summary["verdict"] == expected.verdict == "identical to HuggingFace"
    assert summary["ours_texts"] == expected.generation.texts and summary["hf_texts"] == summary["ours_texts"]
    assert 0 < summary["max_abs_dlogit"] < expected.steps[0][0].tolerance
    assert summary["max_abs_dlogit"] == pytest.approx(expected.max_abs_dlogit, rel=0.5)
    assert '<div class="pl-head">Yours' in result[OURS] and result[OURS].count('class="pl-row"') == 3
    # the models offered are HF's checkpoint for the user's model only, and faults (ours only) are refused
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="our GPT only"):
        client.submit(prompt, TINY_MODEL, "hf", "generate", "qk_swapped", 50, 1.0, 1.0, 42, 1, 4,
                      api_name="/run").result(timeout=180)
    with pytest.raises(AppError, match="not in the list of choices|not available here"):
        client.submit(prompt, "gpt2", "hf", "generate", "none", 50, 1.0, 1.0, 42, 1, 4,
                      api_name="/run").result(timeout=180)


@pytest.mark.parametrize("args, message", [
    (["--yours", "missing.py:model"], "no such file: missing.py"),
    (["--yours-step", "x.py:f"], "go with --yours"),
])
def test_bad_yours_stops_the_app_with_one_line(bpe_dir, args, message):
    proc = subprocess.run([sys.executable, "app.py", "--model", TINY_MODEL, "--bpe-dir", str(bpe_dir), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2 and proc.stderr.strip() == f"app.py: error: {message}" or message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


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
