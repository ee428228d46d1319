"""Thin event handlers: UI values -> one core call -> records -> (figures, tables, texts, files).

Every expected failure (bad input, a model or file that is not there) replaces the verdict with its reason in the
UI's own words, clears the previous run's views, logs one line and ends the request as a gr.Error (so gradio_client
callers get an error too). Anything unexpected is logged with its traceback and shown as a short generic message.
"""

from __future__ import annotations

import atexit
import csv
import html
import itertools
import json
import logging
import math
import os
import queue
import re
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator

import gradio as gr

from core import compare
from core.errors import ParityLabError
from core.faults import FAULTS

from . import figures, text, yours
from .divergence import report_divergences
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
# The Generate button's inputs, in order (also the page URL's query parameters, so a link restores a run).
INPUT_KEYS = ("prompt", "model", "method", "reference", "fault", "top_k", "top_p", "temperature", "seed",
              "num_sequences", "max_new_tokens")
STREAM_INTERVAL_S = 0.2
# Long-lived threads for the compare work: a fresh thread per request costs ~25% more time in torch (its CPU
# thread pool is per calling thread), measured in bench/bench_compare.py.
_WORKERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="compare")


class InputError(ParityLabError, ValueError):
    """A dashboard input outside what the UI accepts."""


def readable(x) -> str:
    """A number as people read it: 2,147,483,647 rather than 2147483647; 1.2e+300 rather than 300 digits."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        text_ = repr(x)
        return text_ if len(text_) <= 40 else text_[:37] + "..."
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, float) and x != int(x):
        return f"{x:.6g}"
    return f"{int(x):,}" if abs(x) < 1e15 else f"{float(x):.3g}"


def _int(name: str, value, lo: int, hi: int) -> int:
    span = f"between {readable(lo)} and {readable(hi)}"
    if isinstance(value, bool) or value is None:
        raise InputError(f"{name} must be a whole number {span}")
    try:
        f = float(value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{name} must be a whole number {span}, got {readable(value)}") from None
    if not math.isfinite(f) or f != int(f):
        raise InputError(f"{name} must be a whole number {span}, got {readable(value)}")
    if not lo <= int(f) <= hi:
        raise InputError(f"{name} must be {span}, got {readable(int(f))}")
    return int(f)


def _float(name: str, value) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{name} must be a number, got {readable(value)}") from None
    if not math.isfinite(f):
        raise InputError(f"{name} must be a finite number, got {readable(value)}")
    return f


def parse_inputs(cache: ModelCache, prompt, model, method, reference, fault, top_k, top_p, temperature, seed,
                 num_sequences, max_new_tokens) -> dict:
    """UI values -> compare() arguments, refusing anything out of range with a specific message."""
    if not isinstance(prompt, str):
        raise InputError("the prompt must be text")
    if prompt and not prompt.strip():
        raise InputError("the prompt is only whitespace (spaces, tabs or newlines): type some text")
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
    subject, extra = yours.subject_for(cache, loaded)  # ours, or the model given by `app.py --yours`
    return compare((subject, loaded.hf), prompt, tokenizer=loaded.tokenizer, on_step=on_step, **extra, **args), loaded


# ---------------------------------------------------------------------------------------------------------
# Messages in the UI's words


# core's argument names -> the labels the user sees in the dashboard
UI_NAMES = {"num_return_sequences": "number of sequences", "max_new_tokens": "max new tokens", "top_k": "top-k",
            "top_p": "top-p", "max_length": "max length (prompt + new tokens)", "do_sample": "sampling"}
_LONG_NUMBER = re.compile(r"(?<![\w+=\[.,-])(\d{6,})(?![\w.,])")


def ui_message(message: str) -> str:
    """A core message as the dashboard says it: its labels instead of argument names, long numbers grouped."""
    for name, label in UI_NAMES.items():
        message = re.sub(rf"\b{name}=", f"{label} = ", message)
        message = re.sub(rf"\b{name}\b", label, message)
    return _LONG_NUMBER.sub(lambda m: readable(int(m.group(1))), message)


# ---------------------------------------------------------------------------------------------------------
# Records -> displayed values (pure)


def verdict_html(report: dict) -> str:
    bg, fg, icon = text.VERDICT_STYLE[bool(report["agree"])]
    detail = f"max |Δlogit| {report['max_abs_dlogit']:.2g}"
    if report["first_diverging_layer"]:
        detail += f" · first diverging layer: <b>{html.escape(report['first_diverging_layer'])}</b>"
    if report["fault"]:
        detail += f" · bug lab: <b>{html.escape(FAULTS[report['fault']].title)}</b> injected into our model"
    return (f'<div id="verdict" class="verdict-{"ok" if report["agree"] else "bad"}" style="background:{bg};color:{fg};'
            f'padding:14px 18px;border-radius:10px;font-size:1.15em"><b>{icon} {html.escape(report["verdict"])}</b><br>'
            f'<span style="font-size:0.8em">{detail}</span></div>')


def status_html(message: str) -> str:
    return f'<div id="verdict" style="padding:14px 18px;border-radius:10px;background:#f6f8fa">{message}</div>'


def error_html(message: str) -> str:
    """The verdict panel after a refused request: the reason stays on screen (the toast fades)."""
    return (f'<div id="verdict" class="verdict-error" role="alert" style="background:#fff4e5;color:#8a4b00;'
            f'padding:14px 18px;border-radius:10px;font-size:1.1em;border:1px solid #f0b35b"><b>⚠ Not run: '
            f'{html.escape(message)}</b><br><span style="font-size:0.8em">{text.ERROR_HINT}</span></div>')


def _token_tip(step: int, row: int, tid: int, token: str, rec: dict | None, diff: dict | None) -> str:
    """Hover text for a token of OUR text: its id, and its probability and rank under both models."""
    tip = f"step {step} · row {row + 1} · id {tid} {token!r}"
    if rec is not None:
        tip += f"\nours: sampling p {rec['prob']:.3g}, model p {rec['raw_prob']:.3g}, rank {rec['rank']}"
    if diff is not None:
        tip += f"\nHF:   sampling p {diff['hf_prob']:.3g}, rank {diff['hf_rank']}"
    return tip + "\nclick: top-50 at this step"


def _hf_token_tip(step: int, row: int, tid: int, token: str, rec: dict | None, diff: dict | None, first) -> str:
    """Hover text for a token of HF's text. Up to the first difference both saw the same context."""
    if rec is None or diff is None:
        return f"step {step} · row {row + 1} · id {tid} {token!r}"
    if tid == rec["token_id"]:
        return _token_tip(step, row, tid, token, rec, diff)
    if first is not None and step > first:
        return (f"step {step} · row {row + 1} · id {tid} {token!r}\nafter the first difference HF's context is its own "
                "text, not ours: no per-token comparison\nclick: top-50 at this step (our context)")
    tip = f"step {step} · row {row + 1} · id {tid} {token!r} (ours sampled id {rec['token_id']} {rec['token']!r})"
    if tid in rec["top_ids"]:
        k = rec["top_ids"].index(tid)
        tip += (f"\nours: sampling p {rec['top_sample_probs'][k]:.3g}, model p {rec['top_probs'][k]:.3g}, rank {k + 1}"
                f"\nHF:   sampling p {diff['hf_top_sample_probs'][k]:.3g}, model p {diff['hf_top_probs'][k]:.3g}")
    else:
        tip += "\noutside our top-50"
    return tip + "\nclick: top-50 at this step"


