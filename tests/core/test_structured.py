"""The parity engine on GPT-2s with real GPT-2's massive activations (core.structured): the exact port is never
flagged, and every fault, including one confined to a single block, is localised where it is. HF is the
reference throughout: the structured models are honest HF models whose weights alone were changed."""

import pytest
import torch
from conftest import hf_generate

from core import compare, port_from_hf
from core.faults import FAULTS, FaultError, apply_fault
from core.parity import teacher_forced
from core.structured import VARIANTS, MassiveSpec, add_massive_activations, massive_channels, structured_gpt2

SHAPE = dict(n_layer=4, n_head=4, n_embd=64, n_positions=128)
PROMPTS = ["Hello, I'm a language model,", "The quick brown fox"]
BLOCK_FAULTS = ("erf_gelu", "ln_eps_1e-6", "qk_swapped", "heads_swapped", "bf16_autocast")


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request):
    return request.param


@pytest.fixture(scope="module")
def pairs():
    cache = {}

    def get(variant, seed=0):
        if (variant, seed) not in cache:
            hf = structured_gpt2(variant, seed=seed, **SHAPE)
            cache[variant, seed] = port_from_hf(hf), hf
        return cache[variant, seed]

    return get


# ---------------------------------------------------------------------------------------------------------
# The recipe gives the structure it documents (measured on HF's own forward)


def test_massive_activations_at_position_0_only(pairs, variant, tokenizer):
    spec = VARIANTS[variant]
    _, hf = pairs(variant)
    ids = torch.tensor([tokenizer.encode(PROMPTS[0])])
    with torch.no_grad():
        hs = hf(ids, output_hidden_states=True).hidden_states[:-1]  # embeddings, blocks 0 .. n-2
    onset = 0 if spec.onset == "embeddings" else spec.onset + 1  # hidden_states[k + 1] is block k's output
    chans = massive_channels(SHAPE["n_embd"], len(spec.magnitudes))
    for i, h in enumerate(hs):
        rest = h[0, 1:].abs().max().item()
        assert rest < 5, (i, rest)  # other positions keep ordinary magnitudes
        if i < onset:
            assert h[0, 0, chans].abs().max().item() < 5, i
        else:  # each massive channel carries its magnitude (sign included) at position 0, within 5%
            torch.testing.assert_close(h[0, 0, chans], torch.tensor(spec.magnitudes), rtol=0.05, atol=0)
    t = hf.transformer
    for ln in [t.ln_f] + [b.ln_1 for b in t.h] + [b.ln_2 for b in t.h]:
        assert ln.weight[chans].abs().max().item() < 2e-3  # the rest of the model ignores them


