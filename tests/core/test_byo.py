"""Bring your own GPT-2: an independent implementation (examples/my_gpt2.py), its mistakes, every common return
convention, layer discovery, bad returns, and the user's own sampling step, all against HuggingFace itself."""

import random
import types

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import hf_generate

from core import ContextLengthError, SettingsError, compare
from core.parity import ForeignModelError, ParityError
from core.structured import VARIED_PARAMS, random_gpt2
from core.testing import assert_matches_hf
from examples.my_gpt2 import MISTAKES, from_hf_state_dict

PROMPT = "Hello, I'm a language model,"
N_LAYER = 4
SMALL = dict(num_return_sequences=3, max_new_tokens=10, seed=42)


def structured_hf(seed=3):
    """A random GPT-2 whose biases, LayerNorm gains and MLP pre-activations are not init constants (core.structured's
    VARIED_PARAMS), so that every mistake in loading them shows."""
    return random_gpt2(seed=seed, logit_std=2.5, **VARIED_PARAMS, noise_seed=seed, n_layer=N_LAYER, n_head=4,
                       n_embd=64, n_positions=128)


@pytest.fixture(scope="module")
def hf():
    return structured_hf()


@pytest.fixture(scope="module")
def mine(hf):
    return from_hf_state_dict(hf.state_dict(), hf.config)


@pytest.fixture(scope="module")
def exact(mine, hf, tokenizer):
    return compare(mine, PROMPT, hf_model=hf, tokenizer=tokenizer, **SMALL)


# ---------------------------------------------------------------------------------------------------------
# The example, ported correctly, is HF's model


def test_example_is_identical_to_hf_per_step_per_layer_and_generate(exact, hf, tokenizer):
    r = exact
    assert r.agree and r.verdict_kind == "identical" and r.subject == "Yours" and r.sampler == "hf"
    assert [l.name for l in r.layers] == ["embeddings"] + [f"block {i}" for i in range(N_LAYER)] + ["ln_f", "lm_head"]
    assert not any(l.exceeds for l in r.layers) and r.first_diverging_layer is None
    assert all(0 < l.max_abs_diff for l in r.layers[1:])  # really computed by the example, not HF's own values
    assert not any(d.exceeds for st in r.steps for d in st if d is not None)
    # HF's own generate(), called here: our sampler on the example's logits gives HF's rows token for token
    expected = hf_generate(hf, tokenizer.encode(PROMPT), 42, do_sample=True, top_k=50, max_new_tokens=10,
                           num_return_sequences=3)
    assert r.ref_sequences == expected and r.generation.sequences == expected
    assert r.notes == []
    # an exact model pays nothing for localisation: none ran, nothing is named
    assert r.localisation is None and "localise_s" not in r.timings
    assert r.first_diverging_sublayer is None and r.diverging_blocks == [] and r.diagnosis == []


def test_hooks_are_removed_and_training_flag_restored(hf, tokenizer):
    mine = from_hf_state_dict(hf.state_dict(), hf.config)
    mine.dropout = nn.Dropout(0.1)  # unused by forward(): only eval mode makes this run deterministic in general
    mine.train()
    r = compare(mine, PROMPT, hf_model=hf, tokenizer=tokenizer, reference="logits", **SMALL)
    assert r.agree and any("training mode" in n for n in r.notes)
    assert mine.training is True and mine.dropout.training is True
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in mine.modules())


def test_assert_matches_hf_passes_for_the_example(mine, hf, tokenizer):
    reports = assert_matches_hf(mine, hf, prompts=[PROMPT, [50256, 464]], seeds=[1], tokenizer=tokenizer,
                                num_return_sequences=2, max_new_tokens=6)
    assert len(reports) == 2 and all(r.verdict_kind == "identical" for r in reports)
    assert reports[1].prompt_ids == [50256, 464]


# ---------------------------------------------------------------------------------------------------------
# Mistakes written in the example's own style, each found where it is


def _expected_layer(where):
    return f"block {N_LAYER - 1}" if where == "last block" else where


