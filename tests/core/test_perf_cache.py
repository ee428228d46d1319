"""HF's results cached (core/parity/reference.py): a hit gives what recomputing gives, every change to what
determines HF's result misses, the cache stays bounded and consistent under threads. HF's own generate()
(called here) and a fresh teacher-forced pass are the independent references."""

import random
import threading

import pytest
import torch
from conftest import ODD, TINY, WIDE, hf_generate

from core import compare, port_from_hf
from core.faults import apply_fault
from core.parity import reference as refmod
from core.parity.reference import (
    ResultCache,
    hf_reference,
    hf_teacher_forced,
    hf_teacher_forced_cached,
    model_key,
    reference_key,
)
from core.sampling import SamplingSettings
from core.structured import random_gpt2

PROMPT = "Hello, I'm a language model,"
SEED_CASE = dict(num_return_sequences=3, max_length=16, seed=42)


@pytest.fixture()
def pair():
    hf = random_gpt2(seed=21, logit_std=2.5, **ODD)  # a fresh model per test: some tests edit its weights
    return port_from_hf(hf), hf


@pytest.fixture()
def generate_calls(monkeypatch):
    """Counts calls of HF's real generate() (the class's method, which the reference calls)."""
    from transformers import GPT2LMHeadModel

    calls = []
    original = GPT2LMHeadModel.generate

    def counting(self, *args, **kwargs):
        calls.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GPT2LMHeadModel, "generate", counting)
    return calls


def without_timings(report) -> dict:
    d = report.to_dict()
    d.pop("timings")
    d["generation"].pop("seconds")
    return d


# ---------------------------------------------------------------------------------------------------------
# Hits: equal results, HF not run again


def test_same_request_twice_hits_and_is_equal(pair, tokenizer, generate_calls):
    first = compare(pair, PROMPT, tokenizer=tokenizer, **SEED_CASE)
    assert len(generate_calls) == 1
    second = compare(pair, PROMPT, tokenizer=tokenizer, **SEED_CASE)
    assert len(generate_calls) == 1, "the second request reuses HF's generate() result"
    assert second.timings["hf_reference_s"] == 0.0
    assert without_timings(second) == without_timings(first)
    ids = tokenizer.encode(PROMPT)  # and the cached rows are what HF gives when called directly
    assert second.ref_sequences == hf_generate(pair[1], ids, 42, do_sample=True, top_k=50, max_length=16,
                                               num_return_sequences=3)


@pytest.mark.parametrize("ours_only", [dict(method="nanogpt"), dict(fault="erf_gelu"), dict(fault="qk_swapped")],
                         ids=["method", "fault", "fault-diverging"])
def test_a_change_on_our_side_only_reuses_hf(pair, tokenizer, generate_calls, ours_only):
    first = compare(pair, PROMPT, tokenizer=tokenizer, **SEED_CASE)
    second = compare(pair, PROMPT, tokenizer=tokenizer, **SEED_CASE, **ours_only)
    assert len(generate_calls) == 1
    assert second.ref_sequences == first.ref_sequences
    assert [(r.name, r.hf, r.source) for r in second.settings_table] == [(r.name, r.hf, r.source) for r in first.settings_table]
    fresh = compare(pair, PROMPT, tokenizer=tokenizer, **SEED_CASE, **ours_only)  # a hit again: same report
    assert without_timings(fresh) == without_timings(second)


def test_teacher_forced_pass_is_keyed_by_the_streams(pair):
    _, hf = pair
    cache = ResultCache()
    a = torch.tensor([[15496, 11, 314, 1101, 257, 3303], [15496, 11, 314, 1101, 257, 2746]])
    b = a.clone()
    b[1, -1] = 11  # one token of one stream differs
    hidden_a, logits_a = hf_teacher_forced_cached(hf, a, keep=3, cache=cache)
    again_hidden, again_logits = hf_teacher_forced_cached(hf, a.clone(), keep=3, cache=cache)
    assert cache.hits == 1 and again_logits is logits_a and all(x is y for x, y in zip(again_hidden, hidden_a))
    hidden_b, logits_b = hf_teacher_forced_cached(hf, b, keep=3, cache=cache)
    assert cache.misses == 2 and len(cache) == 2
    for streams, (hidden, logits) in ((a, (hidden_a, logits_a)), (b, (hidden_b, logits_b))):
        ref_hidden, ref_logits = hf_teacher_forced(hf, streams, keep=3)  # recomputed, uncached
        assert torch.equal(logits, ref_logits)
        assert all(torch.equal(x, y) for x, y in zip(hidden, ref_hidden))
    assert not torch.equal(logits_a, logits_b)
    hf_teacher_forced_cached(hf, a, keep=4, cache=cache)  # another number of kept logits: another entry
    assert cache.misses == 3


