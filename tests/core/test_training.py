"""Training parity through the Python API: compare_training on correct learner models (separate q/k/v; build-nanogpt's
layout with a tied head and a padded vocabulary) and on each training fault of the bug lab."""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import ODD, TINY

from core import TRAINING_FAULTS, apply_training_fault, compare_training, port_from_hf
from core.faults import FaultError, get_training_fault
from core.parity import ParityError
from core.parity.training import make_batch
from core.structured import VARIED_PARAMS, random_gpt2, structured_gpt2
from examples.build_nanogpt import from_hf as nanogpt_from_hf
from examples.my_gpt2 import from_hf_state_dict

SMALL = dict(batch_size=2, seq_len=16)


@pytest.fixture(scope="module")
def hf():
    return random_gpt2(seed=0, vocab_size=1000, bos_token_id=0, eos_token_id=0, **VARIED_PARAMS, **TINY)  # a small vocabulary: fast, still padded


@pytest.fixture(scope="module")
def massive():
    return structured_gpt2("block1-1x1000", seed=1, vocab_size=1000, bos_token_id=0, eos_token_id=0, **ODD)


def test_separate_qkv_learner_agrees_with_0_and_3_adamw_steps(hf):
    mine = from_hf_state_dict(hf.state_dict(), hf.config)
    before = {k: v.clone() for k, v in mine.state_dict().items()}
    r0 = compare_training(mine, hf, **SMALL)
    assert r0.agree, r0.verdict
    assert r0.first_diverging_layer is None and r0.first_diverging_parameter is None
    # HF's loss as HF computes it itself (labels shifted inside the model) on the same batch
    x, y = make_batch(2, 16, hf.config.vocab_size, 0)
    with torch.no_grad():
        own = hf(input_ids=torch.cat([x, y[:, -1:]], dim=1), labels=torch.cat([x, y[:, -1:]], dim=1)).loss
    assert abs(r0.hf_loss - float(own)) < 1e-4 and abs(r0.loss - float(own)) < 1e-4
    # every parameter of HF's compared, the q/k/v split found, and the gradient along every layer
    assert len(r0.params) == len(list(hf.parameters()))
    assert any("(q, transposed)" in h for p in r0.params for h in p.yours)
    assert [l.name for l in r0.grad_layers] == ["lm_head", "ln_f", "block 1", "block 0"]
    r3 = compare_training(mine, hf, steps=3, **SMALL)
    assert r3.agree, r3.verdict
    assert [s.step for s in r3.steps] == [1, 2, 3] and not any(s.exceeds for s in r3.steps)
    assert r3.steps[-1].loss < r3.loss  # three steps on one batch lower its loss
    json.dumps(r3.to_dict())
    assert all(torch.equal(v, mine.state_dict()[k]) for k, v in before.items())  # the given model is not trained
    assert all(p.grad is None for p in mine.parameters())


def test_build_nanogpt_layout_tied_and_padded_agrees_with_3_steps_of_its_own_adamw(hf):
    model = nanogpt_from_hf(hf)
    opt = lambda ps: torch.optim.AdamW([{"params": [p for p in ps if p.dim() >= 2], "weight_decay": 0.1},  # noqa: E731
                                        {"params": [p for p in ps if p.dim() < 2], "weight_decay": 0.0}],
                                       lr=6e-4, betas=(0.9, 0.95), eps=1e-8, foreach=True)
    r = compare_training(model, hf, steps=3, optimizer=opt, **SMALL)
    assert r.agree, r.verdict
    assert any("tied as in GPT-2" in s for s in r.structure) and any("padded vocabulary" in s for s in r.structure)
    assert all(s.update_checked for s in r.steps)


