"""The dashboard's "Check a result file" panel: a result written by any implementation, uploaded, judged against
HF's reference for an allowlisted model (computed on demand and cached; for a result below float32, with HF's own
error at its precision), then shown in every existing view.

Knows Gradio uploads and the dump format's entry points (core/parity/dump.py): like handlers.py for the Generate
button, this is the one place that calls core for the panel, and it shows the result through the same outputs.
An upload is only data: nothing in it is executed, no path typed by a visitor is ever opened, and its size,
header, dtypes, shapes and values are checked (against inputs.py's limits) before it is used.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import gradio as gr

from core.errors import ParityLabError
from core.parity.dump import (
    Case, DumpCheck, Reference, compare_dump, export_reference, load_result, peek_result_manifest,
    peek_result_precision, result_model_id, save_reference,
)

from . import handlers, inputs, render, text
from .models import LoadedModel, ModelCache

REFERENCES_KEPT = 4
SEED_PROMPT = inputs.SEED_CASE["prompt"]
SEED_SETTINGS = dict(max_new_tokens=None, max_length=inputs.SEED_MAX_LENGTH, do_sample=True, temperature=1.0,
                     top_k=inputs.SEED_CASE["top_k"], top_p=1.0, num_return_sequences=inputs.SEED_CASE["num_sequences"],
                     seed=inputs.SEED_CASE["seed"], method="hf")


class UploadError(ParityLabError, ValueError):
    """An upload the panel cannot use (no file, a path instead of a file, too many files or cases)."""


class ReferenceCache:
    """HF's references, computed on demand per (model, cases, layers, precisions) and kept (the last few) for later
    uploads. A result below float32 gets a reference with HF's own error at its precision."""

    def __init__(self, max_items: int = REFERENCES_KEPT):
        self.max_items = max_items
        self._refs: OrderedDict[tuple, Reference] = OrderedDict()
        self._zips: dict[str, str] = {}
        self._lock = threading.Lock()

    def get(self, loaded: LoadedModel, cases: list[Case], layers: bool, precisions: tuple[str, ...] = ()) -> Reference:
        key = (loaded.name, json.dumps([c.to_dict() for c in cases], sort_keys=True), bool(layers), tuple(precisions))
        with self._lock:  # one export at a time: each is a full HF generate() + forward
            if key in self._refs:
                self._refs.move_to_end(key)
                return self._refs[key]
            ref = export_reference(loaded.hf, cases, model=loaded.name, layers=layers, tokenizer=loaded.tokenizer,
                                   precisions=precisions)
            self._refs[key] = ref
            while len(self._refs) > self.max_items:
                self._refs.popitem(last=False)
            return ref

    def zipped(self, ref: Reference) -> str:
        """The reference directory (manifest, tensors, result template) as one zip to download."""
        with self._lock:
            path = self._zips.get(ref.id)
            if path and os.path.isfile(path):
                return path
            folder = Path(tempfile.mkdtemp(prefix="parity-reference-"))
            save_reference(ref, folder / "reference")
            path = shutil.make_archive(str(folder / f"reference-{ref.id}"), "zip", folder / "reference")
            shutil.rmtree(folder / "reference", ignore_errors=True)
            self._zips[ref.id] = path
            return path


# ---------------------------------------------------------------------------------------------------------
# Checks that come before any byte of the upload is parsed


def uploaded_paths(files) -> tuple[str, str | None]:
    """(result file, manifest file or None) from gr.File's value, accepting only files Gradio itself received."""
    if files is None or files == []:
        raise UploadError("upload a result file (.safetensors) first")
    items = files if isinstance(files, (list, tuple)) else [files]
    paths = []
    upload_root = Path(gr.utils.get_upload_folder()).resolve()
    for item in items:
        path = item.get("path") if isinstance(item, dict) else getattr(item, "path", item)
        if not isinstance(path, str) or not path:
            raise UploadError("upload a result file (.safetensors) first")
        resolved = Path(path).resolve()
        if upload_root not in resolved.parents:
            raise UploadError("only files uploaded through this page are read; file paths are not accepted")
        paths.append(str(resolved))
    manifests = [p for p in paths if p.lower().endswith(".json")]
    results = [p for p in paths if not p.lower().endswith(".json")]
    if len(results) != 1 or len(manifests) > 1:
        raise UploadError(f"upload one result file (.safetensors) and, optionally, its manifest (.json); got "
                          f"{len(results)} result file(s) and {len(manifests)} .json file(s)")
    return results[0], (manifests[0] if manifests else None)


