"""build_demo(): the dashboard's layout and wiring. Building never loads a model and never launches."""

from __future__ import annotations

import argparse

import gradio as gr

from core.faults import FAULTS

from . import handlers, text, upload
from .models import HUB_ALLOWLIST, TINY, ModelCache

CSS = """
#verdict {min-height: 3.2em}
.gradio-container {max-width: 1400px !important}
/* texts wrap like prose, highlights inline (Gradio's default breaks words and puts spans on new lines) */
#ours-text .textfield, #hf-text .textfield {display: block; word-break: normal; overflow-wrap: anywhere}
#ours-text .token-container, #hf-text .token-container {display: inline}
#ours-text .token.highlighted, #hf-text .token.highlighted {margin: 0; padding: 0 1px}
#ours-text .line-break, #hf-text .line-break {display: block}
"""
# Heavy requests (a full compare) at most 2 at a time on 2 cores; cheap view updates are not limited by them.
RUN_CONCURRENCY = 2
QUEUE = dict(default_concurrency_limit=8, max_size=32)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="GPT-2 Parity Lab dashboard")
    ap.add_argument("--model", default="gpt2",
                    help=f"default model: a Hub id ({', '.join(HUB_ALLOWLIST)}), a local checkpoint directory, or {TINY}")
    ap.add_argument("--host", default=None,
                    help="address to listen on (default: $GRADIO_SERVER_NAME, which Spaces sets, else 127.0.0.1)")
    ap.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT, else 7860)")
    ap.add_argument("--bpe-dir", default=None,
                    help="directory with GPT-2's vocab.json + merges.txt (or encoder.json + vocab.bpe) for offline use; "
                         "defaults to $GPT2_BPE_DIR")
    ap.add_argument("--max-models", type=int, default=1, help="models kept in memory at once (switching evicts)")
    return ap.parse_args(argv)


def launch_kwargs() -> dict:
    return dict(theme=gr.themes.Soft(), css=CSS, show_error=True)


