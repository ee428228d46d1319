"""Benchmark: the parity engine and the dashboard round trip against HF generate() alone, in one process.

The seed's case: 5 rows grown to 30 tokens from "Hello, I'm a language model,", top-k 50, seed 42, on the
gpt2-124M shape (random init) with ours sharing HF's weights (the dashboard's pair). Alternating runs; prints
the median time of each and its ratio to HF generate() alone:
  - compare(reference="generate"): our generation + HF teacher-forced + ours teacher-forced + HF generate()
    (target <= 2.0x), with the part that is ours (everything but HF generate) on its own (target <= 1.0x);
  - the dashboard: the Generate button's handler from UI values to every figure, table and file (target <= 2.0x).
Run: `.venv/bin/python bench/bench_compare.py`.
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

from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from core import compare, load_tokenizer, port_from_hf  # noqa: E402

PROMPT = "Hello, I'm a language model,"
SEED_CASE = dict(num_return_sequences=5, max_length=30, top_k=50, seed=42)


def bpe_dir() -> str:
    return os.environ.get("GPT2_BPE_DIR") or str(ROOT.parent / "shared" / "gpt2-bpe")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    tok = load_tokenizer(bpe_dir())
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config()).eval()
    ours = port_from_hf(hf)
    ids = torch.tensor([tok.encode(PROMPT)])

    def hf_generate():
        torch.manual_seed(42)
        hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, max_length=30,
                    num_return_sequences=5)

    report = {}

    def full_compare():
        report["r"] = compare((ours, hf), PROMPT, tokenizer=tok, reference="generate", **SEED_CASE)

    from demo import handlers  # noqa: E402
    from demo.models import ModelCache, LoadedModel  # noqa: E402

    cache = ModelCache(extra=["bench-124m"], bpe_dir=bpe_dir())
    cache._models["bench-124m"] = LoadedModel("bench-124m", ours, hf, tok, False)
    comps = {k: k for k in handlers.OUTPUT_KEYS}
    run = handlers.make_run_handler(cache, comps)

    def dashboard():
        for _ in run(PROMPT, "bench-124m", "hf", "generate", "none", 50, 1.0, 1.0, 42, 5, 22,
                     progress=lambda *a, **k: None):
            pass

    fns = {"HF generate() alone": hf_generate, "compare (all of it)": full_compare, "dashboard round trip": dashboard}
    times = {k: [] for k in fns}
    ours_part = []
    for f in fns.values():  # warm-up
        f()
    for _ in range(args.repeats):
        for name, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
            if name == "compare (all of it)":
                tm = report["r"].timings
                ours_part.append(tm["total_s"] - tm["hf_reference_s"])
    base = statistics.median(times["HF generate() alone"])
    print(f"seed's case (5 x 30 tokens, gpt2-124M shape, top-k 50), median of {args.repeats} alternating runs")
    for name, ts in times.items():
        print(f"{name:<28} {statistics.median(ts):6.3f} s   {statistics.median(ts) / base:5.2f}x HF generate()")
    part = statistics.median(ours_part)
    print(f"{'  of which ours + both teacher-forced':<28} {part:6.3f} s   {part / base:5.2f}x HF generate()")
    print(f"targets: compare <= 2.0x (measured {statistics.median(times['compare (all of it)']) / base:.2f}x), "
          f"ours + teacher-forced <= 1.0x (measured {part / base:.2f}x), dashboard <= 2.0x "
          f"(measured {statistics.median(times['dashboard round trip']) / base:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
