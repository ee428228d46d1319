"""The dashboard's API from code: gradio_client drives /run on a real `python app.py` server and gets exactly
the texts that the Python API (core.compare and core.generate) gives for the same model, prompt and seed;
bad inputs come back as clear errors and the server keeps serving.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apphelper import TINY_MODEL, start_app, start_yours_app, write_yours_file

pytestmark = pytest.mark.slow

# /run's outputs in demo/ui.py order, without the gr.State (never sent to clients): verdict, ours, hf, step_fig,
# top50_fig, heat_fig, entropy_fig, layers_fig, settings, json_file, csv_file, summary, step, row.
N_OUTPUTS = 14
VERDICT, OURS, JSON_FILE, SUMMARY = 0, 1, 9, 11
RUN_TIMEOUT_S = 120  # one /run on the tiny model: ~4 s warm, ~15 s for a fresh server's first, more under load

CASES = [  # (prompt, method, top_k, top_p, temperature, seed, num_sequences, max_new_tokens)
    ("Hello, I'm a language model,", "hf", 50, 1.0, 1.0, 42, 5, 22),  # the dashboard's defaults
    ("def fibonacci(n):", "hf", 20, 0.9, 0.7, 7, 3, 9),  # top-k, top-p and temperature all active
]


@pytest.fixture(scope="module")
def app(request, bpe_dir, tmp_path_factory):
    return start_app(request, bpe_dir, log_dir=tmp_path_factory.mktemp("app-log"))


@pytest.fixture(scope="module")
def client(app):
    import gradio_client

    return gradio_client.Client(app.url, verbose=False)


@pytest.fixture(scope="module")
def tiny_models():
    """The app's built-in tiny model, built the same way in this process (it is identical on every machine)."""
    from demo.models import build_tiny_pair

    return build_tiny_pair()


def run(client, prompt, method="hf", top_k=50, top_p=1.0, temperature=1.0, seed=42, num_sequences=5,
        max_new_tokens=22, model=TINY_MODEL, reference="generate", fault="none"):
    job = client.submit(prompt, model, method, reference, fault, top_k, top_p, temperature, seed, num_sequences,
                        max_new_tokens, api_name="/run")
    return job.result(timeout=RUN_TIMEOUT_S)


@pytest.mark.parametrize("case", CASES, ids=["defaults", "topk-topp-temp"])
def test_client_texts_match_python_api(client, app, tiny_models, tokenizer, case):
    import core

    prompt, method, top_k, top_p, temperature, seed, n, max_new = case
    settings = dict(method=method, top_k=top_k, top_p=top_p, temperature=temperature, seed=seed,
                    num_return_sequences=n, max_new_tokens=max_new)
    job = client.submit(prompt, TINY_MODEL, method, "generate", "none", top_k, top_p, temperature, seed, n, max_new,
                        api_name="/run")  # the server works while this process computes the expected texts
    ours, hf = tiny_models
    report = core.compare((ours, hf), prompt, tokenizer=tokenizer, **settings)
    generation = core.generate(ours, prompt, tokenizer=tokenizer, **settings)
    result = job.result(timeout=RUN_TIMEOUT_S)
    assert len(result) == N_OUTPUTS, f"/run's outputs changed: {len(result)} values{app.log()[-2000:]}"
    summary = result[SUMMARY]
    assert isinstance(summary, dict) and "ours_texts" in summary, summary

    assert summary["ours_texts"] == report.generation.texts == generation.texts
    assert len(summary["ours_texts"]) == n and all(t.startswith(prompt) for t in summary["ours_texts"])
    assert summary["hf_texts"] == [r.ref_text for r in report.rows]
    assert summary["verdict"] == report.verdict == "identical to HuggingFace"
    assert summary["agree"] is True and summary["first_diverging_layer"] is None
    assert summary["hf_texts"] == summary["ours_texts"]
    assert "identical to HuggingFace" in result[VERDICT]
    ours_html = result[OURS]  # the texts are HTML: one line per row, a span per token with its step and row
    assert isinstance(ours_html, str) and ours_html.count('class="pl-row"') == n and 'data-s="0"' in ours_html

    # The JSON download is the whole report of the same run.
    path = Path(result[JSON_FILE])
    assert path.name == "parity_report.json"
    downloaded = json.loads(path.read_text(encoding="utf-8"))
    assert downloaded["generation"]["texts"] == summary["ours_texts"]
    assert downloaded["settings"]["seed"] == seed and downloaded["settings"]["top_p"] == pytest.approx(top_p)


