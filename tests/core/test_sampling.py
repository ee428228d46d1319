"""The sampler against HuggingFace generate() (token for token) and against a transcription of the seed's loop."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import ODD, hf_generate

from core import SettingsError, generate, port_from_hf, stream
from core.model import ContextLengthError
from core.sampling import logits_to_probs, process_logits_hf, sample
from core.structured import random_gpt2

PROMPT = "Hello, I'm a language model,"


@pytest.fixture(scope="module")
def pair():
    hf = random_gpt2(seed=11, logit_std=2.5, **ODD)
    return port_from_hf(hf), hf


SETTINGS = [
    pytest.param(dict(), id="top_k-50-default"),
    pytest.param(dict(top_p=0.9), id="top_p-0.9(+default top_k)"),
    pytest.param(dict(top_p=0.9, top_k=None), id="top_p-0.9-only"),
    pytest.param(dict(temperature=0.7, top_k=50), id="temp-0.7-top_k-50"),
    pytest.param(dict(top_k=1), id="top_k-1"),
    pytest.param(dict(temperature=1.3, top_k=None), id="temp-1.3-full-vocab"),
]


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("n", [1, 5])
@pytest.mark.parametrize("seed", [0, 42, 1234])
def test_hf_method_equals_hf_generate(pair, tokenizer, settings, n, seed):
    ours, hf = pair
    ids = tokenizer.encode(PROMPT)
    gen = generate(ours, PROMPT, tokenizer=tokenizer, method="hf", max_new_tokens=24, num_return_sequences=n,
                   seed=seed, **settings)
    ref = hf_generate(hf, ids, seed, do_sample=True, max_new_tokens=24, num_return_sequences=n, **settings)
    assert gen.sequences == ref


def test_greedy_equals_hf_greedy(pair, tokenizer):
    ours, hf = pair
    ids = tokenizer.encode(PROMPT)
    ref = hf_generate(hf, ids, 0, do_sample=False, max_new_tokens=30)
    assert generate(ours, ids, method="greedy", max_new_tokens=30).sequences == ref
    assert generate(ours, ids, temperature=0, max_new_tokens=30).sequences == ref  # temperature 0 means greedy
    assert generate(ours, ids, do_sample=False, max_new_tokens=30).sequences == ref


def test_max_length_counts_the_prompt_like_hf(pair, tokenizer):
    ours, hf = pair
    ids = tokenizer.encode(PROMPT)
    gen = generate(ours, ids, max_length=30, num_return_sequences=5, seed=42)
    assert all(len(row) == 30 for row in gen.sequences)
    assert gen.sequences == hf_generate(hf, ids, 42, do_sample=True, max_length=30, num_return_sequences=5)


def test_rows_that_hit_eos_early_match_hf(tokenizer):
    """Make eos likely: pick a token the model samples often and declare it eos on both sides."""
    hf = random_gpt2(seed=12, logit_std=4.0, **ODD)
    ids = tokenizer.encode(PROMPT)
    probe = torch.tensor(hf_generate(hf, ids, 3, do_sample=True, max_new_tokens=20, num_return_sequences=5))
    new = probe[:, len(ids):]
    counts = torch.bincount(new.flatten(), minlength=hf.config.vocab_size)
    eos = int(counts.argmax())
    hf.config.eos_token_id = eos
    hf.generation_config.eos_token_id = eos
    ours = port_from_hf(hf)
    assert ours.config.eos_token_id == eos
    ref = hf_generate(hf, ids, 3, do_sample=True, max_new_tokens=20, num_return_sequences=5)
    gen = generate(ours, ids, method="hf", max_new_tokens=20, num_return_sequences=5, seed=3)
    assert gen.sequences == ref
    lengths = [len(r) for r in gen.new_token_ids]
    assert any(gen.finished_by_eos) and min(lengths) < 20, "the test needs at least one row to stop early"
    for r, row in enumerate(gen.new_token_ids):
        if gen.finished_by_eos[r]:
            assert row[-1] == eos and eos not in row[:-1]
            assert all(t == eos for t in gen.sequences[r][len(ids) + len(row):])  # padded with eos, as HF


def seed_loop(model, ids, num_return_sequences, max_length, seed, top_k=50):
    """An independent transcription of the build-nanogpt sampling section (no KV cache, full recompute)."""
    tokens = torch.tensor(ids, dtype=torch.long).unsqueeze(0).repeat(num_return_sequences, 1)
    xgen = tokens
    sample_rng = torch.Generator(device="cpu")
    sample_rng.manual_seed(seed)
    while xgen.size(1) < max_length:
        with torch.no_grad():
            logits = model(xgen).logits  # (B, T, vocab_size)
            logits = logits[:, -1, :]  # (B, vocab_size)
            probs = F.softmax(logits, dim=-1)
            topk_probs, topk_indices = torch.topk(probs, top_k, dim=-1)
            ix = torch.multinomial(topk_probs, 1, generator=sample_rng)  # (B, 1)
            xcol = torch.gather(topk_indices, -1, ix)  # (B, 1)
            xgen = torch.cat((xgen, xcol), dim=1)
    return xgen.tolist()


@pytest.mark.parametrize("seed", [42, 7])
def test_nanogpt_method_equals_the_seed_loop(pair, tokenizer, seed):
    ours, hf = pair
    ids = tokenizer.encode(PROMPT)
    ref = seed_loop(hf, ids, 5, 30, seed)
    gen = generate(ours, PROMPT, tokenizer=tokenizer, method="nanogpt", max_length=30, num_return_sequences=5, seed=seed)
    assert gen.sequences == ref
    assert gen.texts == [tokenizer.decode(row) for row in ref]


def test_nanogpt_and_hf_methods_draw_differently(pair, tokenizer):
    """The sampling order: at one seed the two methods sample one distribution (at step 0, where every row sees
    the prompt alone, HF's top 50 of its softmax in float64) but spend the random numbers differently (the seed's
    loop: one draw over the 50 sorted probabilities; HF: one over all 50257 ids in id order), so their tokens
    differ from the first step on. Each method's rows are its own reference's: the seed's loop written out by
    hand, and HF's generate()."""
    ours, hf = pair
    ids = tokenizer.encode(PROMPT)
    a = generate(ours, PROMPT, tokenizer=tokenizer, method="nanogpt", num_return_sequences=5, seed=42)
    b = generate(ours, PROMPT, tokenizer=tokenizer, method="hf", num_return_sequences=5, seed=42)
    assert a.sequences == seed_loop(hf, ids, 5, 30, 42)
    assert b.sequences == hf_generate(hf, ids, 42, do_sample=True, top_k=50, max_length=30, num_return_sequences=5)
    with torch.no_grad():
        p = F.softmax(hf(torch.tensor([ids])).logits[0, -1].double(), dim=-1)
    top_p, top_i = torch.topk(p, 50)
    expected = dict(zip(top_i.tolist(), (top_p / top_p.sum()).tolist()))
    for gen in (a, b):
        for rec in gen.records[0]:
            assert rec.n_kept == 50
            assert dict(zip(rec.top_ids, rec.top_sample_probs)) == pytest.approx(expected, abs=1e-5)
    first_a, first_b = [row[len(ids)] for row in a.sequences], [row[len(ids)] for row in b.sequences]
    assert first_a != first_b