_ALL, _LAST = list(range(N_LAYER)), [N_LAYER - 1]
# mistake -> (first sub-layer, blocks that differ on HF's input, words the diagnosis must use), written by hand
LOCALISED = {
    "positions_off_by_one": (None, [], "the embeddings already differ"),
    "no_mask": ("block 0 attention", _ALL, "the attention of blocks 0-3 match HuggingFace with no causal mask"),
    "v_bias_dropped": ("block 0 attention", _ALL, "with the value projection's bias dropped"),
    "eps_1e-6": ("block 0 attention", _ALL, "with LayerNorm eps=1e-06 where GPT-2 uses 1e-05"),
    "softmax_over_queries": ("block 0 attention", _ALL, "with the softmax taken over the query axis"),
    "erf_gelu_last_block": (f"block {N_LAYER - 1} MLP", _LAST,
                            f"block {N_LAYER - 1}'s MLP matches HuggingFace with exact erf GELU `nn.GELU()`, where "
                            "GPT-2 uses the tanh approximation"),
    "ln_2_from_ln_1_last_block": (f"block {N_LAYER - 1} MLP", _LAST, "with ln_2 loaded with ln_1's weights"),
    "head_not_tied": (None, [], "the difference is in lm_head"),
}


@pytest.mark.parametrize("mistake", [m for m in MISTAKES if m != "none"])
def test_each_mistake_is_flagged_at_its_layer(hf, tokenizer, mistake):
    bad = from_hf_state_dict(hf.state_dict(), hf.config, mistake)
    r = compare(bad, PROMPT, hf_model=hf, tokenizer=tokenizer, reference="logits", num_return_sequences=2,
                max_new_tokens=6, seed=1)
    assert not r.agree and r.verdict_kind == "model"
    assert r.first_diverging_layer == _expected_layer(MISTAKES[mistake][1]), [(l.name, l.exceeds) for l in r.layers]
    first = next(i for i, l in enumerate(r.layers) if l.exceeds)
    assert not any(l.exceeds for l in r.layers[:first])
    sub, blocks, words = LOCALISED[mistake]
    assert r.localisation == "done" and r.first_diverging_sublayer == sub and r.diverging_blocks == blocks
    assert words in r.diagnosis[0], r.diagnosis
    if mistake == "eps_1e-6":  # both LayerNorms of each block: the attention's ln_1 and the MLP's ln_2
        assert len(r.diagnosis) == 2 and r.diagnosis[1].startswith("the MLP of blocks 0-3 match HuggingFace with "
                                                                   "LayerNorm eps=1e-06"), r.diagnosis
    else:
        assert len(r.diagnosis) == 1, r.diagnosis


def test_assert_matches_hf_names_verdict_layer_step_and_cause(hf, tokenizer):
    bad = from_hf_state_dict(hf.state_dict(), hf.config, "erf_gelu_last_block")
    with pytest.raises(AssertionError) as info:
        assert_matches_hf(bad, hf, seeds=[42], tokenizer=tokenizer, num_return_sequences=3, max_new_tokens=10)
    msg = str(info.value)
    assert "1 of 1 comparisons" in msg and "logits differ from HuggingFace" in msg
    assert f"first diverging layer: block {N_LAYER - 1}" in msg
    assert "first step whose logits exceed the tolerance: step 0" in msg and "first divergent step:" in msg
    assert f"first diverging sub-layer: block {N_LAYER - 1} MLP" in msg
    assert f"blocks that differ on HF's own input (each block given HF's residual stream): {N_LAYER - 1}" in msg
    assert f"likely mistake:\n    - block {N_LAYER - 1}'s MLP matches HuggingFace with exact erf GELU" in msg
    # a mistake that changes the samples: the divergent step and its cause too
    bad = from_hf_state_dict(hf.state_dict(), hf.config, "v_bias_dropped")
    with pytest.raises(AssertionError, match=r"first divergent step: \d+ \(row \d\); cause: model"):
        assert_matches_hf(bad, hf, seeds=[42], tokenizer=tokenizer, num_return_sequences=3, max_new_tokens=10)


# ---------------------------------------------------------------------------------------------------------
# Return conventions and layouts


