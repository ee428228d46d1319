"""Dashboard handlers and figure functions on records from the built-in tiny random model (no browser)."""

import html
import json
import math
import os
import re
import tempfile
import threading

import gradio as gr
import plotly.graph_objects as go
import pytest
import torch
from apphelper import page_load
from conftest import BPE_DIR

from core import compare, generate, load_tokenizer
from core.faults import FAULTS
from demo import build_demo, downloads, figures, handlers, inputs, render, text
from demo.models import TINY, ModelCache, ModelNotAllowedError, build_tiny_pair

PROMPT = "Hello, I'm a language model,"
GOOD = dict(prompt=PROMPT, model=TINY, method="hf", reference="generate", fault="none", top_k=50, top_p=1.0,
            temperature=1.0, seed=42, num_sequences=5, max_new_tokens=22)


@pytest.fixture(scope="module")
def cache():
    return ModelCache(bpe_dir=str(BPE_DIR))


@pytest.fixture(scope="module")
def report(cache):
    args = inputs.parse_inputs(cache, **GOOD)
    rep, _ = handlers.run_compare(cache, args)
    return rep.to_dict()


@pytest.fixture(scope="module")
def faulty_report(cache):
    args = inputs.parse_inputs(cache, **{**GOOD, "fault": "erf_gelu", "reference": "logits"})
    return handlers.run_compare(cache, args)[0].to_dict()


def test_tiny_model_is_deterministic_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a, _ = build_tiny_pair()
    b, _ = build_tiny_pair()
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.transformer.h[0].attn.c_attn.weight, b.transformer.h[0].attn.c_attn.weight)


def test_run_compare_is_the_core_call(cache, report):
    loaded = cache.get(TINY)
    ref = compare((loaded.ours, loaded.hf), PROMPT, tokenizer=loaded.tokenizer, seed=42, num_return_sequences=5,
                  max_new_tokens=22)
    assert report["generation"]["sequences"] == ref.generation.sequences
    assert report["verdict_kind"] == "identical" and report["agree"]
    json.dumps(report)  # the state the UI keeps is plain JSON


def _rows_of(html_text: str) -> list[str]:
    """The rows of a streamed text panel, as plain text."""
    rows = re.findall(r'<div class="pl-row"><span class="pl-n">\[\d+\]</span> (.*?)</div>', html_text, flags=re.S)
    return [html.unescape(re.sub(r"<[^>]+>", "", r)) for r in rows]


def test_run_handler_streams_then_fills_every_view(cache, monkeypatch):
    monkeypatch.setattr(handlers, "STREAM_INTERVAL_S", 0.0)  # stream whenever the sampler is ahead of us
    comps = {k: k for k in handlers.OUTPUT_KEYS}
    run = handlers.make_run_handler(cache, comps)
    updates = list(run(*GOOD.values(), progress=lambda *a, **k: None))
    streamed = [u["ours"] for u in updates if "pl-row" in (u.get("ours") or "") and "state" not in u]
    final_texts = updates[-1]["state"]["generation"]["texts"]
    assert len(streamed) >= 2, "our text streams in while sampling"
    # the first streamed update clears the previous run's views: they must not pass for this run's
    first = next(u for u in updates if "pl-row" in (u.get("ours") or ""))
    assert first["state"] is None and first["step_fig"] is None and first["json_file"] is None
    for panel in streamed:  # every partial text is a prefix of the final one, row by row
        rows = _rows_of(panel)
        assert len(rows) == 5
        for r, row in enumerate(rows):
            assert final_texts[r].startswith(row), (row, final_texts[r])
    lengths = [sum(map(len, _rows_of(panel))) for panel in streamed]
    assert lengths == sorted(lengths) and lengths[0] < lengths[-1]
    final = updates[-1]
    for key in ("step_fig", "top50_fig", "heat_fig", "entropy_fig", "layers_fig"):
        assert isinstance(final[key], go.Figure) and len(final[key].data) > 0, key
    assert "identical to HuggingFace" in final["verdict"]
    report = final["state"]
    assert final["summary"]["ours_texts"] == report["generation"]["texts"]
    with open(final["json_file"]) as f:
        assert json.load(f)["verdict"] == report["verdict"]
    with open(final["csv_file"]) as f:
        lines = f.read().strip().splitlines()
    assert lines[0].startswith("step,row,token_id") and len(lines) == 1 + 5 * 22
    assert final["settings"].data.iloc[0, 0] == "do_sample"


def _tokens_of(html_text: str, row: int) -> list[dict]:
    """The token spans of one row of a text panel: class, step, row, hover text and shown text."""
    out = []
    for cls, attrs, title, body in re.findall(r'<span class="(tok[^"]*)"((?: data-\w="\d+")*) title="([^"]*)">(.*?)</span>',
                                              html_text, flags=re.S):
        d = dict(re.findall(r'data-(\w)="(\d+)"', attrs))
        if int(d.get("r", -1)) == row:
            out.append({"cls": cls, "step": int(d["s"]), "title": html.unescape(title), "text": html.unescape(body)})
    return out


def test_texts_mark_the_first_difference_and_carry_each_tokens_numbers(report, cache):
    loaded = cache.get(TINY)
    tok = lambda t: loaded.tokenizer.decode([t])  # noqa: E731
    same = render.texts_html(report, tok, "ours")
    assert "first difference" not in same, "no legend chips when there is nothing to mark"
    r = dict(report)
    rows = [dict(row) for row in r["rows"]]
    rows[0] = {**rows[0], "first_divergent_step": 3, "identical": False}
    r["rows"] = rows
    panel = render.texts_html(r, tok, "ours")
    assert "first difference" in panel  # the legend, now that something is marked
    spans = _tokens_of(panel, 0)
    assert [s["step"] for s in spans] == list(range(len(rows[0]["ours_new_ids"])))
    assert [s["cls"] for s in spans[:4]] == ["tok", "tok", "tok", "tok first"]
    assert {s["cls"] for s in spans[4:]} == {"tok after"}
    assert "".join(s["text"] for s in spans) == report["generation"]["completions"][0]
    # hover: id, probability and rank under both models, straight from the records of that step and row
    rec, d = report["generation"]["records"][5][0], report["steps"][5][0]
    title = spans[5]["title"]
    assert f"id {rec['token_id']}" in title
    assert f"ours: sampling p {rec['prob']:.3g}, model p {rec['raw_prob']:.3g}, rank {rec['rank']}" in title
    assert f"HF:   sampling p {d['hf_prob']:.3g}, rank {d['hf_rank']}" in title