TEXT_HEADS = {"ours": "Ours", "hf": "HuggingFace"}


def text_head(side: str, legend: bool = False, label: str | None = None) -> str:
    """The panel's title (`label` for the model under test, e.g. "Yours"); the legend chips only when there is a
    difference to mark."""
    chips = (' <span class="pl-legend"><span class="tok first">first difference</span> '
             '<span class="tok after">after</span></span>') if legend else ""
    return f'<div class="pl-head">{html.escape(label or TEXT_HEADS[side])}{chips}</div>'



def texts_html(report: dict, token_text, side: str) -> str:
    """Both texts as HTML: one line per row, each generated token a span that knows its step and row (click it
    to inspect that step), with its id, probability and rank under both models on hover. The first token that
    differs from the other side is red, later ones grey."""
    records = report["generation"]["records"]
    steps = report["steps"]
    prompt = html.escape(report["prompt"] or "")
    lines = [text_head(side, legend=any(r["first_divergent_step"] is not None for r in report["rows"]),
                       label=report.get("subject") if side == "ours" else None)]
    for row in report["rows"]:
        r = row["row"]
        if side == "hf" and report["reference"] == "logits":
            lines.append(f'<div class="pl-row"><span class="pl-n">[{r + 1}]</span> (logits only: HF did not sample)</div>')
            continue
        ids = row["ours_new_ids"] if side == "ours" else row["ref_new_ids"]
        first = row["first_divergent_step"]
        parts = [f'<div class="pl-row"><span class="pl-n">[{r + 1}]</span> <span class="pl-prompt">{prompt}</span>']
        for i, tid in enumerate(ids):
            rec = records[i][r] if i < len(records) and r < len(records[i]) else None
            diff = steps[i][r] if i < len(steps) and r < len(steps[i]) else None
            tok = token_text(tid)
            cls = "tok" + (" first" if first is not None and i == first else " after" if first is not None and i > first else "")
            tip = (_token_tip(i, r, tid, tok, rec, diff) if side == "ours"
                   else _hf_token_tip(i, r, tid, tok, rec, diff, first))
            data = f' data-s="{i}" data-r="{r}"' if rec is not None else ""
            parts.append(f'<span class="{cls}"{data} title="{html.escape(tip)}">{html.escape(tok)}</span>')
        parts.append("</div>")
        lines.append("".join(parts))
    return "".join(lines)