@pytest.mark.parametrize("name", [*TRAINING_FAULTS, "detach@0"])
def test_each_training_fault_is_flagged_at_its_layer_and_parameter(hf, name):
    fault = get_training_fault(name)
    ours = port_from_hf(hf)
    model, opt = apply_training_fault(ours, name)
    # the forward check cannot see it: eval-mode logits equal HF's
    with torch.no_grad():
        x = torch.randint(0, hf.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
        out = model(x)
        logits = out[0] if isinstance(out, tuple) else out
        torch.testing.assert_close(logits, hf(input_ids=x).logits, rtol=0, atol=1e-4)
    r = compare_training(model, hf, steps=1 if fault.needs_steps else 0, optimizer=opt or "adamw", fault=name, **SMALL)
    n = hf.config.n_layer
    assert not r.agree
    assert r.first_diverging_layer == fault.expected_layer(n), r.verdict
    if fault.expected_parameter(n) is not None:
        assert r.first_diverging_parameter == fault.expected_parameter(n), r.verdict
    assert r.mistakes and r.verdict.startswith("differs from HuggingFace: ")
    assert SAID[name.partition("@")[0]] in r.verdict  # the likely mistake, in words


SAID = {"untied_head_copy": "your lm_head and wte are separate parameters", "detach": "a .detach()",
        "dropout": "dropout the lab could not switch off", "decay_all": "weight decay applied to biases",
        "unshifted_loss": "unshifted targets"}


@pytest.mark.parametrize("make", ["random", "massive"])
def test_tolerances_hold_on_random_and_massive_activation_weights(hf, massive, make):
    model_hf = hf if make == "random" else massive
    for port in (port_from_hf(model_hf), from_hf_state_dict(model_hf.state_dict(), model_hf.config)):
        r = compare_training(port, model_hf, batch_size=2, seq_len=24)
        assert r.agree, r.verdict
    # and a fault in such a model is still found where it is
    model, _ = apply_training_fault(port_from_hf(model_hf), "detach@last")
    r = compare_training(model, model_hf, batch_size=2, seq_len=24)
    assert r.first_diverging_layer == f"block {model_hf.config.n_layer - 1}"


def test_gradient_tolerance_separates_float64_from_a_small_change(hf):
    """The tolerance is not so loose that a real change passes: a gradient scaled by 1 + 1e-3 in one block's MLP
    (a loss weight slipped into one branch) is flagged, while HF in float64 vs float32 is noise (the reference)."""
    ours = port_from_hf(hf)

    class Scaled(torch.nn.Module):
        def __init__(self, inner, s):
            super().__init__()
            self.inner, self.s = inner, s

        def forward(self, x):
            y = self.inner(x)
            return self.s * y + (1 - self.s) * y.detach()  # the same values, a gradient scaled by s

    model = ours
    model.transformer.h[0].mlp = Scaled(model.transformer.h[0].mlp, 1.001)
    try:
        r = compare_training(model, hf, **SMALL)
    finally:
        model.transformer.h[0].mlp = model.transformer.h[0].mlp.inner
    assert not r.agree and r.first_diverging_layer == "block 0"
    # float64 HF against float32 HF: the judge's float32 noise budget holds the true difference
    hf64 = random_gpt2(seed=0, vocab_size=1000, bos_token_id=0, eos_token_id=0, **VARIED_PARAMS, **TINY).double()
    x, y = make_batch(2, 16, hf.config.vocab_size, 0)
    grads = {}
    for m in (hf, hf64):
        m.zero_grad()
        F.cross_entropy(m(input_ids=x).logits.flatten(0, 1), y.flatten()).backward()
        grads[m.dtype] = {n: p.grad.clone() for n, p in m.named_parameters()}
        m.zero_grad(set_to_none=True)
    r0 = compare_training(port_from_hf(hf), hf, **SMALL)
    for row in r0.params:
        exact = grads[torch.float64][row.name]
        assert (grads[torch.float32][row.name].double() - exact).abs().max() <= row.tolerance


def test_bf16_autocast_agrees_and_still_finds_a_detach(hf):
    mine = from_hf_state_dict(hf.state_dict(), hf.config)
    r = compare_training(mine, hf, precision="bfloat16-autocast", steps=1, **SMALL)
    assert r.agree, r.verdict
    assert "bfloat16 autocast" in r.verdict and r.precision["hf_own_loss_error"] is not None
    model, _ = apply_training_fault(port_from_hf(hf), "detach@last")
    r = compare_training(model, hf, precision="bfloat16-autocast", **SMALL)
    assert not r.agree and r.first_diverging_layer == "block 1"


@pytest.mark.parametrize("kwargs, message", [
    (dict(steps=-1), "steps must be"),
    (dict(batch=(torch.zeros(2, 3), torch.zeros(2, 3))), "integer token ids"),
    (dict(batch=(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long))), "same shape"),
    (dict(seq_len=1000), "exceeds the model's context"),
    (dict(precision="bfloat16"), "not supported"),
    (dict(optimizer="sgd"), "optimizer must be"),
    (dict(name_map={"nope": "transformer.wte.weight"}), "your model has no parameter 'nope'"),
])
def test_bad_input_is_a_clear_error(hf, kwargs, message):
    mine = from_hf_state_dict(hf.state_dict(), hf.config)
    with pytest.raises(ParityError, match=message):
        compare_training(mine, hf, **{**SMALL, "steps": 1, **kwargs})