def build_demo(model: str = "gpt2", bpe_dir: str | None = None, max_models: int = 1) -> gr.Blocks:
    """The dashboard. `model` is the default (and, if not on the allowlist, the one extra the UI may pick:
    local paths come only from here, never from the UI)."""
    import os

    bpe_dir = bpe_dir or os.environ.get("GPT2_BPE_DIR") or None
    extra = [model] if model not in HUB_ALLOWLIST and model != TINY else []
    cache = ModelCache(extra=extra, max_models=max_models, bpe_dir=bpe_dir)
    c: dict = {}
    with gr.Blocks(title=text.TITLE) as demo:
        demo.model_cache = cache  # for tests and the load test: the same cache the handlers use
        gr.Markdown(text.INTRO)
        banner = gr.Markdown(visible=False, elem_id="offline-banner")
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                prompt = gr.Textbox(value=text.PROMPT_EXAMPLES[0], label="Prompt", lines=3, max_lines=8,
                                    elem_id="prompt")
                run_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                gr.Examples(examples=[[p] for p in text.PROMPT_EXAMPLES], inputs=[prompt], label="Examples")
                model_dd = gr.Dropdown(choices=cache.allowed, value=model, label="Model", elem_id="model")
                method = gr.Radio(choices=text.METHODS, value="hf", label="Our sampling method", info=text.HELP_METHOD,
                                  elem_id="method")
                reference = gr.Radio(choices=text.REFERENCES, value="generate", label="HuggingFace reference",
                                     info=text.HELP_REFERENCE, elem_id="reference")
                fault = gr.Dropdown(choices=[("none", handlers.NO_FAULT)] + [(f.title, f.name) for f in FAULTS.values()],
                                    value=handlers.NO_FAULT, label="Bug lab: inject a porting mistake", info=text.HELP_FAULT,
                                    elem_id="fault")
                with gr.Accordion("Sampling settings", open=True):
                    top_k = gr.Slider(0, 200, value=50, step=1, label="top-k (0 = off)", elem_id="top_k")
                    top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.01, label="top-p", elem_id="top_p")
                    temperature = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="temperature (0 = greedy)",
                                            elem_id="temperature")
                    seed = gr.Number(value=42, precision=0, label="random seed", elem_id="seed")
                    num_sequences = gr.Slider(1, handlers.MAX_SEQUENCES, value=5, step=1, label="number of sequences",
                                              elem_id="num_sequences")
                    max_new_tokens = gr.Slider(1, handlers.MAX_NEW_TOKENS, value=22, step=1, label="max new tokens",
                                               info="22: the seed's rows of 30 tokens", elem_id="max_new_tokens")
                upload_panel = upload.build_panel()  # "Check a result file": demo/upload.py
            with gr.Column(scale=2):
                c["verdict"] = gr.HTML(handlers.status_html("Press <b>Generate</b> to compare with HuggingFace."))
                with gr.Row():
                    color_map = {"first difference": "#ff6b6b", "after": "#d0d7de"}
                    c["ours"] = gr.HighlightedText(label="Ours", color_map=color_map, show_legend=True,
                                                   combine_adjacent=True, elem_id="ours-text")
                    c["hf"] = gr.HighlightedText(label="HuggingFace", color_map=color_map, show_legend=True,
                                                 combine_adjacent=True, elem_id="hf-text")
                with gr.Tabs():
                    with gr.Tab("Per step"):
                        c["step_fig"] = gr.Plot(label="Per-step differences", elem_id="step-fig")
                    with gr.Tab("Top-50 at a step"):
                        with gr.Row():
                            c["step"] = gr.Slider(0, 1, value=0, step=1, label="step", elem_id="step-slider")
                            c["row"] = gr.Dropdown(choices=[("row 1", 0)], value=0, label="row", elem_id="row-dd")
                        c["top50_fig"] = gr.Plot(label="Top-50 probabilities", elem_id="top50-fig")
                    with gr.Tab("Over steps"):
                        c["heat_fig"] = gr.Plot(label="Top-k probabilities over steps", elem_id="heat-fig")
                        c["entropy_fig"] = gr.Plot(label="Entropy and chosen token", elem_id="entropy-fig")
                    with gr.Tab("Per layer"):
                        c["layers_fig"] = gr.Plot(label="Per-layer differences", elem_id="layers-fig")
                    with gr.Tab("Settings"):
                        c["settings"] = gr.Dataframe(headers=["setting", "ours", "HF", "HF's source", ""],
                                                     label="Effective generation settings", elem_id="settings-table")
                    with gr.Tab("Download"):
                        with gr.Row():
                            c["json_file"] = gr.File(label="Run as JSON", elem_id="json-file")
                            c["csv_file"] = gr.File(label="Per-step table as CSV", elem_id="csv-file")
                        c["summary"] = gr.JSON(label="Summary", elem_id="summary")
                with gr.Accordion("How to read the plots, and how to use this from code", open=False):
                    gr.Markdown(text.PLOT_HELP + text.USAGE)
        c["state"] = gr.State(None)

        inputs = [prompt, model_dd, method, reference, fault, top_k, top_p, temperature, seed, num_sequences,
                  max_new_tokens]
        outputs = [c[k] for k in handlers.OUTPUT_KEYS]
        run_btn.click(handlers.make_run_handler(cache, c), inputs, outputs, api_name="run",
                      concurrency_limit=RUN_CONCURRENCY, concurrency_id="run")
        upload.wire_panel(upload_panel, cache, c, model_dd, RUN_CONCURRENCY)
        c["step"].change(handlers.show_step, [c["state"], c["step"], c["row"]], [c["top50_fig"]], api_visibility="private")
        c["row"].change(handlers.show_row, [c["state"], c["step"], c["row"]],
                        [c["top50_fig"], c["heat_fig"], c["entropy_fig"]], api_visibility="private")
        demo.load(handlers.make_load_handler(cache, model), None, [banner, model_dd], api_visibility="private",
                  concurrency_limit=1, concurrency_id="load")
    return demo