class LastOnly(nn.Module):
    """nanoGPT's inference path: logits of the last position only, (B, 1, V), with loss None."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, idx):
        logits, _ = self.inner(idx)
        return logits[:, [-1], :], None


class HFStyle(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids):
        return types.SimpleNamespace(logits=self.inner(input_ids)[0], past_key_values=None)


class Hidden(nn.Module):
    """Blocks kept as separately named attributes: no layout to discover."""

    def __init__(self, inner):
        super().__init__()
        self.emb, self.pos = inner.decoder.tokens, inner.decoder.positions
        for i, b in enumerate(inner.decoder.blocks):
            setattr(self, f"stage{i}", b)
        self.n, self.final, self.head = len(inner.decoder.blocks), inner.decoder.norm, inner.head

    def forward(self, ids):
        x = self.emb(ids) + self.pos(torch.arange(ids.size(1)))
        for i in range(self.n):
            x = getattr(self, f"stage{i}")(x)
        return self.head(self.final(x))


class Padded(nn.Module):
    """build-nanogpt's training vocabulary: 50304 logits, the last 47 never trained."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, ids):
        logits, loss = self.inner(ids)
        return torch.cat([logits, torch.full((*logits.shape[:2], 47), -3.0)], dim=-1), loss


@pytest.mark.parametrize("wrap", ["last_only", "hf_style", "function", "padded"])
def test_every_return_convention_gives_the_same_run(mine, hf, tokenizer, exact, wrap):
    model = {"last_only": lambda: LastOnly(mine), "hf_style": lambda: HFStyle(mine),
             "function": lambda: (lambda ids: mine(ids)[0]), "padded": lambda: Padded(mine)}[wrap]()
    r = compare(model, PROMPT, hf_model=hf, tokenizer=tokenizer, **SMALL)
    assert r.verdict_kind == "identical" and r.generation.sequences == exact.generation.sequences
    if wrap == "function":
        assert [l.name for l in r.layers] == ["lm_head"]
        assert any("per-layer comparison not possible" in n and "plain function" in n for n in r.notes)
    else:
        assert len(r.layers) == N_LAYER + 3
        assert [l.max_abs_diff for l in r.layers[:-1]] == [l.max_abs_diff for l in exact.layers[:-1]]
    if wrap == "padded":
        assert any("50304 logits" in n and "first 50257" in n for n in r.notes)


def test_undiscoverable_layout_gets_per_step_comparison_and_a_note(mine, hf, tokenizer):
    model = Hidden(mine)
    r = compare(model, PROMPT, hf_model=hf, tokenizer=tokenizer, **SMALL)
    assert r.verdict_kind == "identical" and [l.name for l in r.layers] == ["lm_head"]
    assert any("per-layer comparison not possible" in n and "layers=dict(blocks=" in n for n in r.notes), r.notes
    # a mistake is still caught per step, with the report saying it cannot name a layer
    bad = Hidden(from_hf_state_dict(hf.state_dict(), hf.config, "v_bias_dropped"))
    r = compare(bad, PROMPT, hf_model=hf, tokenizer=tokenizer, reference="logits", **SMALL)
    assert not r.agree and r.first_diverging_layer is None and "per-layer comparison not available" in r.verdict


def test_layers_named_explicitly(hf, tokenizer):
    bad = from_hf_state_dict(hf.state_dict(), hf.config, "erf_gelu_last_block")
    model = nn.Module()
    model.trunk = nn.Sequential(*bad.decoder.blocks)  # neither a known name nor a ModuleList
    model.last_norm = bad.decoder.norm
    model.forward = lambda ids: bad(ids)  # the blocks run inside bad's forward: the hooks still see them
    r = compare(model, PROMPT, hf_model=hf, tokenizer=tokenizer, reference="logits",
                layers=dict(blocks="trunk", final_norm="last_norm"), **SMALL)
    assert r.first_diverging_layer == f"block {N_LAYER - 1}" and len(r.layers) == N_LAYER + 3
    with pytest.raises(ParityError, match="no module 'nope'"):
        compare(model, PROMPT, hf_model=hf, tokenizer=tokenizer, layers=dict(blocks="nope"), **SMALL)
    with pytest.raises(ParityError, match="'blocks' and 'final_norm'"):
        compare(model, PROMPT, hf_model=hf, tokenizer=tokenizer, layers=dict(block="trunk"), **SMALL)


def test_our_own_gpt_as_a_foreign_model_matches_its_cached_run(hf, tokenizer):
    from core import port_from_hf

    ours = port_from_hf(hf)
    cached = compare(ours, PROMPT, hf_model=hf, tokenizer=tokenizer, **SMALL)
    nocache = compare(ours, PROMPT, hf_model=hf, tokenizer=tokenizer, layers={}, **SMALL)
    assert cached.subject == "Ours" and nocache.subject == "Yours"
    assert cached.generation.sequences == nocache.generation.sequences and nocache.verdict_kind == "identical"


