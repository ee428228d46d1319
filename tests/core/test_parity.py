"""The parity engine against HuggingFace itself: HF's generate(), HF's text-generation pipeline and HF's
logits (computed here, teacher-forced) are the references; the bug lab's faults must be caught where they are."""

import json
import random

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import ODD, hf_generate

from core import FAULTS, ParityError, ParityReport, SettingsError, compare, port_from_hf
from core.faults import FaultError, apply_fault
from core.parity import layer_diffs, relative_tolerance, teacher_forced
from core.structured import random_gpt2

PROMPT = "Hello, I'm a language model,"
SEED = 42
N, MAX_LEN = 5, 30  # the seed's example: 5 rows grown to 30 tokens


@pytest.fixture(scope="module")
def pair():
    hf = random_gpt2(seed=11, logit_std=2.5, **ODD)
    return port_from_hf(hf), hf


def hf_sample(hf, ids, seed, **kwargs):
    """HF generate() with the settings our defaults stand for (top-k 50, temperature 1, max_length 30)."""
    kw = dict(do_sample=True, top_k=50, max_length=MAX_LEN, num_return_sequences=N) | kwargs
    return hf_generate(hf, ids, seed, **kw)


@pytest.fixture(scope="module")
def hf_ref(pair, tokenizer):
    """HF's own 5 x 30 sample with seed 42 (computed once)."""
    return hf_sample(pair[1], tokenizer.encode(PROMPT), SEED)


@pytest.fixture(scope="module")
def exact(pair, tokenizer):
    """The exact port compared with HF generate() under the default settings."""
    return compare(pair, PROMPT, tokenizer=tokenizer, num_return_sequences=N, seed=SEED)


def divergent(report):
    return [r for r in report.rows if not r.identical]


def setting(report, name):
    rows = [r for r in report.settings_table if r.name == name]
    assert len(rows) == 1, name
    return rows[0]


# ---------------------------------------------------------------------------------------------------------
# The exact port


def test_exact_port_is_identical_to_hf_generate(exact, pair, tokenizer, hf_ref):
    ours, hf = pair
    r = exact
    assert r.agree is True and r.verdict_kind == "identical"
    assert r.fault is None and r.first_diverging_layer is None
    # HF's rows, as anyone gets them by calling HF: the report's reference and our generation are both equal
    assert r.ref_sequences == hf_ref
    assert r.generation.sequences == hf_ref
    assert r.prompt_ids == tokenizer.encode(PROMPT)
    P = len(r.prompt_ids)
    assert len(r.rows) == N
    for row, ref in zip(r.rows, hf_ref):
        assert row.identical and row.cause is None and row.first_divergent_step is None
        assert row.ours_new_ids == ref[P:] and row.ref_new_ids == ref[P:]
        assert row.ref_text == tokenizer.decode(ref)
    # every layer and every step within its tolerance
    assert [l.name for l in r.layers] == ["embeddings"] + [f"block {i}" for i in range(ODD["n_layer"])] + ["ln_f", "lm_head"]
    for layer in r.layers:
        assert layer.worst_abs_diff <= layer.tolerance and layer.ratio <= 1 and not layer.exceeds, layer
    assert len(r.steps) == MAX_LEN - P
    for step in r.steps:
        assert len(step) == N
        for d in step:
            assert d is not None  # no row of this model reaches eos within 30 tokens
            assert d.max_abs_dlogit <= d.tolerance and not d.exceeds, d
            assert d.top1_agree and d.kl is not None and d.kl < 1e-6 and not d.support_mismatch
    assert r.max_abs_dlogit == max(d.max_abs_dlogit for st in r.steps for d in st)
    assert not any(row.differs for row in r.settings_table)