def _trace(fig, name):
    return next(t for t in fig.data if t.name == name)


def test_figures_are_pure_functions_of_the_report(report, faulty_report):
    from demo.divergence import report_divergences

    fig = figures.step_diffs_figure(report)
    steps = report["steps"]
    line = _trace(fig, "max |Δlogit|")
    # the line is the worst row at each step, the tolerance the lowest row tolerance (computed here from the steps)
    worst = [max(d["max_abs_dlogit"] for d in st if d is not None) for st in steps]
    assert list(line.x) == list(range(len(steps)))
    assert list(line.y) == pytest.approx([max(w, 0) for w in worst])
    tol = _trace(fig, "tolerance (below: float noise)")
    assert list(tol.y) == [min(d["tolerance"] for d in st if d is not None) for st in steps]
    assert tol.fill == "tonexty" and tol.line.dash == "dash"  # the noise band under the tolerance line
    for axis in (fig.layout.yaxis, fig.layout.yaxis2):  # decades only, one notation
        assert axis.type == "log" and axis.dtick == 1 and axis.exponentformat == "power"
    assert not any(t.name == "above tolerance" for t in fig.data)
    # the divergence panel's noise band: the most TV logits within the tolerance allow, tanh(tol / temperature)
    band = _trace(fig, "largest TV within the logit tolerance")
    assert list(band.y) == pytest.approx([math.tanh(t) for t in tol.y])  # temperature 1
    divs = report_divergences(report)
    assert all(v.tv <= b for st, b in zip(divs, band.y) for v in st if v is not None)  # an exact port is noise
    ent = figures.entropy_figure(report, 0)
    assert len(ent.data) == 3
    heat = figures.heatmap_figure(report, 0, step=4)
    assert len(heat.data[0].z) == 50 and len(heat.data[0].z[0]) == 22
    assert any(shape.x0 == 4 for shape in heat.layout.shapes)  # the selected step marked
    layers = figures.layers_figure(faulty_report)
    assert faulty_report["first_diverging_layer"] == "block 0"
    assert "block 0" in layers.layout.title.text
    exceeding = next(t for t in layers.data if t.name == "exceeds tolerance")
    assert "block 0" in exceeding.x and exceeding.marker.color == figures.BAD
    assert "every layer within tolerance" in figures.layers_figure(report).layout.title.text
    # both readings, labelled: accumulated (bars) and each block alone on HF's input (diamonds); erf GELU everywhere
    n = len(faulty_report["isolated"])
    assert faulty_report["diverging_blocks"] == list(range(n)) and n >= 2
    assert exceeding.legendgrouptitle.text == "accumulated: the model on its own stream (first: block 0 MLP)"
    alone = next(t for t in layers.data if t.name == "block alone: differs")
    assert list(alone.x) == [f"block {k}" for k in range(n)]
    assert alone.legendgrouptitle.text == (f"isolated: each block on HF's own input (blocks "
                                           f"{', '.join(map(str, range(n)))} differ)")
    assert not any(t.name.startswith("block alone") for t in figures.layers_figure(report).data)  # exact: none
    panel = render.verdict_html(faulty_report)
    assert "first diverging sub-layer: <b>block 0 MLP</b>" in panel and "likely mistake:" in panel
    assert f"the MLP of blocks 0-{n - 1} match HuggingFace with exact erf GELU" in html.unescape(panel)
    assert "localisation" not in render.verdict_html(report) and "likely mistake" not in render.verdict_html(report)


def test_run_handler_shows_the_verdict_then_fills_in_the_diagnosis(cache):
    comps = {k: k for k in handlers.OUTPUT_KEYS}
    run = handlers.make_run_handler(cache, comps)
    bad = {**GOOD, "fault": "erf_gelu@last", "reference": "logits", "num_sequences": 1, "max_new_tokens": 3}
    updates = [u for u in run(*bad.values(), progress=lambda *a, **k: None) if u.get("state")]
    first, final = updates[0], updates[-1]
    assert first["state"]["localisation"] == "pending" and text.LOCALISING in html.unescape(first["verdict"])
    assert first["state"]["verdict"] == final["state"]["verdict"] and "likely mistake" not in first["verdict"]
    last = len(final["state"]["isolated"]) - 1
    assert final["state"]["localisation"] == "done" and final["state"]["diverging_blocks"] == [last]
    assert f"block {last}&#x27;s MLP matches HuggingFace with exact erf GELU" in final["verdict"]


def test_top50_chart_is_horizontal_and_labels_model_and_sampling_probabilities(report):
    rec, d = report["generation"]["records"][3][1], report["steps"][3][1]
    top = figures.top50_figure(report, 3, 1)
    ours, hf = _trace(top, "ours: model p"), _trace(top, "HF: model p")
    assert ours.orientation == "h" and hf.orientation == "h"
    assert list(ours.x) == rec["top_probs"] and list(hf.x) == d["hf_top_probs"]
    assert list(_trace(top, "ours: sampling p").x) == rec["top_sample_probs"]
    assert list(_trace(top, "HF: sampling p").x) == d["hf_top_sample_probs"]
    assert [y.removeprefix("▶ ") for y in ours.y][:2] == [f"{k + 1}. {t}" for k, t in enumerate(rec["top_tokens"][:2])]
    assert len(ours.y) == 50  # tokens on the y axis, rank 1 first
    chosen = rec["top_ids"].index(rec["token_id"])
    assert ours.marker.line.width[chosen] == 3 and ours.y[chosen].startswith("▶")
    title = top.layout.title.text
    assert "Step 3, row 2" in title
    # the title's numbers are the bar's (model p) and the marker's (sampling p) of the sampled token, both named
    assert f"ours: model p {ours.x[chosen]:.3g}, sampling p {rec['top_sample_probs'][chosen]:.3g}" in title
    assert f"HF: model p {hf.x[chosen]:.3g}, sampling p {d['hf_prob']:.3g}" in title
    log = figures.top50_figure(report, 3, 1, log_scale=True)
    assert log.layout.xaxis.type == "log" and top.layout.xaxis.type != "log"


