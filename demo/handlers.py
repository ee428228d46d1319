"""The dashboard's event handlers, thin: UI values -> inputs.parse_inputs -> one core call -> records -> the
views (render.py for HTML and tables, figures.py for plots, downloads.py for files).

The only module that runs a comparison (upload.py does the same for an uploaded result file). Every expected
failure (bad input, a model or file that is not there) replaces the verdict with its reason in the UI's own
words, clears the previous run's views, logs one line and ends the request as a gr.Error, so that gradio_client
callers get an error. The page's own buttons run the same handlers through in_page(), which ends such a request
quietly instead: the verdict panel is then the page's one message about it (no error toasts piling up, no
"Error" badges over the other panels). Anything unexpected is logged with its traceback and shown as a short
generic message. Knows the order of the Generate button's outputs; knows nothing of the layout (ui.py).
"""

from __future__ import annotations

import functools
import logging
import queue
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator

import gradio as gr

from core import compare
from core.errors import ParityLabError

from . import figures, render, text, yours
from .downloads import expand_report, write_downloads, write_html  # noqa: F401 (expand_report: every JSON download names it here)
from .inputs import INPUT_KEYS, INPUTS, SEED_CASE, InputError, parse_inputs, parse_train_inputs, query_values
from .models import (
    RETRY_AFTER_S, TINY, ModelCache, ModelStillLoadingError, ModelUnavailableHereError, hub_offline,
)

log = logging.getLogger("parity_lab")

# The Generate button's outputs, in order (ui.py wires them; gradio_client sees them in this order).
OUTPUT_KEYS = ("verdict", "ours", "hf", "step_fig", "top50_fig", "heat_fig", "entropy_fig", "layers_fig", "settings",
               "json_file", "csv_file", "summary", "state", "step", "row")
STREAM_INTERVAL_S = 0.2
# Long-lived threads for the compare work: a fresh thread per request costs ~25% more time in torch (its CPU
# thread pool is per calling thread), measured in bench/bench_compare.py.
_WORKERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="compare")


# ---------------------------------------------------------------------------------------------------------
# The Generate button


def in_page(handler):
    """`handler` (a generator that yields its reason, then raises gr.Error) as the page's own button calls it: a
    refused request ends after that last update, which already shows the reason in the verdict panel."""

    @functools.wraps(handler)  # Gradio reads the wrapped signature (its inputs, gr.Progress)
    def quietly(*args, **kwargs):
        try:
            yield from handler(*args, **kwargs)
        except gr.Error:
            return

    return quietly


def run_compare(cache: ModelCache, args: dict, on_step=None, on_verdict=None):
    """The one core call behind the Generate button (also used directly by tests and the load test); on_verdict
    sees a differing report before its localisation."""
    args = dict(args)
    loaded = cache.get(args.pop("model"))
    prompt = args.pop("prompt")
    subject, extra = yours.subject_for(cache, loaded)  # ours, or the model given by `app.py --yours`
    return compare((subject, loaded.hf), prompt, tokenizer=loaded.tokenizer, on_step=on_step, on_verdict=on_verdict,
                   **extra, **args), loaded


def error_message(exc: Exception) -> str:
    """What the user reads: core's message in the UI's words; one log line for expected errors, a traceback
    only for real bugs."""
    if isinstance(exc, ParityLabError):
        msg = render.ui_message(str(exc))
        log.warning("request refused: %s", msg)
        return msg
    log.exception("unexpected error while handling a request")
    return f"Something went wrong on our side ({type(exc).__name__}). Please try again or report it."


def error_outputs(c: dict, message: str, action: str = "run") -> dict:
    """Every Generate output after a refused request (`action`: "run" or "check", the button that was pressed):
    the reason in the verdict panel, the old run cleared."""
    return {
        c["verdict"]: render.error_html(message, action),
        c["ours"]: render.text_head("ours"), c["hf"]: render.text_head("hf"),
        c["step_fig"]: None, c["top50_fig"]: None, c["heat_fig"]: None, c["entropy_fig"]: None, c["layers_fig"]: None,
        c["settings"]: None, c["json_file"]: None, c["csv_file"]: None, c["summary"]: None, c["state"]: None,
        c["step"]: gr.Slider(minimum=0, maximum=1, value=0, interactive=False),
        c["row"]: gr.Dropdown(choices=[("row 1", 0)], value=0, interactive=False),
    }