def test_layer_scales_are_hf_hidden_states(exact, pair):
    """Each layer's `scale` is max|HF value| at that layer: recompute HF's residual stream here."""
    _, hf = pair
    seqs = torch.tensor(exact.generation.sequences)
    captured = {}
    hook = hf.transformer.h[-1].register_forward_hook(lambda m, i, o: captured.__setitem__("x", o[0] if isinstance(o, tuple) else o))
    try:
        with torch.no_grad():
            out = hf(seqs, output_hidden_states=True)
    finally:
        hook.remove()
    hs = out.hidden_states  # embeddings, blocks 0..n-2, then ln_f's output (HF applies ln_f to the last one)
    expected = list(hs[:-1]) + [captured["x"], hs[-1], out.logits]
    assert len(expected) == len(exact.layers)
    P = len(exact.prompt_ids)
    for layer, ref in zip(exact.layers, expected):
        assert layer.scale == pytest.approx(ref.abs().max().item(), rel=1e-6), layer.name
        # the deciding place: its scale is max_c |HF value| there, and the tolerance rtol times it
        ref_at = ref[layer.worst_row, layer.worst_position]
        assert layer.worst_scale == pytest.approx(ref_at.abs().max().item(), rel=1e-6), layer.name
        assert layer.tolerance == pytest.approx(exact.rtol * layer.worst_scale + exact.atol, rel=1e-6)
        assert layer.ratio == pytest.approx(layer.worst_abs_diff / layer.tolerance, rel=1e-6)
        if layer.name == "lm_head":  # only the logits our sampler used: positions P-1 onwards
            assert layer.worst_position >= P - 1


def test_logits_reference(pair, tokenizer):
    r = compare(pair, PROMPT, tokenizer=tokenizer, reference="logits", num_return_sequences=N, seed=SEED)
    assert r.agree is True and r.verdict_kind == "logits_agree"
    assert r.ref_sequences is None and r.settings_table == []
    assert not any(l.exceeds for l in r.layers)


def test_step_records_align_with_hf_probabilities(exact, pair):
    """StepDiff.hf_top_probs / hf_prob / hf_rank against HF's own logits, teacher-forced here on our rows."""
    _, hf = pair
    gen = exact.generation
    P = len(gen.prompt_ids)
    with torch.no_grad():
        logits = hf(torch.tensor(gen.sequences)).logits.float()
    for step, (records, diffs) in enumerate(zip(gen.records, exact.steps)):
        for rec, d in zip(records, diffs):
            b = logits[rec.row, P - 1 + step]
            raw = F.softmax(b, dim=-1)
            assert d.step == step and d.row == rec.row and d.token_id == rec.token_id
            assert len(d.hf_top_probs) == len(rec.top_ids) == 50
            np.testing.assert_allclose(d.hf_top_probs, raw[rec.top_ids].tolist(), rtol=1e-4, atol=1e-9)
            # the sampling distribution under top-k 50 (temperature 1, top-p 1): HF's 50 best logits, renormalised
            kept = b >= torch.topk(b, 50).values[-1]
            sample_p = F.softmax(b.masked_fill(~kept, -float("inf")), dim=-1)
            np.testing.assert_allclose(d.hf_top_sample_probs, sample_p[rec.top_ids].tolist(), rtol=1e-4, atol=1e-9)
            assert d.hf_prob == pytest.approx(sample_p[rec.token_id].item(), rel=1e-4)
            assert d.hf_rank == int((b > b[rec.token_id]).sum()) + 1
            assert d.top50_overlap == len(set(rec.top_ids) & set(torch.topk(b, 50).indices.tolist()))


# ---------------------------------------------------------------------------------------------------------
# The bug lab


@pytest.mark.parametrize("name", list(FAULTS))
def test_every_fault_is_caught_at_its_layer(pair, tokenizer, hf_ref, name):
    ours, hf = pair
    r = compare(pair, PROMPT, tokenizer=tokenizer, fault=name, num_return_sequences=N, seed=SEED)
    assert r.agree is False and r.verdict_kind == "model"
    assert r.fault == name
    expected = FAULTS[name].expected_layer(ODD["n_layer"])
    assert r.first_diverging_layer == expected
    names = [l.name for l in r.layers]
    first = names.index(expected)
    assert not any(l.exceeds for l in r.layers[:first]) and r.layers[first].exceeds
    assert r.layers[first].worst_abs_diff > r.layers[first].tolerance and r.layers[first].ratio > 1
    assert r.ref_sequences == hf_ref  # HF's side is never faulted
    for row in divergent(r):
        assert row.cause == "model", row
    # the fault lives in a copy: our model still matches HF
    assert not any(l.exceeds for l in teacher_forced(ours, hf, torch.tensor([r.prompt_ids]))[0])