def test_kv_cached_generation_equals_full_recompute(pair, tokenizer):
    ours, _ = pair
    ids = tokenizer.encode(PROMPT)
    gen = generate(ours, ids, method="hf", max_new_tokens=20, num_return_sequences=3, seed=5, top_p=0.95)
    g = torch.Generator().manual_seed(5)
    x = torch.tensor([ids]).repeat_interleave(3, 0)
    with torch.no_grad():
        for _ in range(20):
            logits = ours(x)[:, -1].float()
            x = torch.cat([x, sample(logits_to_probs(process_logits_hf(logits, 1.0, 50, 0.95)), g)[:, None]], 1)
    assert gen.sequences == x.tolist()


def test_same_seed_same_output_and_global_rng_untouched(pair, tokenizer):
    ours, _ = pair
    torch.manual_seed(999)
    state = torch.get_rng_state()
    a = generate(ours, PROMPT, tokenizer=tokenizer, num_return_sequences=5, seed=1)
    b = generate(ours, PROMPT, tokenizer=tokenizer, num_return_sequences=5, seed=1)
    c = generate(ours, PROMPT, tokenizer=tokenizer, num_return_sequences=5, seed=2)
    assert torch.equal(torch.get_rng_state(), state)
    assert a.sequences == b.sequences and a.texts == b.texts
    assert a.sequences != c.sequences


def test_stream_yields_the_same_tokens_step_by_step(pair, tokenizer):
    ours, _ = pair
    gen = generate(ours, PROMPT, tokenizer=tokenizer, num_return_sequences=2, seed=8, max_new_tokens=12)
    events = list(stream(ours, PROMPT, tokenizer=tokenizer, num_return_sequences=2, seed=8, max_new_tokens=12))
    assert [ev.step for ev in events] == list(range(12))
    n_prompt = len(gen.prompt_ids)
    assert [[ev.tokens[r] for ev in events] for r in range(2)] == [row[n_prompt:] for row in gen.sequences]


@pytest.mark.parametrize("settings", [dict(), dict(top_p=0.8, top_k=None), dict(temperature=0.6), dict(method="nanogpt"),
                                      dict(method="greedy", num_return_sequences=1)])
