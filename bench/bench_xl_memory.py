"""Memory at the largest allowlisted model: a seed-case compare at the gpt2-xl shape (1.5B parameters, fp32).

Each measurement runs in a fresh Python process that builds HF's GPT2LMHeadModel at the gpt2-xl shape with
random weights (built on the meta device, then given storage and filled in place: a full HF init of 1.5B
parameters takes minutes, and only the memory matters here):
  hf      - HF's model alone, after one generate() of the seed's case (5 rows grown to 30 tokens, top-k 50);
  compare - HF's model plus ours ported from it (views of HF's weights), after one compare(reference="generate")
            of the seed's case, which is where the peak is.
Prints resident (VmRSS) and peak (VmHWM) GiB of each process; target: the compare's peak <= 10 GB (a Spaces CPU
box has 16 GB). Run: `.venv/bin/python bench/bench_xl_memory.py` (`--shape 355m` etc. for a quicker look).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {
    "124m": dict(n_layer=12, n_head=12, n_embd=768),
    "355m": dict(n_layer=24, n_head=16, n_embd=1024),
    "774m": dict(n_layer=36, n_head=20, n_embd=1280),
    "1558m": dict(n_layer=48, n_head=25, n_embd=1600),  # gpt2-xl
}
PROMPT = "Hello, I'm a language model,"
GB = 1e9


def status_bytes() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) * 1024
    return out


def build_hf(shape: str):
    """HF's GPT-2 at `shape` with N(0, 0.02) weights (LayerNorms at 1 and 0), built without HF's slow init."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(**SHAPES[shape])
    with torch.device("meta"):
        hf = GPT2LMHeadModel(config)
    hf = hf.to_empty(device="cpu").eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if ".ln_" in name or name.startswith("transformer.ln_f"):
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.normal_(0.0, 0.02, generator=g)
        for _, b in hf.named_buffers():  # none in current transformers; kept correct if a version adds some
            b.zero_()
    hf.tie_weights()
    hf.requires_grad_(False)
    return hf


def child(mode: str, shape: str) -> None:
    sys.path.insert(0, str(ROOT))
    import torch

    from core import compare, load_tokenizer, port_from_hf

    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    hf = build_hf(shape)
    built = time.perf_counter() - t0
    tok = load_tokenizer(os.environ.get("GPT2_BPE_DIR") or str(ROOT.parent / "shared" / "gpt2-bpe"))
    t0 = time.perf_counter()
    if mode == "hf":
        ids = torch.tensor([tok.encode(PROMPT)])
        torch.manual_seed(42)
        hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=50, max_length=30,
                    num_return_sequences=5)
    else:
        ours = port_from_hf(hf)
        report = compare((ours, hf), PROMPT, tokenizer=tok, reference="generate", num_return_sequences=5,
                         max_length=30, top_k=50, seed=42)
        assert report.verdict_kind in ("identical", "near_tie"), report.verdict
    ran = time.perf_counter() - t0
    n_params = sum(p.numel() for p in hf.parameters())
    print(json.dumps({**status_bytes(), "build_s": built, "run_s": ran, "params": n_params}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="1558m", choices=sorted(SHAPES))
    ap.add_argument("child", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child[0], args.shape)
        return 0
    print(f"{args.shape} shape (fp32, random init), each in a fresh process; load average "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    res = {}
    for mode in ("hf", "compare"):
        out = subprocess.run([sys.executable, __file__, "--shape", args.shape, mode], capture_output=True, text=True,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if out.returncode:
            print(out.stderr[-3000:])
            return 1
        res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        r = res[mode]
        print(f"  {mode:<8} {r['params'] / 1e9:.2f}B params   resident {r['VmRSS'] / GB:5.2f} GB   peak "
              f"{r['VmHWM'] / GB:5.2f} GB   (built in {r['build_s']:.0f} s, ran in {r['run_s']:.1f} s)", flush=True)
    peak = res["compare"]["VmHWM"] / GB
    print(f"target: a seed-case compare peaks at <= 10 GB -> measured {peak:.2f} GB "
          f"({'meets' if peak <= 10 else 'MISSES'}); HF alone peaks at {res['hf']['VmHWM'] / GB:.2f} GB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
