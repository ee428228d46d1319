"""Thin event handlers: UI values -> one core call -> records -> (figures, tables, texts, files).

Every expected failure reaches the user as a gr.Error with core's own message; anything unexpected is logged
server-side and shown as a short generic message (no traceback, no server paths).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import queue
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator

import gradio as gr

from core import compare
from core.errors import ParityLabError
from core.faults import FAULTS

from . import figures, text
from .models import RETRY_AFTER_S, TINY, ModelCache, ModelStillLoadingError, ModelUnavailableHereError

log = logging.getLogger("parity_lab")

# Per-request caps, so one request can't monopolise 2 CPU cores or exhaust memory.
MAX_NEW_TOKENS = 200
MAX_SEQUENCES = 8
MAX_SEED = 2**31 - 1
VOCAB = 50257
NO_FAULT = "none"
# The Generate button's outputs, in order (ui.py wires them; gradio_client sees them in this order).
OUTPUT_KEYS = ("verdict", "ours", "hf", "step_fig", "top50_fig", "heat_fig", "entropy_fig", "layers_fig", "settings",
               "json_file", "csv_file", "summary", "state", "step", "row")
STREAM_INTERVAL_S = 0.2
# Long-lived threads for the compare work: a fresh thread per request costs ~25% more time in torch (its CPU
# thread pool is per calling thread), measured in bench/bench_compare.py.
_WORKERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="compare")


class InputError(ParityLabError, ValueError):
    """A dashboard input outside what the UI accepts."""


def _int(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or value is None:
        raise InputError(f"{name} must be a whole number between {lo} and {hi}")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a whole number between {lo} and {hi}, got {value!r}") from None
    if not math.isfinite(f) or f != int(f):
        raise InputError(f"{name} must be a whole number, got {value!r}")
    if not lo <= int(f) <= hi:
        raise InputError(f"{name} must be between {lo} and {hi}, got {int(f)}")
    return int(f)


def _float(name: str, value) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(f):
        raise InputError(f"{name} must be a finite number, got {value!r}")
    return f


def parse_inputs(cache: ModelCache, prompt, model, method, reference, fault, top_k, top_p, temperature, seed,
                 num_sequences, max_new_tokens) -> dict:
    """UI values -> compare() arguments, refusing anything out of range with a specific message."""
    if not isinstance(prompt, str):
        raise InputError("the prompt must be text")
    cache.check(model)
    if method not in ("hf", "nanogpt", "greedy"):
        raise InputError(f"unknown sampling method {method!r}; choose hf, nanogpt or greedy")
    if reference not in ("generate", "pipeline", "logits"):
        raise InputError(f"unknown reference {reference!r}; choose generate, pipeline or logits")
    fault = fault or NO_FAULT
    if fault != NO_FAULT and fault not in FAULTS:
        raise InputError(f"unknown bug-lab fault {fault!r}; choose one of: {', '.join(FAULTS)}")
    return dict(
        prompt=prompt,
        model=model,
        reference=reference,
        fault=None if fault == NO_FAULT else fault,
        method=method,
        top_k=_int("top-k", top_k, 0, VOCAB),
        top_p=_float("top-p", top_p),
        temperature=_float("temperature", temperature),
        seed=_int("seed", seed, 0, MAX_SEED),
        num_return_sequences=_int("number of sequences", num_sequences, 1, MAX_SEQUENCES),
        max_new_tokens=_int("max new tokens", max_new_tokens, 1, MAX_NEW_TOKENS),
    )


def run_compare(cache: ModelCache, args: dict, on_step=None):
    """The one core call behind the Generate button (also used directly by tests and the load test)."""
    args = dict(args)
    loaded = cache.get(args.pop("model"))
    prompt = args.pop("prompt")
    return compare((loaded.ours, loaded.hf), prompt, tokenizer=loaded.tokenizer, on_step=on_step, **args), loaded


# ---------------------------------------------------------------------------------------------------------
# Records -> displayed values (pure)


def verdict_html(report: dict) -> str:
    bg, fg, icon = text.VERDICT_STYLE[bool(report["agree"])]
    detail = f"max |Δlogit| {report['max_abs_dlogit']:.2g}"
    if report["first_diverging_layer"]:
        detail += f" · first diverging layer: <b>{report['first_diverging_layer']}</b>"
    if report["fault"]:
        detail += f" · bug lab: <b>{FAULTS[report['fault']].title}</b> injected into our model"
    return (f'<div id="verdict" style="background:{bg};color:{fg};padding:14px 18px;border-radius:10px;'
            f'font-size:1.15em"><b>{icon} {report["verdict"]}</b><br><span style="font-size:0.8em">{detail}'
            "</span></div>")


def status_html(message: str) -> str:
    return f'<div id="verdict" style="padding:14px 18px;border-radius:10px;background:#f6f8fa">{message}</div>'


def highlighted(report: dict, token_text, side: str) -> list[tuple[str, str | None]]:
    """Rows as (text, label) spans; the first divergent token labelled, later ones greyed."""
    spans: list[tuple[str, str | None]] = []
    for row in report["rows"]:
        ids = row["ours_new_ids"] if side == "ours" else row["ref_new_ids"]
        if side == "hf" and report["reference"] == "logits":
            spans.append((f"[{row['row'] + 1}] (logits only: HF did not sample)\n", None))
            continue
        spans.append((f"[{row['row'] + 1}] {report['prompt'] or ''}", None))
        first = row["first_divergent_step"]
        for i, tid in enumerate(ids):
            label = None
            if first is not None and i == first:
                label = "first difference"
            elif first is not None and i > first:
                label = "after"
            spans.append((token_text(tid), label))
        spans.append(("\n", None))
    return spans


def partial_spans(prompt: str, completions: list[str]) -> list[tuple[str, str | None]]:
    return [(f"[{r + 1}] {prompt}{text}\n", None) for r, text in enumerate(completions)]


def settings_rows(report: dict) -> list[list]:
    return [[r["name"], str(r["ours"]), str(r["hf"]), r["source"], "⚠ differs" if r["differs"] else ""]
            for r in report["settings_table"]]


def write_downloads(report: dict) -> tuple[str, str]:
    """The run as JSON (the whole report) and CSV (one line per step and row)."""
    folder = tempfile.mkdtemp(prefix="parity-run-")
    json_path = os.path.join(folder, "parity_report.json")
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(report, f, ensure_ascii=False)
    csv_path = os.path.join(folder, "parity_steps.csv")
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["step", "row", "token_id", "token", "ours_prob", "ours_rank", "hf_prob", "hf_rank",
                    "max_abs_dlogit", "tolerance", "exceeds", "kl", "top1_agree", "top50_overlap", "entropy"])
        for step, (records, diffs) in enumerate(zip(report["generation"]["records"], report["steps"])):
            for rec, d in zip(records, diffs):
                if rec is None or d is None:
                    continue
                w.writerow([step, rec["row"], rec["token_id"], rec["token"], rec["prob"], rec["rank"], d["hf_prob"],
                            d["hf_rank"], d["max_abs_dlogit"], d["tolerance"], d["exceeds"], d["kl"], d["top1_agree"],
                            d["top50_overlap"], rec["entropy"]])
    return json_path, csv_path


def summary(report: dict) -> dict:
    return {
        "verdict": report["verdict"],
        "agree": report["agree"],
        "ours_texts": report["generation"]["texts"],
        "hf_texts": [r["ref_text"] for r in report["rows"]],
        "first_divergent_steps": [r["first_divergent_step"] for r in report["rows"]],
        "causes": [r["cause"] for r in report["rows"]],
        "max_abs_dlogit": report["max_abs_dlogit"],
        "first_diverging_layer": report["first_diverging_layer"],
        "seconds": report["timings"].get("total_s"),
    }


# ---------------------------------------------------------------------------------------------------------
# Handlers


def _user_error(exc: Exception) -> gr.Error:
    if isinstance(exc, ParityLabError):
        return gr.Error(str(exc))
    log.exception("unexpected error while handling a request")
    return gr.Error(f"Something went wrong on our side ({type(exc).__name__}). Please try again or report it.")


def make_run_handler(cache: ModelCache, components: dict):
    """The Generate button: streams our text while sampling, then fills every view from the report."""
    c = components

    def run(prompt, model, method, reference, fault, top_k, top_p, temperature, seed, num_sequences,
            max_new_tokens, progress=gr.Progress(track_tqdm=True)) -> Iterator[dict]:
        try:
            args = parse_inputs(cache, prompt, model, method, reference, fault, top_k, top_p, temperature, seed,
                                num_sequences, max_new_tokens)
            progress(0, desc=f"loading {model}")
            loaded = cache.get(model)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a message
            raise _user_error(exc) from None
        events: queue.Queue = queue.Queue()
        result: dict = {}

        def work():
            try:
                result["report"], _ = run_compare(cache, args, on_step=lambda ev: events.put(ev))
            except Exception as exc:  # noqa: BLE001
                result["error"] = exc
            finally:
                events.put(None)

        _WORKERS.submit(work)
        token_text = lambda t: loaded.tokenizer.decode([t])  # noqa: E731
        texts = [""] * args["num_return_sequences"]
        done = [False] * len(texts)
        last_yield = 0.0
        while (ev := events.get()) is not None:
            for r, t in enumerate(ev.tokens):
                if not done[r]:
                    texts[r] += token_text(t)
                done[r] = ev.finished[r]
            # stream at most ~5 updates a second: each one costs the sampling thread the GIL for a while
            if events.empty() and time.perf_counter() - last_yield > STREAM_INTERVAL_S:
                last_yield = time.perf_counter()
                yield {c["verdict"]: status_html(text.RUNNING), c["ours"]: partial_spans(prompt, texts)}
        if "error" in result:
            raise _user_error(result["error"])
        yield {c["verdict"]: status_html(text.COMPARING)}
        report = result["report"].to_dict()
        yield outputs_for(report, token_text, c)

    return run


def outputs_for(report: dict, token_text, c: dict) -> dict:
    n_steps = max(len(report["generation"]["records"]), 1)
    json_path, csv_path = write_downloads(report)
    first = next((r["first_divergent_step"] for r in report["rows"] if r["first_divergent_step"] is not None), 0)
    row = next((r["row"] for r in report["rows"] if not r["identical"]), 0)
    step = min(first, n_steps - 1)
    return {
        c["verdict"]: verdict_html(report),
        c["ours"]: highlighted(report, token_text, "ours"),
        c["hf"]: highlighted(report, token_text, "hf"),
        c["step_fig"]: figures.step_diffs_figure(report),
        c["top50_fig"]: figures.top50_figure(report, step, row),
        c["heat_fig"]: figures.heatmap_figure(report, row),
        c["entropy_fig"]: figures.entropy_figure(report, row),
        c["layers_fig"]: figures.layers_figure(report),
        c["settings"]: settings_rows(report),
        c["json_file"]: json_path,
        c["csv_file"]: csv_path,
        c["summary"]: summary(report),
        c["state"]: report,
        c["step"]: gr.Slider(minimum=0, maximum=n_steps - 1, value=step, step=1, interactive=True),
        c["row"]: gr.Dropdown(choices=[(f"row {i + 1}", i) for i in range(len(report["rows"]))], value=row,
                              interactive=True),
    }


def show_step(report: dict | None, step, row):
    if not report:
        return None
    return figures.top50_figure(report, int(step or 0), int(row or 0))


def show_row(report: dict | None, step, row):
    if not report:
        return None, None, None
    row = int(row or 0)
    return (figures.top50_figure(report, int(step or 0), row), figures.heatmap_figure(report, row),
            figures.entropy_figure(report, row))


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
    built-in tiny model, with a banner saying why (still loading, offline, Hub error...). Never hangs the page."""

    def on_load(progress=gr.Progress(track_tqdm=True)):
        if default_model == TINY:
            return gr.Markdown(visible=False), gr.Dropdown(choices=cache.allowed, value=TINY)
        try:
            progress(0, desc=f"loading {default_model}")
            cache.get(default_model, wait_s=cache.page_wait_s, retry_after_s=RETRY_AFTER_S)
            return gr.Markdown(visible=False), gr.Dropdown(choices=cache.allowed, value=default_model)
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
        try:
            cache.get(TINY)
        except ParityLabError as tiny_exc:  # should not happen (bundled BPE files): say so, keep serving
            return gr.Markdown(f"⚠️ {tiny_exc}", visible=True), gr.Dropdown(choices=cache.allowed, value=TINY)
        return gr.Markdown(banner, visible=True), gr.Dropdown(choices=cache.allowed, value=TINY)

    return on_load
