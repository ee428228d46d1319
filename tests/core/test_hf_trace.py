"""HF's side of a comparison taken from its own generate() (core/parity/reference.py): what the engine records is
HF's generate() bit for bit, called as the user calls it (thread count included), even while our generation runs
beside it; it equals a teacher-forced pass up to float rounding; rows whose streams are not HF's are teacher-forced,
and only those; and every verdict is the one a teacher-forced pass gives. HF's own generate(output_logits=True,
output_hidden_states=True) and a fresh teacher-forced forward are the independent references."""

import pytest
import torch
from conftest import WIDE

from core import compare, port_from_hf
from core.parity import reference as refmod
from core.parity.diffs import layer_diffs, relative_tolerance
from core.parity.reference import hf_on_streams, hf_reference_in_background, hf_teacher_forced
from core.sampling import SamplingSettings
from core.structured import random_gpt2

PROMPT = "Hello, I'm a language model,"
SEED_CASE = dict(num_return_sequences=5, max_length=24, top_k=50, seed=42)


@pytest.fixture(scope="module")
def wide_pair():
    hf = random_gpt2(seed=42, logit_std=3.0, **WIDE)  # a model whose pipeline run leaves some rows on our streams
    return port_from_hf(hf), hf


def _cached_reference(hf, tokenizer, s: SamplingSettings, reference="generate"):
    ids = tokenizer.encode(PROMPT)
    seqs, _, _, seconds, trace = hf_reference_in_background(hf, tokenizer, PROMPT, ids, s, reference).result()
    assert seconds == 0.0, "the reference should have come from the cache"
    return ids, seqs, trace


def test_trace_is_hfs_own_generate_bit_for_bit_even_beside_ours(wide_pair, tokenizer):
    ours, hf = wide_pair
    refmod.REFERENCE_CACHE.clear()
    report = compare(wide_pair, PROMPT, tokenizer=tokenizer, **SEED_CASE)
    assert report.timings["overlapped"] == 1.0, "HF's reference should have run beside our generation"
    ids, seqs, trace = _cached_reference(hf, tokenizer, SamplingSettings(**SEED_CASE))
    x = torch.tensor([ids])
    torch.manual_seed(42)  # the user's own call, alone, on this thread at its thread count
    out = hf.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=True, top_k=50, max_length=24,
                      num_return_sequences=5, output_logits=True, output_hidden_states=True,
                      return_dict_in_generate=True)
    assert out.sequences.tolist() == seqs == report.ref_sequences
    assert torch.equal(torch.stack(out.logits, dim=1), trace.logits)
    steps = out.hidden_states  # per step: [embeddings, blocks 0 .. n-2, ln_f(last block)]
    n = hf.config.n_layer
    for i in range(n):
        assert torch.equal(torch.cat([step[i] for step in steps], dim=1), trace.hidden[i]), f"layer {i}"
    assert torch.equal(torch.cat([step[n] for step in steps], dim=1), trace.hidden[n + 1]), "ln_f"
    assert trace.hidden[0].shape == (5, 23, 768) and trace.logits.shape == (5, 24 - len(ids), 50257)


def test_trace_equals_a_teacher_forced_pass_up_to_rounding(wide_pair, tokenizer):
    _, hf = wide_pair
    compare(wide_pair, PROMPT, tokenizer=tokenizer, **SEED_CASE)
    ids, seqs, trace = _cached_reference(hf, tokenizer, SamplingSettings(**SEED_CASE))
    S = len(seqs[0]) - len(ids)
    hidden, logits = hf_teacher_forced(hf, torch.tensor(seqs), keep=S + 1)
    rtol = relative_tolerance(4 * 768)
    diffs = layer_diffs(hf.config.n_layer, trace.hidden + [trace.logits], hidden + [logits[:, :S]], rtol,
                        logits_start=len(ids) - 1)
    assert [d.name for d in diffs] == ["embeddings", "block 0", "block 1", "ln_f", "lm_head"]
    assert all(d.ratio < 0.5 for d in diffs), [(d.name, d.ratio) for d in diffs]  # well inside float noise
    assert not torch.equal(trace.logits, logits[:, :S]), "a KV-cached decode rounds differently: not a copy"


