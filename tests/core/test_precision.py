"""Precision or bug? Correct models below float32 are judged against HF's own error at that precision (never a
false alarm); faults the precision can see are flagged at their layer; faults it cannot see are found by the float32
re-check; a forward that forces its own dtype is detected and the re-check declared impossible."""

import contextlib
import copy

import pytest
import torch
import torch.nn as nn

from core import compare, port_from_hf
from core.parity import ParityError
from core.structured import random_gpt2, structured_gpt2
from core.testing import assert_matches_hf
from examples.build_nanogpt import from_hf as nanogpt_from_hf
from examples.my_gpt2 import from_hf_state_dict

PROMPT = "Hello, I'm a language model,"
SMALL = dict(num_return_sequences=2, max_new_tokens=8)
SHAPE = dict(n_layer=3, n_head=4, n_embd=64, n_positions=64)
REGIMES = ("bfloat16", "float16", "bfloat16-autocast", "float16-autocast")


@pytest.fixture(scope="module")
def random_hf():
    return random_gpt2(seed=5, **SHAPE)


@pytest.fixture(scope="module")
def structured_hf():
    return structured_gpt2("block1-1x1000", seed=1, n_layer=3, n_head=4, n_embd=64, n_positions=64)


def _ours(hf):
    return port_from_hf(hf)


def _example(hf):
    return from_hf_state_dict(hf.state_dict(), hf.config)


MODELS = {"ours": _ours, "example": _example, "nanogpt": nanogpt_from_hf}


def as_user_runs_it(model: nn.Module, regime: str):
    """The model the way a user runs it in `regime`, for precision='auto' to find: (model, context to call in).
    Autocast the way build-nanogpt does it, around the call (a forward that enters autocast itself is the
    "forces its own dtype" case below)."""
    if regime.endswith("-autocast"):
        return model, torch.autocast("cpu", dtype=getattr(torch, regime.removesuffix("-autocast")))
    return copy.deepcopy(model).to(getattr(torch, regime)), contextlib.nullcontext()


@pytest.mark.parametrize("weights", ["random", "structured"])
@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("regime", REGIMES)
def test_a_correct_model_is_consistent_with_its_precision(request, tokenizer, weights, kind, regime):
    hf = request.getfixturevalue(f"{weights}_hf")
    model = MODELS[kind](hf)
    for seed, how in ((42, "explicit"), (7, "auto")):
        subject, context = (model, contextlib.nullcontext()) if how == "explicit" else as_user_runs_it(model, regime)
        with context:
            r = compare(subject, PROMPT, hf_model=hf, tokenizer=tokenizer, seed=seed,
                        precision=regime if how == "explicit" else "auto", **SMALL)
        assert r.agree, (how, r.verdict)
        assert r.precision["name"] == regime and r.verdict.startswith(f"consistent with {r.precision['label']}")
        assert r.verdict_kind in ("precision", "settings", "sampling_order"), r.verdict
        assert r.float32_check["possible"] and r.float32_check["agree"], r.float32_check
        assert r.first_diverging_layer is None and not any(l.exceeds for l in r.layers)
        if how == "auto":
            assert r.precision["how"].startswith("detected")
        assert all(row.cause in (None, "precision") for row in r.rows), [row.explanation for row in r.rows]


def test_float32_keeps_todays_rule_exactly(random_hf, tokenizer):
    a = compare(_ours(random_hf), PROMPT, hf_model=random_hf, tokenizer=tokenizer, **SMALL)
    b = compare(_ours(random_hf), PROMPT, hf_model=random_hf, tokenizer=tokenizer, precision="float32", **SMALL)
    assert a.verdict == b.verdict == "identical to HuggingFace" and a.float32_check is None
    assert [l.tolerance for l in a.layers] == [l.tolerance for l in b.layers]
    assert all(l.hf_own_error is None for l in a.layers) and a.precision["factor"] is None