# ---------------------------------------------------------------------------------------------------------
# Bad returns: clear errors naming what came back


def _fn(make):
    def model(ids):
        return make(ids)
    return model


@pytest.mark.parametrize("make, message", [
    (lambda ids: "logits", "returned an object of type str"),
    (lambda ids: torch.zeros(ids.size(0), ids.size(1), 100), r"returned 100 logits per position .* has 50257"),
    (lambda ids: torch.zeros(1, ids.size(1), 50257), "logits for 1 rows for an input of 3 rows"),
    (lambda ids: torch.zeros(ids.size(0), ids.size(1) - 1, 50257), "positions for an input of"),
    (lambda ids: torch.zeros(ids.size(0), ids.size(1), 50257, dtype=torch.long), "must be floating point"),
    (lambda ids: torch.full((ids.size(0), ids.size(1), 50257), float("nan")), "NaN logits at step 0"),
    (lambda ids: (), "returned a tuple of 0 items"),
    (lambda ids: torch.zeros(ids.size(0), 50257, 1, 1), "shape"),
    (lambda ids: 1 / 0, "your model .* raised ZeroDivisionError"),
])
def test_bad_returns_are_clear_errors(hf, tokenizer, make, message):
    with pytest.raises(ForeignModelError, match=message):
        compare(_fn(make), PROMPT, hf_model=hf, tokenizer=tokenizer, **SMALL)


def test_inf_appearing_later_names_the_step(mine, hf, tokenizer):
    def model(ids):
        logits = mine(ids)[0]
        if ids.size(1) > 12:
            logits[1, -1, 7] = float("inf")
        return logits
    with pytest.raises(ForeignModelError, match=r"inf logits at step \d+ \(row 1: 1 of 50257"):
        compare(model, PROMPT, hf_model=hf, tokenizer=tokenizer, **SMALL)


def test_bad_inputs_to_compare(mine, hf, tokenizer):
    with pytest.raises(ParityError, match="hf_model="):
        compare(mine, PROMPT, tokenizer=tokenizer)
    with pytest.raises(ParityError, match="faults are injected into our GPT only"):
        compare(mine, PROMPT, hf_model=hf, tokenizer=tokenizer, fault="erf_gelu")
    with pytest.raises(ParityError, match="hf_model= must be"):
        compare(mine, PROMPT, hf_model=object(), tokenizer=tokenizer)
    with pytest.raises(ContextLengthError, match="n_positions=128"):  # HF's context, checked before any work
        compare(mine, PROMPT, hf_model=hf, tokenizer=tokenizer, max_new_tokens=500)
    with pytest.raises(SettingsError, match="top_p"):
        compare(mine, PROMPT, hf_model=hf, tokenizer=tokenizer, top_p=2.0)
    with pytest.raises(ParityError, match="sampling_step must be a function"):
        compare(mine, PROMPT, hf_model=hf, tokenizer=tokenizer, sampling_step=3)


@pytest.mark.parametrize("step, message", [
    (lambda logits: torch.zeros(logits.size(0), 2, dtype=torch.long), r"expected \(3,\) or \(3, 1\)"),
    (lambda logits: logits.argmax(-1).float(), "integer token ids"),
    (lambda logits: torch.full((logits.size(0),), 50300), r"chose token id 50300 .* outside GPT-2's vocabulary"),
    (lambda logits: None, "returned an object of type NoneType"),
])
def test_bad_sampling_steps_are_clear_errors(mine, hf, tokenizer, step, message):
    with pytest.raises(ForeignModelError, match=message):
        compare(mine, PROMPT, hf_model=hf, tokenizer=tokenizer, sampling_step=step, **SMALL)


# ---------------------------------------------------------------------------------------------------------
# The user's own sampling step: the seed's experiment


def seed_step(logits):
    """build-nanogpt's sampling step, verbatim in spirit: top-k 50 of the softmax, multinomial, gather."""
    probs = F.softmax(logits, dim=-1)
    topk_probs, topk_indices = torch.topk(probs, 50, dim=-1)
    ix = torch.multinomial(topk_probs, 1)
    return torch.gather(topk_indices, -1, ix)


