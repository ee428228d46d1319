"""build_demo(): the dashboard's layout and wiring. Building never loads a model and never launches.

Knows Gradio components, the page's CSS and small scripts, and which handler each event calls; each input's
label, default and limits come from inputs.py, prose from text.py, the panels' first contents from render.py.
Knows nothing of how a comparison runs or how its results are drawn.
"""

from __future__ import annotations

import json

import gradio as gr

from . import handlers, inputs, render, text, upload, yours
from .inputs import INPUT_KEYS, INPUTS, TRAIN_INPUTS
from .models import HUB_ALLOWLIST, TINY, ModelCache

CSS = """
#verdict {min-height: 3.2em}
.gradio-container {max-width: 1400px !important}
""" + render.TEXT_CSS + """
#settings-table .table-wrap, #settings-table .table-container {overflow-x: auto !important}
.pl-caption {font-size: 0.85em; color: #57606a; padding: 0 8px}
.pl-caption p {margin: 2px 0 6px 0}
#log-scale {min-width: 120px !important}
#log-scale label {white-space: nowrap}
/* phones: the verdict right under the Generate button, then the results, then the other inputs */
@media (max-width: 720px) {
  #main-row {flex-direction: column !important; flex-wrap: nowrap !important}
  #inputs-col, #outputs-col {display: contents !important}
  #inputs-col > * {order: 10}
  #outputs-col > * {order: 5}
  #inputs-col > #prompt-col {order: 1}
  #outputs-col > #verdict-box {order: 3}
  #texts-row {flex-direction: column !important}
}
"""
# Clicking a token in either text asks the server for the top-50 view at that step and row.
TOKEN_CLICK_JS = """
element.addEventListener('click', (e) => {
  const t = e.target.closest('.tok[data-s]');
  if (!t) return;
  element.querySelectorAll('.tok.picked').forEach((x) => x.classList.remove('picked'));
  t.classList.add('picked');
  trigger('click', {step: Number(t.dataset.s), row: Number(t.dataset.r)});
});
"""
# After Check: the verdict panel, which the result fills, into view (it may be above the screen on a phone).
SCROLL_TO_VERDICT_JS = "() => { document.querySelector('#verdict')?.scrollIntoView({block: 'nearest'}); }"
# On Generate: the inputs go into the page's address (query parameters), so that the link restores this run.
URL_JS = """
(...values) => {
  const keys = %s;
  const q = new URLSearchParams();
  keys.forEach((k, i) => { if (values[i] !== null && values[i] !== undefined && values[i] !== '') q.set(k, String(values[i])); });
  history.replaceState(history.state, '', window.location.pathname + '?' + q.toString());
  return [];
}
"""

# Heavy requests (a full compare) at most 2 at a time on 2 cores; cheap view updates are not limited by them.
RUN_CONCURRENCY = 2
QUEUE = dict(default_concurrency_limit=8, max_size=32)
TEXT_MAX_HEIGHT = 380  # px: long runs scroll inside the text panels instead of pushing the plots down
# Gradio's own copies of served files (the downloads): swept every 10 minutes, deleted after an hour.
DELETE_CACHE = (600, 3600)


def launch_kwargs() -> dict:
    # max_file_size: Gradio refuses bigger uploads before writing them (demo/upload.py checks again after)
    return dict(theme=gr.themes.Soft(), css=CSS, show_error=True, max_file_size=inputs.MAX_UPLOAD_BYTES)


