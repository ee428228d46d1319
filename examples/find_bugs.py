"""The lab finding porting mistakes in an independent GPT-2 (examples/my_gpt2.py): one compare() per mistake.

    python examples/find_bugs.py                 # a random GPT-2 of the 124M shape (no download)
    python examples/find_bugs.py --model gpt2    # the real weights (Hub id or checkpoint directory)

Prints, per mistake, the verdict, the first diverging layer and the max |Δlogit| over the sampled steps.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core import compare, load_tokenizer  # noqa: E402
from examples.my_gpt2 import MISTAKES, from_hf_state_dict  # noqa: E402


def random_gpt2(n_layer: int = 12, n_embd: int = 768, seed: int = 0):
    """GPT-2's architecture with random weights whose biases, LayerNorm gains and MLP pre-activations are not
    init constants (so every loading mistake can show)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=max(1, n_embd // 64))).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            elif ".ln_1." in name or ".ln_2." in name:
                p.copy_(1 + torch.randn(p.shape, generator=g) * 0.2)
            elif name.endswith("mlp.c_fc.weight"):
                p.mul_(8.0)
        hf.transformer.ln_f.weight.mul_(3.0 / (0.02 * n_embd**0.5))  # peaked next-token distributions
    return hf


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Find the mistakes in examples/my_gpt2.py with the parity lab.")
    ap.add_argument("--model", default=None, help="HF checkpoint (Hub id or directory); default: random 124M shape")
    ap.add_argument("--layers", type=int, default=12, help="blocks of the random model (default 12)")
    ap.add_argument("--width", type=int, default=768, help="width of the random model (default 768)")
    ap.add_argument("--reference", default="logits", choices=["generate", "pipeline", "logits"])
    args = ap.parse_args(argv)
    if args.model:
        from core import load_hf_model

        hf = load_hf_model(args.model)
    else:
        hf = random_gpt2(args.layers, args.width)
    tok = load_tokenizer(os.environ.get("GPT2_BPE_DIR") or args.model)
    print(f"{'mistake':<28} {'expected':<11} {'found':<11} {'max |Δlogit|':>12}  verdict")
    for name, (what, where) in MISTAKES.items():
        mine = from_hf_state_dict(hf.state_dict(), hf.config, name)
        r = compare(mine, "Hello, I'm a language model,", hf_model=hf, tokenizer=tok, reference=args.reference,
                    num_return_sequences=5, max_length=30, seed=42)
        expected = f"block {hf.config.n_layer - 1}" if where == "last block" else (where or "none")
        print(f"{name:<28} {expected:<11} {r.first_diverging_layer or 'none':<11} {r.max_abs_dlogit:12.3g}  "
              f"{r.verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