def test_tolerance_is_per_position():
    """A massive value at one position must neither raise the tolerance elsewhere nor be flagged for its own
    rounding: expected verdicts computed by hand from the rule max_c|Δ| > rtol * max_c|HF| at each place."""
    rtol = relative_tolerance(3072)  # eps32 * sqrt(3072) ~ 6.6e-6
    ref = torch.ones(1, 6, 8)
    ref[0, 0, 3] = 3000.0  # a massive channel at position 0
    rounding = ref.clone()
    rounding[0, 0, 3] += 3000.0 * 1e-6  # its own float error: 1e-6 relative, below 6.6e-6
    fault = ref.clone()
    fault[0, 4, 5] += 1e-3  # a real difference at an ordinary position: 1e-3 relative
    (ok, bad) = layer_diffs(0, [rounding, fault], [ref, ref], rtol)[:2]
    assert not ok.exceeds and ok.worst_position == 0 and ok.ratio == pytest.approx(3e-3 / (rtol * 3000), rel=0.1)
    assert bad.exceeds and (bad.worst_row, bad.worst_position) == (0, 4)
    assert bad.worst_scale == 1.0 and bad.worst_abs_diff == pytest.approx(1e-3, rel=1e-3)
    assert bad.tolerance == pytest.approx(rtol, rel=1e-6) and bad.ratio == pytest.approx(1e-3 / rtol, rel=1e-3)
    assert bad.scale == 3000.0  # the layer's global max is still reported; under it, 1e-3 would have hidden
    assert bad.max_abs_diff < rtol * bad.scale
    nan = ref.clone()
    nan[0, 2, 1] = float("nan")
    assert layer_diffs(0, [nan], [ref], rtol)[0].exceeds


def test_block_faults_by_name(pair):
    ours, _ = pair
    assert FAULTS["erf_gelu@2"].expected_layer(3) == "block 2"
    assert FAULTS["erf_gelu@last"].expected_layer(7) == "block 6"
    assert "erf_gelu@last" in FAULTS and "erf_gelu@2" not in FAULTS  # parsed, not listed
    for bad in ("erf_gelu@", "erf_gelu@-1", "erf_gelu@01", "untied_lm_head@1", "nope@1", "erf_gelu@x"):
        assert bad not in FAULTS
        with pytest.raises(FaultError, match="unknown fault"):
            apply_fault(ours, bad)
    with pytest.raises(FaultError, match="blocks 0 to 2"):
        apply_fault(ours, "qk_swapped@3")
    faulty = apply_fault(ours, "erf_gelu@1")
    assert [b.mlp.approximate for b in faulty.transformer.h] == ["tanh", "none", "tanh"]
    assert [b.mlp.approximate for b in ours.transformer.h] == ["tanh"] * 3


# ---------------------------------------------------------------------------------------------------------
# Divergences with agreeing models: each gets its cause


def test_nanogpt_method_against_hf_generate_is_sampling_order(pair, tokenizer, hf_ref):
    r = compare(pair, PROMPT, tokenizer=tokenizer, method="nanogpt", num_return_sequences=N, seed=SEED)
    assert r.ref_sequences == hf_ref
    assert r.generation.sequences != hf_ref
    rows = divergent(r)
    assert rows, "the seed's loop and HF draw differently"
    for row in rows:
        assert row.cause == "sampling_order", row
    assert r.agree is True and r.verdict_kind == "sampling_order"
    assert not any(l.exceeds for l in r.layers)