def build_demo(model: str = "gpt2", bpe_dir: str | None = None, max_models: int = 1,
               mine: yours.Yours | None = None) -> gr.Blocks:
    """The dashboard. `model` is the default (and, if not on the allowlist, the one extra the UI may pick:
    local paths come only from here, never from the UI). `mine`: the user's own model (app.py --yours), shown as
    "Yours" in every view against HF's `model`."""
    import os

    bpe_dir = bpe_dir or os.environ.get("GPT2_BPE_DIR") or None
    extra = [model] if model not in HUB_ALLOWLIST and model != TINY else []
    cache = ModelCache(extra=extra, max_models=max_models, bpe_dir=bpe_dir)
    yours.attach(cache, mine, model)
    c: dict = {}
    with gr.Blocks(title=text.TITLE, delete_cache=DELETE_CACHE) as demo:
        demo.model_cache = cache  # for tests and the load test: the same cache the handlers use
        gr.Markdown(text.INTRO if mine is None else text.INTRO_YOURS.format(spec=os.path.basename(mine.spec)))
        c["banner"] = gr.Markdown(visible=False, elem_id="offline-banner")
        with gr.Row(elem_id="main-row"):
            with gr.Column(scale=1, min_width=320, elem_id="inputs-col"):
                inp = input_panel(cache, model, mine)
            with gr.Column(scale=2, elem_id="outputs-col"):
                upload_panel = output_panels(c, ours_label=mine.label if mine is not None else None)
        c["state"] = gr.State(None)
        wire(demo, cache, model, inp, c)
        upload.wire_panel(upload_panel, cache, c, inp["model"], RUN_CONCURRENCY, scroll_js=SCROLL_TO_VERDICT_JS)
    return demo


def input_panel(cache: ModelCache, model: str, mine: yours.Yours | None = None) -> dict:
    """The Generate button's inputs (keys as inputs.INPUT_KEYS), the button itself, "The seed's case" button and
    the hidden button that carries the /run API. With `mine` (--yours) the bug lab is off: it changes our model."""
    i: dict = {}
    with gr.Column(elem_id="prompt-col"):  # on phones: this, then the verdict, then the results
        i["prompt"] = gr.Textbox(value=INPUTS["prompt"].default, label=INPUTS["prompt"].label, lines=3, max_lines=8,
                                 elem_id="prompt")
        i["run"] = gr.Button("Generate", variant="primary", elem_id="generate")
        i["seed_case"] = gr.Button(text.SEED_CASE_BUTTON, size="sm", elem_id="seed-case")
        i["run_api"] = gr.Button(visible=False, elem_id="run-api")
    gr.Examples(examples=[[p] for p in text.PROMPT_EXAMPLES], inputs=[i["prompt"]], label="Examples")
    i["model"] = gr.Dropdown(choices=cache.allowed, value=model, label=INPUTS["model"].label, elem_id="model")
    i["model_status"] = gr.Markdown(visible=False, elem_id="model-status")  # loading / failed, per choice
    for key in ("method", "reference"):
        i[key] = gr.Radio(**_choice_props(INPUTS[key]))
    i["precision"] = gr.Dropdown(**_choice_props(INPUTS["precision"]))
    fault = _choice_props(INPUTS["fault"])
    if mine is not None:
        fault.update(interactive=False, info=text.HELP_FAULT_YOURS.format(label=mine.label))
    i["fault"] = gr.Dropdown(**fault)
    with gr.Accordion("Sampling settings", open=True):
        for key in ("top_k", "top_p", "temperature"):
            i[key] = _slider(INPUTS[key])
        i["seed"] = gr.Number(value=INPUTS["seed"].default, precision=0, label=INPUTS["seed"].label, elem_id="seed")
        for key in ("num_sequences", "max_new_tokens"):
            i[key] = _slider(INPUTS[key])
    return i


def _choice_props(inp: inputs.Input) -> dict:
    return dict(choices=list(inp.choices), value=inp.default, label=inp.label, info=inp.info, elem_id=inp.key)


def _slider(inp: inputs.Input) -> gr.Slider:
    lo, hi, step = inp.slider
    return gr.Slider(lo, hi, value=inp.default, step=step, label=inp.label, info=inp.info, elem_id=inp.key)