def test_top50_cutoff_is_drawn_where_the_filter_cuts(cache):
    args = inputs.parse_inputs(cache, **{**GOOD, "top_k": 10, "num_sequences": 1, "max_new_tokens": 4})
    rep = handlers.run_compare(cache, args)[0].to_dict()
    fig = figures.top50_figure(rep, 0, 0)
    rec = rep["generation"]["records"][0][0]
    assert sum(rec["top_kept"]) == 10
    assert any(abs(s.y0 - 9.5) < 1e-9 for s in fig.layout.shapes)


def test_view_handlers_follow_the_sliders(report):
    a, _, _ = handlers.show_step(report, 2, 0)
    b, _, _ = handlers.show_step(report, 5, 0)
    assert a.layout.title.text != b.layout.title.text
    top, heat, ent = handlers.show_row(report, 1, 3)
    assert "row 4" in heat.layout.title.text and "row 4" in ent.layout.title.text
    assert handlers.show_step(None, 0, 0) == (None, None, None)


def test_clicking_a_token_opens_its_step_and_row(report):
    evt = gr.EventData(None, {"step": 7, "row": 2})
    step, row, top, heat, ent, tabs = handlers.pick_token(report, False, evt)
    assert step.value == 7 and row.value == 2 and tabs.selected == "top50"
    assert top.layout.title.text.startswith("Step 7, row 3:")
    assert any(shape.x0 == 7 for shape in heat.layout.shapes) and "row 3" in ent.layout.title.text
    assert handlers.pick_token(None, False, evt) == (gr.skip(),) * 6


BAD_INPUTS = [
    (dict(prompt=""), "empty"),
    (dict(prompt="   \n "), "only whitespace"),
    (dict(prompt="x" * 1_000_000), "characters"),
    (dict(prompt="word " * 1100), "longer than the model's context"),
    (dict(prompt="a\x00b"), "NUL"),
    (dict(prompt="bell\x07"), "control characters"),
    (dict(prompt="half \ud83d surrogate"), "surrogate"),
    (dict(prompt="<|endoftext|>"), "only <|endoftext|>"),
    (dict(prompt="word " * 1010, max_new_tokens=22), "exceeds the model's context"),
    (dict(max_new_tokens=0), "max new tokens"),
    (dict(max_new_tokens=10_000), "max new tokens"),
    (dict(top_k=-1), "top-k"),
    (dict(top_k=60_000), "top-k"),
    (dict(top_p=0.0), "top-p"),
    (dict(top_p=1.5), "top-p"),
    (dict(temperature=-0.5), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(num_sequences=0), "number of sequences"),
    (dict(num_sequences=9), "number of sequences"),
    (dict(seed=1.5), "seed"),
    (dict(seed="abc"), "seed"),
    (dict(seed=-1), "seed"),
    (dict(seed=2**40), "got 1,099,511,627,776"),
    (dict(seed=1e300), "got 1e+300"),
    (dict(method="greedy", num_sequences=3), "use number of sequences = 1"),
    (dict(model="/etc/passwd"), "not available here"),
    (dict(model="openai-community/gpt2-xl"), "not available here"),
    (dict(fault="no_such_fault"), "unknown bug-lab fault"),
    (dict(method="beam"), "sampling method"),
    (dict(reference="vllm"), "reference"),
]


@pytest.mark.parametrize("bad,match", BAD_INPUTS, ids=[m + str(i) for i, (_, m) in enumerate(BAD_INPUTS)])
def test_every_bad_input_is_a_clear_gr_error_and_the_server_keeps_serving(cache, bad, match):
    comps = {k: k for k in handlers.OUTPUT_KEYS}
    run = handlers.make_run_handler(cache, comps)
    updates = []
    with pytest.raises(gr.Error) as info:
        for update in run(*{**GOOD, **bad}.values(), progress=lambda *a, **k: None):
            updates.append(update)
    msg = str(info.value.message)
    assert match in msg, msg
    assert "Traceback" not in msg and "/work/" not in msg
    assert not any(name in msg for name in inputs.UI_NAMES), msg  # the UI's words, not core's argument names
    # before the error: the reason in the verdict panel (it stays; the toast fades) and the old run cleared
    last = updates[-1]
    assert html.escape(msg) in last["verdict"] and "Not run" in last["verdict"]
    assert last["state"] is None and last["step_fig"] is None and last["json_file"] is None
    assert "pl-row" not in last["ours"] and "pl-row" not in last["hf"]
    # and the next good request still works
    ok = list(run(*{**GOOD, "max_new_tokens": 3, "num_sequences": 1}.values(), progress=lambda *a, **k: None))
    assert ok[-1]["state"]["agree"]


def test_allowlist_and_bounded_cache(tmp_path):
    cache = ModelCache(extra=["/some/local/dir"], max_models=1, bpe_dir=str(BPE_DIR))
    assert cache.allowed[:1] == ["/some/local/dir"] and "gpt2" in cache.allowed and TINY in cache.allowed
    with pytest.raises(ModelNotAllowedError):
        cache.check("bert-base-uncased")
    cache.get(TINY)
    assert cache.resident() == [TINY]
    with pytest.raises(Exception):
        cache.get("gpt2")  # offline: not cached; the failed load must not leave two models resident
    assert len(cache.resident()) <= 1


def test_unexpected_errors_do_not_leak_internals(cache, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("secret /work/main/core/parity.py line 12")

    monkeypatch.setattr(handlers, "compare", boom)
    comps = {k: k for k in handlers.OUTPUT_KEYS}
    run = handlers.make_run_handler(cache, comps)
    with pytest.raises(gr.Error) as info:
        list(run(*GOOD.values(), progress=lambda *a, **k: None))
    assert "secret" not in info.value.message and "RuntimeError" in info.value.message


def _serial_and_concurrent(cache, arg_list, key):
    serial = [key(handlers.run_compare(cache, a)[0]) for a in arg_list]
    results = [None] * len(arg_list)

    def work(i):
        results[i] = key(handlers.run_compare(cache, arg_list[i])[0])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(arg_list))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return serial, results


