"""Benchmark: a foreign model without a KV cache (examples/my_gpt2.py) against HF generate() alone, in one process.

The seed's case: 5 rows grown to 30 tokens from "Hello, I'm a language model,", top-k 50, seed 42, on the
gpt2-124M shape (random init). The foreign model recomputes the whole sequence at every step, as the seed's loop
does. Alternating runs; prints the median time of each and its ratio to HF generate() alone:
  - the foreign model's own generation (no cache, records per step, residual stream hooked);
  - compare(your_model, hf_model=hf, reference="generate"): that + HF teacher-forced + HF generate();
  - with --with-ours, compare() of our GPT (KV cache) on the same case, for reference.
Run: `.venv/bin/python bench/bench_foreign.py [--repeats 3] [--with-ours]`.
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

from core import SamplingSettings, compare, load_tokenizer, port_from_hf  # noqa: E402
from core.parity import run_foreign  # noqa: E402
from core.structured import random_gpt2  # noqa: E402
from examples.my_gpt2 import from_hf_state_dict  # noqa: E402

PROMPT = "Hello, I'm a language model,"
SEED_CASE = dict(num_return_sequences=5, max_length=30, top_k=50, seed=42)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--with-ours", action="store_true", help="also time compare() of our GPT (KV cache)")
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    tok = load_tokenizer(os.environ.get("GPT2_BPE_DIR") or str(ROOT.parent / "shared" / "gpt2-bpe"))
    hf = random_gpt2(seed=0, logit_std=None)  # GPT-2's 124M shape
    mine = from_hf_state_dict(hf.state_dict(), hf.config)
    ours = port_from_hf(hf)
    ids = torch.tensor([tok.encode(PROMPT)])
    s = SamplingSettings(**SEED_CASE)

    def hf_generate():
        torch.manual_seed(42)
        hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, max_length=30,
                    num_return_sequences=5)

    out = {}
    cases = {
        "HF generate() alone": hf_generate,
        "your model's generation (no cache)": lambda: run_foreign(mine, hf, PROMPT, s, tokenizer=tok),
        "compare(your model)": lambda: out.__setitem__("yours", compare(mine, PROMPT, hf_model=hf, tokenizer=tok,
                                                                         **SEED_CASE)),
    }
    if args.with_ours:
        cases["compare(our GPT, KV cache)"] = lambda: out.__setitem__("ours", compare((ours, hf), PROMPT, tokenizer=tok,
                                                                                       **SEED_CASE))
    print(f"load before: {os.getloadavg()}", flush=True)
    for name, fn in cases.items():  # warm-up
        t = time.perf_counter()
        fn()
        print(f"  warm-up {name}: {time.perf_counter() - t:.2f} s", flush=True)
    times = {name: [] for name in cases}
    for i in range(args.repeats):
        for name, fn in cases.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
            print(f"  run {i} {name}: {times[name][-1]:.2f} s", flush=True)
    base = statistics.median(times["HF generate() alone"])
    print(f"seed's case, gpt2-124M shape (random init), {args.repeats} alternating runs, torch threads "
          f"{torch.get_num_threads()}; load: {os.getloadavg()[0]:.2f}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:<38} {med:7.3f} s   {med / base:5.2f}x HF generate()")
    print(f"  verdict (yours): {out['yours'].verdict}" + (f"; ours: {out['ours'].verdict}" if "ours" in out else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