def test_records_are_consistent(pair, tokenizer, settings):
    ours, _ = pair
    kwargs = dict(num_return_sequences=3, seed=4, max_new_tokens=15) | settings
    gen = generate(ours, PROMPT, tokenizer=tokenizer, **kwargs)
    assert len(gen.records) == 15
    json.loads(json.dumps(gen.to_dict()))  # plain data all the way down
    for step in gen.records:
        for rec in step:
            assert len(rec.top_ids) == 50 and len(rec.top_probs) == 50
            assert sum(rec.top_probs) <= 1 + 1e-5 and sum(rec.top_sample_probs) <= 1 + 1e-5
            assert rec.top_probs == sorted(rec.top_probs, reverse=True)
            assert rec.prob > 0, "the chosen token must be one the filters kept"
            assert rec.token_id == gen.sequences[rec.row][len(gen.prompt_ids) + rec.step]
            assert rec.token == tokenizer.display(rec.token_id)
            if rec.token_id in rec.top_ids:
                i = rec.top_ids.index(rec.token_id)
                assert rec.rank == i + 1 or rec.top_logits[rec.rank - 1] == rec.top_logits[i]  # ties share a rank
                assert rec.top_kept[i] and math.isclose(rec.top_probs[i], rec.raw_prob, rel_tol=1e-5)
            assert 0 <= rec.entropy <= rec.raw_entropy + 1e-4 or settings.get("temperature", 1) > 1
            assert rec.n_kept == sum(rec.top_kept) or rec.n_kept > 50
            if settings.get("method") == "greedy":
                assert rec.rank == 1 and rec.n_kept == 1
            elif settings.get("top_k", 50) == 50 and not settings.get("top_p"):
                assert rec.n_kept >= 50 and all(rec.top_kept)


def test_records_off_for_speed(pair, tokenizer):
    ours, _ = pair
    gen = generate(ours, PROMPT, tokenizer=tokenizer, record=False, seed=3)
    assert gen.records == [[] for _ in gen.records]
    assert gen.sequences == generate(ours, PROMPT, tokenizer=tokenizer, seed=3).sequences


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(max_new_tokens=-3), "max_new_tokens"),
        (dict(max_new_tokens=2.5), "max_new_tokens"),
        (dict(top_k=-1), "top_k"),
        (dict(top_k=50258), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(temperature=-0.1), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(num_return_sequences=0), "num_return_sequences"),
        (dict(seed=-1), "seed"),
        (dict(seed=2**64), "seed"),
        (dict(seed="42"), "seed"),
        (dict(method="beam"), "method"),
        (dict(method="nanogpt", top_p=0.9), "top_p"),
        (dict(method="greedy", num_return_sequences=5), "num_return_sequences"),
        (dict(max_length=5), "max_length"),
        (dict(colour="red"), "unknown setting"),
    ],
)
def test_bad_settings_are_refused_before_any_work(pair, tokenizer, kwargs, match):
    ours, _ = pair
    with pytest.raises(SettingsError, match=match):
        generate(ours, PROMPT, tokenizer=tokenizer, **kwargs)


def test_bad_prompts_are_refused(pair, tokenizer):
    ours, _ = pair
    for prompt in ["", "   \n\t"]:
        with pytest.raises(SettingsError, match="empty"):
            generate(ours, prompt, tokenizer=tokenizer)
    with pytest.raises(SettingsError, match="out of range"):
        generate(ours, [1, 2, 50257])
    with pytest.raises(SettingsError, match="tokenizer"):
        generate(ours, PROMPT)
    n = ours.config.n_positions
    with pytest.raises(ContextLengthError, match=f"n_positions={n}"):
        generate(ours, [1] * (n - 5), max_new_tokens=10)


@pytest.mark.parametrize(
    "prompt,match",
    [
        ("a\x00b", "NUL"),
        ("ring the bell\x07", "control characters"),
        ("half a pair \ud83d", "surrogate"),
        ("x" * 1_000_000, "characters"),
        ("<|endoftext|>", "only <|endoftext|>"),
        (" <|endoftext|>\n", "only <|endoftext|>"),
        ("word " * 1100, "longer than the model's context"),
        (12345, "text or a list of token ids"),
    ],
)
def test_bad_prompts_are_refused_with_a_specific_message(pair, tokenizer, prompt, match):
    from core import ParityLabError, compare

    ours, hf = pair
    with pytest.raises(ParityLabError, match=match):
        generate(ours, prompt, tokenizer=tokenizer)
    with pytest.raises(ParityLabError, match=match):
        compare((ours, hf), prompt, tokenizer=tokenizer)


def test_tabs_and_newlines_are_fine_in_prompts(pair, tokenizer):
    ours, _ = pair
    gen = generate(ours, "def f(x):\n\treturn x\r\n", tokenizer=tokenizer, max_new_tokens=2)
    assert gen.prompt_ids == tokenizer.encode("def f(x):\n\treturn x\r\n")
