"""Where float noise ends and the smallest real fault begins: the measurements behind core.parity's tolerance.

Over random GPT-2s (2 to 12 layers, up to the 124M shape, plain and sharpened init) and core.structured's
models with GPT-2's massive activations (onset at the embeddings, block 1, block 2; one to three channels of
300 to 3,000 at position 0), teacher-forced on 5 x 30 and 1 x 512 random tokens (768-dim shapes: plain init,
5 x 30 only), it compares the exact port and every bug-lab fault (plus some confined to one block)
with HF and judges each layer by two rules in one run:
  old: max|Δ| over the layer / max|HF value| over the layer (one global scale);
  new: max over (row, position) of max_c|Δ| / max_c|HF value| there (core.parity's rule).
Both are printed in units of eps32 * sqrt(mlp_width), so a layer is flagged where the ratio exceeds NOISE_FACTOR.
It prints, per model family and layer kind, the exact port's worst ratio and the smallest fault ratio at the
layer where the fault should first show, and how many faults each rule flags first at another layer.
Run: `.venv/bin/python bench/calibrate_tolerances.py` (`--small`: only the small shapes; `--large`: only the
768-dim ones; about 10 minutes each on 2 idle cores).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core import FAULTS, apply_fault, port_from_hf  # noqa: E402
from core.parity import NOISE_FACTOR, hf_teacher_forced, layer_diffs, relative_tolerance  # noqa: E402
from core.structured import VARIANTS, random_gpt2, structured_gpt2  # noqa: E402

SHAPES = {
    "2L-32d": dict(n_layer=2, n_head=2, n_embd=32, n_positions=512),
    "3L-5H-80d": dict(n_layer=3, n_head=5, n_embd=80, n_positions=512),
    "4L-64d": dict(n_layer=4, n_head=4, n_embd=64, n_positions=512),
    "6L-768d (distilgpt2)": dict(n_layer=6, n_head=12, n_embd=768, n_positions=512),
    "12L-768d (gpt2 124M)": dict(n_layer=12, n_head=12, n_embd=768, n_positions=512),
}
RANDOM_SHAPES = ("2L-32d", "3L-5H-80d", "6L-768d (distilgpt2)", "12L-768d (gpt2 124M)")
STRUCTURED_SHAPES = ("4L-64d", "12L-768d (gpt2 124M)")
# every listed fault, and a few more confined to one block (early, middle)
EXTRA_FAULTS = ("erf_gelu@1", "ln_eps_1e-6@1", "bf16_autocast@1", "no_attention_scale@1", "qk_swapped@2")
KINDS = ("embeddings", "block", "ln_f", "lm_head")


def old_ratios(ours: list[torch.Tensor], ref: list[torch.Tensor], unit: float) -> list[float]:
    """The earlier rule: max|Δ| / max|HF| over the whole layer, in units of eps32 * sqrt(mlp_width)."""
    out = []
    for a, b in zip(ours, ref):
        d = (a.float() - b.float()).abs().max().item()
        out.append(d / max(b.float().abs().max().item(), 1e-30) / unit)
    return out


def kind(layer_name: str) -> str:
    return "block" if layer_name.startswith("block") else layer_name


def configs(sizes: set[str]):
    for label in RANDOM_SHAPES:
        shape = SHAPES[label]
        if ("large" if shape["n_embd"] >= 768 else "small") not in sizes:
            continue
        for seed in (0, 1, 2, 3) if shape["n_embd"] < 128 else (0,):  # small models vary more: more seeds
            for sharpen in (None, 3.0) if shape["n_embd"] < 128 else (None,):
                lengths = (30, 512) if shape["n_embd"] < 128 else (30,)  # 768-dim: 5 x 30 only (time)
                yield "random", label, shape, seed, f"{'sharpened' if sharpen else 'plain init'}", lengths, \
                    (lambda shape=shape, sharpen=sharpen, seed=seed: random_gpt2(seed=seed, logit_std=sharpen, **shape))
    for label in STRUCTURED_SHAPES:
        shape = SHAPES[label]
        if ("large" if shape["n_embd"] >= 768 else "small") not in sizes:
            continue
        for variant in VARIANTS:
            for seed in (0, 1) if shape["n_embd"] < 128 else (0,):
                lengths = (30, 512) if shape["n_embd"] < 128 else (30,)  # the 124M shape: 5 x 30 only (time)
                yield variant, label, shape, seed, "structured", lengths, \
                    (lambda shape=shape, variant=variant, seed=seed: structured_gpt2(variant, seed=seed, **shape))


def main(argv: list[str]) -> int:
    torch.set_grad_enabled(False)
    sizes = {"small", "large"} - {"--small": {"large"}, "--large": {"small"}}.get(argv[0] if argv else "", set())
    t0 = time.perf_counter()
    noise = {}  # (family, rule, kind) -> worst exact-port ratio
    fault_min = {}  # (family, rule, kind) -> (smallest fault ratio at its expected layer, which)
    misattributed = {"old": [], "new": []}
    n_runs = 0
    runs_by = {}  # "random" / "structured" -> runs, and misattributed runs per rule
    logit_table = {}
    faults = list(FAULTS) + list(EXTRA_FAULTS)
    print(f"ratios in units of eps32*sqrt(mlp_width); a layer is flagged above NOISE_FACTOR = {NOISE_FACTOR:g}\n")
    for family, label, shape, seed, init, lengths, build in configs(sizes):
        hf = build()
        ours = port_from_hf(hf)
        unit = relative_tolerance(4 * shape["n_embd"]) / NOISE_FACTOR
        rtol = relative_tolerance(4 * shape["n_embd"])
        for T in lengths:
            seqs = torch.randint(0, 50257, (5 if T == 30 else 1, T), generator=torch.Generator().manual_seed(T))
            tag = f"{family:<14} {label}, seed {seed}, {init}, {seqs.shape[0]}x{T} tokens"
            with torch.inference_mode():
                ref_hidden, ref_logits = hf_teacher_forced(hf, seqs)
            ref = ref_hidden + [ref_logits]

            def judge(model):
                with torch.inference_mode():
                    out = model(seqs, return_hidden=True)
                mine = list(out.hidden) + [out.logits]
                new = layer_diffs(shape["n_layer"], mine, ref, rtol)
                return new, [l.ratio * NOISE_FACTOR for l in new], old_ratios(mine, ref, unit)

            layers, new_r, old_r = judge(ours)
            names = [l.name for l in layers]
            for rule, r in (("old", old_r), ("new", new_r)):
                for name, x in zip(names, r):
                    key = (family, rule, kind(name))
                    noise[key] = max(noise.get(key, 0.0), x)
            line = [f"exact port: worst old {max(old_r):.2f}, new {max(new_r):.2f}"]
            if family == "random" and init == "plain init" and T == 30 and seed == 0 and label in ("2L-32d",
                                                                                                   RANDOM_SHAPES[-1]):
                logit_table.setdefault(label, {})["exact port"] = (layers[-1].max_abs_diff, "-")
            for name in faults:
                fault = FAULTS[name]
                if fault.block not in (None, "last") and fault.block >= shape["n_layer"]:
                    continue
                expected = fault.expected_layer(shape["n_layer"])
                layers, new_r, old_r = judge(apply_fault(ours, name))
                at = names.index(expected)
                firsts = {}
                for rule, r in (("old", old_r), ("new", new_r)):
                    key = (family, rule, kind(expected))
                    if r[at] < fault_min.get(key, (float("inf"),))[0]:
                        fault_min[key] = (r[at], f"{name}, {label}")
                    first = next((n for n, x in zip(names, r) if x > NOISE_FACTOR), "-")
                    firsts[rule] = first
                    group = "random" if family == "random" else "structured"
                    if first != expected:
                        misattributed[rule].append(f"{tag}: {name} flagged first at {first}, expected {expected}")
                        runs_by[group, rule] = runs_by.get((group, rule), 0) + 1
                n_runs += 1
                runs_by[group] = runs_by.get(group, 0) + 1
                if family == "random" and init == "plain init" and T == 30 and seed == 0 and name in FAULTS and \
                        label in ("2L-32d", RANDOM_SHAPES[-1]):
                    logit_table.setdefault(label, {})[name] = (layers[-1].max_abs_diff, firsts["new"])
                if firsts["new"] != expected or firsts["old"] != expected:
                    line.append(f"{name}: expected {expected}; flagged first: old {firsts['old']}, new {firsts['new']}")
            print(tag + ":\n    " + "\n    ".join(line), flush=True)

    families = ["random"] + [v for v in VARIANTS]
    print("\nworst exact-port ratio (noise) and smallest fault ratio at the fault's first layer, by layer kind")
    print(f"{'models':<14} {'layer kind':<11} {'old noise':>10} {'old fault':>10} {'new noise':>10} {'new fault':>10}"
          "   smallest fault (new rule)")
    for fam in families:
        for k in KINDS:
            cells = []
            for rule in ("old", "new"):
                n = noise.get((fam, rule, k))
                f = fault_min.get((fam, rule, k))
                cells += [f"{n:10.3g}" if n is not None else f"{'-':>10}", f"{f[0]:10.3g}" if f else f"{'-':>10}"]
            which = fault_min.get((fam, "new", k), (0, ""))[1]
            print(f"{fam:<14} {k:<11} " + " ".join(cells) + f"   {which}")
    for rule in ("old", "new"):
        worst = max(v for (f, r, k), v in noise.items() if r == rule)
        least = min(v[0] for (f, r, k), v in fault_min.items() if r == rule)
        print(f"{rule} rule: worst noise {worst:.3g}, smallest fault {least:.3g}, tolerance {NOISE_FACTOR:g}: "
              f"faults flagged first at another layer than expected: {len(misattributed[rule])} of {n_runs} ("
              + ", ".join(f"{g} {runs_by.get((g, rule), 0)} of {runs_by[g]}" for g in ("random", "structured")
                          if g in runs_by) + ")")
    for m in misattributed["new"]:
        print("    new rule:", m)
    labels = list(logit_table)
    if labels:
        print("\nbug lab, max |Δlogit| and first diverging layer (random, plain init, 5 x 30 tokens, new rule):")
        print(f"{'fault':<24}" + "".join(f"{lab:>36}" for lab in labels))
        for name in logit_table[labels[0]]:
            print(f"{name:<24}" + "".join(f"{logit_table[lab][name][0]:>24.2g} @ {logit_table[lab][name][1]:<9}"
                                          for lab in labels))
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