def seed_loop(model, ids, rows, max_length, seed):
    """The seed's whole script, by hand: an independent reference for the lab's run of the step."""
    torch.manual_seed(seed)
    x = torch.tensor(ids, dtype=torch.long).unsqueeze(0).repeat(rows, 1)
    while x.size(1) < max_length:
        with torch.no_grad():
            logits, _ = model(x)
        x = torch.cat((x, seed_step(logits[:, -1, :])), dim=1)
    return x.tolist()


@pytest.fixture(scope="module")
def seed_reports(mine, hf, tokenizer):
    before = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    kw = dict(hf_model=hf, tokenizer=tokenizer, sampling_step=seed_step, method="nanogpt", num_return_sequences=5,
              max_length=30, seed=42)
    out = {ref: compare(mine, PROMPT, reference=ref, **kw) for ref in ("generate", "pipeline")}
    after = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    return out, before, after


def test_seed_loop_runs_exactly_as_the_users_script(seed_reports, mine, tokenizer):
    (reports, before, after) = seed_reports
    expected = seed_loop(mine, tokenizer.encode(PROMPT), 5, 30, 42)
    for r in reports.values():
        assert r.generation.sequences == expected and r.sampler == "yours"
    assert torch.equal(before[0], after[0]) and before[1] == after[1] and np.array_equal(before[2], after[2])


def test_seed_loop_against_generate_is_sampling_order(seed_reports):
    r = seed_reports[0]["generate"]
    bad = [row for row in r.rows if not row.identical]
    assert bad and all(row.cause == "sampling_order" for row in bad)
    assert r.agree and r.verdict_kind == "sampling_order" and not any(l.exceeds for l in r.layers)
    assert "your sampling step" in bad[0].explanation


def test_seed_loop_against_the_pipeline_is_settings(seed_reports):
    r = seed_reports[0]["pipeline"]
    bad = [row for row in r.rows if not row.identical]
    assert bad and all(row.cause == "settings" and "temperature" in row.explanation for row in bad)
    assert r.agree and r.verdict_kind == "settings"


def test_hf_exact_step_on_the_global_rng_is_identical(mine, hf, tokenizer, exact):
    """A step doing what HF does (full-vocab -inf filtering, one multinomial) on the global RNG after
    torch.manual_seed(seed) draws HF's very tokens."""
    def hf_step(logits):
        kth = torch.topk(logits, 50)[0][..., -1, None]
        return torch.multinomial(F.softmax(logits.masked_fill(logits < kth, -float("inf")), dim=-1), 1)
    r = compare(mine, PROMPT, hf_model=hf, tokenizer=tokenizer, sampling_step=hf_step, **SMALL)
    assert r.verdict_kind == "identical" and r.generation.sequences == exact.generation.sequences


def test_forgotten_top_k_is_a_sampler_bug(mine, hf, tokenizer):
    def no_top_k(logits):
        return torch.multinomial(F.softmax(logits, dim=-1), 1)
    r = compare(mine, PROMPT, hf_model=hf, tokenizer=tokenizer, sampling_step=no_top_k, num_return_sequences=5,
                max_length=30)
    assert not r.agree and r.verdict_kind == "sampler"
    row = next(row for row in r.rows if row.cause == "sampler")
    ev = row.evidence
    assert ev["kind"] == "support" and ev["rank"] > 50 and "top-k 50" in row.explanation


def test_misapplied_temperature_is_a_sampler_bug(mine, hf, tokenizer):
    r = compare(mine, PROMPT, hf_model=hf, tokenizer=tokenizer, sampling_step=seed_step, temperature=0.5,
                num_return_sequences=5, max_length=30, method="nanogpt")
    assert not r.agree and r.verdict_kind == "sampler", [row.explanation for row in r.rows]
    ev = next(row.evidence for row in r.rows if row.cause == "sampler")
    assert ev["kind"] == "temperature" and ev["fitted_temperature"] > 0.75


def test_a_correct_step_at_another_temperature_is_not_blamed(mine, hf, tokenizer):
    def warm_step(logits):
        return seed_step(logits / 0.5)
    r = compare(mine, PROMPT, hf_model=hf, tokenizer=tokenizer, sampling_step=warm_step, temperature=0.5,
                num_return_sequences=5, max_length=30, method="nanogpt")
    assert r.agree and r.verdict_kind == "sampling_order", [row.explanation for row in r.rows]