def test_client_fault_is_reported(client):
    summary = run(client, "The meaning of life is", fault="qk_swapped", num_sequences=2, max_new_tokens=6)[SUMMARY]
    assert summary["agree"] is False
    assert "logits differ" in summary["verdict"] and summary["first_diverging_layer"] == "block 0"
    # localised and named: q and k swapped in every block of the tiny model
    assert summary["first_diverging_sublayer"] == "block 0 attention" and summary["diverging_blocks"][0] == 0
    n = len(summary["diverging_blocks"])
    assert summary["diverging_blocks"] == list(range(n)) and n >= 2
    assert summary["diagnosis"] == [f"the attention of blocks 0-{n - 1} match HuggingFace with c_attn's output split "
                                    "as (k, q, v) instead of (q, k, v)"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt=""), r"(?i)prompt.*empty|empty.*prompt"),  # refused by core (a gr.Error with its message)
    (dict(prompt=" \n "), r"only whitespace"),  # refused by the dashboard, in its own words
    (dict(prompt="Hi", top_p=5), r"(?i)top.?p|maximum"),  # refused by the slider's own range check
    (dict(prompt="Hi", method="greedy", num_sequences=3), r"greedy.*number of sequences = 1"),  # core's, UI words
    (dict(prompt="Hi", max_new_tokens=1000), r"(?i)max new tokens|maximum"),
], ids=["empty-prompt", "whitespace-prompt", "top_p-5", "greedy-3-rows", "too-many-tokens"])
def test_client_bad_input_is_a_clear_error_and_server_keeps_serving(client, app, kwargs, message):
    from gradio_client.exceptions import AppError

    kwargs = dict(kwargs)
    with pytest.raises(AppError, match=message) as info:
        run(client, kwargs.pop("prompt"), **kwargs)
    text = str(info.value)
    assert "Traceback" not in text and "/tmp" not in text and "Something went wrong" not in text, text
    assert app.alive(), app.log()[-2000:]
    # ... and the next good request is answered as usual.
    summary = run(client, "Hi", num_sequences=1, max_new_tokens=3)[SUMMARY]
    assert summary["verdict"] == "identical to HuggingFace" and len(summary["ours_texts"]) == 1


def test_client_sees_the_same_endpoints_and_not_the_pages_buttons(client):
    """The page's buttons (Generate, The seed's case, Check, Get the reference) show a refusal in the page; the
    API keeps its three endpoints, with /run's eleven inputs and, last and optional, the precision (so calls written
    before it existed keep working: the tests above pass eleven), and its errors (the tests above)."""
    api = client.view_api(return_format="dict", print_info=False)
    assert set(api["named_endpoints"]) == {"/run", "/check_result", "/get_reference", "/train"}, \
        api["named_endpoints"].keys()
    train = api["named_endpoints"]["/train"]["parameters"]
    assert [p["parameter_name"] for p in train] == ["model", "fault", "steps", "batch_size", "seq_len"]
    params = api["named_endpoints"]["/run"]["parameters"]
    assert [p["parameter_name"] for p in params] == [
        "prompt", "model", "method", "reference", "fault", "top_k", "top_p", "temperature", "seed", "num_sequences",
        "max_new_tokens", "precision"]
    assert params[-1]["parameter_has_default"] and params[-1]["parameter_default"] == "auto"
    assert not api["unnamed_endpoints"]


def test_client_training_step_names_the_untied_head(client):
    """/train: the training bug lab's untied head (a copy of wte) passes the forward check and is named here."""
    verdict, loss_fig, grads_fig, summary = client.submit(TINY_MODEL, "untied_head_copy", 0, 1, 8,
                                                          api_name="/train").result(timeout=RUN_TIMEOUT_S)
    assert not summary["agree"] and summary["first_diverging_parameter"] == "transformer.wte.weight"
    assert "separate parameters" in verdict and "GPT-2 ties them" in verdict
    assert loss_fig is not None and grads_fig is not None
    verdict, _, _, summary = client.submit(TINY_MODEL, "decay_all", 0, 1, 8, api_name="/train").result(
        timeout=RUN_TIMEOUT_S)  # a fault that needs an optimizer step, with none: said in the tab's panel
    assert "Training step refused" in verdict and "AdamW steps" in verdict and summary is None


def test_client_seed_case_is_the_settings_not_the_model(client, tiny_models, tokenizer):
    """The seed's case (what the page's "The seed's case" button sends to the same handler): the seed's top-k loop
    against HF's pipeline; the texts differ because the pipeline samples at temperature 0.7, not because of the
    model. The same verdict as the Python API's."""
    import core
    from demo.inputs import SEED_CASE

    s = SEED_CASE
    job = client.submit(s["prompt"], TINY_MODEL, s["method"], s["reference"], s["fault"], s["top_k"], s["top_p"],
                        s["temperature"], s["seed"], s["num_sequences"], s["max_new_tokens"], api_name="/run")
    report = core.compare(tiny_models, s["prompt"], tokenizer=tokenizer, method="nanogpt", reference="pipeline",
                          top_k=50, num_return_sequences=5, max_length=30, seed=42)
    summary = job.result(timeout=RUN_TIMEOUT_S)[SUMMARY]
    assert summary["verdict"] == report.verdict and "temperature: ours 1.0 vs HF 0.7" in summary["verdict"]
    assert summary["causes"] == [r.cause for r in report.rows] and set(summary["causes"]) == {"settings"}
    assert summary["ours_texts"] == report.generation.texts and summary["hf_texts"] == [r.ref_text for r in report.rows]