def test_rows_not_on_hfs_streams_are_teacher_forced_and_only_those(wide_pair, tokenizer):
    _, hf = wide_pair
    s = SamplingSettings(**SEED_CASE)
    compare(wide_pair, PROMPT, tokenizer=tokenizer, **SEED_CASE)
    ids, seqs, trace = _cached_reference(hf, tokenizer, s)
    P, S = len(ids), len(seqs[0]) - len(ids)
    mine = torch.tensor(seqs)
    mine[1, P + 3] = (mine[1, P + 3] + 1) % 50257  # row 1 leaves HF's stream at step 3
    hidden, logits, redone = hf_on_streams(hf, mine, P, S, seqs, trace)
    assert redone == 1
    tf_hidden, tf_logits = hf_teacher_forced(hf, mine[[1], : P + S - 1], keep=S)  # the fed tokens
    assert torch.equal(logits[1], tf_logits[0])
    assert all(torch.equal(h[1], t[0]) for h, t in zip(hidden, tf_hidden))
    keep = [0, 2, 3, 4]
    assert torch.equal(logits[keep], trace.logits[keep])
    assert all(torch.equal(h[keep], t[keep]) for h, t in zip(hidden, trace.hidden))
    mine[:, -1] = 11  # the last token is never fed: every row is still HF's
    assert hf_on_streams(hf, mine[[0, 2]], P, S, [seqs[0], seqs[2]], None)[2] == 2  # no trace: all teacher-forced
    assert hf_on_streams(hf, torch.tensor(seqs), P, S, seqs, trace)[2] == 0


@pytest.mark.parametrize("reference", ["generate", "pipeline"])
def test_only_rows_off_hfs_streams_are_teacher_forced(wide_pair, tokenizer, reference):
    refmod.REFERENCE_CACHE.clear()
    report = compare(wide_pair, PROMPT, tokenizer=tokenizer, reference=reference, **SEED_CASE)
    off = sum(ours[:-1] != theirs[:-1] for ours, theirs in zip(report.generation.sequences, report.ref_sequences))
    assert report.timings["teacher_forced_rows"] == off
    if reference == "generate":  # the seed's case with generate(): every row is HF's, no forward pass at all
        assert report.verdict_kind == "identical" and off == 0
    else:  # the pipeline's temperature 0.7 moves some rows off our streams, not all of them
        assert report.verdict_kind == "settings" and 0 < off < 5
    other = compare(wide_pair, PROMPT, tokenizer=tokenizer, reference=reference, method="nanogpt", **SEED_CASE)
    assert other.timings["teacher_forced_rows"] > 0  # the seed's loop leaves HF's streams


@pytest.mark.parametrize("case", [dict(), dict(fault="erf_gelu@1"), dict(fault="ln_eps_1e-6@0"),
                                  dict(method="nanogpt"), dict(fault="qk_swapped")],
                         ids=["exact", "erf-gelu-block1", "eps-block0", "nanogpt", "qk-swapped"])
def test_verdicts_equal_those_of_a_teacher_forced_pass(wide_pair, tokenizer, monkeypatch, case):
    """The same reports, but for float rounding, whether HF's side came from its generate() or a forward pass."""
    refmod.REFERENCE_CACHE.clear()
    traced = compare(wide_pair, PROMPT, tokenizer=tokenizer, **SEED_CASE, **case)
    refmod.REFERENCE_CACHE.clear()
    monkeypatch.setattr(refmod._ForwardRecorder, "trace", lambda self, seqs, P: None)
    forced = compare(wide_pair, PROMPT, tokenizer=tokenizer, **SEED_CASE, **case)
    assert forced.timings["teacher_forced_rows"] == 5
    for r in (traced, forced):
        assert r.ref_sequences == forced.ref_sequences
    assert (traced.verdict_kind, traced.first_diverging_layer) == (forced.verdict_kind, forced.first_diverging_layer)
    assert [l.exceeds for l in traced.layers] == [l.exceeds for l in forced.layers]
    assert [(r.identical, r.cause, r.first_divergent_step) for r in traced.rows] == \
           [(r.identical, r.cause, r.first_divergent_step) for r in forced.rows]
    assert [[d.exceeds if d else None for d in st] for st in traced.steps] == \
           [[d.exceeds if d else None for d in st] for st in forced.steps]
    if "fault" in case and "@" in case["fault"]:
        assert traced.first_diverging_layer == f"block {case['fault'][-1]}"
