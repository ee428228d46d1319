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


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core import compare, load_tokenizer  # noqa: E402
from core.structured import VARIED_PARAMS, random_gpt2  # noqa: E402
from examples.my_gpt2 import MISTAKES, from_hf_state_dict  # noqa: E402


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
        # GPT-2's architecture with random weights whose biases, LayerNorm gains and MLP pre-activations are not
        # init constants, so that every loading mistake can show
        hf = random_gpt2(seed=0, **VARIED_PARAMS, noise_seed=0, n_layer=args.layers, n_embd=args.width,
                         n_head=max(1, args.width // 64))
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
