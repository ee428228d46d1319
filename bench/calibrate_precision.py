"""Where a precision's own rounding ends and a fault begins: the measurements behind core.parity's PRECISION_FACTOR.

Below float32 a place (row, position) of a layer or a step's logits is flagged when
    max_c |Δ from HF in float32| > float32 tolerance + PRECISION_FACTOR * yardstick,
the yardstick being diffs.noise_yardstick: max(HF's own error there, the layer's median relative own error * scale
there), HF's own error = HF run in that regime on the same token streams against HF in float32. So a run is flagged
at factor k exactly when
    x = max over places of (max_c |Δ| - float32 tolerance) / yardstick
exceeds k. This bench measures x, with compare() itself doing every step (the regime, the cast copies, HF's own
error, the float32 re-check): it watches the judge's per-layer comparison (core.parity.judge.layer_diffs) to see
the very tensors the judge sees, computes x per layer from them, and checks that the ratio it derives at the
module's PRECISION_FACTOR equals the report's (so x is the judge's own quantity, not a re-implementation's).

For every CPU regime (bfloat16, float16, bfloat16-autocast, float16-autocast) over random GPT-2s (core.structured's
random_gpt2, the suite's recipe: logits of std ~3; 2 to 3 layers, and the 124M shape) and core.structured's massive-activation
models, several prompts and sampling seeds, it measures
  (a) HF's own error: max |Δlogit| and, per layer kind, max |Δ| and the median relative error (the floor);
  (b) x of three exact ports written differently: our GPT (core.port_from_hf), examples/my_gpt2.py (separate
      q/k/v, hand-written attention), examples/build_nanogpt.py (fused c_attn, SDPA, vocab padded to 50304);
  (c) x of every bug-lab fault (core.faults.FAULTS: whole-model and @last) at the layer where it should first show,
      and whether the float32 re-check finds it;
and chooses k by the rule in choose_k(). It prints markdown tables: HF's own error, the exact ports' worst x, the
faults' x, k, false alarms (exact runs with x > k) and each precision's resolution (faults seen directly, x > k at
their first layer, and faults left to the float32 re-check).
Run: `HF_HUB_OFFLINE=1 GPT2_BPE_DIR=/work/shared/gpt2-bpe .venv/bin/python bench/calibrate_precision.py`
(`--quick`: a 1-2 minute subset; the full run takes ~10-15 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import importlib
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import GPT2LMHeadModel  # noqa: E402

from core import FAULTS, compare, load_tokenizer, port_from_hf  # noqa: E402
from core.parity import ATOL  # noqa: E402
from core.parity import diffs  # noqa: E402
from core.structured import random_gpt2, structured_gpt2  # noqa: E402
from examples.build_nanogpt import from_hf as nanogpt_from_hf  # noqa: E402
from examples.my_gpt2 import from_hf_state_dict  # noqa: E402

judge_module = importlib.import_module("core.parity.judge")  # the module (core.parity.judge is the function)

REGIMES = ("bfloat16", "float16", "bfloat16-autocast", "float16-autocast")
_PARAGRAPH = ("The history of natural language processing generally started in the 1950s, although work can be found "
              "from earlier periods. In 1950, Alan Turing published an article titled Computing Machinery and "
              "Intelligence which proposed what is now called the Turing test as a criterion of intelligence. ")
PROMPTS = ("Hello, I'm a language model,",
           "The quick brown fox jumps over the lazy dog. In 1905, Albert Einstein published four papers that",
           "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\n"
           "for i in range(10):\n    print(i,",
           _PARAGRAPH * 5,  # ~270 and ~970 tokens: many places per layer, for the tail of the exact ports' excursions
           _PARAGRAPH * 18)
GENERATE = dict(num_return_sequences=2, max_new_tokens=4)
PORTS = {
    "ours": port_from_hf,
    "my_gpt2": lambda hf: from_hf_state_dict(hf.state_dict(), hf.config),
    "nanogpt": nanogpt_from_hf,
}
KINDS = ("embeddings", "block 0", "middle blocks", "last block", "ln_f", "lm_head")
SMALL = dict(n_positions=1024)


@dataclass(frozen=True)
class Case:
    family: str  # "random" or a core.structured variant
    label: str  # the shape
    seed: int
    build: object  # () -> GPT2LMHeadModel
    prompts: tuple[int, ...]  # indices into PROMPTS for the exact ports
    fault_prompts: tuple[int, ...] = ()  # ... and for the faults
    faults: tuple[str, ...] = tuple(FAULTS)

    @property
    def group(self) -> str:
        big = self.label.startswith("12L")
        return ("random" if self.family == "random" else "structured") + (" 124M" if big else " small")


# The faults that sit nearest a precision's noise (measured on the small shapes): the 124M shape runs only these
SUBTLE = ("erf_gelu", "ln_eps_1e-6", "bf16_autocast", "erf_gelu@last", "ln_eps_1e-6@last", "heads_swapped@last")


def cases(quick: bool) -> list[Case]:
    s2 = dict(n_layer=2, n_head=2, n_embd=32, **SMALL)
    s3 = dict(n_layer=3, n_head=4, n_embd=64, **SMALL)  # tests/test_precision.py's shape and models
    s3b = dict(n_layer=3, n_head=5, n_embd=80, **SMALL)
    s4 = dict(n_layer=4, n_head=4, n_embd=64, **SMALL)
    big = dict(n_layer=12, n_head=12, n_embd=768, n_positions=1024)

    def rnd(label, shape, seed, prompts, fault_prompts=(), faults=tuple(FAULTS)):
        return Case("random", label, seed, lambda: random_gpt2(seed=seed, **shape), prompts, fault_prompts, faults)

    def st(variant, label, shape, seed, prompts, fault_prompts=(), faults=tuple(FAULTS)):
        return Case(variant, label, seed, lambda: structured_gpt2(variant, seed=seed, **shape), prompts,
                    fault_prompts, faults)

    if quick:
        return [rnd("3L-4H-64d", s3, 5, (0, 3), (0,)), st("block1-1x1000", "3L-4H-64d", s3, 1, (0, 3))]
    return [
        rnd("2L-32d", s2, 0, (0, 1, 2, 3, 4), (0,)),
        rnd("2L-32d", s2, 1, (0, 1, 2)),
        rnd("3L-4H-64d", s3, 5, (0, 1, 2, 3, 4), (1,)),
        rnd("3L-5H-80d", s3b, 0, (0, 1, 2), (2,)),
        st("block1-1x1000", "3L-4H-64d", s3, 1, (0, 1, 2, 3), (0,)),
        st("emb-1x3000", "4L-64d", s4, 0, (0, 1, 2), (1,)),
        st("emb-3ch", "4L-64d", s4, 0, (0, 1, 2)),
        st("block1-1x1000", "4L-64d", s4, 0, (0, 1, 2)),
        st("block2-2ch", "4L-64d", s4, 0, (0, 1, 2, 4), (2,)),
        rnd("12L-768d (124M)", big, 0, (0, 3), (1,), SUBTLE),
        st("block2-2ch", "12L-768d (124M)", big, 0, (2,)),
    ]


# ---------------------------------------------------------------------------------------------------------
# What the judge sees


@dataclass
class LayerSeen:
    name: str
    places: int
    x: float  # max over places of (|Δ| - float32 tolerance) / yardstick: flagged at factor k iff x > k
    ratio: float  # max over places of |Δ| / (float32 tolerance + PRECISION_FACTOR * yardstick), as the judge does
    own_max: float  # HF's own max_c |Δ| over the layer's places
    own_rel_median: float  # its median relative to the scale (the yardstick's floor)


def seen_layer(name: str, a: torch.Tensor, b: torch.Tensor, rtol: float, noise: torch.Tensor) -> LayerSeen:
    """One layer as diffs._layer_diff judges it below float32, in yardstick units."""
    a, b = a.float(), b.float()
    d = (a - b).abs().amax(dim=-1)
    s = b.abs().amax(dim=-1)
    noise = noise[:, : d.size(1)].to(d.device).float()
    t32 = rtol * s + ATOL
    unit = diffs.noise_yardstick(noise, s)
    over = d - t32
    x = torch.where(unit > 0, over / unit.clamp_min(1e-30), torch.where(over > 0, math.inf, 0.0))
    x = torch.where(torch.isfinite(d), x, torch.full_like(x, math.inf))
    ratio = torch.where(torch.isfinite(d), d / (t32 + diffs.PRECISION_FACTOR * unit), torch.full_like(d, math.inf))
    rel = noise / s.clamp_min(1e-30)
    return LayerSeen(name, d.numel(), x.max().item(), ratio.max().item(), noise.max().item(), rel.flatten().median().item())


class Watch:
    """While active, every below-float32 per-layer comparison the judge makes is also seen here."""

    def __init__(self):
        self.seen: list[LayerSeen] = []
        self._real = judge_module.layer_diffs

    def __enter__(self):
        def watched(n_layer, ours, ref, rtol, *, logits_start=0, noise=None):
            out = self._real(n_layer, ours, ref, rtol, logits_start=logits_start, noise=noise)
            if noise is not None:  # the run in its precision (the float32 re-check passes none)
                self.seen = []
                for layer, a, b, nz in zip(out, ours, ref, noise):
                    n = min(a.size(1), b.size(1))
                    self.seen.append(seen_layer(layer.name, a[:, :n], b[:, :n], rtol, nz))
            return out

        judge_module.layer_diffs = watched
        return self

    def __exit__(self, *exc):
        judge_module.layer_diffs = self._real


def step_x(report) -> float:
    """max over judged steps of (|Δlogit| - float32 tolerance) / yardstick, from the report's StepDiffs."""
    worst = 0.0
    for st in report.steps:
        for d in st:
            if d is None:
                continue
            t32 = report.rtol * d.scale + ATOL
            unit = (d.tolerance - t32) / diffs.PRECISION_FACTOR
            if not math.isfinite(d.max_abs_dlogit):
                return math.inf
            over = d.max_abs_dlogit - t32
            worst = max(worst, over / unit if unit > 0 else (math.inf if over > 0 else 0.0))
    return worst