def test_rows_never_call_the_models_the_same_when_the_verdict_says_they_differ(pair, tokenizer):
    """A run whose hidden states differ at block 1 while every sampled step's logits agree (the verdict: DIFFER),
    sampled with the seed's loop: its rows diverge from HF's by the draws, and must say that the models differ too
    rather than 'same model'. The same run untouched: its rows do say 'same model'."""
    from core.parity import compare_run, run_ours
    from core.sampling import SamplingSettings

    s = SamplingSettings(method="nanogpt", num_return_sequences=N, seed=SEED)
    run = run_ours(pair[0], PROMPT, s, tokenizer=tokenizer)
    ok = compare_run(run, pair[1], settings=s, tokenizer=tokenizer)
    assert ok.agree and divergent(ok) and all(row.explanation.startswith("same model") for row in divergent(ok))
    run.hidden = [h.clone() for h in run.hidden]
    run.hidden[2][:, 1:] += 1.0  # block 1's output, every position after the first: the logits are untouched
    r = compare_run(run, pair[1], settings=s, tokenizer=tokenizer)
    assert not r.agree and r.verdict_kind == "model" and r.first_diverging_layer == "block 1"
    assert not any(d.exceeds for st in r.steps for d in st if d is not None)
    rows = divergent(r)
    assert rows and all(row.cause == "sampling_order" for row in rows)
    for row in rows:
        assert "same model" not in row.explanation, row.explanation
        assert "the models also differ (from block 1 on)" in row.explanation
        assert row.evidence["model_differs"] == "from block 1 on"


def test_pipeline_reference_uses_the_pipelines_defaults(pair, tokenizer, bpe_dir):
    from transformers import GPT2TokenizerFast, pipeline, set_seed

    ours, hf = pair
    r = compare(pair, PROMPT, tokenizer=tokenizer, reference="pipeline", num_return_sequences=N, max_length=MAX_LEN,
                seed=SEED)
    temp = setting(r, "temperature")
    assert temp.hf == 0.7 and temp.ours == 1.0 and temp.source == "pipeline default" and temp.differs is True
    rows = divergent(r)
    assert rows, "temperature 0.7 vs 1.0 changes some of the 5 rows"
    for row in rows:
        assert row.cause == "settings", row
        assert "temperature" in row.explanation
    assert r.agree is True and r.verdict_kind == "settings"
    # HF's pipeline, called here: the report's reference rows are what it gives
    hf_tok = GPT2TokenizerFast(vocab=str(bpe_dir / "encoder.json"), merges=str(bpe_dir / "vocab.bpe"))
    pipe = pipeline("text-generation", model=hf, tokenizer=hf_tok)
    set_seed(SEED)
    res = pipe(PROMPT, max_length=MAX_LEN, num_return_sequences=N, return_tensors=True)
    expected = [[int(t) for t in x["generated_token_ids"]] for x in res]
    assert r.ref_sequences == expected
    # ... and HF generate() at the pipeline's temperature gives them too: temperature is the whole difference
    assert expected == hf_sample(hf, r.prompt_ids, SEED, temperature=0.7)


def test_settings_sources(exact):
    top_k = setting(exact, "top_k")
    assert (top_k.ours, top_k.hf, top_k.source, top_k.differs) == (50, 50, "you", False)
    temp = setting(exact, "temperature")
    assert (temp.hf, temp.source, temp.differs) == (1.0, "you", False)
    ml = setting(exact, "max_length")
    assert (ml.ours, ml.hf, ml.differs) == (MAX_LEN, MAX_LEN, False)


def test_max_length_from_max_new_tokens_is_the_users(tiny_pair, tokenizer):
    """With max_new_tokens given, HF's effective max_length is prompt + those tokens: the user's, not a default
    (transformers' own default max_length is 20)."""
    r = compare(tiny_pair, PROMPT, tokenizer=tokenizer, num_return_sequences=1, max_new_tokens=4, seed=SEED)
    ml = setting(r, "max_length")
    assert ml.hf == len(r.prompt_ids) + 4 and ml.source == "you (prompt + max_new_tokens)" and not ml.differs


