"""Memory: ours + HF resident together vs HF alone, at the gpt2 124M and 355M shapes (random init), fresh processes.

Each measurement runs in its own Python process (same imports in both) that loads a saved 124M checkpoint:
  hf    - load_hf_model(dir): HuggingFace's GPT2LMHeadModel alone, after one generate() (the seed's case);
  pair  - load_pair(dir): HF's model plus ours ported from it (views of HF's weights, the dashboard's pair),
          after HF's generate() and ours;
  pair+compare - the pair, then one full compare of the seed's case (peak while working).
Prints resident (VmRSS) and peak (VmHWM) MiB and the ratio pair / HF alone (target <= 1.2x).
Run: `.venv/bin/python bench/bench_memory.py` (`--shapes 124m` for one shape; the 1.5B peak: bench_xl_memory.py).
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def status_mib() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out


def child(mode: str, checkpoint: str) -> None:
    sys.path.insert(0, str(ROOT))
    import torch
    import transformers  # noqa: F401

    from core import compare, generate, load_tokenizer
    from core.loader import load_hf_model, load_pair

    ids = torch.tensor([[15496, 11, 314, 1101, 257, 3303, 2746, 11]])  # "Hello, I'm a language model,"

    def hf_generate(hf):  # touch every weight (safetensors are mmapped: unread pages are not resident)
        torch.manual_seed(42)
        hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, max_length=30,
                    num_return_sequences=5)

    if mode == "hf":
        model = load_hf_model(checkpoint)
        hf_generate(model)
    else:
        model = load_pair(checkpoint)
        hf_generate(model[1])
        generate(model[0], ids[0].tolist(), num_return_sequences=5, max_length=30, seed=42)
        if mode == "pair+compare":
            bpe = os.environ.get("GPT2_BPE_DIR") or str(ROOT.parent / "shared" / "gpt2-bpe")
            compare(model, "Hello, I'm a language model,", tokenizer=load_tokenizer(bpe), num_return_sequences=5,
                    max_length=30, seed=42)
    gc.collect()
    print(json.dumps(status_mib()))
    del model


SHAPES = {"124m": dict(n_layer=12, n_head=12, n_embd=768), "355m": dict(n_layer=24, n_head=16, n_embd=1024)}


def main() -> int:
    if len(sys.argv) == 3 and not sys.argv[1].startswith("-"):
        child(sys.argv[1], sys.argv[2])
        return 0
    import argparse

    sys.path.insert(0, str(ROOT))
    from core.structured import random_gpt2

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="124m,355m")
    args = ap.parse_args()
    for shape in args.shapes.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            random_gpt2(seed=0, logit_std=None, **SHAPES[shape]).save_pretrained(tmp)
            res = {}
            for mode in ("hf", "pair", "pair+compare"):
                out = subprocess.run([sys.executable, __file__, mode, tmp], capture_output=True, text=True,
                                     check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
                res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        base = res["hf"]["VmRSS"]
        print(f"{shape} shape, fp32, each in a fresh process (MiB):")
        for mode, r in res.items():
            print(f"  {mode:<14} resident {r['VmRSS']:7.0f}   peak {r['VmHWM']:7.0f}   resident / HF alone "
                  f"{r['VmRSS'] / base:4.2f}x")
        print(f"target at {shape}: ours + HF resident <= 1.2x HF alone -> measured {res['pair']['VmRSS'] / base:.2f}x"
              f" (during a compare: peak {res['pair+compare']['VmHWM'] / res['hf']['VmHWM']:.2f}x HF alone's peak)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