def test_client_precision_is_judged_against_hfs_own_error(client, tiny_models, tokenizer):
    """The precision input (last, so older /run calls keep their positions): bfloat16 weights are consistent with
    bfloat16, judged as compare() judges them; a fault below bfloat16's resolution is found in float32."""
    import core

    ours, hf = tiny_models
    prompt = "Hello, I'm a language model,"
    job = client.submit(prompt, TINY_MODEL, "hf", "generate", "none", 50, 1.0, 1.0, 42, 2, 8, "bfloat16",
                        api_name="/run")
    expected = core.compare((ours, hf), prompt, tokenizer=tokenizer, precision="bfloat16", num_return_sequences=2,
                            max_new_tokens=8)
    result = job.result(timeout=RUN_TIMEOUT_S)
    assert "consistent with bfloat16 precision" in result[VERDICT]
    assert expected.verdict.split(" (")[0] in result[VERDICT]
    report = json.loads(Path(result[JSON_FILE]).read_text())
    assert report["precision"]["name"] == "bfloat16" and report["float32_check"]["agree"] is True
    assert any(l["hf_own_error"] for l in report["layers"])


# ---------------------------------------------------------------------------------------------------------
# `python app.py --yours FILE.py:NAME`: the user's own model, labelled "Yours"


@pytest.fixture(scope="module")
def yours_file(tmp_path_factory):
    return write_yours_file(tmp_path_factory.mktemp("user"))


@pytest.fixture(scope="module")
def yours_app(request, bpe_dir, yours_file, tmp_path_factory):
    return start_yours_app(request, bpe_dir, yours_file, log_dir=tmp_path_factory.mktemp("app-log"))


def test_dashboard_with_yours_labels_and_compares_the_users_model(yours_app, yours_file, tokenizer):
    import gradio_client

    import core
    from core.usercode import load_model
    from demo.models import build_tiny_pair

    client = gradio_client.Client(yours_app.url, verbose=False)
    prompt = "Hello, I'm a language model,"
    job = client.submit(prompt, TINY_MODEL, "hf", "generate", "none", 50, 1.0, 1.0, 42, 3, 8, api_name="/run")
    _, hf = build_tiny_pair()
    mine = load_model(f"{yours_file}:model")
    expected = core.compare(mine, prompt, hf_model=hf, tokenizer=tokenizer, num_return_sequences=3,
                            max_new_tokens=8, seed=42)
    result = job.result(timeout=180)
    summary = result[SUMMARY]
    assert summary["subject"] == "Yours", yours_app.log()[-2000:]
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
    # the Training step tab trains the user's model against HF's: it agrees, steps included
    verdict, _, _, summary = client.submit(TINY_MODEL, "none", 1, 1, 8, api_name="/train").result(timeout=180)
    assert summary["subject"] == "Yours" and summary["agree"], verdict
    assert [s["step"] for s in summary["steps"]] == [1] and "AGREE" in verdict


# ---------------------------------------------------------------------------------------------------------
# The "Check a result file" panel's endpoints (its handlers in-process: tests/app/test_upload.py)


@pytest.mark.slow
def test_upload_through_gradio_client(app, upload_files):
    import zipfile

    from gradio_client import Client, handle_file

    client = Client(app.url, verbose=False)
    out = client.predict([handle_file(str(upload_files["good"]))], api_name="/check_result")
    verdict, status = out[0], out[14]  # outputs: the 14 shown views (the run's State is not sent), status, case
    assert "identical to HuggingFace" in verdict and "✅ agrees" in status
    out = client.predict([handle_file(str(upload_files["bad"]))], api_name="/check_result")
    assert "first diverging layer" in out[0] and "lm_head" in out[0] and "❌ differs" in out[14]
    assert out[14].count("lm_head") == 1 and out[0].count("lm_head") == 1  # the layer named once per line
    with pytest.raises(Exception, match="not a safetensors file"):
        client.predict([handle_file(str(upload_files["text"]))], api_name="/check_result")
    with pytest.raises(Exception, match="upload a result file"):
        client.predict([], api_name="/check_result")
    zipped = client.predict("tiny-random-gpt2", api_name="/get_reference")  # the server kept serving
    names = set(zipfile.ZipFile(zipped).namelist())
    assert {"manifest.json", "reference.safetensors", "result_template.json"} <= names
    assert app.alive()