def cases_for_upload(manifest: dict, loaded: LoadedModel) -> list[Case]:
    """The result's cases, within the dashboard's per-request caps; prompt texts re-decoded from the token ids
    (the upload's own prompt text is never shown)."""
    cases = manifest["cases"]
    if len(cases) > inputs.MAX_UPLOAD_CASES:
        raise UploadError(f"the result has {len(cases)} cases; this dashboard checks at most "
                          f"{inputs.MAX_UPLOAD_CASES} (use `python -m core.parity check` locally for more)")
    vocab, n_pos = loaded.hf.config.vocab_size, loaded.hf.config.n_positions
    out = []
    for c in cases:
        s = c["settings"]
        ids = c["prompt_ids"]
        if max(ids) >= vocab:
            raise UploadError(f"{c['name']}: prompt token ids must be below {vocab}")
        if s["num_return_sequences"] > inputs.MAX_SEQUENCES:
            raise UploadError(f"{c['name']}: {s['num_return_sequences']} rows; the dashboard allows at most "
                              f"{inputs.MAX_SEQUENCES}")
        from core.sampling import SamplingSettings

        n_new = SamplingSettings(**s).new_tokens_for(len(ids))
        if n_new > inputs.MAX_NEW_TOKENS or len(ids) + n_new > n_pos:
            raise UploadError(f"{c['name']}: {n_new} new tokens after a {len(ids)}-token prompt; the dashboard "
                              f"allows at most {inputs.MAX_NEW_TOKENS} within the model's {n_pos}-token context")
        out.append(Case(c["name"], loaded.tokenizer.decode(ids), list(ids), dict(s)))
    return out


def check_upload(cache: ModelCache, refs: ReferenceCache, files) -> tuple[DumpCheck, LoadedModel]:
    """The one core call behind the Check button (tests call it directly)."""
    result_path, manifest_path = uploaded_paths(files)
    manifest = peek_result_manifest(result_path, manifest_path=manifest_path, max_bytes=inputs.MAX_UPLOAD_BYTES)
    model = result_model_id(manifest)
    if model not in cache.allowed:
        raise UploadError(f"this result is for model {model!r}, which this dashboard does not serve; it serves "
                          f"{', '.join(cache.allowed)}")
    loaded = cache.get(model)
    cases = cases_for_upload(manifest, loaded)
    p = peek_result_precision(result_path, manifest, max_bytes=inputs.MAX_UPLOAD_BYTES)
    ref = refs.get(loaded, cases, layers=bool(manifest.get("layers")), precisions=(p.name,) if p.low else ())
    result = load_result(result_path, ref, manifest_path=manifest_path, max_bytes=inputs.MAX_UPLOAD_BYTES)
    return compare_dump(ref, result, tokenizer=loaded.tokenizer), loaded


def seed_reference(cache: ModelCache, refs: ReferenceCache, model: str) -> str:
    """The seed's case for `model` (with layers) as a zip to download."""
    loaded = cache.get(cache.check(model))
    ids = loaded.tokenizer.encode(SEED_PROMPT)
    ref = refs.get(loaded, [Case("case0", SEED_PROMPT, ids, dict(SEED_SETTINGS))], layers=True)
    return refs.zipped(ref)


# ---------------------------------------------------------------------------------------------------------
# The handlers


def make_check_handler(cache: ModelCache, refs: ReferenceCache, c: dict, panel: dict):
    """The Check button: every view of the main output area for the uploaded result (its first differing case).
    A refused upload shows its reason in the verdict panel and the status, clears the old views, then ends as a
    gr.Error, as the Generate button does (the page calls it through handlers.in_page)."""

    def check(files, progress=gr.Progress()):
        yield {c["verdict"]: render.status_html(text.CHECKING)}
        try:
            progress(0, desc="reading the result, computing HF's reference")
            result, loaded = check_upload(cache, refs, files)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a message; the server keeps serving
            msg = handlers.error_message(exc)
            yield {**handlers.error_outputs(c, msg, "check"), panel["status"]: text.CHECK_REFUSED,
                   panel["checked"]: None, panel["case"]: gr.Dropdown(visible=False)}
            raise gr.Error(msg, print_exception=False) from None
        data = result.to_dict()
        first = next((i for i, r in enumerate(data["cases"]) if not r["agree"]), 0)
        token_text = lambda t: loaded.tokenizer.decode([t])  # noqa: E731
        out = handlers.outputs_for(data["cases"][first], token_text, c)
        out[panel["status"]] = render.cases_markdown(data)
        out[panel["case"]] = gr.Dropdown(choices=[(f"case {i}", i) for i in range(len(data["cases"]))], value=first,
                                         visible=len(data["cases"]) > 1, interactive=True)
        out[panel["checked"]] = {"model": loaded.name, "cases": data["cases"]}
        yield out

    return check