def partial_html(prompt: str, completions: list[str], label: str | None = None) -> str:
    """Our text while it streams in (no per-token data yet)."""
    return text_head("ours", label=label) + "".join(f'<div class="pl-row"><span class="pl-n">[{r + 1}]</span> {html.escape(prompt + c)}</div>'
                   for r, c in enumerate(completions))


def settings_rows(report: dict) -> list[list]:
    """[setting, ours, HF, HF's source, differs?]. The source of max_length is put right here: with max new
    tokens given, HF's effective max_length is prompt + those tokens (whoever gave them), not a default."""
    table = report["settings_table"]
    by_name = {r["name"]: r for r in table}
    new = by_name.get("max_new_tokens")
    rows = []
    for r in table:
        source = r["source"]
        if r["name"] == "max_length" and new is not None and new.get("hf") is not None:
            who = "you" if new["source"] == "you" else new["source"]
            source = f"{who}: prompt ({len(report['prompt_ids'])} tokens) + {new['hf']} new tokens"
        elif source == "transformers default":
            source = "transformers' own default"
        rows.append([r["name"], str(r["ours"]), str(r["hf"]), source, "⚠ differs" if r["differs"] else ""])
    return rows


SETTINGS_HEADERS = ["setting", "ours", "HF", "HF's source", ""]
DIFFERS_STYLE = "background-color: #ffe2e0; color: #82071e; font-weight: 600"


def settings_table(report: dict):
    """The settings as a pandas Styler: rows where HF's effective value differs from ours highlighted."""
    import pandas as pd

    df = pd.DataFrame(settings_rows(report), columns=SETTINGS_HEADERS)
    return df.style.apply(lambda row: [DIFFERS_STYLE if row.iloc[-1] else ""] * len(row), axis=1)


# ---------------------------------------------------------------------------------------------------------
# Downloads: compact, bounded in number


# Per-token display data (the top-50 lists) is rounded to this many significant digits in the JSON download;
# the measured numbers behind the verdict (max |Δ|, tolerances, KL) keep full precision.
DOWNLOAD_DIGITS = 4
_ROUNDED = {"top_logits", "top_probs", "top_sample_probs", "hf_top_probs", "hf_top_sample_probs", "prob", "raw_prob",
            "entropy", "raw_entropy", "hf_prob"}
_DERIVED = {"top_kept", "top_tokens", "token"}  # top_kept = top_sample_probs > 0; strings are in "tokens" by id
KEEP_RUNS = 8  # run folders kept per server process (older ones are deleted; Gradio serves its own copies)
_RUN_DIR: str | None = None
_RUN_COUNTER = itertools.count()
_RUN_LOCK = threading.Lock()


def _round(x, digits: int = DOWNLOAD_DIGITS):
    if isinstance(x, float) and math.isfinite(x) and x != 0.0:
        return float(f"{x:.{digits}g}")
    return x


def compact_report(report: dict) -> dict:
    """The report as the JSON download carries it: every field, but per-token display floats rounded to
    DOWNLOAD_DIGITS significant digits and each token string stored once (in "tokens", by id) instead of in
    every record. Zeros stay zeros (so top_kept is exactly top_sample_probs > 0)."""
    tokens: dict[str, str] = {}

    def record(rec: dict | None):
        if rec is None:
            return None
        tokens[str(rec["token_id"])] = rec["token"]
        for tid, tok in zip(rec["top_ids"], rec["top_tokens"]):
            tokens[str(tid)] = tok
        return {k: ([_round(x) for x in v] if isinstance(v, list) else _round(v)) if k in _ROUNDED else v
                for k, v in rec.items() if k not in _DERIVED}

    def step(d: dict | None):
        if d is None:
            return None
        return {k: ([_round(x) for x in v] if isinstance(v, list) else _round(v)) if k in _ROUNDED else v
                for k, v in d.items()}

    gen = dict(report["generation"])
    gen["records"] = [[record(r) for r in st] for st in gen["records"]]
    out = {"format": text.DOWNLOAD_FORMAT.format(digits=DOWNLOAD_DIGITS)}
    out.update({k: v for k, v in report.items() if k not in ("generation", "steps")})
    out["generation"] = gen
    out["steps"] = [[step(d) for d in st] for st in report["steps"]]
    out["tokens"] = tokens
    return out