def test_plain_function_and_unknown_fault_are_refused(hf):
    with pytest.raises(ParityError, match="nn.Module"):
        compare_training(lambda ids: hf(ids).logits, hf, **SMALL)
    with pytest.raises(FaultError, match="unknown training fault"):
        get_training_fault("nope")


def test_given_batch_and_name_map(hf):
    mine = from_hf_state_dict(hf.state_dict(), hf.config)
    x, y = make_batch(3, 10, hf.config.vocab_size, 5)
    names = {"decoder.norm.weight": "transformer.ln_f.weight"}
    r = compare_training(mine, hf, batch=(x, y), name_map=names)
    assert r.agree and r.batch["batch_size"] == 3 and r.batch["seq_len"] == 10
    assert math.isfinite(r.loss)


@pytest.mark.slow
def test_at_the_124m_shape_an_exact_port_agrees_and_a_detach_is_found():
    from conftest import GPT2_124M

    big = random_gpt2(seed=3, **VARIED_PARAMS, **GPT2_124M)
    r = compare_training(from_hf_state_dict(big.state_dict(), big.config), big, batch_size=1, seq_len=16)
    assert r.agree, r.verdict
    model, _ = apply_training_fault(port_from_hf(big), "detach@5")
    r = compare_training(model, big, batch_size=1, seq_len=16)
    assert r.first_diverging_layer == "block 5" and r.first_diverging_parameter == "transformer.h.5.ln_1.weight"


def test_a_training_report_shows_itself_in_a_notebook_and_its_repr_fits_a_screen(hf):
    m, opt = apply_training_fault(port_from_hf(hf), "detach@last")
    r = compare_training(m, hf, **SMALL, steps=1, optimizer=opt or "adamw", fault="detach@last")
    text = repr(r)
    assert text.startswith("<TrainingReport DIFFER: ") and len(text) < 2000 and len(text.splitlines()) <= 10
    assert f"first diverging layer block {hf.config.n_layer - 1}" in text and "1 step(s)" in text
    page = r._repr_html_()
    assert r.verdict.split(":")[0] in page and page.count('class="plotly-graph-div"') == 2
    assert "<script src=" not in page  # offline: plotly's JS inline (once per kernel), never from a CDN


def test_dropout_on_request_draws_the_same_masks_and_names_a_model_without_them(hf):
    """dropout=True: both sides in train mode with their dropout, drawing from the batch's seed. GPT-2 itself (a
    copy of HF's model) then agrees although dropout is really on (its loss moves); a model without dropout (our GPT)
    is flagged where HF first drops (the embeddings), as a dropout difference: in eval mode it agrees."""
    twin = copy.deepcopy(hf)
    state = torch.get_rng_state()
    on = compare_training(twin, hf, **SMALL, steps=1, dropout=True)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG untouched
    off = compare_training(twin, hf, **SMALL)
    assert on.agree and off.agree and on.loss != off.loss and on.loss == on.hf_loss
    assert any("dropout on" in n for n in on.notes)
    ours = compare_training(port_from_hf(hf), hf, **SMALL, dropout=True)
    assert not ours.agree and ours.first_diverging_layer == "embeddings"
    assert "in eval mode it agrees, so your dropout differs from GPT-2's" in ours.mistakes[0]
    with pytest.raises(ParityError, match="dropout must be True or False"):
        compare_training(twin, hf, **SMALL, dropout="yes")
