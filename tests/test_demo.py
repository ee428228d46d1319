"""Dashboard handlers and figure functions on records from the built-in tiny random model (no browser)."""

import json
import threading

import gradio as gr
import plotly.graph_objects as go
import pytest
import torch
from conftest import BPE_DIR

from core import compare, generate, load_tokenizer
from core.faults import FAULTS
from demo import build_demo, figures, handlers
from demo.models import TINY, ModelCache, ModelNotAllowedError, build_tiny_pair

PROMPT = "Hello, I'm a language model,"
GOOD = dict(prompt=PROMPT, model=TINY, method="hf", reference="generate", fault="none", top_k=50, top_p=1.0,
            temperature=1.0, seed=42, num_sequences=5, max_new_tokens=22)


@pytest.fixture(scope="module")
def cache():
    return ModelCache(bpe_dir=str(BPE_DIR))


@pytest.fixture(scope="module")
def report(cache):
    args = handlers.parse_inputs(cache, **GOOD)
    rep, _ = handlers.run_compare(cache, args)
    return rep.to_dict()


@pytest.fixture(scope="module")
def faulty_report(cache):
    args = handlers.parse_inputs(cache, **{**GOOD, "fault": "erf_gelu", "reference": "logits"})
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


def test_run_handler_streams_then_fills_every_view(cache, monkeypatch):
    monkeypatch.setattr(handlers, "STREAM_INTERVAL_S", 0.0)  # stream whenever the sampler is ahead of us
    comps = {k: k for k in handlers.OUTPUT_KEYS}
    run = handlers.make_run_handler(cache, comps)
    updates = list(run(*GOOD.values(), progress=lambda *a, **k: None))
    streamed = [u["ours"] for u in updates if "ours" in u and "state" not in u]
    final_texts = updates[-1]["state"]["generation"]["texts"]
    assert len(streamed) >= 2, "our text streams in while sampling"
    for spans in streamed:  # every partial text is a prefix of the final one, row by row
        for r, (span, _) in enumerate(spans):
            assert span.startswith(f"[{r + 1}] ") and final_texts[r].startswith(span[len(f"[{r + 1}] "):].rstrip("\n"))
    lengths = [sum(len(span) for span, _ in spans) for spans in streamed]
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
    assert final["settings"][0][0] == "do_sample"


def test_highlighting_marks_the_first_difference(report, cache):
    loaded = cache.get(TINY)
    tok = lambda t: loaded.tokenizer.decode([t])  # noqa: E731
    r = dict(report)
    rows = [dict(row) for row in r["rows"]]
    rows[0] = {**rows[0], "first_divergent_step": 3, "identical": False}
    r["rows"] = rows
    spans = handlers.highlighted(r, tok, "ours")
    labelled = [label for _, label in spans[: 1 + len(rows[0]["ours_new_ids"])]]
    assert labelled[1:4] == [None, None, None] and labelled[4] == "first difference"
    assert set(labelled[5:]) == {"after"}


def test_figures_are_pure_functions_of_the_report(report, faulty_report):
    fig = figures.step_diffs_figure(report)
    assert len(fig.data) == 2 * 5  # a max|Δlogit| and a KL line per row
    assert any(shape.line.dash == "dash" for shape in fig.layout.shapes)  # the tolerance line
    top = figures.top50_figure(report, 3, 1)
    rec = report["generation"]["records"][3][1]
    bars = top.data[0]
    assert list(bars.y) == rec["top_probs"] and len(top.data) == 2  # ours and HF for the same 50 tokens
    chosen = rec["top_ids"].index(rec["token_id"])
    assert bars.marker.line.width[chosen] == 3
    assert list(top.data[1].y) == report["steps"][3][1]["hf_top_probs"]
    assert f"Step 3, row 2" in top.layout.title.text
    heat = figures.heatmap_figure(report, 0)
    assert len(heat.data[0].z) == 50 and len(heat.data[0].z[0]) == 22
    ent = figures.entropy_figure(report, 0)
    assert len(ent.data) == 3
    layers = figures.layers_figure(faulty_report)
    assert faulty_report["first_diverging_layer"] == "block 0"
    assert "block 0" in layers.layout.title.text
    exceeding = next(t for t in layers.data if t.name == "exceeds tolerance")
    assert "block 0" in exceeding.x and exceeding.marker.color == figures.BAD
    assert "every layer within tolerance" in figures.layers_figure(report).layout.title.text


def test_top50_cutoff_is_drawn_where_the_filter_cuts(cache):
    args = handlers.parse_inputs(cache, **{**GOOD, "top_k": 10, "num_sequences": 1, "max_new_tokens": 4})
    rep = handlers.run_compare(cache, args)[0].to_dict()
    fig = figures.top50_figure(rep, 0, 0)
    rec = rep["generation"]["records"][0][0]
    assert sum(rec["top_kept"]) == 10
    assert any(abs(s.x0 - 9.5) < 1e-9 for s in fig.layout.shapes)


def test_view_handlers_follow_the_sliders(report):
    a = handlers.show_step(report, 2, 0)
    b = handlers.show_step(report, 5, 0)
    assert a.layout.title.text != b.layout.title.text
    top, heat, ent = handlers.show_row(report, 1, 3)
    assert "row 4" in heat.layout.title.text and "row 4" in ent.layout.title.text
    assert handlers.show_step(None, 0, 0) is None


BAD_INPUTS = [
    (dict(prompt=""), "empty"),
    (dict(prompt="   \n "), "empty"),
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
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(temperature=-0.5), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(num_sequences=0), "number of sequences"),
    (dict(num_sequences=9), "number of sequences"),
    (dict(seed=1.5), "seed"),
    (dict(seed="abc"), "seed"),
    (dict(seed=-1), "seed"),
    (dict(seed=2**40), "seed"),
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
    with pytest.raises(gr.Error) as info:
        list(run(*{**GOOD, **bad}.values(), progress=lambda *a, **k: None))
    msg = str(info.value.message)
    assert match in msg, msg
    assert "Traceback" not in msg and "/work/" not in msg
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
    comps = {k: k for k in ("verdict", "ours")}
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
    arg_list = [handlers.parse_inputs(cache, **{**GOOD, "seed": seed, "method": m, "max_new_tokens": 12,
                                                "reference": "logits"})
                for seed, m in [(1, "hf"), (2, "nanogpt"), (3, "hf"), (4, "hf"), (5, "nanogpt"), (6, "hf")]]
    serial, concurrent = _serial_and_concurrent(cache, arg_list, lambda r: r.generation.sequences)
    assert serial == concurrent


def test_hf_reference_lock_keeps_generate_reproducible_under_concurrency(cache):
    """HF's side seeds the global RNG and records what reaches generate(): without the lock (and a spy that
    never chains to another request's), concurrent requests would steal each other's draws or settings."""
    arg_list = [handlers.parse_inputs(cache, **{**GOOD, "seed": seed, "max_new_tokens": 8, "reference": ref,
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
    banner, dropdown = handlers.make_load_handler(cache, "gpt2")(progress=lambda *a, **k: None)
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
    banner, dropdown = handlers.make_load_handler(ModelCache(), "gpt2")(progress=lambda *a, **k: None)
    assert banner.visible is True and "Offline mode" in banner.value and dropdown.value == TINY
    monkeypatch.setattr(core.tokenizer, "BUNDLED_DIR", tmp_path / "no-bundled-copy")
    banner, dropdown = handlers.make_load_handler(ModelCache(), "gpt2")(progress=lambda *a, **k: None)
    assert banner.visible is True and "GPT2_BPE_DIR" in banner.value