@dataclass
class Run:
    case: Case
    regime: str
    prompt: int
    subject: str  # a port's name or a fault's
    layers: list[LayerSeen]
    steps_x: float
    hf_own_logits: float
    recheck_agree: bool | None
    recheck_possible: bool
    recheck_first: str | None
    judge_flagged: bool  # the report itself, at the module's PRECISION_FACTOR
    mismatch: float = 0.0  # |derived ratio - report's ratio| / report's, worst layer (should be ~1e-7)
    places: int = 0  # (row, position) places of a hidden layer
    expected: str | None = None  # a fault's first layer

    @property
    def x(self) -> float:
        return max([l.x for l in self.layers] + [self.steps_x])

    def x_at(self, name: str) -> float:
        return next(l.x for l in self.layers if l.name == name)

    def first_flagged(self, k: float) -> str | None:
        return next((l.name for l in self.layers if l.x > k), None)


def one_run(case: Case, hf, subject, regime: str, prompt: int, name: str, fault: str | None, tokenizer) -> Run:
    with Watch() as w:
        r = compare((subject, hf), PROMPTS[prompt], tokenizer=tokenizer, reference="logits", fault=fault,
                    precision=regime, seed=1000 * case.seed + prompt, **GENERATE)
    assert len(w.seen) == len(r.layers), "the judge made no per-layer comparison below float32"
    mismatch = max(abs(s.ratio - l.ratio) / max(l.ratio, 1e-30) for s, l in zip(w.seen, r.layers)
                   if math.isfinite(l.ratio))
    check = r.float32_check or {}
    expected = FAULTS[fault].expected_layer(hf.config.n_layer) if fault else None
    return Run(case, regime, prompt, name, w.seen, step_x(r), r.precision["hf_own_error"], check.get("agree"),
               bool(check.get("possible")), check.get("first_diverging_layer"),
               any(l.exceeds for l in r.layers) or any(d is not None and d.exceeds for st in r.steps for d in st),
               mismatch, w.seen[0].places, expected)