# ---------------------------------------------------------------------------------------------------------
# Misses: every key change


def test_every_request_change_changes_the_key(pair, tokenizer):
    _, hf = pair
    ids = tokenizer.encode(PROMPT)
    base = SamplingSettings(**SEED_CASE)
    k = lambda s=base, reference="generate", prompt_ids=ids, text=PROMPT: reference_key(  # noqa: E731
        hf, tokenizer, text, prompt_ids, s, reference)
    same = [k(), k(SamplingSettings(**SEED_CASE, method="nanogpt"))]  # our method never reaches HF
    assert len(set(same)) == 1
    changed = [
        k(SamplingSettings(**{**SEED_CASE, "seed": 43})),
        k(SamplingSettings(**SEED_CASE, top_k=40)),
        k(SamplingSettings(**SEED_CASE, top_p=0.9)),
        k(SamplingSettings(**SEED_CASE, temperature=0.8)),
        k(SamplingSettings(**{**SEED_CASE, "max_length": 17})),
        k(SamplingSettings(**SEED_CASE, max_new_tokens=5)),
        k(SamplingSettings(**{**SEED_CASE, "num_return_sequences": 2})),
        k(SamplingSettings(**{**SEED_CASE, "num_return_sequences": 1}, method="greedy")),
        k(prompt_ids=ids[:-1]),
        k(reference="pipeline"),
    ]
    assert len(set(changed + same[:1])) == len(changed) + 1
    pipe = k(reference="pipeline")
    assert k(reference="pipeline", text=PROMPT + " ") != pipe  # the pipeline tokenizes the text itself


def test_model_changes_change_the_key(tokenizer):
    hf = random_gpt2(seed=22, **ODD)
    keys = [model_key(hf)]
    assert model_key(hf) == keys[0]  # stable while nothing changes
    with torch.no_grad():
        hf.transformer.h[0].mlp.c_fc.weight[3, 5] += 1.0  # one weight, in place (the version counter moves)
    keys.append(model_key(hf))
    hf.transformer.wte.weight.data.mul_(1.5)  # through .data: no version bump, the value sample sees it
    keys.append(model_key(hf))
    hf.generation_config.repetition_penalty = 1.2
    keys.append(model_key(hf))
    hf.config.eos_token_id = 11
    keys.append(model_key(hf))
    hf.config._attn_implementation = "eager"
    keys.append(model_key(hf))
    twin = random_gpt2(seed=22, **ODD)  # equal weights, another object
    keys.append(model_key(twin))
    assert len(set(keys)) == len(keys)


def test_editing_hf_weights_in_place_gives_hf_new_result(pair, tokenizer, generate_calls):
    ours, hf = pair
    first = compare(pair, PROMPT, tokenizer=tokenizer, **SEED_CASE)
    with torch.no_grad():
        hf.transformer.ln_f.weight.mul_(1.7)  # shared with ours: both sides change
    second = compare(pair, PROMPT, tokenizer=tokenizer, **SEED_CASE)
    assert len(generate_calls) == 2
    ids = tokenizer.encode(PROMPT)
    expected = hf_generate(hf, ids, 42, do_sample=True, top_k=50, max_length=16, num_return_sequences=3)
    assert second.ref_sequences == expected != first.ref_sequences
    assert second.verdict_kind == "identical"  # and the teacher-forced pass was redone on the new weights


def test_a_new_model_at_a_freed_models_id_never_hits(tokenizer):
    cache = ResultCache()
    s = SamplingSettings(**SEED_CASE)
    ids = tokenizer.encode(PROMPT)
    hf = random_gpt2(seed=23, **ODD)
    key = reference_key(hf, tokenizer, PROMPT, ids, s, "generate")
    cache.put(hf, key, "stale")

    class Impostor:  # same key, another object: what a new model reusing the freed id() looks like
        pass

    assert cache.get(Impostor(), key) is None and cache.get(hf, key) == "stale"
    del hf
    import gc

    gc.collect()
    cache.put(random_gpt2(seed=24, **ODD), ("other",), 1)  # a put drops entries whose model was freed
    assert len(cache) == 1


def test_hf_reference_hit_returns_a_private_copy(pair, tokenizer):
    _, hf = pair
    cache = ResultCache()
    s = SamplingSettings(**SEED_CASE)
    ids = tokenizer.encode(PROMPT)
    out, received, user = hf_reference(hf, tokenizer, PROMPT, ids, s, "generate", cache=cache)
    out[0][0] = -1
    received.clear()
    again, received2, _ = hf_reference(hf, tokenizer, PROMPT, ids, s, "generate", cache=cache)
    assert cache.hits == 1 and again[0][0] != -1 and received2["num_return_sequences"] == 3