def expand_report(compact: dict) -> dict:
    """Back from the download to the report's own shape (ParityReport.from_dict reads the result)."""
    tokens = compact["tokens"]
    out = {k: v for k, v in compact.items() if k not in ("format", "tokens")}
    gen = dict(out["generation"])
    gen["records"] = [[None if r is None else {**r, "token": tokens[str(r["token_id"])],
                                                "top_tokens": [tokens[str(t)] for t in r["top_ids"]],
                                                "top_kept": [p > 0 for p in r["top_sample_probs"]]}
                       for r in st] for st in gen["records"]]
    out["generation"] = gen
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _sweep_stale_run_dirs(tmp: str) -> None:
    """Remove download folders left by processes that are gone (killed servers never run atexit)."""
    for name in os.listdir(tmp):
        m = re.fullmatch(r"parity-lab-(\d+)-\w+", name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)


def run_dir() -> str:
    """This process's folder for download files (removed at exit, or by the next process if this one is killed)."""
    global _RUN_DIR
    with _RUN_LOCK:
        if _RUN_DIR is None or not os.path.isdir(_RUN_DIR):
            _sweep_stale_run_dirs(tempfile.gettempdir())
            _RUN_DIR = tempfile.mkdtemp(prefix=f"parity-lab-{os.getpid()}-")
            atexit.register(shutil.rmtree, _RUN_DIR, True)
        return _RUN_DIR


def _new_run_folder() -> str:
    """A fresh folder for one run's files; only the newest KEEP_RUNS folders are kept."""
    base = run_dir()
    with _RUN_LOCK:
        folder = os.path.join(base, f"run-{next(_RUN_COUNTER):06d}")
        os.makedirs(folder)
        runs = sorted(d for d in os.listdir(base) if d.startswith("run-"))
        for old in runs[:-KEEP_RUNS]:
            shutil.rmtree(os.path.join(base, old), ignore_errors=True)
    return folder


def write_downloads(report: dict) -> tuple[str, str]:
    """The run as compact JSON (the whole report) and CSV (one line per step and row)."""
    folder = _new_run_folder()
    json_path = os.path.join(folder, "parity_report.json")
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(compact_report(report), f, ensure_ascii=False, separators=(",", ":"), allow_nan=True)
    divs = report_divergences(report)
    csv_path = os.path.join(folder, "parity_steps.csv")
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["step", "row", "token_id", "token", "ours_prob", "ours_rank", "hf_prob", "hf_rank",
                    "max_abs_dlogit", "tolerance", "exceeds", "kl", "total_variation", "js_bits", "divergence_exact",
                    "top1_agree", "top50_overlap", "entropy"])
        for step, (records, diffs, dv) in enumerate(zip(report["generation"]["records"], report["steps"], divs)):
            for rec, d, v in zip(records, diffs, dv):
                if rec is None or d is None:
                    continue
                w.writerow([step, rec["row"], rec["token_id"], rec["token"], rec["prob"], rec["rank"], d["hf_prob"],
                            d["hf_rank"], d["max_abs_dlogit"], d["tolerance"], d["exceeds"], d["kl"], v.tv, v.js,
                            v.exact, d["top1_agree"], d["top50_overlap"], rec["entropy"]])
    return json_path, csv_path


