"""Every dashboard input in one table: its type, default, limits, labels, and the message that refuses a bad value.

INPUTS is the Generate button's inputs in the order of the /run API (also the page URL's query parameters, so a
link restores a run); parse_inputs checks values from the button or the API, query_values values from a link.
The upload panel's limits are at the end. ui.py builds its components from this table.

Knows what the dashboard accepts and how it says no; knows nothing of Gradio, of loading models (the cache's own
check refuses a model it does not serve), or of the ranges core checks itself (top-p, temperature, the prompt's
length and characters: core refuses them in its own words, which render.ui_message turns into these labels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from core.errors import ParityLabError
from core.faults import FAULTS
from core.precision import CHOICES as PRECISION_CHOICES

from . import text

# Per-request caps, so one request can't monopolise 2 CPU cores or exhaust memory.
MAX_NEW_TOKENS = 200
MAX_SEQUENCES = 8
MAX_SEED = 2**31 - 1
VOCAB = 50257
NO_FAULT = "none"
PRECISION_LABELS = {"auto": "auto (float32 for our model; yours: detected)", "float32": "float32",
                    "bfloat16": "bfloat16 (weights and activations)", "float16": "float16 (weights and activations)",
                    "bfloat16-autocast": "bfloat16 autocast", "float16-autocast": "float16 autocast",
                    "tf32": "TF32 (CUDA matmuls; no effect on a CPU)"}
PROMPT_URL_CHARS = 20_000  # a link's prompt is cut to this many characters (a link is never refused)


class InputError(ParityLabError, ValueError):
    """A dashboard input outside what the UI accepts."""


@dataclass(frozen=True)
class Input:
    """One input of the Generate button."""

    key: str  # the /run argument, the URL's query parameter, ui.py's component key and elem_id
    arg: str  # the core.compare() argument it becomes
    kind: str  # "text", "model", "choice", "int" or "float"
    name: str  # what messages call it
    label: str  # its label in the UI
    default: object = None  # the UI's initial value (the model's is app.py --model)
    choices: tuple = ()  # "choice": (label shown, value) pairs; no other value is accepted
    refusal: str = ""  # "choice": the message for any other value ({value!r})
    none_value: str | None = None  # "choice": the value core receives as None (an empty value means it too)
    lo: int | None = None  # "int": the range the /run API accepts
    hi: int | None = None
    slider: tuple | None = None  # the UI's slider (min, max, step); a link may set an int only within it
    info: str | None = None  # help under the UI's component


INPUTS: dict[str, Input] = {i.key: i for i in (
    Input("prompt", "prompt", "text", "prompt", "Prompt", default=text.PROMPT_EXAMPLES[0]),
    Input("model", "model", "model", "model", "Model"),
    Input("method", "method", "choice", "sampling method", "Our sampling method", default="hf",
          choices=(("HF generate() exactly (hf)", "hf"), ("the seed's top-k loop (nanogpt)", "nanogpt"),
                   ("greedy (argmax)", "greedy")),
          refusal="unknown sampling method {value!r}; choose hf, nanogpt or greedy", info=text.HELP_METHOD),
    Input("reference", "reference", "choice", "reference", "HuggingFace reference", default="generate",
          choices=(("HF generate()", "generate"), ("HF text-generation pipeline", "pipeline"),
                   ("logits only", "logits")),
          refusal="unknown reference {value!r}; choose generate, pipeline or logits", info=text.HELP_REFERENCE),
    Input("fault", "fault", "choice", "bug-lab fault", "Bug lab: inject a porting mistake", default=NO_FAULT,
          choices=(("none", NO_FAULT), *((f.title, f.name) for f in FAULTS.values())),
          refusal="unknown bug-lab fault {value!r}; choose one of: " + ", ".join(FAULTS), none_value=NO_FAULT,
          info=text.HELP_FAULT),
    Input("top_k", "top_k", "int", "top-k", "top-k (0 = off)", default=50, lo=0, hi=VOCAB, slider=(0, 200, 1)),
    Input("top_p", "top_p", "float", "top-p", "top-p", default=1.0, slider=(0.05, 1.0, 0.01)),
    Input("temperature", "temperature", "float", "temperature", "temperature (0 = greedy)", default=1.0,
          slider=(0.0, 2.0, 0.05)),
    Input("seed", "seed", "int", "seed", "random seed", default=42, lo=0, hi=MAX_SEED),
    Input("num_sequences", "num_return_sequences", "int", "number of sequences", "number of sequences", default=5,
          lo=1, hi=MAX_SEQUENCES, slider=(1, MAX_SEQUENCES, 1)),
    Input("max_new_tokens", "max_new_tokens", "int", "max new tokens", "max new tokens", default=22, lo=1,
          hi=MAX_NEW_TOKENS, slider=(1, MAX_NEW_TOKENS, 1), info="22: the seed's rows of 30 tokens"),
    # last, so that /run calls written before it existed keep their positions (it takes its default there)
    Input("precision", "precision", "choice", "precision", "Precision the model runs in", default="auto",
          choices=tuple((PRECISION_LABELS[name], name) for name in PRECISION_CHOICES),
          refusal="unknown precision {value!r}; choose one of: " + ", ".join(PRECISION_CHOICES),
          info=text.HELP_PRECISION),
)}
INPUT_KEYS = tuple(INPUTS)
# "The seed's case" button: the case this lab was made for, every input but the model. A GPT-2 port's top-k loop
# (nanogpt, top-k 50) against HF's text-generation pipeline called as the seed's author did: 5 rows of 30 tokens
# (max_length 30: GPT-2's BPE makes the prompt 8 tokens, so 22 new ones), seed 42.
SEED_CASE = dict(prompt=text.PROMPT_EXAMPLES[0], method="nanogpt", reference="pipeline", fault=NO_FAULT, top_k=50,
                 top_p=1.0, temperature=1.0, seed=42, num_sequences=5, max_new_tokens=22, precision="auto")
SEED_MAX_LENGTH = 30
# core's messages name arguments as code (top_k=3); the dashboard says what the UI calls them. Core also names
# two settings the inputs above decide.
UI_NAMES = {**{i.arg: i.name for i in INPUTS.values() if "_" in i.arg},
            "max_length": "max length (prompt + new tokens)", "do_sample": "sampling"}


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


def _choice(inp: Input, value) -> str:
    if inp.none_value is not None:
        value = value or inp.none_value
    if value not in (v for _, v in inp.choices):
        raise InputError(inp.refusal.format(value=value))
    return value


def parse_value(inp: Input, value, cache):
    """One value from the button or the /run API -> its compare() argument, or an InputError saying why not."""
    if inp.kind == "text":
        if not isinstance(value, str):
            raise InputError("the prompt must be text")
        if value and not value.strip():
            raise InputError("the prompt is only whitespace (spaces, tabs or newlines): type some text")
        return value
    if inp.kind == "model":
        return cache.check(value)
    if inp.kind == "choice":
        value = _choice(inp, value)
        return None if value == inp.none_value else value
    if inp.kind == "int":
        return _int(inp.name, value, inp.lo, inp.hi)
    return _float(inp.name, value)


def parse_inputs(cache, prompt, model, method, reference, fault, top_k, top_p, temperature, seed,
                 num_sequences, max_new_tokens, precision=INPUTS["precision"].default) -> dict:
    """UI values (in INPUT_KEYS order) -> compare() arguments, refusing anything out of range with a specific
    message (the first bad input, in the table's order)."""
    values = dict(zip(INPUT_KEYS, (prompt, model, method, reference, fault, top_k, top_p, temperature, seed,
                                   num_sequences, max_new_tokens, precision)))
    return {inp.arg: parse_value(inp, values[key], cache) for key, inp in INPUTS.items()}


def url_value(inp: Input, raw: str, allowed_models: list[str]):
    """One query parameter -> the input's value, or an InputError when the link's value is not one the UI takes."""
    if inp.kind == "text":
        return raw[:PROMPT_URL_CHARS]
    if inp.kind == "model":
        if raw not in allowed_models:
            raise InputError(f"model {raw!r} is not available here")
        return raw
    if inp.kind == "choice":
        if raw not in (v for _, v in inp.choices):
            raise InputError(inp.refusal.format(value=raw))
        return raw
    if inp.kind == "int":
        lo, hi = inp.slider[:2] if inp.slider else (inp.lo, inp.hi)
        return _int(inp.key, raw, lo, hi)
    return _float(inp.key, raw)


def query_values(params: dict, allowed_models: list[str]) -> dict:
    """Query parameters -> input values, keeping only the ones that parse (bad ones are ignored, not errors)."""
    out: dict = {}
    for key, inp in INPUTS.items():
        raw = params.get(key)
        if raw is None:
            continue
        try:
            out[key] = url_value(inp, raw, allowed_models)
        except InputError:
            continue
    return out


# ---------------------------------------------------------------------------------------------------------
# The upload panel's input: one result file (demo/upload.py checks it against these, and the dump format's own
# checks refuse the rest in core's words)

MAX_UPLOAD_BYTES = 256 << 20  # the seed's case with layers is ~28 MiB at the 124M shape
MAX_UPLOAD_CASES = 4


# ---------------------------------------------------------------------------------------------------------
# The "Training step" tab's inputs (the /train API, in this order): core.compare_training's arguments

from core.faults import TRAINING_FAULTS  # noqa: E402

TRAIN_INPUTS: dict[str, Input] = {i.key: i for i in (
    Input("train_fault", "fault", "choice", "training fault",
          "Training bug lab: a mistake that passes the forward check", default=NO_FAULT, choices=(("none", NO_FAULT), *((f.title, f.name) for f in TRAINING_FAULTS.values())),
          refusal="unknown training fault {value!r}; choose one of: " + ", ".join(TRAINING_FAULTS),
          none_value=NO_FAULT),
    Input("train_steps", "steps", "int", "optimizer steps", "AdamW steps after the first backward", default=3, lo=0,
          hi=5, slider=(0, 5, 1)),
    Input("train_batch", "batch_size", "int", "batch size", "batch size (rows)", default=2, lo=1, hi=8,
          slider=(1, 8, 1)),
    Input("train_seq", "seq_len", "int", "sequence length", "sequence length (tokens per row)", default=32, lo=2,
          hi=128, slider=(2, 128, 1)),
)}
TRAIN_KEYS = ("model", *TRAIN_INPUTS)


def parse_train_inputs(cache, model, fault, steps, batch_size, seq_len) -> dict:
    """The Training step tab's values -> compare_training() arguments (and `model`), or an InputError."""
    values = dict(zip(TRAIN_INPUTS, (fault, steps, batch_size, seq_len)))
    out = {inp.arg: parse_value(inp, values[key], cache) for key, inp in TRAIN_INPUTS.items()}
    if out["fault"] is not None and TRAINING_FAULTS.get(out["fault"]) and TRAINING_FAULTS[out["fault"]].needs_steps \
            and out["steps"] < 1:
        raise InputError(f"the training fault {out['fault']!r} shows only in an optimizer step: choose 1 or more "
                         "AdamW steps")
    return {"model": cache.check(model), **out}