# ---------------------------------------------------------------------------------------------------------
# Bounded and thread-safe


def test_bounded_by_entries_and_bytes():
    owner = torch.nn.Linear(1, 1)
    cache = ResultCache(max_entries=3, max_bytes=100)
    for i in range(5):
        cache.put(owner, i, i, nbytes=10)
    assert len(cache) == 3 and [cache.get(owner, i) for i in range(5)] == [None, None, 2, 3, 4]
    cache.get(owner, 2)  # 2 becomes the most recently used: 3 goes next
    cache.put(owner, 5, 5, nbytes=10)
    assert cache.get(owner, 3) is None and cache.get(owner, 2) == 2
    cache.put(owner, "big", "big", nbytes=75)  # bytes bound: the least recently used go until it fits
    assert cache.nbytes <= 100 and cache.get(owner, "big") == "big"
    cache.put(owner, "huge", "huge", nbytes=101)  # larger than the whole budget: not kept
    assert cache.get(owner, "huge") is None and cache.nbytes <= 100
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0


def test_process_cache_keeps_its_bounds_and_counts_the_bytes_it_holds():
    """compare()'s own cache (REFERENCE_CACHE) through its real fill path: more distinct teacher-forced passes than
    it has entries for leave it at max_entries with the least recently used gone, and its byte count is the size
    of the tensors it still holds (as the model's shape gives it), so that max_bytes bounds real memory."""
    cache = refmod.REFERENCE_CACHE
    assert 0 < cache.max_entries <= 64 and 0 < cache.max_bytes <= 1 << 30
    hf = random_gpt2(seed=26, **TINY)
    n_extra, T = 3, 3
    streams = [torch.arange(i, i + T)[None] for i in range(cache.max_entries + n_extra)]
    c = hf.config  # per pass: the residual stream (n_layer + 2 tensors of (1, T, C)) and the logits (1, T, V), fp32
    entry_bytes = 4 * T * ((c.n_layer + 2) * c.n_embd + c.vocab_size)
    cache.clear()
    try:
        for x in streams:
            hf_teacher_forced_cached(hf, x)
        assert len(cache) == cache.max_entries and cache.nbytes == cache.max_entries * entry_bytes
        hits, misses = cache.hits, cache.misses
        for x in streams[n_extra:]:  # the most recent ones: all still there
            hf_teacher_forced_cached(hf, x)
        assert cache.hits == hits + cache.max_entries and cache.misses == misses
        hf_teacher_forced_cached(hf, streams[0])  # the least recently used: evicted, computed again
        assert cache.misses == misses + 1 and len(cache) == cache.max_entries
    finally:
        cache.clear()


def test_thread_safe_under_contention():
    owner = torch.nn.Linear(1, 1)
    cache = ResultCache(max_entries=8, max_bytes=64)
    errors = []

    def work(seed):
        rng = random.Random(seed)
        try:
            for _ in range(2000):
                key = rng.randrange(20)
                if rng.random() < 0.5:
                    cache.put(owner, key, ("value", key), nbytes=rng.randrange(1, 9))
                else:
                    got = cache.get(owner, key)
                    assert got is None or got == ("value", key)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert len(cache) <= 8 and 0 <= cache.nbytes <= 64
    assert cache.nbytes == sum(e[2] for e in cache._entries.values())