def test_concurrent_requests_equal_serial_ones(cache):
    """4 threads x different seeds/methods: exactly the serial results (per-request generators, shared model)."""
    arg_list = [inputs.parse_inputs(cache, **{**GOOD, "seed": seed, "method": m, "max_new_tokens": 12,
                                              "reference": "logits"})
                for seed, m in [(1, "hf"), (2, "nanogpt"), (3, "hf"), (4, "hf"), (5, "nanogpt"), (6, "hf")]]
    serial, concurrent = _serial_and_concurrent(cache, arg_list, lambda r: r.generation.sequences)
    assert serial == concurrent


def test_hf_reference_lock_keeps_generate_reproducible_under_concurrency(cache):
    """HF's side seeds the global RNG and records what reaches generate(): without the lock (and a spy that
    never chains to another request's), concurrent requests would steal each other's draws or settings."""
    arg_list = [inputs.parse_inputs(cache, **{**GOOD, "seed": seed, "max_new_tokens": 8, "reference": ref,
                                              "num_sequences": n})
                for seed, ref, n in [(11, "generate", 5), (12, "pipeline", 2), (13, "generate", 3),
                                     (14, "pipeline", 3), (15, "generate", 1), (16, "pipeline", 4)]]

    def key(r):
        return r.ref_sequences, r.verdict, [(row.name, row.hf, row.source) for row in r.settings_table]

    serial, concurrent = _serial_and_concurrent(cache, arg_list, key)
    assert serial == concurrent
    assert [len(seqs) for seqs, _, _ in concurrent] == [5, 2, 3, 3, 1, 4]


def test_python_api_and_generate_agree_with_the_handler(cache, report):
    loaded = cache.get(TINY)
    gen = generate(loaded.ours, PROMPT, tokenizer=load_tokenizer(BPE_DIR), seed=42, num_return_sequences=5,
                   max_new_tokens=22)
    assert gen.texts == report["generation"]["texts"]


def test_every_fault_is_offered_in_the_ui():
    demo = build_demo(model=TINY, bpe_dir=str(BPE_DIR))
    config = demo.get_config_file()
    fault_dd = next(c for c in config["components"] if c.get("props", {}).get("elem_id") == "fault")
    offered = {choice[1] for choice in fault_dd["props"]["choices"]}
    assert offered == set(FAULTS) | {"none"}