# ---------------------------------------------------------------------------------------------------------
# The choice of k


SAFETY = 2.0


def choose_k(exact_max: float) -> float:
    """k = SAFETY x the exact ports' worst x, rounded up to 2 significant digits: an exact port would have to stray
    twice as far as the worst excursion measured here to be flagged. The margin covers what the runs here cannot
    reach: the worst x grows slowly with the number of places judged (a Gumbel-like tail; see the table by prompt
    length), and users run longer contexts and more rows. A fault between the noise and k is not lost: the float32
    re-check finds it (the verdict then says "consistent with <precision>; in float32 it differs")."""
    k = SAFETY * exact_max
    digits = 1 - math.floor(math.log10(k))
    return math.ceil(round(k * 10**digits, 6)) / 10**digits  # round first: 2 x 2.6 is 5.2000000000000002 in floats


def kind(name: str, n_layer: int) -> str:
    if name == "block 0":
        return "block 0"
    if name == f"block {n_layer - 1}":
        return "last block"
    return "middle blocks" if name.startswith("block") else name


def fmt(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.3g}"


def report(runs: list[Run], crashed: dict[tuple[str, str], str], seconds: float) -> None:
    exact = [r for r in runs if r.expected is None]
    faulty = [r for r in runs if r.expected is not None]
    groups = sorted({r.case.group for r in runs})
    bad = max((r.mismatch for r in runs), default=0.0)
    print(f"\n{len(runs)} compare() runs: {len(exact)} of exact ports, {len(faulty)} with a fault; "
          f"derived ratio vs the report's: worst relative difference {bad:.1e}\n")

    print("### (a) HF's own error: max |Δlogit| (max over runs), and per layer kind max |Δ| / median relative")
    print("| regime | models | runs | max abs Δlogit | " + " | ".join(KINDS) + " |")
    print("|---|---|---|---|" + "---|" * len(KINDS))
    for regime in REGIMES:
        for g in groups:
            rs = [r for r in exact if r.regime == regime and r.case.group == g and r.subject == "ours"]
            if not rs:
                continue
            cells = []
            for kd in KINDS:
                ls = [l for r in rs for l in r.layers if kind(l.name, len(r.layers) - 3) == kd]
                cells.append(f"{max(l.own_max for l in ls):.2g} / {statistics.median(l.own_rel_median for l in ls):.1e}"
                             if ls else "-")
            print(f"| {regime} | {g} | {len(rs)} | {max(r.hf_own_logits for r in rs):.3g} | " + " | ".join(cells) + " |")

    print("\n### (b) exact ports: worst x = max over places of (|Δ| - float32 tol) / yardstick")
    print("| regime | " + " | ".join(PORTS) + " | worst at |")
    print("|---|" + "---|" * len(PORTS) + "---|")
    for regime in REGIMES:
        rs = [r for r in exact if r.regime == regime]
        worst = max(rs, key=lambda r: r.x)
        at = max(worst.layers, key=lambda l: l.x).name
        at = at if worst.x_at(at) >= worst.steps_x else "steps"
        cells = [fmt(max(r.x for r in rs if r.subject == p)) for p in PORTS]
        print(f"| {regime} | " + " | ".join(cells) + f" | {worst.subject}, {worst.case.family} {worst.case.label} "
              f"seed {worst.case.seed}, prompt {worst.prompt}, {at} |")
    by_group = {g: max(r.x for r in exact if r.case.group == g) for g in groups}
    print("by models: " + ", ".join(f"{g} {fmt(v)}" for g, v in by_group.items()))
    print("by prompt (places per layer = rows x positions; worst x over regimes and ports): " + ", ".join(
        f"{p}: {fmt(max(r.x for r in exact if r.prompt == p))} ({max(r.places for r in exact if r.prompt == p)})"
        for p in sorted({r.prompt for r in exact})))
    exact_max = max(r.x for r in exact)

    fault_names = list(dict.fromkeys([r.subject for r in faulty] + [f for f, _ in crashed]))
    k = choose_k(exact_max)
    how = f"{SAFETY:g} x the exact maximum, rounded up"
    false_alarms = sum(r.x > k for r in exact)
    print(f"\nk = PRECISION_FACTOR = {k:g} ({how}); exact maximum {exact_max:.3g}; false alarms at k: "
          f"{false_alarms} of {len(exact)} exact runs; at the module's PRECISION_FACTOR = {diffs.PRECISION_FACTOR:g} "
          f"the judge flagged {sum(r.judge_flagged for r in exact)} of {len(exact)}")

    print(f"\n### (c) faults: x at the fault's first layer, min-max over runs; seen directly (x > k = {k:g}) / "
          "found by the float32 re-check")
    print("| fault | " + " | ".join(REGIMES) + " |")
    print("|---|" + "---|" * len(REGIMES))
    for name in fault_names:
        cells = []
        for regime in REGIMES:
            rs = [r for r in faulty if r.subject == name and r.regime == regime]
            if not rs:
                cells.append("compare() raised" if (name, regime) in crashed else "-")
                continue
            xs = [r.x_at(r.expected) for r in rs]
            direct = sum(x > k for x in xs)
            recheck = sum(r.recheck_agree is False for r in rs if r.x_at(r.expected) <= k)
            impossible = sum(not r.recheck_possible for r in rs)
            cell = f"{fmt(min(xs))}-{fmt(max(xs))}: {direct}/{len(rs)} direct"
            if direct < len(rs):
                cell += f", {recheck}/{len(rs) - direct} re-check"
            if impossible:
                cell += f" ({impossible} re-check impossible)"
            cells.append(cell)
        print(f"| {name} | " + " | ".join(cells) + " |")
    for (name, regime), err in crashed.items():
        print(f"    {name} at {regime}: compare() raised {err}")
    misplaced = [r for r in faulty if r.x_at(r.expected) > k and r.first_flagged(k) != r.expected]
    missed = [r for r in faulty if r.x <= k and r.recheck_agree is not False and r.recheck_possible]
    blind = [r for r in faulty if r.x <= k and not r.recheck_possible]
    if blind:
        print(f"faults below k whose float32 re-check is impossible (the fault itself forces a dtype; the verdict says "
              f"such a fault cannot be excluded): {len(blind)}: "
              + ", ".join(sorted({f"{r.subject} at {r.regime}" for r in blind})))
    print(f"\nfaults seen directly but flagged first at another layer: {len(misplaced)}; "
          f"faults neither seen directly nor by the re-check: {len(missed)} of {len(faulty)}")
    for r in misplaced + missed:
        print(f"    {r.regime} {r.subject} on {r.case.family} {r.case.label} seed {r.case.seed} prompt {r.prompt}: "
              f"x at {r.expected} {fmt(r.x_at(r.expected))}, first over k {r.first_flagged(k)}, "
              f"re-check agree {r.recheck_agree} ({r.recheck_first})")

    print("\n### resolution per regime at k")
    print("| regime | HF's own max abs Δlogit | exact ports' worst x | false alarms | faults seen directly | "
          "left to the float32 re-check |")
    print("|---|---|---|---|---|---|")
    for regime in REGIMES:
        rs = [r for r in exact if r.regime == regime]
        fs = [r for r in faulty if r.regime == regime]
        ran = [n for n in fault_names if any(r.subject == n for r in fs)]
        always = [n for n in ran if all(r.x_at(r.expected) > k for r in fs if r.subject == n)]
        never = [n for n in ran if all(r.x_at(r.expected) <= k for r in fs if r.subject == n)]
        some = [n for n in ran if n not in always and n not in never]
        seen = ", ".join(always) + (f"; sometimes: {', '.join(some)}" if some else "")
        seen += "".join(f"; {n}: compare() raised" for n in fault_names if (n, regime) in crashed and n not in ran)
        print(f"| {regime} | {max(r.hf_own_logits for r in rs):.3g} | {max(r.x for r in rs):.3g} "
              f"| {sum(r.x > k for r in rs)} of {len(rs)} | {seen} | {', '.join(never) or '-'} |")
    odd = [r for r in runs if r.judge_flagged != (r.x > diffs.PRECISION_FACTOR)]
    print(f"\nruns where the report's own flags (at PRECISION_FACTOR = {diffs.PRECISION_FACTOR:g}) disagree with "
          f"x > {diffs.PRECISION_FACTOR:g}: {len(odd)} of {len(runs)}")
    print(f"\n({seconds:.0f} s)")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a 1-2 minute subset (tests/test_precision.py's two models)")
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    tokenizer = load_tokenizer()
    t0 = time.perf_counter()
    runs: list[Run] = []
    crashed: dict[tuple[str, str], str] = {}  # (fault, regime) -> the error compare() raised
    for case in cases(args.quick):
        hf = case.build()
        ports = {name: make(hf) for name, make in PORTS.items()}
        t = time.perf_counter()
        n = len(runs)
        for regime in REGIMES:
            for prompt in case.prompts:
                for name, model in ports.items():
                    runs.append(one_run(case, hf, model, regime, prompt, name, None, tokenizer))
            for prompt in case.fault_prompts:
                for fault in case.faults:
                    try:
                        runs.append(one_run(case, hf, ports["ours"], regime, prompt, fault, fault, tokenizer))
                    except Exception as e:  # a fault that cannot run in this regime at all
                        crashed.setdefault((fault, regime), f"{type(e).__name__}: {str(e).splitlines()[0]}")
        new = runs[n:]
        ex = [r.x for r in new if r.expected is None]
        print(f"{case.family} {case.label} seed {case.seed}: {len(new)} runs in {time.perf_counter() - t:.0f} s; "
              f"exact ports' worst x {max(ex):.3g}", flush=True)
    report(runs, crashed, time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
