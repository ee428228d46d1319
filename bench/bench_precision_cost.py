"""Benchmark: what a precision-aware compare costs against a float32 compare, in one process.

The seed's case (5 rows grown to 30 tokens from "Hello, I'm a language model,", top-k 50, seed 42), our GPT on a
random-init HF GPT-2 at the 124M shape. Alternating rounds, HF's result cache cleared before every compare (both
cold); each round's ratio is the precision's compare time over the float32 compare's in the same round, and the
median ratio is printed (target <= 1.5x). Below float32 a compare also runs HF in that precision on the same
streams (its own error) and our model in float32 (the re-check). Run: `.venv/bin/python bench/bench_precision_cost.py`
(`--repeats N`, `--precisions bfloat16 ...`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core import compare, load_tokenizer, port_from_hf  # noqa: E402
from core.parity.reference import REFERENCE_CACHE  # noqa: E402
from core.structured import random_gpt2  # noqa: E402

PROMPT = "Hello, I'm a language model,"
SEED_CASE = dict(num_return_sequences=5, max_length=30, top_k=50, seed=42)
SHAPE = dict(n_layer=12, n_head=12, n_embd=768)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--precisions", nargs="+", default=["bfloat16", "bfloat16-autocast", "float16-autocast"])
    args = ap.parse_args()
    tok = load_tokenizer(os.environ.get("GPT2_BPE_DIR") or str(ROOT.parent / "shared" / "gpt2-bpe"))
    hf = random_gpt2(seed=0, **SHAPE)
    pair = (port_from_hf(hf), hf)

    def run(precision: str) -> tuple[float, str]:
        REFERENCE_CACHE.clear()
        t = time.perf_counter()
        r = compare(pair, PROMPT, tokenizer=tok, precision=precision, **SEED_CASE)
        return time.perf_counter() - t, r.verdict

    print("load average before:", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    run("float32")  # warm-up: kernels, the oneDNN check, the cast copies
    for p in args.precisions:
        run(p)
    ratios: dict[str, list[float]] = {p: [] for p in args.precisions}
    base: list[float] = []
    verdicts = {}
    for _ in range(args.repeats):
        t32, _ = run("float32")
        base.append(t32)
        for p in args.precisions:
            t, verdicts[p] = run(p)
            ratios[p].append(t / t32)
    print(f"float32 compare: median {statistics.median(base):.2f} s over {args.repeats} rounds")
    print("| precision | median ratio to the float32 compare (per round) | verdict |")
    print("|---|---|---|")
    for p in args.precisions:
        each = ", ".join(f"{x:.2f}" for x in ratios[p])
        print(f"| {p} | **{statistics.median(ratios[p]):.2f}x** ({each}) | {verdicts[p][:60]} |")
    print("load average after:", " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