def output_panels(c: dict, ours_label: str | None = None) -> dict:
    """The verdict, the "Check a result file" panel under it (returned: demo/upload.py's components), both texts
    and the tabs of views; components go into `c` (keys as handlers.OUTPUT_KEYS)."""
    c["verdict"] = gr.HTML(render.status_html("Press <b>Generate</b> to compare with HuggingFace."),
                           elem_id="verdict-box")
    panel = upload.build_panel()  # where its result is read: the verdict above, the views below
    words = dict(our="your", ours="yours") if ours_label else dict(our="our", ours="ours")
    with gr.Row(elem_id="texts-row"):
        for key, label in (("ours", ours_label or "Ours"), ("hf", "HuggingFace")):
            c[key] = gr.HTML(render.text_head(key, label=label), label=label, container=True, padding=True,
                             max_height=TEXT_MAX_HEIGHT, min_width=280, js_on_load=TOKEN_CLICK_JS, elem_id=f"{key}-text",
                             elem_classes=["pl-text"])
    # every tab reachable at any width: the bar wraps instead of hiding tabs behind a menu
    with gr.Tabs(elem_id="views", overflow_behavior="wrap") as c["tabs"]:
        with gr.Tab("Per step", id="perstep"):
            c["step_fig"] = gr.Plot(label="Per-step differences", show_label=False, elem_id="step-fig")
            gr.Markdown(text.CAPTION_STEPS.format(**words), elem_classes=["pl-caption"], elem_id="steps-caption")
        with gr.Tab("Top-50 at a step", id="top50"):
            with gr.Row():
                c["step"] = gr.Slider(0, 1, value=0, step=1, label="step", elem_id="step-slider")
                c["row"] = gr.Dropdown(choices=[("row 1", 0)], value=0, label="row", elem_id="row-dd")
                c["log"] = gr.Checkbox(False, label="log scale", elem_id="log-scale", min_width=120)
            gr.Markdown(text.CAPTION_TOP50.format(**words), elem_classes=["pl-caption"], elem_id="top50-caption")
            c["top50_fig"] = gr.Plot(label="Top-50 probabilities", show_label=False, elem_id="top50-fig")
        with gr.Tab("Over steps", id="oversteps"):
            c["heat_fig"] = gr.Plot(label="Top-k probabilities over steps", show_label=False, elem_id="heat-fig")
            c["entropy_fig"] = gr.Plot(label="Entropy and chosen token", show_label=False, elem_id="entropy-fig")
        with gr.Tab("Per layer", id="perlayer"):
            c["layers_fig"] = gr.Plot(label="Per-layer differences", show_label=False, elem_id="layers-fig")
            gr.Markdown(text.CAPTION_LAYERS, elem_classes=["pl-caption"], elem_id="layers-caption")
        with gr.Tab("Training step", id="training"):
            training_panel(c, ours_label)
        with gr.Tab("Settings", id="settings"):
            c["settings"] = gr.Dataframe(headers=render.SETTINGS_HEADERS, label="Effective generation settings",
                                         elem_id="settings-table", wrap=True, interactive=False)
        with gr.Tab("Download", id="download"):
            with gr.Row():
                c["json_file"] = gr.File(label="Run as JSON", elem_id="json-file")
                c["csv_file"] = gr.File(label="Per-step table as CSV", elem_id="csv-file")
            with gr.Row():  # made on request: the page carries plotly.js (~5 MB), not worth writing for every run
                c["html_button"] = gr.Button(text.HTML_BUTTON, size="sm", elem_id="html-button")
                c["html_file"] = gr.File(label="Report as one HTML page (opens offline)", elem_id="html-file")
            c["summary"] = gr.JSON(label="Summary", elem_id="summary")
    with gr.Accordion("How to read the plots, and how to use this from code", open=False):
        gr.Markdown(text.PLOT_HELP + text.USAGE)
    return panel