def test_concurrent_compares_equal_serial_ones(tokenizer):
    """Requests on several threads, sharing one model, its cache and the reference worker: the serial results."""
    hf = random_gpt2(seed=25, logit_std=2.5, **ODD)
    pair = (port_from_hf(hf), hf)
    requests = [dict(seed=s, method=m) for s in (1, 2) for m in ("hf", "nanogpt")] + [dict(seed=1, fault="erf_gelu")]
    serial = [without_timings(compare(pair, PROMPT, tokenizer=tokenizer, num_return_sequences=2, max_length=14, **r))
              for r in requests]
    refmod.REFERENCE_CACHE.clear()
    results = [None] * len(requests)

    def work(i):
        results[i] = without_timings(compare(pair, PROMPT, tokenizer=tokenizer, num_return_sequences=2,
                                             max_length=14, **requests[i]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == serial


# ---------------------------------------------------------------------------------------------------------
# HF's reference beside our generation: each on its share of the cores, nobody else's thread count touched


def _threads_of_a_new_thread() -> int:
    out = {}

    def probe():
        torch.ones(4).sum()  # a thread's first torch op fixes its thread count
        out["n"] = torch.get_num_threads()

    t = threading.Thread(target=probe)
    t.start()
    t.join(timeout=30)
    return out["n"]


def test_sharing_cores_leaves_other_threads_alone():
    from concurrent.futures import Future

    n = torch.get_num_threads()
    running = Future()  # HF still sampling
    with refmod.sharing_cores_with(running) as cores:
        inside = torch.get_num_threads()
        new_inside = _threads_of_a_new_thread()
        cores.poll()  # HF still running: our share stays
        still = torch.get_num_threads()
        running.set_result(None)
        cores.poll()  # HF done: every core is ours again, before the block ends
        after_poll = torch.get_num_threads()
    assert inside == still == refmod._subject_share(n) and after_poll == n
    assert new_inside == n and torch.get_num_threads() == n and _threads_of_a_new_thread() == n
    with refmod.sharing_cores_with(running):  # HF done (or cached): all cores stay ours
        assert torch.get_num_threads() == n


def test_compare_restores_thread_counts(pair, tokenizer, monkeypatch):
    monkeypatch.setattr(refmod, "OVERLAP_REFERENCE", True)
    n = torch.get_num_threads()
    refmod.REFERENCE_CACHE.clear()
    compare(pair, PROMPT, tokenizer=tokenizer, **SEED_CASE)
    assert torch.get_num_threads() == n and _threads_of_a_new_thread() == n
    worker = refmod._pool().submit(torch.get_num_threads).result()
    assert worker == n, "HF's reference runs at the caller's thread count, as the user's own call would"


@pytest.mark.parametrize("width", ["odd", "gpt2-width"])
@pytest.mark.parametrize("overlap", [False, True], ids=["deferred", "overlapped"])
def test_reference_beside_our_generation_gives_the_serial_report(tokenizer, monkeypatch, overlap, width):
    """HF at the full thread count on its worker, ours on a share of the cores: not one bit of the report moves
    (at GPT-2's width MKL's decode products, and SDPA's one-query kernel, change bits with the thread count)."""
    from core import kernels

    shape = ODD if width == "odd" else WIDE
    hf = random_gpt2(seed=21, logit_std=2.5, **shape)
    pair = (port_from_hf(hf), hf)
    monkeypatch.setattr(kernels, "_KERNEL", "onednn")  # thread-invariant on any CPU that has oneDNN
    monkeypatch.setattr(refmod, "OVERLAP_REFERENCE", False)
    refmod.REFERENCE_CACHE.clear()
    case = dict(fault="qk_swapped", **SEED_CASE)
    serial = [without_timings(compare(pair, PROMPT, tokenizer=tokenizer, **c)) for c in (case, SEED_CASE)]
    refmod.REFERENCE_CACHE.clear()
    monkeypatch.setattr(refmod, "OVERLAP_REFERENCE", overlap)
    n = torch.get_num_threads()
    reports = [compare(pair, PROMPT, tokenizer=tokenizer, **c) for c in (case, SEED_CASE)]
    assert [without_timings(r) for r in reports] == serial
    assert reports[0].timings["hf_reference_s"] > 0 and reports[0].timings["overlapped"] == float(overlap and n > 1)
    assert torch.get_num_threads() == n


def test_no_overlap_for_a_subject_whose_bits_follow_its_thread_count(pair, tokenizer, monkeypatch):
    from core import kernels

    monkeypatch.setattr(kernels, "_KERNEL", "aten")  # MKL: its decode products change bits with the thread count
    refmod.REFERENCE_CACHE.clear()
    report = compare(pair, PROMPT, tokenizer=tokenizer, **SEED_CASE)
    assert report.timings["overlapped"] == 0.0 and not refmod.overlap_reference(kernels.thread_invariant())
    monkeypatch.setattr(kernels, "_KERNEL", "onednn")
    assert refmod.overlap_reference(True) == (torch.get_num_threads() > 1)
    ours, hf = pair
    assert kernels.thread_invariant(ours) and not kernels.thread_invariant(apply_fault(ours, "bf16_autocast"))
    assert not kernels.thread_invariant(port_from_hf(hf).to(torch.bfloat16))
    for fault in ("bf16_autocast", "bf16_autocast@1"):  # aten's bf16 kernels run: one after the other
        refmod.REFERENCE_CACHE.clear()  # HF not cached: it would otherwise run beside us
        assert compare(pair, PROMPT, tokenizer=tokenizer, fault=fault, **SEED_CASE).timings["overlapped"] == 0.0
    refmod.REFERENCE_CACHE.clear()
    assert compare(pair, PROMPT, tokenizer=tokenizer, fault="erf_gelu", **SEED_CASE).timings["overlapped"] == float(
        torch.get_num_threads() > 1)
