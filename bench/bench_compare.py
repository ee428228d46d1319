"""Benchmark: the parity engine and the dashboard round trip against HF generate() alone, in one process.

The seed's case: 5 rows grown to 30 tokens from "Hello, I'm a language model,", top-k 50, seed 42, random init,
ours sharing HF's weights (the dashboard's pair), at the gpt2 124M and gpt2-medium 355M shapes. Alternating runs,
medians; every ratio is against HF generate() alone measured in the same rounds:
  - compare(reference="generate") from cold (HF result cache cleared first)          target <= 1.5x
  - the dashboard round trip from cold: the Generate button's handler from UI values
    to every figure, table and file (demo.handlers)                                   target <= 1.6x
  - our generation alone, as compare runs it (records + captured hidden states),
    and plain, against HF generate()'s speed                                           target >= 1.3x faster
  - the same request again, and one that changes only our side (method nanogpt, a
    bug-lab fault), right after a cold compare: HF's results come from the cache      target <= 0.6x the cold one
Prints our linear kernel (core.kernels.linear_kernel) and whether HF's reference runs beside our generation, and the
machine's load average before and after. Run: `.venv/bin/python bench/bench_compare.py`
(`--shapes 124m` for one shape, `--repeats N`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core import compare, generate, load_tokenizer, port_from_hf  # noqa: E402
from core.parity.reference import REFERENCE_CACHE  # noqa: E402
from core.sampling import Capture  # noqa: E402
from core.structured import random_gpt2  # noqa: E402

PROMPT = "Hello, I'm a language model,"
SEED_CASE = dict(num_return_sequences=5, max_length=30, top_k=50, seed=42)
SHAPES = {"124m": dict(n_layer=12, n_head=12, n_embd=768), "355m": dict(n_layer=24, n_head=16, n_embd=1024)}


def bpe_dir() -> str:
    return os.environ.get("GPT2_BPE_DIR") or str(ROOT.parent / "shared" / "gpt2-bpe")


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def bench_shape(shape: str, tok, repeats: int) -> dict:
    hf = random_gpt2(seed=0, logit_std=None, **SHAPES[shape])
    ours = port_from_hf(hf)
    ids = torch.tensor([tok.encode(PROMPT)])
    pair = (ours, hf)

    def hf_generate():
        torch.manual_seed(42)
        hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, max_length=30,
                    num_return_sequences=5)

    def ours_as_compare_runs_it():
        generate(ours, PROMPT, tokenizer=tok, capture=Capture(), **SEED_CASE)

    def ours_plain():
        generate(ours, PROMPT, tokenizer=tok, record=False, **SEED_CASE)

    def compare_cold():
        REFERENCE_CACHE.clear()
        compare(pair, PROMPT, tokenizer=tok, reference="generate", **SEED_CASE)

    def compare_again():  # right after compare_cold in each round: HF's results are cached
        compare(pair, PROMPT, tokenizer=tok, reference="generate", **SEED_CASE)

    def compare_method():
        compare(pair, PROMPT, tokenizer=tok, reference="generate", **{**SEED_CASE, "method": "nanogpt"})

    def compare_fault():
        compare(pair, PROMPT, tokenizer=tok, reference="generate", fault="qk_swapped", **SEED_CASE)

    from demo import handlers
    from demo.models import LoadedModel, ModelCache

    name = f"bench-{shape}"
    cache = ModelCache(extra=[name], bpe_dir=bpe_dir())
    cache.add(LoadedModel(name, ours, hf, tok))
    run = handlers.make_run_handler(cache, {k: k for k in handlers.OUTPUT_KEYS})

    def dashboard_cold():
        REFERENCE_CACHE.clear()
        for _ in run(PROMPT, name, "hf", "generate", "none", 50, 1.0, 1.0, 42, 5, 22, progress=lambda *a, **k: None):
            pass

    fns = {
        "HF generate() alone": hf_generate,
        "ours alone, as compare runs it": ours_as_compare_runs_it,
        "ours alone, no records": ours_plain,
        "compare, cold": compare_cold,
        "  same request again": compare_again,
        "  our method changed (nanogpt)": compare_method,
        "  a fault injected (qk_swapped)": compare_fault,
        "dashboard round trip, cold": dashboard_cold,
    }
    times = {k: [] for k in fns}
    for f in fns.values():  # warm-up
        f()
    for _ in range(repeats):
        for key, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[key].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    base, cold = med["HF generate() alone"], med["compare, cold"]
    print(f"\n{shape} shape: seed's case (5 x 30 tokens, top-k 50), median of {repeats} alternating runs, "
          f"{torch.get_num_threads()} torch threads")
    for key, m in med.items():
        extra = ""
        if key.startswith("ours"):
            extra = f"   HF generate() / this = {base / m:4.2f}x faster"
        elif key.startswith("  "):
            extra = f"   {m / cold:4.2f}x compare, cold"
        print(f"  {key:<34} {m:6.3f} s   {m / base:5.2f}x HF generate(){extra}")
    res = {
        "compare": cold / base,
        "dashboard": med["dashboard round trip, cold"] / base,
        "ours_speed": base / med["ours alone, as compare runs it"],
        "again": max(med["  same request again"], med["  our method changed (nanogpt)"],
                     med["  a fault injected (qk_swapped)"]) / cold,
    }
    print(f"  targets at {shape}: compare <= 1.5x (measured {res['compare']:.2f}x); dashboard <= 1.6x "
          f"(measured {res['dashboard']:.2f}x); ours >= 1.3x HF's speed (measured {res['ours_speed']:.2f}x); "
          f"a request HF's cache answers <= 0.6x the cold one (measured, worst of three: {res['again']:.2f}x)")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--shapes", default="124m,355m")
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    tok = load_tokenizer(bpe_dir())
    from core.kernels import linear_kernel, thread_invariant
    from core.parity.reference import overlap_reference

    print(f"torch {torch.__version__}; {load()} (before)")
    print(f"our linears: {linear_kernel()}; our bits thread-invariant: {thread_invariant()}; HF's reference beside "
          f"our generation: {overlap_reference(thread_invariant())}")
    for shape in args.shapes.split(","):
        bench_shape(shape.strip(), tok, args.repeats)
    print(f"\n{load()} (after)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