def test_the_yardstick_is_hfs_own_error_at_that_precision(random_hf, tokenizer):
    """HF's own error, recomputed here from HF run in bfloat16 against HF in float32 on the report's streams."""
    from core.parity import hf_teacher_forced

    r = compare(_ours(random_hf), PROMPT, hf_model=random_hf, tokenizer=tokenizer, precision="bfloat16", **SMALL)
    P, S = len(r.prompt_ids), len(r.steps)
    fed = torch.tensor(r.generation.sequences)[:, : P + S - 1]
    _, l32 = hf_teacher_forced(random_hf, fed, keep=S)
    _, l16 = hf_teacher_forced(copy.deepcopy(random_hf).to(torch.bfloat16), fed, keep=S)
    own = (l16.float() - l32).abs().amax(dim=-1)  # (B, S)
    for st in r.steps:
        for d in st:
            if d is not None:
                assert d.hf_own_error == pytest.approx(own[d.row, d.step].item(), abs=1e-4)  # HF32: its trace
                assert d.tolerance > 2 * d.hf_own_error  # the band contains HF's own error, with room
    assert r.precision["hf_own_error"] == pytest.approx(own.max().item(), abs=1e-4)


@pytest.mark.parametrize("fault, layer", [("c_proj_not_transposed@0", "block 0"), ("c_proj_not_transposed@1", "block 1"),
                                          ("untied_lm_head", "lm_head")])
@pytest.mark.parametrize("regime", ["bfloat16", "bfloat16-autocast"])
def test_a_fault_the_precision_can_see_is_flagged_at_its_layer(random_hf, tokenizer, fault, layer, regime):
    r = compare((_ours(random_hf), random_hf), PROMPT, tokenizer=tokenizer, fault=fault, precision=regime, **SMALL)
    assert not r.agree and r.verdict_kind == "model"
    assert r.verdict.startswith(f"differs beyond {r.precision['label']} precision")
    assert r.first_diverging_layer == layer


@pytest.mark.parametrize("weights", ["random", "structured"])
def test_a_fault_below_the_precision_is_found_by_the_float32_recheck(request, tokenizer, weights):
    hf = request.getfixturevalue(f"{weights}_hf")
    r = compare((_ours(hf), hf), PROMPT, tokenizer=tokenizer, fault="erf_gelu@last", precision="bfloat16-autocast",
                **SMALL)
    assert not any(l.exceeds for l in r.layers), "erf GELU in the last block is below bfloat16's resolution here"
    assert not r.agree and r.verdict_kind == "model"
    assert "consistent with bfloat16 autocast precision" in r.verdict and "in float32 it differs" in r.verdict
    assert r.first_diverging_layer == "block 2" == r.float32_check["first_diverging_layer"]
    assert all(row.cause != "model" or "float32" in row.explanation for row in r.rows)


