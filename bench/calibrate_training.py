"""Where float noise ends and a training fault begins: the measurements behind diffs.GRAD_NOISE_FACTOR and
UPDATE_ULPS (core.parity.compare_training's tolerances).

A gradient (along the residual stream per (row, position); a parameter's per tensor) is flagged when
    max |Δ| > GRAD_NOISE_FACTOR * eps32 * sqrt(mlp_width) * scale + ATOL,
so a run is flagged at factor k exactly when x = max |Δ| / (eps32 * sqrt(mlp_width) * scale) exceeds k. This bench
runs compare_training itself on exact ports written differently (our GPT: core.port_from_hf; examples/my_gpt2.py:
separate q/k/v, hand-written attention; examples/build_nanogpt.py: fused c_attn, SDPA, tied head, vocabulary padded to
50304), on random GPT-2s (core.structured.random_gpt2 with VARIED_PARAMS) and massive-activation models
(core.structured.structured_gpt2), from 2 layers to the 124M shape, and reads x back from the report (ratio *
GRAD_NOISE_FACTOR): the exact ports' worst x, per kind (the loss, the stream's gradient, the parameters'), and the
update check's worst, in units of eps32 * (|p| + lr), of PyTorch's foreach AdamW (build-nanogpt's on a CPU) against
the lab's for-loop AdamW. It then runs every training fault (core.faults.TRAINING_FAULTS) and says whether it was
flagged at its layer and parameter. The rule: the factor is at least twice the exact ports' worst x.
Run: `HF_HUB_OFFLINE=1 .venv/bin/python bench/calibrate_training.py` (`--quick`: about a minute; the full run
adds the 124M shape and takes several minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core import TRAINING_FAULTS, apply_training_fault, compare_training, port_from_hf  # noqa: E402
from core.faults import get_training_fault  # noqa: E402
from core.parity import diffs  # noqa: E402
from core.parity.training import ADAM_EPS, BETAS, LR, adamw_groups  # noqa: E402
from core.structured import VARIED_PARAMS, random_gpt2, structured_gpt2  # noqa: E402
from examples.build_nanogpt import from_hf as nanogpt_from_hf  # noqa: E402
from examples.my_gpt2 import from_hf_state_dict  # noqa: E402

PORTS = {
    "ours": lambda hf: port_from_hf(hf),
    "my_gpt2": lambda hf: from_hf_state_dict(hf.state_dict(), hf.config),
    "build_nanogpt": nanogpt_from_hf,
}


def foreach_adamw(params):
    """build-nanogpt's optimizer as PyTorch runs it by default on a CPU (the foreach kernel)."""
    return torch.optim.AdamW(adamw_groups(params), lr=LR, betas=BETAS, eps=ADAM_EPS, foreach=True)


def models(quick: bool):
    shapes = [dict(n_layer=2, n_head=2, n_embd=32, n_positions=128), dict(n_layer=3, n_head=5, n_embd=80,
                                                                           n_positions=96),
              dict(n_layer=4, n_head=4, n_embd=128, n_positions=128)]
    if not quick:
        shapes.append(dict(n_layer=2, n_head=12, n_embd=768, n_positions=160))
    for i, shape in enumerate(shapes):
        for seed in (0, 1) if quick else (0, 1, 2):
            yield f"random L{shape['n_layer']} C{shape['n_embd']} s{seed}", random_gpt2(seed=seed + 10 * i,
                                                                                       **VARIED_PARAMS, **shape)
        for variant in ("emb-1x3000", "block1-1x1000") if quick else ("emb-1x3000", "emb-3ch", "block1-1x1000",
                                                                        "block2-2ch"):
            if variant.startswith("block2") and shape["n_layer"] < 3:
                continue
            if shape["n_embd"] < 64:
                continue
            yield f"massive {variant} L{shape['n_layer']} C{shape['n_embd']}", structured_gpt2(variant, seed=i,
                                                                                              **shape)
    if not quick:
        yield "random 124M", random_gpt2(seed=7, **VARIED_PARAMS, n_layer=12, n_head=12, n_embd=768,
                                         n_positions=1024)


def x_of(report) -> dict[str, float]:
    k = diffs.GRAD_NOISE_FACTOR
    return {"loss": report.loss_diff / (report.loss_tolerance - diffs.ATOL) * k,
            "stream": max((l.ratio for l in report.grad_layers), default=0.0) * k,
            "params": max(p.ratio for p in report.params) * k,
            "update": max((r["update_diff"] / (diffs.EPS32 * (r.get("update_scale", 0.0) + LR))
                           for s in report.steps for r in s.params if "update_diff" in r), default=0.0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()
    worst = {"loss": 0.0, "stream": 0.0, "params": 0.0, "update": 0.0}
    where = dict.fromkeys(worst, "")
    false_alarms, runs = 0, 0
    fault_rows = []
    print("| model | port | x loss | x stream grad | x param grad | update (eps units) | agree |")
    print("|---|---|---|---|---|---|---|")
    for label, hf in models(args.quick):
        B, T = (2, 64) if args.quick or hf.config.n_embd >= 768 else (4, 64)
        for port, make in PORTS.items():
            model = make(hf)
            r = compare_training(model, hf, batch_size=B, seq_len=T, steps=2, optimizer=foreach_adamw)
            x = x_of(r)
            runs += 1
            false_alarms += not r.agree
            for k, v in x.items():
                if v > worst[k]:
                    worst[k], where[k] = v, f"{label} / {port}"
            print(f"| {label} | {port} | {x['loss']:.3f} | {x['stream']:.3f} | {x['params']:.3f} | "
                  f"{x['update']:.2f} | {r.agree} |", flush=True)
        if hf.config.n_embd >= 64 and hf.config.n_layer >= 3 and label.startswith(("random", "massive block1")) \
                and len(fault_rows) < (2 if args.quick else 4) * len(TRAINING_FAULTS):
            ours = port_from_hf(hf)
            for name in TRAINING_FAULTS:
                f = get_training_fault(name)
                m, opt = apply_training_fault(ours, name)
                r = compare_training(m, hf, batch_size=B, seq_len=T, steps=1 if f.needs_steps else 0,
                                     optimizer=opt or "adamw", fault=name)
                L = hf.config.n_layer
                ok_layer = f.expected_layer(L) is None or r.first_diverging_layer == f.expected_layer(L)
                ok_param = f.expected_parameter(L) is None or r.first_diverging_parameter == f.expected_parameter(L)
                fault_rows.append((label, name, r.first_diverging_layer, r.first_diverging_parameter, not r.agree,
                                   ok_layer and ok_param))
    print()
    print("| quantity | exact ports' worst x | where | factor in use |")
    print("|---|---|---|---|")
    for k in ("loss", "stream", "params"):
        print(f"| {k} | {worst[k]:.3f} | {where[k]} | {diffs.GRAD_NOISE_FACTOR} |")
    print(f"| update (eps32 * (max|p| + lr)) | {worst['update']:.2f} | {where['update']} | {diffs.UPDATE_ULPS} |")
    print(f"\nexact runs: {runs}, false alarms at the factors in use: {false_alarms}")
    print(f"rule: factor >= 2 x worst x = {2 * max(worst['loss'], worst['stream'], worst['params']):.3f}; "
          f"UPDATE_ULPS >= 2 x worst = {2 * worst['update']:.2f}")
    print("\n| model | fault | first layer | first parameter | flagged | where expected |")
    print("|---|---|---|---|---|---|")
    for row in fault_rows:
        print("| " + " | ".join(str(v) for v in row) + " |")
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
