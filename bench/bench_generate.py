"""Benchmark: our generate() vs HF generate() in one process, alternating runs, on the gpt2-124M shape.

Prints tok/s for both and the ratio (ours / HF) for B=1 and B=5 in fp32 (ours as load_pretrained gives it,
and ours sharing HF's weights as in the dashboard), and our bf16 path against HF fp32. The parity engine's
and the dashboard's overhead are in bench/bench_compare.py.
Random-init weights: speed does not depend on the values. Run: `.venv/bin/python bench/bench_generate.py`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import GPT2LMHeadModel  # noqa: E402

from core import generate, load_pretrained, port_from_hf  # noqa: E402
from core.structured import random_gpt2  # noqa: E402

PROMPT_IDS = [15496, 11, 314, 1101, 257, 3303, 2746, 11]  # "Hello, I'm a language model,"


def make_124m() -> GPT2LMHeadModel:
    return random_gpt2(seed=0, logit_std=None)


def time_hf(hf, B: int, n_new: int, seed: int = 42) -> float:
    x = torch.tensor([PROMPT_IDS])
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    out = hf.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=True, top_k=50,
                      max_new_tokens=n_new, min_new_tokens=n_new, num_return_sequences=B)
    dt = time.perf_counter() - t0
    assert out.shape[1] == len(PROMPT_IDS) + n_new
    return dt


def time_ours(model, B: int, n_new: int, seed: int = 42, record: bool = True) -> float:
    t0 = time.perf_counter()
    gen = generate(model, PROMPT_IDS, method="hf", top_k=50, max_new_tokens=n_new, num_return_sequences=B,
                   seed=seed, record=record)
    dt = time.perf_counter() - t0
    assert len(gen.sequences[0]) <= len(PROMPT_IDS) + n_new
    return dt


def bench_pair(label, f_ours, f_ref, B, n_new, repeats):
    f_ours(), f_ref()  # warm-up
    ours, ref = [], []
    for _ in range(repeats):  # alternate, so drift in machine speed hits both sides alike
        ours.append(f_ours())
        ref.append(f_ref())
    tps_ours = B * n_new / statistics.median(ours)
    tps_ref = B * n_new / statistics.median(ref)
    print(f"{label:<34} ours {tps_ours:7.1f} tok/s   HF {tps_ref:7.1f} tok/s   ratio {tps_ours / tps_ref:5.2f}x",
          flush=True)
    return tps_ours / tps_ref


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    import os

    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, gpt2-124M shape, "
          f"{args.new_tokens} new tokens, top-k 50, median of {args.repeats} alternating runs")
    hf = make_124m()
    with tempfile.TemporaryDirectory() as tmp:  # ours the way users get it: load_pretrained from a checkpoint
        hf.save_pretrained(tmp)
        ours = load_pretrained(tmp)
        ours_bf16 = load_pretrained(tmp, dtype=torch.bfloat16)
    shared = port_from_hf(hf)  # the dashboard's pair: ours is a view of HF's weights (no second copy)
    n = args.new_tokens
    # HF stops a row at eos; min_new_tokens pins its length (a random model samples 50256 rarely anyway).
    results = {}
    for B in (1, 5):
        results[f"fp32 B={B}"] = bench_pair(f"fp32 B={B} (load_pretrained)", lambda: time_ours(ours, B, n),
                                            lambda: time_hf(hf, B, n), B, n, args.repeats)
    for B in (1, 5):
        results[f"fp32 B={B} sharing HF's weights"] = bench_pair(
            f"fp32 B={B} (sharing HF's weights)", lambda: time_ours(shared, B, n), lambda: time_hf(hf, B, n), B, n,
            args.repeats)
    results["bf16 B=1"] = bench_pair("bf16 B=1 (ours bf16 vs HF fp32)", lambda: time_ours(ours_bf16, 1, n),
                                     lambda: time_hf(hf, 1, n), 1, n, args.repeats)
    targets = {"fp32 B=1": 1.5, "fp32 B=5": 1.5, "fp32 B=1 sharing HF's weights": 1.3,
               "fp32 B=5 sharing HF's weights": 1.3, "bf16 B=1": 2.2}
    for key, target in targets.items():
        verdict = "meets" if results[key] >= target else "MISSES"
        print(f"target {key}: >= {target:.2f}x HF fp32 -> measured {results[key]:.2f}x ({verdict})")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