class ForcesBf16(nn.Module):
    """A forward that forces bfloat16 whatever the caller does: the float32 re-check cannot run."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, idx):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=True):
            return self.inner(idx)


def test_a_forward_that_forces_its_dtype_is_detected_and_the_recheck_declared_impossible(random_hf, tokenizer):
    r = compare(ForcesBf16(_example(random_hf)), PROMPT, hf_model=random_hf, tokenizer=tokenizer, **SMALL)
    assert r.precision["name"] == "bfloat16-autocast" and "autocast inside your forward" in r.precision["how"]
    assert r.agree and not r.float32_check["possible"]
    assert "forces its own dtype" in r.float32_check["why_not"]
    assert "cannot be excluded" in r.verdict


def test_compare_inside_autocast_is_detected(random_hf, tokenizer):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        r = compare(_example(random_hf), PROMPT, hf_model=random_hf, tokenizer=tokenizer, **SMALL)
    assert r.precision["name"] == "bfloat16-autocast" and "inside torch.autocast" in r.precision["how"]
    assert r.agree and r.float32_check["agree"]


def test_float32_asked_but_the_model_ran_in_bfloat16(random_hf, tokenizer):
    bf16, _ = as_user_runs_it(_example(random_hf), "bfloat16")
    r = compare(bf16, PROMPT, hf_model=random_hf, tokenizer=tokenizer, precision="float32", **SMALL)
    assert not r.agree and "your model ran in bfloat16 although float32 was asked" in r.verdict
    # the bug lab's bf16_autocast fault is the same demonstration on our model
    r = compare((_ours(random_hf), random_hf), PROMPT, tokenizer=tokenizer, fault="bf16_autocast", **SMALL)
    assert not r.agree and "ran in bfloat16 autocast although float32 was asked" in r.verdict


def test_a_bf16_model_with_a_fault_below_resolution_is_rechecked_with_its_rounded_weights(random_hf, tokenizer):
    """Weights that came in as bfloat16: the re-check runs them in float32 against HF's weights rounded the same
    way, so the rounding of the weights alone is no fault, and an erf GELU still is."""
    ok = compare(as_user_runs_it(_example(random_hf), "bfloat16")[0], PROMPT, hf_model=random_hf, tokenizer=tokenizer,
                 **SMALL)
    assert ok.agree and ok.float32_check["agree"] and "rounded to bfloat16" in ok.float32_check["note"]
    bad = from_hf_state_dict(random_hf.state_dict(), random_hf.config, "erf_gelu_last_block")
    r = compare(as_user_runs_it(bad, "bfloat16")[0], PROMPT, hf_model=random_hf, tokenizer=tokenizer, **SMALL)
    assert not r.agree and r.first_diverging_layer == "block 2" and "in float32 it differs" in r.verdict


def test_assert_matches_hf_takes_the_precision(random_hf, tokenizer):
    assert_matches_hf(as_user_runs_it(_example(random_hf), "bfloat16")[0], random_hf, tokenizer=tokenizer, **SMALL)
    bad = from_hf_state_dict(random_hf.state_dict(), random_hf.config, "erf_gelu_last_block")
    with pytest.raises(AssertionError, match="float32 re-check"):
        assert_matches_hf(bad, random_hf, tokenizer=tokenizer, precision="bfloat16", **SMALL)


def test_bad_precision_is_a_clear_error(random_hf, tokenizer):
    with pytest.raises(ParityError, match="precision must be one of"):
        compare(_ours(random_hf), PROMPT, hf_model=random_hf, tokenizer=tokenizer, precision="int8", **SMALL)
    with pytest.raises(ParityError, match="plain function"):
        compare(lambda ids: _example(random_hf)(ids), PROMPT, hf_model=random_hf, tokenizer=tokenizer,
                precision="bfloat16", **SMALL)
    pair = _ours(random_hf), random_hf  # the bug lab's autocast fault cannot take float16 weights: said, not a crash
    with pytest.raises(ParityError, match="cannot take float16 weights"):
        compare(pair, PROMPT, tokenizer=tokenizer, fault="bf16_autocast", precision="float16", **SMALL)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (runs where one is present)")


@cuda
@pytest.mark.parametrize("regime", ["tf32", "bfloat16", "float16", "bfloat16-autocast"])
def test_cuda_regimes_are_consistent(random_hf, tokenizer, regime):
    hf = copy.deepcopy(random_hf).to("cuda")
    r = compare(_example(hf).to("cuda"), PROMPT, hf_model=hf, tokenizer=tokenizer, precision=regime, **SMALL)
    assert r.agree and r.precision["name"] == regime, r.verdict


@cuda
def test_cuda_tf32_flag_is_detected(random_hf, tokenizer):
    hf = copy.deepcopy(random_hf).to("cuda")
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        r = compare(_example(hf).to("cuda"), PROMPT, hf_model=hf, tokenizer=tokenizer, **SMALL)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    assert r.precision["name"] == "tf32" and r.agree, r.verdict