def training_panel(c: dict, ours_label: str | None = None) -> None:
    """The Training step tab: its inputs (inputs.TRAIN_INPUTS; the model is the page's), its button, its verdict,
    the loss over the steps and the gradient differences by parameter."""
    fault = _choice_props(TRAIN_INPUTS["train_fault"])
    if ours_label is not None:
        fault.update(interactive=False, info=text.HELP_FAULT_YOURS.format(label=ours_label))
    with gr.Row():
        c["train_fault"] = gr.Dropdown(**fault)
        c["train_steps"] = _slider(TRAIN_INPUTS["train_steps"])
    with gr.Row():
        c["train_batch"] = _slider(TRAIN_INPUTS["train_batch"])
        c["train_seq"] = _slider(TRAIN_INPUTS["train_seq"])
    c["train_run"] = gr.Button("Run training step", variant="primary", elem_id="train-run")
    c["train_verdict"] = gr.HTML(render.status_html(text.TRAIN_START), elem_id="train-verdict-box")
    c["train_loss_fig"] = gr.Plot(label="Loss over the steps", show_label=False, elem_id="train-loss-fig")
    c["train_grads_fig"] = gr.Plot(label="Gradient differences", show_label=False, elem_id="train-grads-fig")
    gr.Markdown(text.CAPTION_TRAINING, elem_classes=["pl-caption"], elem_id="train-caption")
    c["train_summary"] = gr.JSON(label="Training summary", elem_id="train-summary")


def wire(demo: gr.Blocks, cache: ModelCache, model: str, inp: dict, c: dict) -> None:
    """Every event: Generate (on the page, and as the /run API), the seed's case, the views' own controls, token
    clicks, page load."""
    run_in = [inp[k] for k in INPUT_KEYS]
    outputs = [c[k] for k in handlers.OUTPUT_KEYS]
    view_in = [c["state"], c["step"], c["row"], c["log"]]
    views = [c["top50_fig"], c["heat_fig"], c["entropy_fig"]]
    private = dict(api_visibility="private")
    heavy = dict(concurrency_limit=RUN_CONCURRENCY, concurrency_id="run")
    run_handler = handlers.make_run_handler(cache, c)
    # the API's /run ends a refused request as an error; the page's buttons show it in the verdict panel only
    inp["run_api"].click(run_handler, run_in, outputs, api_name="run", **heavy)
    in_page = handlers.in_page(run_handler)
    run = inp["run"].click(in_page, run_in, outputs, **private, **heavy)
    run.then(handlers.refresh_if_log, view_in, views, **private)
    url_js = URL_JS % json.dumps(list(INPUT_KEYS))
    inp["run"].click(None, run_in, None, js=url_js, **private)
    preset = [inp[k] for k in INPUT_KEYS if k != "model"]
    seeded = inp["seed_case"].click(handlers.seed_case, None, preset, **private)
    seeded.then(None, run_in, None, js=url_js, **private)
    seeded.then(in_page, run_in, outputs, **private, **heavy).then(handlers.refresh_if_log, view_in, views,
                                                                   **private)
    # .input: the user moved them (a run or a token click sets them and draws the views itself, so no race)
    c["step"].input(handlers.show_step, view_in, views, **private)
    c["row"].input(handlers.show_row, view_in, views, **private)
    c["log"].change(handlers.show_step, view_in, views, **private)
    c["html_button"].click(handlers.html_download, [c["state"]], [c["html_file"]], **private)
    c["state"].change(lambda: None, None, [c["html_file"]], **private)  # a new run: the old page is not this run's
    for key in ("ours", "hf"):
        c[key].click(handlers.pick_token, [c["state"], c["log"]],
                     [c["step"], c["row"], c["top50_fig"], c["heat_fig"], c["entropy_fig"], c["tabs"]], **private)
    train_in = [inp["model"]] + [c[k] for k in TRAIN_INPUTS]
    c["train_run"].click(handlers.make_train_handler(cache), train_in, [c[k] for k in handlers.TRAIN_OUTPUT_KEYS],
                         api_name="train", **heavy)
    inp["model"].input(handlers.make_model_handler(cache), [inp["model"]], [inp["model_status"]], **private,
                       concurrency_limit=None)
    loaded = demo.load(handlers.make_load_handler(cache, model), None, [c["banner"], inp["model"]], **private,
                       concurrency_limit=1, concurrency_id="load")
    from_query, model_from_query = handlers.make_query_handlers(cache)
    demo.load(from_query, None, [inp[k] for k in INPUT_KEYS if k != "model"], **private)
    loaded.then(model_from_query, None, [inp["model"]], **private)
