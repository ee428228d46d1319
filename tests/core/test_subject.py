"""The model-under-test protocol: a SubjectRun built from ids + logits (as a dump or a user's sampling step gives
them) is the same as our sampler's own run, and compare_run() judges any SubjectRun like compare() does."""

import pytest
import torch
from conftest import TINY, hf_generate

from core import SamplingSettings, port_from_hf
from core.parity import SubjectRun, build_generation, compare, compare_run, run_ours
from core.structured import random_gpt2

PROMPT = "Hello, I'm a language model,"


@pytest.fixture(scope="module")
def pair():
    hf = random_gpt2(seed=5, logit_std=2.5, **TINY)
    return port_from_hf(hf), hf


@pytest.mark.parametrize("method", ["hf", "nanogpt", "greedy"])
def test_build_generation_matches_our_samplers_records(pair, tokenizer, method):
    ours, _ = pair
    n = 1 if method == "greedy" else 3
    s = SamplingSettings(method=method, num_return_sequences=n, max_new_tokens=12, seed=7, temperature=0.8)
    run = run_ours(ours, PROMPT, s, tokenizer=tokenizer)
    P = len(run.generation.prompt_ids)
    new = torch.tensor(run.generation.sequences)[:, P:]
    gen = build_generation(s, PROMPT, run.generation.prompt_ids, new, run.step_logits, tokenizer=tokenizer)
    assert gen.sequences == run.generation.sequences
    assert gen.new_token_ids == run.generation.new_token_ids
    assert gen.texts == run.generation.texts and gen.finished_by_eos == run.generation.finished_by_eos
    for a, b in zip(gen.records, run.generation.records):
        for x, y in zip(a, b):
            assert (x is None) == (y is None)
            if x is not None:
                assert x.token_id == y.token_id and x.top_ids == y.top_ids and x.rank == y.rank
                assert x.prob == pytest.approx(y.prob, rel=1e-5, abs=1e-7)
                assert x.top_sample_probs == pytest.approx(y.top_sample_probs, rel=1e-5, abs=1e-7)


def test_build_generation_pads_after_eos(tokenizer):
    s = SamplingSettings(num_return_sequences=2, max_new_tokens=4, top_k=None)
    logits = torch.randn(2, 4, 50257, generator=torch.Generator().manual_seed(0))
    new = torch.tensor([[5, 50256, 7, 8], [1, 2, 3, 4]])
    gen = build_generation(s, None, [10, 11], new, logits, tokenizer=tokenizer)
    assert gen.sequences[0] == [10, 11, 5, 50256, 50256, 50256]  # HF pads a finished row with eos
    assert gen.new_token_ids == [[5, 50256], [1, 2, 3, 4]] and gen.finished_by_eos == [True, False]
    assert gen.records[2][0] is None and gen.records[2][1].token_id == 3


def test_compare_run_of_a_run_without_hidden_states(pair, tokenizer):
    """A run that brings only ids + logits (a dump without layers): the per-step verdict, the logits as the only
    layer, and a note."""
    ours, hf = pair
    s = SamplingSettings(num_return_sequences=3, max_length=20, seed=3)
    full = run_ours(ours, PROMPT, s, tokenizer=tokenizer)
    bare = SubjectRun(generation=full.generation, step_logits=full.step_logits, hidden=None, label="Result file",
                      notes=["no residual stream in the result file"])
    r = compare_run(bare, hf, settings=s, tokenizer=tokenizer, name="tiny")
    assert r.agree and r.verdict_kind == "identical" and r.subject == "Result file"
    assert [l.name for l in r.layers] == ["lm_head"] and r.notes == ["no residual stream in the result file"]
    assert r.ref_sequences == hf_generate(hf, r.prompt_ids, 3, do_sample=True, top_k=50, max_length=20,
                                          num_return_sequences=3)
    # the same logits with one step spoiled: the model is blamed, without a layer it cannot know
    spoiled = full.step_logits.clone()
    spoiled[:, 4, 100] += 5.0
    r = compare_run(SubjectRun(full.generation, spoiled, None, label="Result file"), hf, settings=s,
                    tokenizer=tokenizer, reference="logits")
    assert not r.agree and r.verdict_kind == "model" and "per-layer comparison not available" in r.verdict
    assert [d.exceeds for d in r.steps[4]] == [True] * 3 and not any(d.exceeds for d in r.steps[3])


def test_compare_is_compare_run_of_our_run(pair, tokenizer):
    ours, hf = pair
    a = compare((ours, hf), PROMPT, tokenizer=tokenizer, num_return_sequences=2, seed=9, max_length=16)
    s = SamplingSettings(num_return_sequences=2, seed=9, max_length=16)
    b = compare_run(run_ours(ours, PROMPT, s, tokenizer=tokenizer), hf, settings=s, tokenizer=tokenizer)
    assert a.generation.sequences == b.generation.sequences and a.verdict == b.verdict
    assert [l.max_abs_diff for l in a.layers] == [l.max_abs_diff for l in b.layers]
    assert a.subject == "Ours" and a.sampler == "hf" and a.notes == []