def summary(report: dict) -> dict:
    return {
        "verdict": report["verdict"],
        "agree": report["agree"],
        "subject": report.get("subject", "Ours"),  # "Yours" when the app runs with --yours
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


def _message(exc: Exception) -> str:
    """What the user reads: core's message in the UI's words; one log line for expected errors, a traceback
    only for real bugs."""
    if isinstance(exc, ParityLabError):
        msg = ui_message(str(exc))
        log.warning("request refused: %s", msg)
        return msg
    log.exception("unexpected error while handling a request")
    return f"Something went wrong on our side ({type(exc).__name__}). Please try again or report it."


def error_outputs(c: dict, message: str) -> dict:
    """Every Generate output after a refused request: the reason in the verdict panel, the old run cleared."""
    return {
        c["verdict"]: error_html(message),
        c["ours"]: text_head("ours"), c["hf"]: text_head("hf"),
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
            max_new_tokens, progress=gr.Progress(track_tqdm=True)) -> Iterator[dict]:
        try:
            args = parse_inputs(cache, prompt, model, method, reference, fault, top_k, top_p, temperature, seed,
                                num_sequences, max_new_tokens)
            progress(0, desc=f"loading {model}")
            loaded = cache.get(model)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a message
            msg = _message(exc)
            yield error_outputs(c, msg)
            raise gr.Error(msg, print_exception=False) from None
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
        cleared = False
        while (ev := events.get()) is not None:
            for r, t in enumerate(ev.tokens):
                if not done[r]:
                    texts[r] += token_text(t)
                done[r] = ev.finished[r]
            # stream at most ~5 updates a second: each one costs the sampling thread the GIL for a while
            if events.empty() and time.perf_counter() - last_yield > STREAM_INTERVAL_S:
                last_yield = time.perf_counter()
                update = {c["verdict"]: status_html(text.RUNNING), c["ours"]: partial_html(prompt, texts, yours.label_for(cache))}
                if not cleared:  # the previous run's views must not pass for this one's
                    update = {**error_outputs(c, ""), **update}
                    cleared = True
                yield update
        if "error" in result:
            msg = _message(result["error"])
            yield error_outputs(c, msg)
            raise gr.Error(msg, print_exception=False)
        yield {c["verdict"]: status_html(text.COMPARING)}
        report = result["report"].to_dict()
        yield outputs_for(report, token_text, c)

    return run


def _first_interesting(report: dict) -> tuple[int, int]:
    """(step, row) to open first: the first difference of the first differing row, else step 0 of row 1."""
    n_steps = max(len(report["generation"]["records"]), 1)
    first = next((r["first_divergent_step"] for r in report["rows"] if r["first_divergent_step"] is not None), 0)
    row = next((r["row"] for r in report["rows"] if not r["identical"]), 0)
    return min(first, n_steps - 1), row


def outputs_for(report: dict, token_text, c: dict) -> dict:
    n_steps = max(len(report["generation"]["records"]), 1)
    json_path, csv_path = write_downloads(report)
    step, row = _first_interesting(report)
    return {
        c["verdict"]: verdict_html(report),
        c["ours"]: texts_html(report, token_text, "ours"),
        c["hf"]: texts_html(report, token_text, "hf"),
        c["step_fig"]: figures.step_diffs_figure(report),
        c["top50_fig"]: figures.top50_figure(report, step, row),
        c["heat_fig"]: figures.heatmap_figure(report, row, step),
        c["entropy_fig"]: figures.entropy_figure(report, row, step),
        c["layers_fig"]: figures.layers_figure(report),
        c["settings"]: settings_table(report),
        c["json_file"]: json_path,
        c["csv_file"]: csv_path,
        c["summary"]: summary(report),
        c["state"]: report,
        c["step"]: gr.Slider(minimum=0, maximum=n_steps - 1, value=step, step=1, interactive=True),
        c["row"]: gr.Dropdown(choices=[(f"row {i + 1}", i) for i in range(len(report["rows"]))], value=row,
                              interactive=True),
    }


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
# A link that restores a run: the inputs in the page's query parameters


def query_values(params: dict, allowed_models: list[str]) -> dict:
    """Query parameters -> input values, keeping only the ones that parse (bad ones are ignored, not errors)."""
    out: dict = {}
    for key in INPUT_KEYS:
        raw = params.get(key)
        if raw is None:
            continue
        try:
            if key in ("prompt",):
                value = raw[:20_000]
            elif key == "model":
                if raw not in allowed_models:
                    continue
                value = raw
            elif key == "method" and raw in ("hf", "nanogpt", "greedy"):
                value = raw
            elif key == "reference" and raw in ("generate", "pipeline", "logits"):
                value = raw
            elif key == "fault" and (raw == NO_FAULT or raw in FAULTS):
                value = raw
            elif key in ("top_p", "temperature"):
                value = _float(key, raw)
            elif key in ("top_k", "seed", "num_sequences", "max_new_tokens"):
                lo, hi = {"top_k": (0, 200), "seed": (0, MAX_SEED), "num_sequences": (1, MAX_SEQUENCES),
                          "max_new_tokens": (1, MAX_NEW_TOKENS)}[key]
                value = _int(key, raw, lo, hi)
            else:
                continue
        except InputError:
            continue
        out[key] = value
    return out


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
