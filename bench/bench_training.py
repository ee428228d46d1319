"""The cost of training parity: compare_training with 3 AdamW steps at the 124M shape against HF's own training step
(forward + backward + AdamW step, 3 times, on the same batch), measured in one run, and the ratio between them.

compare_training does, per side, one forward and backward with hooks (the residual stream and its gradient), the
three steps, a forward after each for the loss, and the bookkeeping (parameters matched by value, gradients in HF's
layout, the per-tensor comparisons); HF's baseline is what a training loop does. Both on the same random GPT-2 of
the 124M shape (core.structured.random_gpt2, no download), batch 4 x 64, float32, CPU; best of `--reps`.
Run: `HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_training.py [--reps N] [--port ours|my_gpt2|build_nanogpt]`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core import compare_training, port_from_hf  # noqa: E402
from core.parity.training import build_adamw, make_batch, training_copy  # noqa: E402
from core.structured import random_gpt2  # noqa: E402

SHAPE = dict(n_layer=12, n_head=12, n_embd=768, n_positions=1024)


def hf_steps(hf, x, y, steps: int) -> float:
    """HF's own training steps on (x, y): forward, loss, backward, AdamW step; seconds."""
    model = training_copy(hf, "HF").train()
    opt = build_adamw([p for p in model.parameters() if p.requires_grad])
    t = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(input_ids=x).logits.flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--port", default="my_gpt2", choices=["ours", "my_gpt2", "build_nanogpt"])
    args = ap.parse_args()
    hf = random_gpt2(seed=0, **SHAPE)
    if args.port == "ours":
        model = port_from_hf(hf)
    elif args.port == "my_gpt2":
        from examples.my_gpt2 import from_hf_state_dict

        model = from_hf_state_dict(hf.state_dict(), hf.config)
    else:
        from examples.build_nanogpt import from_hf

        model = from_hf(hf)
    x, y = make_batch(args.batch_size, args.seq_len, hf.config.vocab_size, 0)
    ours, base = [], []
    for _ in range(args.reps):  # interleaved: a busy machine slows some runs, never speeds one up
        base.append(hf_steps(hf, x, y, args.steps))
        t = time.perf_counter()
        report = compare_training(model, hf, batch=(x, y), steps=args.steps)
        ours.append(time.perf_counter() - t)
        print(f"  rep: HF {base[-1]:.2f} s, compare_training {ours[-1]:.2f} s, ratio {ours[-1] / base[-1]:.2f}",
              flush=True)
    print(f"124M shape, batch {args.batch_size} x {args.seq_len}, {args.steps} AdamW steps, port {args.port}, "
          f"{torch.get_num_threads()} threads, best of {args.reps}")
    print(f"HF's own forward+backward+step x {args.steps}: {min(base):.2f} s")
    print(f"compare_training(steps={args.steps}):          {min(ours):.2f} s   (agree={report.agree})")
    print(f"ratio: {min(ours) / min(base):.2f}x")


if __name__ == "__main__":
    main()