def test_structured_logits_are_peaked_like_gpt2(pairs, tokenizer):
    """Mean next-token entropy of a few nats (GPT-2 small's loss on web text is ~3.1 nats), not the ~10.8 of a
    uniform distribution over 50,257 tokens."""
    _, hf = pairs("emb-1x3000")
    ids = torch.randint(0, 50257, (4, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logp = torch.log_softmax(hf(ids).logits[:, 1:], dim=-1)
    entropy = -(logp.exp() * logp).sum(-1).mean().item()
    assert 1.5 < entropy < 4.5


def test_recipe_rejects_bad_specs():
    hf = structured_gpt2("emb-1x3000", **SHAPE)
    with pytest.raises(ValueError, match="onset"):
        add_massive_activations(hf, MassiveSpec(7, (1000.0,)))
    with pytest.raises(ValueError, match="channels"):
        add_massive_activations(hf, MassiveSpec("embeddings", ()))


def test_recipe_keeps_the_global_rng():
    before = torch.get_rng_state()
    structured_gpt2("block1-1x1000", seed=3, **SHAPE)
    assert torch.equal(torch.get_rng_state(), before)


# ---------------------------------------------------------------------------------------------------------
# The exact port: never flagged (seeds x prompts x both references, each variant)


@pytest.mark.parametrize("seed, prompt, reference", [(0, 0, "generate"), (1, 1, "generate"), (0, 1, "logits"),
                                                     (1, 0, "logits")])
def test_exact_port_identical(pairs, variant, tokenizer, seed, prompt, reference):
    ours, hf = pairs(variant, seed)
    r = compare((ours, hf), PROMPTS[prompt], tokenizer=tokenizer, reference=reference, num_return_sequences=2,
                max_length=20, seed=seed)
    assert r.agree is True and r.verdict_kind == ("identical" if reference == "generate" else "logits_agree"), \
        r.verdict
    assert r.first_diverging_layer is None
    for layer in r.layers:
        assert not layer.exceeds and layer.ratio <= 1 and layer.worst_abs_diff <= layer.tolerance, layer
    assert not any(d.exceeds for st in r.steps for d in st if d is not None)
    if reference == "generate":  # HF's rows, as anyone gets them by calling HF
        ids = tokenizer.encode(PROMPTS[prompt])
        assert r.ref_sequences == r.generation.sequences == hf_generate(
            hf, ids, seed, do_sample=True, top_k=50, max_length=20, num_return_sequences=2)


# ---------------------------------------------------------------------------------------------------------
# Faults: flagged first where they are


@pytest.fixture(scope="module")
def streams():
    return torch.randint(0, 50257, (3, 40), generator=torch.Generator().manual_seed(7))


def first_flagged(ours, hf, seqs, fault):
    layers = teacher_forced(apply_fault(ours, fault), hf, seqs)[0]
    return next((l.name for l in layers if l.exceeds), None), layers


def test_every_fault_flagged_at_its_layer(pairs, variant, streams):
    """Every listed fault, teacher-forced over 3 x 40 random tokens."""
    ours, hf = pairs(variant)
    for name in FAULTS:
        first, layers = first_flagged(ours, hf, streams, name)
        assert first == FAULTS[name].expected_layer(SHAPE["n_layer"]), (name, [round(l.ratio, 2) for l in layers])


@pytest.mark.parametrize("base", BLOCK_FAULTS)
def test_fault_in_one_block_is_localised_to_that_block(pairs, variant, streams, base):
    """The mistake in block k only, for every k (the last included): nothing before block k is flagged, block k
    is. (With one global scale per layer, position 0's massive values hid most of these until ln_f.)"""
    ours, hf = pairs(variant)
    for k in range(SHAPE["n_layer"]):
        first, layers = first_flagged(ours, hf, streams, f"{base}@{k}")
        assert first == f"block {k}", (k, [round(l.ratio, 2) for l in layers])


@pytest.mark.parametrize("name", ["erf_gelu", "qk_swapped@2", "heads_swapped@last"])
def test_faults_through_compare(pairs, tokenizer, name):
    """The same through compare() (our sampler's captured activations), on the hardest variant for block faults."""
    r = compare(pairs("emb-3ch"), PROMPTS[0], tokenizer=tokenizer, reference="logits", fault=name,
                num_return_sequences=2, max_length=20, seed=0)
    expected = FAULTS[name].expected_layer(SHAPE["n_layer"])
    assert r.agree is False and r.verdict_kind == "model"
    assert r.first_diverging_layer == expected, [(l.name, round(l.ratio, 2)) for l in r.layers]
    first = [l.name for l in r.layers].index(expected)
    assert r.layers[first].worst_abs_diff > r.layers[first].tolerance


def test_last_block_alias(pairs, tokenizer):
    r = compare(pairs("block2-2ch"), PROMPTS[1], tokenizer=tokenizer, reference="logits", fault="erf_gelu@last",
                num_return_sequences=2, max_length=20)
    assert r.first_diverging_layer == f"block {SHAPE['n_layer'] - 1}" == FAULTS["erf_gelu@last"].expected_layer(4)


def test_fault_block_out_of_range(pairs, tokenizer):
    with pytest.raises(FaultError, match="blocks 0 to 3"):
        apply_fault(pairs("emb-1x3000")[0], "erf_gelu@4")
    with pytest.raises(FaultError, match="blocks 0 to 3"):
        compare(pairs("emb-1x3000"), PROMPTS[0], tokenizer=tokenizer, reference="logits", fault="erf_gelu@9")


# ---------------------------------------------------------------------------------------------------------
# The 124M shape


@pytest.mark.slow
def test_gpt2_small_shape_structured(tokenizer):
    shape = dict(n_layer=12, n_head=12, n_embd=768, n_positions=1024)
    hf = structured_gpt2("emb-3ch", seed=0, **shape)
    pair = port_from_hf(hf), hf
    r = compare(pair, PROMPTS[0], tokenizer=tokenizer, num_return_sequences=2, max_length=30, seed=1)
    assert r.agree is True and r.verdict_kind == "identical"
    for name, expected in (("erf_gelu@5", "block 5"), ("erf_gelu@last", "block 11"), ("ln_eps_1e-6", "block 0"),
                           ("qk_swapped@0", "block 0")):
        r = compare(pair, PROMPTS[0], tokenizer=tokenizer, reference="logits", fault=name, num_return_sequences=2,
                    max_length=30, seed=1)
        assert r.first_diverging_layer == expected, (name, [(l.name, round(l.ratio, 2)) for l in r.layers])


def test_per_layer_figure_shows_the_deciding_place(pairs, tokenizer):
    """The dashboard's per-layer bars are max|Δ| at the place that decides, the line the tolerance at that same
    place: a bar is above the line exactly where the layer is flagged."""
    from demo import figures

    r = compare(pairs("block1-1x1000"), PROMPTS[0], tokenizer=tokenizer, reference="logits", fault="erf_gelu@2",
                num_return_sequences=2, max_length=20, seed=0).to_dict()
    fig = figures.layers_figure(r)
    line = next(t for t in fig.data if t.name == "tolerance there")  # not the exact-zero markers on the floor
    tol = dict(zip(line.x, line.y))
    bars = {x: y for t in fig.data if t.type == "bar" for x, y in zip(t.x, t.y)}
    for layer in r["layers"]:
        assert tol[layer["name"]] == layer["tolerance"]
        bar = bars[layer["name"]]  # None: an exact 0, drawn as a marker on the axis floor instead
        assert (bar is None) == (layer["worst_abs_diff"] == 0), layer
        assert (bar is not None and bar > tol[layer["name"]]) == layer["exceeds"], layer
    assert [l["name"] for l in r["layers"] if l["exceeds"]][0] == "block 2"