def make_run_handler(cache: ModelCache, components: dict):
    """The Generate button: streams our text while sampling, then fills every view from the report. A refused
    request shows its reason in the verdict panel, clears the previous run, then ends as a gr.Error."""
    c = components

    def run(prompt, model, method, reference, fault, top_k, top_p, temperature, seed, num_sequences,
            max_new_tokens, precision=INPUTS["precision"].default,
            progress=gr.Progress(track_tqdm=True)) -> Iterator[dict]:
        try:
            args = parse_inputs(cache, prompt, model, method, reference, fault, top_k, top_p, temperature, seed,
                                num_sequences, max_new_tokens, precision)
            progress(0, desc=f"loading {model}")
            loaded = cache.get(model)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a message
            msg = error_message(exc)
            yield error_outputs(c, msg)
            raise gr.Error(msg, print_exception=False) from None
        events: queue.Queue = queue.Queue()
        result: dict = {}

        def work():
            try:
                result["report"], _ = run_compare(cache, args, on_step=lambda ev: events.put(ev),
                                                  on_verdict=lambda rep: events.put(rep.to_dict()))
            except Exception as exc:  # noqa: BLE001
                result["error"] = exc
            finally:
                events.put(None)

        _WORKERS.submit(work)
        token_text = lambda t: loaded.tokenizer.decode([t])  # noqa: E731
        texts = [""] * args["num_return_sequences"]
        done = [False] * len(texts)
        last_yield = 0.0
        cleared = shown = False
        while (ev := events.get()) is not None:
            if isinstance(ev, dict):  # the verdict, before localisation: shown now, the diagnosis follows
                shown = True
                yield outputs_for(ev, token_text, c)
                continue
            for r, t in enumerate(ev.tokens):
                if not done[r]:
                    texts[r] += token_text(t)
                done[r] = ev.finished[r]
            # stream at most ~5 updates a second: each one costs the sampling thread the GIL for a while
            if events.empty() and time.perf_counter() - last_yield > STREAM_INTERVAL_S:
                last_yield = time.perf_counter()
                update = {c["verdict"]: render.status_html(text.RUNNING),
                          c["ours"]: render.partial_html(prompt, texts, yours.label_for(cache))}
                if not cleared:  # the previous run's views must not pass for this one's
                    update = {**error_outputs(c, ""), **update}
                    cleared = True
                yield update
        if "error" in result:
            msg = error_message(result["error"])
            yield error_outputs(c, msg)
            raise gr.Error(msg, print_exception=False)
        if not shown:
            yield {c["verdict"]: render.status_html(text.COMPARING)}
        report = result["report"].to_dict()
        yield outputs_for(report, token_text, c)

    return run


def seed_case() -> tuple:
    """"The seed's case" button: every input but the model set to inputs.SEED_CASE (the page then runs it)."""
    return tuple(SEED_CASE[k] for k in INPUT_KEYS if k != "model")


def _first_interesting(report: dict) -> tuple[int, int]:
    """(step, row) to open first: the first difference of the first differing row, else step 0 of row 1."""
    n_steps = max(len(report["generation"]["records"]), 1)
    first = next((r["first_divergent_step"] for r in report["rows"] if r["first_divergent_step"] is not None), 0)
    row = next((r["row"] for r in report["rows"] if not r["identical"]), 0)
    return min(first, n_steps - 1), row


def outputs_for(report: dict, token_text, c: dict) -> dict:
    """Every Generate output for a report (also the upload panel's, for an uploaded result's case)."""
    n_steps = max(len(report["generation"]["records"]), 1)
    json_path, csv_path = write_downloads(report)
    step, row = _first_interesting(report)
    return {
        c["verdict"]: render.verdict_html(report),
        c["ours"]: render.texts_html(report, token_text, "ours"),
        c["hf"]: render.texts_html(report, token_text, "hf"),
        c["step_fig"]: figures.step_diffs_figure(report),
        c["top50_fig"]: figures.top50_figure(report, step, row),
        c["heat_fig"]: figures.heatmap_figure(report, row, step),
        c["entropy_fig"]: figures.entropy_figure(report, row, step),
        c["layers_fig"]: figures.layers_figure(report),
        c["settings"]: render.settings_table(report),
        c["json_file"]: json_path,
        c["csv_file"]: csv_path,
        c["summary"]: render.summary(report),
        c["state"]: report,
        c["step"]: gr.Slider(minimum=0, maximum=n_steps - 1, value=step, step=1, interactive=True),
        c["row"]: gr.Dropdown(choices=[(f"row {i + 1}", i) for i in range(len(report["rows"]))], value=row,
                              interactive=True),
    }