def make_case_handler(cache: ModelCache, c: dict, panel: dict):
    def show_case(checked, case):
        if not checked:
            return {}
        i = max(0, min(int(case or 0), len(checked["cases"]) - 1))
        tokenizer = cache.get(checked["model"]).tokenizer
        return handlers.outputs_for(checked["cases"][i], lambda t: tokenizer.decode([t]), c)

    return show_case


def make_reference_handler(cache: ModelCache, refs: ReferenceCache):
    """Get the reference: the seed's case for the chosen model, as a zip; a failure is a gr.Error (the API's)."""

    def get_reference(model, progress=gr.Progress()):
        try:
            progress(0, desc=f"HF's reference for {model}")
            return seed_reference(cache, refs, model)
        except Exception as exc:  # noqa: BLE001
            raise gr.Error(handlers.error_message(exc), print_exception=False) from None

    return get_reference


def make_reference_handler_in_page(cache: ModelCache, refs: ReferenceCache):
    """Get the reference as the page's button calls it: a failure is said in the panel's status line instead."""
    get_reference = make_reference_handler(cache, refs)

    def get_reference_in_page(model, progress=gr.Progress()):
        try:
            return get_reference(model, progress), gr.skip()
        except gr.Error as exc:
            return None, f"❌ Not downloaded: {exc.message}"

    return get_reference_in_page


def build_panel() -> dict:
    """The panel's components, inside the current layout (an accordion right under the verdict, whose panel shows
    the result). The hidden buttons carry the API's endpoints (check_result, get_reference)."""
    p: dict = {}
    with gr.Accordion("Check a result file (any language)", open=False, elem_id="upload-panel"):
        gr.Markdown(text.UPLOAD_HELP)
        p["files"] = gr.File(label="Your result (.safetensors, optional manifest .json)", file_count="multiple",
                             file_types=[".safetensors", ".json"], type="filepath", elem_id="result-upload")
        with gr.Row():
            p["check"] = gr.Button("Check result", variant="primary", elem_id="check-result")
            p["get_ref"] = gr.Button("Get the reference", elem_id="get-reference")
        p["status"] = gr.Markdown(elem_id="upload-status")
        p["case"] = gr.Dropdown(choices=[("case 0", 0)], value=0, label="case", visible=False, elem_id="case-dd")
        p["ref_file"] = gr.File(label="HF's reference (seed's case, with layers)", elem_id="reference-file")
        p["checked"] = gr.State(None)
        p["check_api"] = gr.Button(visible=False, elem_id="check-result-api")
        p["get_ref_api"] = gr.Button(visible=False, elem_id="get-reference-api")
    return p


def wire_panel(panel: dict, cache: ModelCache, c: dict, model_component, concurrency_limit: int = 2,
               scroll_js: str | None = None) -> None:
    """Events: Check (every view of the main output area; `scroll_js` then brings the verdict into view), case
    selection, reference download. The page's buttons end a refused request quietly (handlers.in_page); the API's
    endpoints, on hidden buttons, end it as an error."""
    refs = ReferenceCache()
    outputs = [c[k] for k in handlers.OUTPUT_KEYS] + [panel["status"], panel["case"], panel["checked"]]
    check = make_check_handler(cache, refs, c, panel)
    run = dict(concurrency_limit=concurrency_limit, concurrency_id="run")
    panel["check_api"].click(check, [panel["files"]], outputs, api_name="check_result", **run)
    checked = panel["check"].click(handlers.in_page(check), [panel["files"]], outputs, api_visibility="private",
                                   **run)
    if scroll_js:
        panel["check"].click(None, None, None, js=scroll_js, api_visibility="private")
        checked.then(None, None, None, js=scroll_js, api_visibility="private")
    panel["case"].change(make_case_handler(cache, c, panel), [panel["checked"], panel["case"]],
                         [c[k] for k in handlers.OUTPUT_KEYS], api_visibility="private")
    panel["get_ref_api"].click(make_reference_handler(cache, refs), [model_component], [panel["ref_file"]],
                               api_name="get_reference", **run)
    panel["get_ref"].click(make_reference_handler_in_page(cache, refs), [model_component],
                           [panel["ref_file"], panel["status"]], api_visibility="private", **run)
    panel["refs"] = refs