def test_offline_start_falls_back_to_the_tiny_model_with_a_banner(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    cache = ModelCache(bpe_dir=str(BPE_DIR))
    banner, dropdown = page_load(handlers.make_load_handler(cache, "gpt2"))
    assert banner.visible is True and "Offline mode" in banner.value and "`gpt2`" in banner.value
    assert dropdown.value == TINY and cache.resident() == [TINY]


def test_offline_without_bpe_files_says_what_is_missing(monkeypatch, tmp_path):
    """Offline with no BPE directory and empty caches the bundled files serve; only without them too (a broken
    install) does the banner say that nothing can run, and what to point at."""
    import huggingface_hub.constants as hub_constants

    import core.tokenizer

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.delenv("GPT2_BPE_DIR", raising=False)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-tiktoken"))
    banner, dropdown = page_load(handlers.make_load_handler(ModelCache(), "gpt2"))
    assert banner.visible is True and "Offline mode" in banner.value and dropdown.value == TINY
    monkeypatch.setattr(core.tokenizer, "BUNDLED_DIR", tmp_path / "no-bundled-copy")
    banner, dropdown = page_load(handlers.make_load_handler(ModelCache(), "gpt2"))
    assert banner.visible is True and "GPT2_BPE_DIR" in banner.value


# ---------------------------------------------------------------------------------------------------------
# Round 2: bounded divergences, figure edge cases, settings sources, downloads, links


def _sampling_dists_numpy(logits, top_k: int):
    """Top-k sampling distributions over the whole vocabulary from raw logits (S, V), in float64 numpy: the
    independent reference for the divergences the dashboard derives from the report's top-50 lists."""
    import numpy as np

    x = np.asarray(logits, dtype=np.float64)
    if top_k:
        kth = np.sort(x, axis=-1)[:, -top_k][:, None]
        x = np.where(x < kth, -np.inf, x)
    x = x - x.max(axis=-1, keepdims=True)
    p = np.exp(x)
    return p / p.sum(axis=-1, keepdims=True)


def _tv_js_numpy(p, q):
    import numpy as np

    tv = 0.5 * np.abs(p - q).sum(axis=-1)
    m = 0.5 * (p + q)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_pm = np.where(p > 0, p * np.log2(p / m), 0.0).sum(axis=-1)
        kl_qm = np.where(q > 0, q * np.log2(q / m), 0.0).sum(axis=-1)
    return tv, 0.5 * (kl_pm + kl_qm)


@pytest.fixture(scope="module")
def untied_report(cache):
    """A fault under which every step's supports differ (our lm_head is random): KL is infinite everywhere."""
    args = inputs.parse_inputs(cache, **{**GOOD, "fault": "untied_lm_head", "num_sequences": 2, "max_new_tokens": 6,
                                         "reference": "logits"})
    return handlers.run_compare(cache, args)[0].to_dict()


def _teacher_forced_logits(report, cache, fault):
    """Both models' logits at every generated step, recomputed here from the report's token streams."""
    from core.faults import apply_fault

    loaded = cache.get(TINY)
    seqs = torch.tensor(report["generation"]["sequences"])
    P, S = len(report["prompt_ids"]), len(report["steps"])
    with torch.inference_mode():
        ours = apply_fault(loaded.ours, fault)(seqs).float()[:, P - 1:P - 1 + S]
        hf = loaded.hf(seqs).logits.float()[:, P - 1:P - 1 + S]
    return ours, hf


def test_divergence_is_finite_where_kl_is_infinite_and_matches_the_full_vocabulary(untied_report, cache):
    from demo.divergence import report_divergences

    rep = untied_report
    assert all(d["kl"] is None and d["support_mismatch"] for st in rep["steps"] for d in st if d is not None)
    ours, hf = _teacher_forced_logits(rep, cache, "untied_lm_head")
    divs = report_divergences(rep)
    for r in range(2):
        p, q = _sampling_dists_numpy(ours[r], 50), _sampling_dists_numpy(hf[r], 50)
        tv, js = _tv_js_numpy(p, q)
        for s in range(len(rep["steps"])):
            v = divs[s][r]
            assert v.exact and 0 < v.tv <= 1 and 0 < v.js <= 1
            assert v.tv == pytest.approx(tv[s], abs=2e-5) and v.js == pytest.approx(js[s], abs=2e-5)


def test_divergence_without_top_k_is_a_lower_bound(cache):
    from demo.divergence import report_divergences

    args = inputs.parse_inputs(cache, **{**GOOD, "fault": "untied_lm_head", "top_k": 0, "num_sequences": 1,
                                         "max_new_tokens": 4, "reference": "logits"})
    rep = handlers.run_compare(cache, args)[0].to_dict()
    ours, hf = _teacher_forced_logits(rep, cache, "untied_lm_head")
    tv, js = _tv_js_numpy(_sampling_dists_numpy(ours[0], 0), _sampling_dists_numpy(hf[0], 0))
    for s, st in enumerate(report_divergences(rep)):
        assert not st[0].exact
        assert st[0].tv <= tv[s] + 1e-6 and st[0].js <= js[s] + 1e-6


def test_step_figure_under_all_infinite_kl_is_not_blank(untied_report):
    from demo.divergence import report_divergences

    fig = figures.step_diffs_figure(untied_report)
    tv = _trace(fig, "total variation")
    expected = [max(v.tv for v in st if v is not None) for st in report_divergences(untied_report)]
    assert list(tv.y) == pytest.approx(expected) and all(0 < y <= 1 for y in tv.y)
    marks = _trace(fig, "supports differ (KL = ∞)")
    assert list(marks.x) == list(range(len(untied_report["steps"])))  # every step marked
    assert any(t.name == "above tolerance" for t in fig.data)


def _synthetic_report(n_rows: int, n_steps: int, seed: int = 0) -> dict:
    """A report with only the fields the figures read, n_rows x n_steps, numbers from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    steps, records = [], []
    for s in range(n_steps):
        st, rs = [], []
        for r in range(n_rows):
            probs = torch.softmax(torch.randn(50, generator=g) * 3, 0).sort(descending=True).values.tolist()
            hf = [p * (1 + 1e-6 * (k % 3)) for k, p in enumerate(probs)]
            d = torch.rand(1, generator=g).item() * 10 ** (-7 + 2 * torch.rand(1, generator=g).item())
            st.append(dict(step=s, row=r, max_abs_dlogit=d, tolerance=5e-5 * (1 + 0.01 * r), exceeds=False, kl=1e-12,
                           support_mismatch=False, hf_prob=probs[0], hf_rank=1, hf_top_probs=hf,
                           hf_top_sample_probs=hf))
            rs.append(dict(step=s, row=r, token_id=0, token="t0", prob=probs[0], raw_prob=probs[0], rank=1,
                           entropy=1.0, raw_entropy=1.0, n_kept=50, top_ids=list(range(50)),
                           top_tokens=[f"t{k}" for k in range(50)], top_logits=[0.0] * 50, top_probs=probs,
                           top_sample_probs=probs, top_kept=[True] * 50))
        steps.append(st)
        records.append(rs)
    return {"rows": [{"row": r} for r in range(n_rows)], "steps": steps, "generation": {"records": records},
            "settings": {"method": "hf", "do_sample": True, "temperature": 1.0}, "layers": []}


def test_step_figure_at_8_rows_by_200_steps_stays_a_few_traces():
    rep = _synthetic_report(8, 200)
    fig = figures.step_diffs_figure(rep)
    # as many traces as for 2 rows: the worst row + a spread band, not a line per row
    assert len(fig.data) == len(figures.step_diffs_figure(_synthetic_report(2, 200)).data) <= 10
    line = _trace(fig, "max |Δlogit|")
    assert len(line.x) == 200 and line.mode == "lines"
    worst = [max(d["max_abs_dlogit"] for d in st) for st in rep["steps"]]
    best = [min(d["max_abs_dlogit"] for d in st) for st in rep["steps"]]
    assert list(line.y) == pytest.approx(worst)
    floor = 10 ** fig.layout.yaxis.range[0]  # values under the axis floor are drawn on it
    band_low = next(t for t in fig.data if t.y is not None and list(t.y) == pytest.approx([max(b, floor) for b in best]))
    assert band_low.xaxis == line.xaxis
    assert fig.layout.yaxis.dtick == 1


def test_step_figure_with_one_row_has_no_spread_band():
    rep = _synthetic_report(1, 3)
    fig = figures.step_diffs_figure(rep)
    assert not any(t.name == "spread across rows" for t in fig.data)
    assert list(_trace(fig, "max |Δlogit|").y) == pytest.approx([st[0]["max_abs_dlogit"] for st in rep["steps"]])
    assert "worst row" not in fig.layout.annotations[0].text
    assert figures.step_diffs_figure({**rep, "steps": [], "generation": {"records": []}}).layout.title.text == \
        "No steps to show"


def test_settings_sources_are_right_and_differences_highlighted(cache, report, tokenizer):
    rows = {r[0]: r for r in render.settings_rows(report)}
    n_prompt = len(tokenizer.encode(PROMPT))
    assert rows["max_length"][2] == str(n_prompt + 22)
    assert rows["max_length"][3] == f"you: prompt ({n_prompt} tokens) + 22 new tokens"
    assert rows["max_new_tokens"][3] == "you"
    assert "default" not in rows["max_length"][3]
    args = inputs.parse_inputs(cache, **{**GOOD, "reference": "pipeline", "num_sequences": 2, "max_new_tokens": 4})
    rep = handlers.run_compare(cache, args)[0].to_dict()
    styled = render.settings_table(rep)
    ctx = styled._compute().ctx  # pandas' computed cell styles: {(row, col): [(property, value)]}
    for i, row in enumerate(styled.data.values.tolist()):
        highlighted = ("background-color", "#ffe2e0") in ctx.get((i, 0), [])
        assert highlighted == bool(row[-1]), row
    assert styled.data.set_index("setting").loc["temperature", ""] == "⚠ differs"  # the pipeline's 0.7


def test_ui_messages_use_the_ui_names_and_readable_numbers():
    msg = render.ui_message("num_return_sequences must be a positive integer, got 12345678; top_k=3, max_new_tokens")
    assert msg == "number of sequences must be a positive integer, got 12,345,678; top-k = 3, max new tokens"
    assert render.ui_message("token-id prompts such as [50256] work") == "token-id prompts such as [50256] work"
    assert inputs.readable(2**31 - 1) == "2,147,483,647" and inputs.readable(10**300) == "1e+300"


def test_json_download_is_compact_and_restores_the_report(report, tmp_path, monkeypatch):
    from core.parity import ParityReport

    monkeypatch.setattr(downloads.RUNS, "path", str(tmp_path))
    json_path, csv_path = downloads.write_downloads(report)
    with open(json_path, encoding="utf-8") as f:
        raw = f.read()
    assert "\n" not in raw and len(raw) < 0.6 * len(json.dumps(report))
    back = downloads.expand_report(json.loads(raw))
    ParityReport.from_dict(back)  # the download reads back as a report
    assert back["verdict"] == report["verdict"] and back["steps"][3][1]["max_abs_dlogit"] == \
        report["steps"][3][1]["max_abs_dlogit"]  # measured numbers at full precision
    a, b = report["generation"]["records"][4][2], back["generation"]["records"][4][2]
    assert b["top_tokens"] == a["top_tokens"] and b["top_kept"] == a["top_kept"] and b["token"] == a["token"]
    assert b["top_probs"] == pytest.approx(a["top_probs"], rel=1e-3)  # display numbers to 4 significant digits


def test_download_files_are_bounded_per_process(report, tmp_path, monkeypatch):
    monkeypatch.setattr(downloads.RUNS, "path", str(tmp_path))
    monkeypatch.setattr(downloads.RUNS, "keep", 3)
    paths = [downloads.write_downloads(report)[0] for _ in range(5)]
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert len(kept) == 3 and all(os.path.exists(p) for p in paths[-3:]) and not os.path.exists(paths[0])


def test_download_folders_of_dead_processes_are_swept(tmp_path, monkeypatch):
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f"parity-lab-{int(gone.stdout)}-abc123"
    mine = tmp_path / f"parity-lab-{os.getpid()}-def456"
    other = tmp_path / "unrelated-dir"
    for d in (dead, mine, other):
        (d / "run-000000").mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(downloads.RUNS, "path", None)
    new = downloads.RUNS.folder()
    assert not dead.exists() and mine.exists() and other.exists()
    assert os.path.dirname(new) == str(tmp_path)


def test_query_parameters_restore_valid_inputs_only():
    allowed = [TINY, "gpt2"]
    got = inputs.query_values({"prompt": "Hi there", "seed": "7", "top_p": "0.9", "num_sequences": "3",
                                 "fault": "qk_swapped", "model": TINY, "method": "nanogpt"}, allowed)
    assert got == {"prompt": "Hi there", "seed": 7, "top_p": 0.9, "num_sequences": 3, "fault": "qk_swapped",
                   "model": TINY, "method": "nanogpt"}
    bad = inputs.query_values({"seed": "-1", "num_sequences": "99", "model": "/etc/passwd", "fault": "x",
                                 "temperature": "nan", "method": "beam"}, allowed)
    assert bad == {}


# ---------------------------------------------------------------------------------------------------------
# Round 3: the seed's case, what HF's own settings do, exact zeros, one message per refused request


@pytest.fixture(scope="module")
def seed_report(cache):
    """"The seed's case" button's inputs, run as the button runs them."""
    args = inputs.parse_inputs(cache, **{**inputs.SEED_CASE, "model": TINY})
    return handlers.run_compare(cache, args)[0].to_dict()


def test_the_seed_case_button_sets_up_the_seeds_call(tokenizer):
    values = dict(zip([k for k in inputs.INPUT_KEYS if k != "model"], handlers.seed_case()))
    # the seed: its own top-k loop (top-k 50) against pipeline(...)(prompt, max_length=30, num_return_sequences=5)
    # after set_seed(42)
    assert values == dict(prompt="Hello, I'm a language model,", method="nanogpt", reference="pipeline", fault="none",
                          top_k=50, top_p=1.0, temperature=1.0, seed=42, num_sequences=5,
                          max_new_tokens=30 - len(tokenizer.encode("Hello, I'm a language model,")),
                          precision="auto")  # the seed ran in float32: auto judges our model in float32


def test_what_hfs_own_settings_do_matches_the_full_vocabulary(seed_report, cache):
    """The seed's case: both models agree under our settings (noise), but the pipeline samples at temperature 0.7:
    the divergence between what each side samples from, each under its own settings, recomputed here in float64
    from both models' full logits."""
    import numpy as np

    from demo.divergence import effective_divergences, report_divergences

    rep = seed_report
    hf, divs = effective_divergences(rep)
    assert hf is not None and hf.differing == ("temperature",) and hf.describe() == "temperature 0.7"
    ours, theirs = _teacher_forced_logits(rep, cache, None)
    checked = 0
    for r in range(len(rep["rows"])):
        p = _sampling_dists_numpy(ours[r], 50)  # ours: the top-k loop, temperature 1
        q = _sampling_dists_numpy(np.asarray(theirs[r], dtype=np.float64) / 0.7, 50)  # the pipeline's 0.7, top-k 50
        tv, js = _tv_js_numpy(p, q)
        for s in range(len(rep["steps"])):
            v = divs[s][r]
            if rep["generation"]["records"][s][r] is None:
                assert v is None
                continue
            assert v.exact and v.tv == pytest.approx(tv[s], abs=2e-5) and v.js == pytest.approx(js[s], abs=2e-5)
            checked += 1
    assert checked >= len(rep["steps"])
    assert max(v.tv for st in report_divergences(rep) for v in st if v is not None) < 1e-3  # same model
    assert max(v.tv for st in divs for v in st if v is not None) > 0.05  # the settings alone


def test_step_figure_draws_what_hfs_own_settings_do_only_when_they_differ(seed_report, report):
    from demo.divergence import effective_divergences

    fig = figures.step_diffs_figure(seed_report)
    line = _trace(fig, "with HF's own settings (temperature 0.7)")
    _, divs = effective_divergences(seed_report)
    assert list(line.y) == pytest.approx([max(max(v.tv for v in st if v is not None), figures.TV_FLOOR)
                                          for st in divs])
    assert line.yaxis == "y2" and line.line.color == figures.SETTINGS
    assert not any((t.name or "").startswith("with HF's own") for t in figures.step_diffs_figure(report).data)


def test_hfs_own_settings_where_the_report_can_and_cannot_tell():
    from demo.divergence import effective_divergences

    rep = _synthetic_report(1, 2)
    row = lambda name, ours, hf: dict(name=name, ours=ours, hf=hf, source="you", differs=ours != hf)  # noqa: E731
    rep["settings_table"] = [row("do_sample", True, False), row("temperature", 1.0, 1.0)]
    _, divs = effective_divergences(rep)  # HF greedy: it always takes its most likely token
    for st, recs, diffs in zip(divs, rep["generation"]["records"], rep["steps"]):
        q = diffs[0]["hf_top_probs"]
        top = max(range(50), key=lambda j: q[j])
        # TV(p, one token) = 1 - p(token) (float32 probabilities: their sum is 1 within 1e-6)
        assert st[0].tv == pytest.approx(1 - recs[0]["top_sample_probs"][top], abs=1e-6)
    # temperature 0.7 with HF's top-k off: the other 50,000 tokens' share is not in the report: said, not drawn
    rep["settings_table"] = [row("temperature", 1.0, 0.7), row("top_k", 50, 0)]
    hf, divs = effective_divergences(rep)
    assert hf.describe() == "temperature 0.7, top-k off" and all(v is None for st in divs for v in st)
    fig = figures.step_diffs_figure(rep)
    assert not any((t.name or "").startswith("with HF's own") for t in fig.data)
    assert any("not drawn" in a.text and "temperature 0.7" in a.text for a in fig.layout.annotations)
    rep["settings_table"] = [row("repetition_penalty", 1.0, 1.2)]  # not rebuilt from the top-50: said too
    assert any("not drawn" in a.text for a in figures.step_diffs_figure(rep).layout.annotations)


def test_an_exact_zero_is_marked_on_the_axis_floor_not_drawn_as_a_bar(seed_report):
    layers = seed_report["layers"]
    zero = [l["name"] for l in layers if l.get("worst_abs_diff", l["max_abs_diff"]) == 0]
    assert zero == ["embeddings"]  # the same sum of the same two embedding rows: bit-identical
    fig = figures.layers_figure(seed_report)
    mark = _trace(fig, "exact 0 (bit-identical)")
    assert list(mark.x) == zero and mark.y[0] == pytest.approx(10 ** fig.layout.yaxis.range[0])  # the floor
    assert mark.marker.color == figures.EXACT not in (figures.OURS, figures.BAD)
    assert "exactly 0" in mark.hovertemplate
    bars = {x: y for t in fig.data if t.type == "bar" for x, y in zip(t.x, t.y)}
    assert bars["embeddings"] is None and all(bars[n] > 0 for n in bars if n not in zero)
    # the step figure marks an all-rows exact zero the same way
    rep = _synthetic_report(2, 3)
    for d in rep["steps"][1]:
        d["max_abs_dlogit"] = 0.0
    assert list(_trace(figures.step_diffs_figure(rep), "exact 0 (bit-identical)").x) == [1]


def test_per_layer_axis_names_the_model_under_test(seed_report):
    assert figures.layers_figure(seed_report).layout.yaxis.title.text.endswith("(Ours vs HF)")
    for subject in ("Yours", "Result file"):
        title = figures.layers_figure({**seed_report, "subject": subject}).layout.yaxis.title.text
        assert title.endswith(f"({subject} vs HF)") and "deciding" not in title


def test_titles_clear_the_toolbar_and_labels_clear_the_legend(report):
    for fig in (figures.step_diffs_figure(report), figures.top50_figure(report, 2, 0), figures.layers_figure(report),
                figures.heatmap_figure(report, 0, 3), figures.entropy_figure(report, 0, 3)):
        assert fig.layout.title.pad.t >= figures.MODEBAR_PX and fig.layout.margin.t > fig.layout.title.pad.t
        assert fig.layout.legend.yref == "container" and fig.layout.legend.y == 0  # under the plot, never over it
    for fig in (figures.heatmap_figure(report, 0, 3), figures.entropy_figure(report, 0, 3)):
        label = next(a for a in fig.layout.annotations if a.text == "step 3")
        assert label.yref == "paper" and label.y == 1 and label.yanchor == "top"  # inside the plot's top edge


def test_top50_labels_get_their_room_and_long_tokens_their_hover(report):
    rep = json.loads(json.dumps(report))
    rec = rep["generation"]["records"][2][0]
    long = "␣" + "x" * 60
    rec["top_tokens"][5] = long
    fig = figures.top50_figure(rep, 2, 0)
    bars = _trace(fig, "ours: model p")
    assert all(len(y.removeprefix("▶ ")) <= figures.TOKEN_LABEL_CHARS for y in bars.y)
    assert bars.y[5].endswith("…") and bars.y[5].startswith("6. ␣xxx") and len(set(bars.y)) == 50
    assert bars.customdata[5][-1] == f"6. {long}" and "%{customdata[3]}" in bars.hovertemplate
    assert fig.layout.margin.l >= figures.TICK_CHAR_PX * max(len(y) for y in bars.y)


def test_status_lines_name_the_first_diverging_layer_once(report):
    verdict = "logits differ from HuggingFace: first diverging layer block 11"
    check = {"implementation": {"name": "mine"}, "agree": False, "reference_id": "r1", "cases": [
        {"agree": False, "verdict": verdict, "first_diverging_layer": "block 11", "settings": {"seed": 42}},
        {"agree": False, "verdict": "logits differ from HuggingFace", "first_diverging_layer": "block 1",
         "settings": {"seed": 7}}]}
    status = render.cases_markdown(check)
    assert status.count("block 11") == 1 and "first diverging layer **block 1**" in status
    panel = render.verdict_html({**report, "agree": False, "verdict": verdict, "first_diverging_layer": "block 11"})
    assert panel.count("block 11") == 1
    panel = render.verdict_html({**report, "agree": False, "verdict": "logits differ",
                                 "first_diverging_layer": "block 1"})
    assert "first diverging layer: <b>block 1</b>" in panel


def test_each_refusal_names_the_button_to_press_again():
    run, check = render.error_html("bad prompt"), render.error_html("not a safetensors file", "check")
    assert "Not run: bad prompt" in run and "press Generate again" in run
    assert "Not checked: not a safetensors file" in check and "press Check result again" in check
    assert "Generate" not in check


def test_the_pages_buttons_end_a_refused_request_with_the_verdict_alone(cache):
    import inspect

    comps = {k: k for k in handlers.OUTPUT_KEYS}
    run = handlers.make_run_handler(cache, comps)
    bad = {**GOOD, "prompt": "   "}.values()
    with pytest.raises(gr.Error):  # the API's endpoint: an error for gradio_client
        list(run(*bad, progress=lambda *a, **k: None))
    page = handlers.in_page(run)
    assert inspect.signature(page) == inspect.signature(run) and inspect.isgeneratorfunction(page)  # as Gradio reads it
    updates = list(page(*{**GOOD, "prompt": "   "}.values(), progress=lambda *a, **k: None))
    assert "Not run: the prompt is only whitespace" in updates[-1]["verdict"] and updates[-1]["state"] is None
    ok = list(page(*{**GOOD, "max_new_tokens": 3, "num_sequences": 1}.values(), progress=lambda *a, **k: None))
    assert ok[-1]["state"]["agree"]


def test_the_api_endpoints_stay_and_the_pages_buttons_are_not_api_endpoints():
    demo = build_demo(TINY, bpe_dir=str(BPE_DIR))
    config = demo.get_config_file()
    elem = {c["id"]: c.get("props", {}).get("elem_id") for c in config["components"]}
    public = {d["api_name"]: d for d in config["dependencies"] if d.get("api_visibility") == "public"}
    assert set(public) == {"run", "check_result", "get_reference", "train"}
    assert [elem[t[0]] for t in public["run"]["targets"]] == ["run-api"]
    # the Training step tab's button is its endpoint: its refusals are said in its panel, never raised
    assert [elem[t[0]] for t in public["train"]["targets"]] == ["train-run"]
    assert [elem[i] for i in public["train"]["inputs"]] == list(inputs.TRAIN_KEYS)
    assert [elem[i] for i in public["run"]["inputs"]] == list(inputs.INPUT_KEYS)
    assert [elem[t[0]] for t in public["check_result"]["targets"]] == ["check-result-api"]
    assert [elem[t[0]] for t in public["get_reference"]["targets"]] == ["get-reference-api"]
    page_buttons = {"generate", "seed-case", "check-result", "get-reference"}
    pressed = [d for d in config["dependencies"] if any(elem.get(t[0]) in page_buttons for t in d["targets"])]
    assert len(pressed) >= 4 and all(d["api_visibility"] == "private" for d in pressed)


def test_yours_mode_turns_the_bug_lab_off_and_speaks_of_your_model():
    from demo.yours import Yours

    _, hf = build_tiny_pair()
    demo = build_demo(TINY, bpe_dir=str(BPE_DIR), mine=Yours("/somewhere/mine.py:model", hf))
    config = demo.get_config_file()
    props = {c.get("props", {}).get("elem_id"): c["props"] for c in config["components"]}
    assert props["fault"]["interactive"] is False and "Off" in props["fault"]["info"]
    intro = next(c["props"]["value"] for c in config["components"] if c["type"] == "markdown"
                 and "GPT-2 Parity Lab" in str(c["props"].get("value")))
    assert "Your GPT-2 (`mine.py:model`)" in intro and "Our from-scratch" not in intro and "/somewhere" not in intro
    assert "your next-token scores" in props["steps-caption"]["value"]


def test_html_download_is_the_shown_run_as_one_page(cache):
    """The Download tab's HTML button: the run in the state as one page that carries the run for reloading."""
    from demo.report import read_report_html

    report, loaded = handlers.run_compare(cache, {**inputs.parse_inputs(cache, *GOOD.values()), "fault": "untied_lm_head"})
    report = report.to_dict()
    path = handlers.html_download(report)
    page = open(path, encoding="utf-8").read()
    assert render.verdict_html(report) in page and report["verdict"] in page
    back = read_report_html(page)
    assert back["rows"] == report["rows"] and back["generation"]["texts"] == report["generation"]["texts"]
    with pytest.raises(gr.Error, match="press Generate"):
        handlers.html_download(None)


# ---------------------------------------------------------------------------------------------------------
# The Training step tab: its handler in-process (through gradio_client: tests/app/test_client.py)


def test_training_handler_fills_the_tab_and_refuses_bad_input_in_its_panel(cache):
    from core import TRAINING_FAULTS
    from demo.handlers import make_train_handler
    from demo.inputs import TRAIN_INPUTS

    train = make_train_handler(cache)
    verdict, loss_fig, grads_fig, summary = train(TINY, "detach@last", 1, 2, 12)
    n = cache.get(TINY).hf.config.n_layer
    assert "DIFFER" in verdict and f"block {n - 1}" in verdict
    assert summary["first_diverging_layer"] == f"block {n - 1}" and summary["fault"] == "detach@last"
    assert summary["first_diverging_parameter"] == f"transformer.h.{n - 1}.ln_1.weight"
    assert [t.name for t in loss_fig.data][:2] == ["HF loss", "Ours loss"] and list(loss_fig.data[0].x) == [0, 1]
    bars = grads_fig.data[0]
    assert len(bars.x) == len(list(cache.get(TINY).hf.parameters()))
    red = [x for x, c in zip(bars.x, bars.marker.color) if c == figures.BAD]
    assert f"h.{n - 1}.ln_1.weight" in red and f"h.{n - 1}.mlp.c_fc.weight" not in red  # after it: untouched
    verdict, *_ = train(TINY, "none", 0, 1, 8)
    assert "AGREE" in verdict
    verdict, loss_fig, grads_fig, summary = train(TINY, "none", 2, 1, 500)
    assert "Training step refused" in verdict and "sequence length" in verdict and summary is None
    verdict, *_ = train(TINY, "decay_all", 0, 1, 8)
    assert "Training step refused" in verdict and "AdamW steps" in verdict
    offered = {v for _, v in TRAIN_INPUTS["train_fault"].choices}
    assert set(TRAINING_FAULTS) <= offered