def test_setting_from_the_models_generation_config(tokenizer):
    hf = random_gpt2(seed=11, logit_std=2.5, **ODD)
    hf.generation_config.repetition_penalty = 1.3
    ours = port_from_hf(hf)
    r = compare((ours, hf), PROMPT, tokenizer=tokenizer, num_return_sequences=N, seed=SEED)
    rp = setting(r, "repetition_penalty")
    assert rp.hf == pytest.approx(1.3) and rp.ours == 1.0
    assert rp.source == "model generation_config" and rp.differs is True
    # HF really applied it: its rows are generate()'s with the model's config, and differ without the penalty
    ids = tokenizer.encode(PROMPT)
    assert r.ref_sequences == hf_sample(hf, ids, SEED)
    assert r.ref_sequences != hf_sample(hf, ids, SEED, repetition_penalty=1.0)
    assert r.generation.sequences == hf_sample(hf, ids, SEED, repetition_penalty=1.0)
    rows = divergent(r)
    assert rows
    for row in rows:
        assert row.cause == "settings" and "repetition_penalty" in row.explanation, row
    assert r.agree is True and r.verdict_kind == "settings"


def test_near_tie_flipped_by_noise_within_tolerance(tokenizer):
    """Greedy, with two tokens A < B whose HF logits differ by a hair (wte row B = (1 - d) * row A). Our lm_head
    gets row B = (1 + d) * row A instead: a logit change far below the tolerance (like float noise), yet our
    argmax becomes B where HF's is A. The divergence is a near-tie, not a model difference."""
    hf = random_gpt2(seed=11, logit_std=2.5, **ODD)
    ids = tokenizer.encode(PROMPT)
    with torch.no_grad():
        a = int(hf(torch.tensor([ids])).logits[0, -1].argmax())
    b = a + 1000 if a + 1000 < 50256 else a - 1000
    assert b not in ids
    d = 5e-7
    ours = port_from_hf(hf)  # shares HF's wte: the embedding change below applies to both
    with torch.no_grad():
        wte = hf.transformer.wte.weight
        wte[b] = wte[a] * (1 - d)
        head = wte.detach().clone()
        head[b] = wte[a] * (1 + d)
    ours.lm_head.weight = nn.Parameter(head, requires_grad=False)
    ref = hf_generate(hf, ids, 0, do_sample=False, max_new_tokens=6)
    assert ref[0][len(ids)] == a  # HF keeps A
    r = compare((ours, hf), ids, tokenizer=tokenizer, method="greedy", max_new_tokens=6)
    assert r.ref_sequences == ref
    assert r.generation.sequences[0][len(ids)] == b  # ours flips to B
    assert not any(l.exceeds for l in r.layers)
    assert not any(x.exceeds for st in r.steps for x in st if x is not None)
    (row,) = r.rows
    assert not row.identical and row.first_divergent_step == 0
    assert row.cause == "near_tie", row
    with torch.no_grad():  # HF's margin at step 0, over the same token streams the engine ran
        top2 = torch.topk(hf(torch.tensor(r.generation.sequences)).logits[0, len(ids) - 1], 2).values
    assert row.evidence["margin"] == pytest.approx((top2[0] - top2[1]).item(), rel=1e-3, abs=1e-7)
    assert r.agree is True and r.verdict_kind == "near_tie"