def html_download(report: dict | None) -> str:
    """The Download tab's HTML button: the shown run as one self-contained page (demo/report.py)."""
    if not report:
        raise gr.Error(text.HTML_NO_RUN, print_exception=False)
    return write_html(report)


# ---------------------------------------------------------------------------------------------------------
# The views' own controls: step slider, row menu, log scale, a click on a token


def _step_row(report: dict, step, row) -> tuple[int, int]:
    n_steps = max(len(report["generation"]["records"]), 1)
    n_rows = max(len(report["rows"]), 1)
    return max(0, min(int(step or 0), n_steps - 1)), max(0, min(int(row or 0), n_rows - 1))


def show_step(report: dict | None, step, row, log_scale=False):
    """The step slider or the log-scale box moved: the top-50 chart, and the step marked over steps."""
    if not report:
        return None, None, None
    step, row = _step_row(report, step, row)
    return (figures.top50_figure(report, step, row, bool(log_scale)), figures.heatmap_figure(report, row, step),
            figures.entropy_figure(report, row, step))


def refresh_if_log(report: dict | None, step, row, log_scale):
    """After a run: Generate draws the top-50 chart on a linear scale; redraw it if the log box is ticked."""
    if not log_scale or not report:
        return gr.skip(), gr.skip(), gr.skip()
    return show_step(report, step, row, log_scale)


def show_row(report: dict | None, step, row, log_scale=False):
    """The row menu moved: the same three views for that row."""
    return show_step(report, step, row, log_scale)


def pick_token(report: dict | None, log_scale, evt: gr.EventData):
    """A token was clicked in either text: open the top-50 view at its step and row."""
    data = getattr(evt, "_data", None) or {}
    if not report or "step" not in data or "row" not in data:
        return (gr.skip(),) * 6
    step, row = _step_row(report, data["step"], data["row"])
    top, heat, ent = show_step(report, step, row, log_scale)
    rows = [(f"row {i + 1}", i) for i in range(len(report["rows"]))]
    return gr.Slider(value=step), gr.Dropdown(choices=rows, value=row), top, heat, ent, gr.Tabs(selected="top50")


# ---------------------------------------------------------------------------------------------------------
# Page load: a link's inputs, the model menu, the default model


def make_query_handlers(cache: ModelCache):
    """Two page-load handlers: every input but the model from the URL at once, the model after the default
    model's own load handler has settled (it may switch to the offline model)."""

    def inputs_from_query(request: gr.Request):
        values = query_values(dict(request.query_params), cache.allowed) if request is not None else {}
        return tuple(values.get(k, gr.skip()) for k in INPUT_KEYS if k != "model")

    def model_from_query(request: gr.Request):
        values = query_values(dict(request.query_params), cache.allowed) if request is not None else {}
        return values.get("model", gr.skip())

    return inputs_from_query, model_from_query


def make_model_handler(cache: ModelCache):
    """Choosing a model in the menu starts its load at once; the note under the menu says whether it is ready,
    still downloading (Generate says the same until it is), or why it cannot be loaded here."""

    def on_model(model):
        try:
            cache.get(model, wait_s=cache.page_wait_s, retry_after_s=RETRY_AFTER_S)
        except ModelStillLoadingError as exc:
            return gr.Markdown(text.MODEL_LOADING.format(model=model, seconds=exc.seconds), visible=True)
        except ParityLabError as exc:
            return gr.Markdown(f"⚠️ {exc}", visible=True)
        return gr.Markdown(visible=False)

    return on_model