def test_rows_that_stop_at_eos(tokenizer):
    """Rows finishing early (eos = a token the model samples often): identical to HF, None steps round-trip."""
    hf = random_gpt2(seed=12, logit_std=4.0, **ODD)
    ids = tokenizer.encode(PROMPT)
    probe = torch.tensor(hf_generate(hf, ids, 3, do_sample=True, max_new_tokens=20, num_return_sequences=N))
    new = probe[:, len(ids):]
    counts = torch.bincount(new.flatten(), minlength=hf.config.vocab_size)
    counts[new[:, 0]] = 0  # not a first token: rows should stop part-way, not all at once
    eos = int(counts.argmax())
    hf.config.eos_token_id = eos
    hf.generation_config.eos_token_id = eos
    ours = port_from_hf(hf)
    r = compare((ours, hf), ids, tokenizer=tokenizer, max_new_tokens=20, num_return_sequences=N, seed=3)
    assert r.ref_sequences == hf_generate(hf, ids, 3, do_sample=True, top_k=50, max_new_tokens=20, num_return_sequences=N)
    assert any(x is None for st in r.steps for x in st), "the test needs a row that stops early"
    assert not all(r.generation.finished_by_eos)
    assert r.agree is True and r.verdict_kind == "identical"
    back = ParityReport.from_dict(json.loads(json.dumps(r.to_dict(), allow_nan=False)))
    assert back == r


# ---------------------------------------------------------------------------------------------------------
# Global state, plain data, bad input


def test_global_rng_state_untouched(pair, tokenizer):
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    before = torch.get_rng_state(), random.getstate(), np.random.get_state()
    for reference in ("generate", "pipeline"):
        compare(pair, PROMPT, tokenizer=tokenizer, reference=reference, num_return_sequences=2, seed=SEED)
    assert torch.equal(torch.get_rng_state(), before[0])
    assert random.getstate() == before[1]
    after_np = np.random.get_state()
    assert after_np[0] == before[2][0] and np.array_equal(after_np[1], before[2][1]) and after_np[2:] == before[2][2:]


@pytest.mark.parametrize("kwargs", [dict(), dict(reference="pipeline"), dict(fault="no_causal_mask")],
                         ids=["generate", "pipeline", "fault"])
def test_report_round_trips_through_json(pair, tokenizer, exact, kwargs):
    r = exact if not kwargs else compare(pair, PROMPT, tokenizer=tokenizer, num_return_sequences=N, seed=SEED, **kwargs)
    text = json.dumps(r.to_dict(), allow_nan=False)  # plain, strict JSON: no default= needed
    back = ParityReport.from_dict(json.loads(text))
    assert back == r
    assert back.rows and back.steps and back.generation.records
    assert json.dumps(back.to_dict(), allow_nan=False) == text


def test_bad_input(pair, tokenizer):
    with pytest.raises(ParityError, match="reference"):
        compare(pair, PROMPT, tokenizer=tokenizer, reference="beam")
    with pytest.raises(ParityError, match="no_such_fault"):
        compare(pair, PROMPT, tokenizer=tokenizer, fault="no_such_fault")
    with pytest.raises(SettingsError, match="top_p"):
        compare(pair, PROMPT, tokenizer=tokenizer, top_p=2.0)
    with pytest.raises(SettingsError, match="num_return_sequences"):
        compare(pair, PROMPT, tokenizer=tokenizer, num_return_sequences=0)
    with pytest.raises(SettingsError, match="unknown setting"):
        compare(pair, PROMPT, tokenizer=tokenizer, colour="red")
    with pytest.raises(ParityError):
        compare(object(), PROMPT, tokenizer=tokenizer)


def test_hf_reference_never_chains_to_a_spy_installed_by_another_request(pair, tokenizer):
    """A concurrent request's spy on hf.generate (installed under the lock) must never see our call: a stale
    reference to it leaked one request's settings into another's table under load."""
    from core.parity import run_hf_reference
    from core.sampling import SamplingSettings

    ours, hf = pair
    foreign_calls = []

    def foreign_spy(*args, **kwargs):
        foreign_calls.append(kwargs)
        return type(hf).generate(hf, *args, **kwargs)

    hf.generate = foreign_spy  # what another request's section looks like from outside the lock
    try:
        s = SamplingSettings(num_return_sequences=2, max_new_tokens=4, seed=5)
        ids = tokenizer.encode(PROMPT)
        out, received, _ = run_hf_reference(hf, tokenizer, PROMPT, ids, s, "generate")
    finally:
        hf.__dict__.pop("generate", None)
    assert foreign_calls == []
    assert received["num_return_sequences"] == 2 and len(out) == 2