def make_load_handler(cache: ModelCache, default_model: str):
    """On page load: the default model if it is ready within `cache.page_wait_s` of its load's start; otherwise the
    built-in tiny model, with a banner saying why (still loading, offline, Hub error...). Never hangs the page.

    A generator: the banner and the tiny model's name come as soon as the default model is known to be unavailable
    (the tiny model builds meanwhile: it is started beside the default's load), and a "loading" progress is shown
    only while the default model's download is under way (app.py starts it), never where it cannot progress (Hub
    switched off, or a failure already known)."""

    def on_load(progress=gr.Progress(track_tqdm=True)):
        if default_model == TINY:
            yield gr.Markdown(visible=False), gr.Dropdown(choices=cache.allowed, value=TINY)
            return
        try:
            if default_model not in cache.resident():
                cache.prefetch(TINY)  # the fallback, ready by the time it may be needed
                if default_model in cache.loading() and not hub_offline():  # a download under way, not a failure
                    progress(0, desc=f"loading {default_model}")
            cache.get(default_model, wait_s=cache.page_wait_s, retry_after_s=RETRY_AFTER_S)
            yield gr.Markdown(visible=False), gr.Dropdown(choices=cache.allowed, value=default_model)
            return
        except ModelStillLoadingError as exc:
            banner = text.LOADING_BANNER.format(wanted=default_model, seconds=exc.seconds)
        except ModelUnavailableHereError as exc:
            if exc.reason in ("offline", "unreachable"):
                banner = text.OFFLINE_BANNER.format(wanted=default_model, why=exc.what) + " " + text.OWN_CHECKPOINT_HINT
            else:
                banner = text.LOAD_FAILED_BANNER.format(wanted=default_model, why=exc.what, next_step=exc.next_step)
        except ParityLabError as exc:
            banner = f"⚠️ **`{default_model}` could not be loaded**: {exc}"
        log.warning("default model %s is not available now; the page falls back to %s", default_model, TINY)
        yield gr.Markdown(banner, visible=True), gr.Dropdown(choices=cache.allowed, value=TINY)
        try:
            cache.get(TINY)
        except ParityLabError as tiny_exc:  # should not happen (bundled BPE files): say so, keep serving
            yield gr.Markdown(f"⚠️ {tiny_exc}", visible=True), gr.Dropdown(choices=cache.allowed, value=TINY)

    return on_load


# ---------------------------------------------------------------------------------------------------------
# The Training step tab


TRAIN_OUTPUT_KEYS = ("train_verdict", "train_loss_fig", "train_grads_fig", "train_summary")


def run_training(cache: ModelCache, args: dict):
    """The one core call behind the Training step tab: ours (with a training fault) or `app.py --yours`'s model
    against HF's, on a batch of the chosen shape."""
    from core import apply_training_fault, compare_training

    args = dict(args)
    loaded = cache.get(args.pop("model"))
    fault = args.pop("fault")
    subject, extra = yours.subject_for(cache, loaded)
    optimizer = "adamw"
    if extra:  # --yours: the bug lab is off (it changes our model)
        if fault is not None:
            raise InputError("the training bug lab changes our model; it is off while your model is under test")
        label = extra["label"]
    else:
        subject, fault_opt = apply_training_fault(loaded.ours, fault)
        optimizer = fault_opt or optimizer
        label = "Ours"
    return compare_training(subject, loaded.hf, optimizer=optimizer, fault=fault, label=label,
                            model_name=loaded.name,
                            layers=extra.get("layers"), **args).to_dict()


def make_train_handler(cache: ModelCache):
    """The Run training step button (and /train): verdict, loss figure, gradient figure, summary; a refused
    request says why in the tab's verdict panel."""

    def train(model, fault, steps, batch_size, seq_len):
        try:
            args = parse_train_inputs(cache, model, fault, steps, batch_size, seq_len)
            report = _WORKERS.submit(run_training, cache, args).result()
        except Exception as exc:  # noqa: BLE001 - every failure becomes a message
            return render.training_error_html(error_message(exc)), None, None, None
        return (render.training_verdict_html(report), figures.training_loss_figure(report),
                figures.training_grads_figure(report), _training_summary(report))

    return train


def _training_summary(report: dict) -> dict:
    keep = ("agree", "verdict", "loss", "hf_loss", "first_diverging_layer", "first_diverging_parameter", "mistakes",
            "structure", "fault", "subject", "batch", "optimizer", "precision")
    return {k: report[k] for k in keep} | {"steps": [{k: s[k] for k in ("step", "loss", "hf_loss", "exceeds")}
                                                     for s in report["steps"]],
                                           "diverging_parameters": [p["name"] for p in report["params"]
                                                                    if p["exceeds"]]}
