"""Benchmark: the dump route (export -> a result file -> check) against compare() on the seed's case, in one process.

The seed's case: 5 rows grown to 30 tokens from "Hello, I'm a language model,", top-k 50, seed 42, on the
gpt2-124M shape (random init, logits sharpened to std ~3 like a trained model's), ours sharing HF's weights.
Prints:
  - dump sizes: the reference with and without --layers, and our model's result with layers and sampled ids;
  - median times over alternating runs: export (HF generate() + one teacher-forced forward + writing), check
    (reading and validating the result, judging it), compare(reference="generate") and HF generate() alone,
    with each one's ratio to compare();
  - the numpy example (examples/numpy_gpt2.py, no torch) in float32 and float64: its verdict and its worst
    max|Δ| / tolerance over every layer and step (float noise must stay well below 1).
Run: `.venv/bin/python bench/bench_dump.py`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core import compare, load_tokenizer, port_from_hf  # noqa: E402
from core.parity.dump import (  # noqa: E402
    compare_dump, export_reference, load_reference, make_cases, result_from_gpt, save_reference, save_result,
)
from core.structured import random_gpt2  # noqa: E402

PROMPT = "Hello, I'm a language model,"
SEED_CASE = dict(num_return_sequences=5, max_length=30, top_k=50)


def bpe_dir() -> str:
    return os.environ.get("GPT2_BPE_DIR") or str(ROOT.parent / "shared" / "gpt2-bpe")


def mib(path: Path) -> str:
    return f"{path.stat().st_size / 2**20:.1f} MiB"


def worst_ratio(check) -> str:
    """max over cases, layers and steps of max|Δ| / tolerance, each place (row, position; for the logits, step and
    row) against its own tolerance, as the check judges it (> 1 is flagged), and where it is."""
    ratios = [(layer.ratio, layer.name) for r in check.reports for layer in r.layers]
    ratios += [(d.max_abs_dlogit / d.tolerance, f"step {d.step}") for r in check.reports for st in r.steps
               for d in st if d is not None]
    ratio, where = max(ratios)
    return f"{ratio:.3f} ({where})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-timings", action="store_true", help="only sizes and the numpy example")
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    tok = load_tokenizer(bpe_dir())
    hf = random_gpt2(seed=0, logit_std=3.0)  # GPT-2's 124M shape
    ours = port_from_hf(hf)
    ids = torch.tensor([tok.encode(PROMPT)])
    work = Path(tempfile.mkdtemp(prefix="bench-dump-"))
    try:
        ckpt = work / "ckpt"
        hf.save_pretrained(ckpt)
        cases = make_cases([PROMPT], tok, [42], **SEED_CASE)
        out: dict = {}

        def export(layers: bool):
            def run():
                ref = export_reference(hf, cases, model="gpt2-124M-random", layers=layers, tokenizer=tok)
                save_reference(ref, work / ("ref_layers" if layers else "ref"))
            return run

        export(True)()
        export(False)()
        ref = load_reference(work / "ref_layers")
        result = save_result(work / "ours.safetensors", *result_from_gpt(ours, ref))

        def check():
            out["check"] = compare_dump(work / "ref_layers", result, tokenizer=tok)

        def live():
            out["compare"] = compare((ours, hf), PROMPT, tokenizer=tok, reference="generate", seed=42, **SEED_CASE)

        def hf_generate():
            torch.manual_seed(42)
            hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, **SEED_CASE)

        jobs = {"export (no layers)": export(False), "export (--layers)": export(True), "check": check,
                "compare(reference='generate')": live, "HF generate() alone": hf_generate}
        times: dict[str, list[float]] = {k: [] for k in jobs}
        for _ in range(0 if args.skip_timings else args.repeats):
            for name, fn in jobs.items():
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
        if args.skip_timings:
            check()
        else:
            assert out["compare"].verdict_kind == "identical", out["compare"].verdict
        assert out["check"].agree and out["check"].reports[0].verdict_kind == "identical", out["check"].reports[0].verdict

        print(f"seed's case at the 124M shape (5 rows x 30 tokens, vocab 50257), torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads")
        print(f"  reference without layers: {mib(work / 'ref' / 'reference.safetensors')}")
        print(f"  reference with --layers:  {mib(work / 'ref_layers' / 'reference.safetensors')}")
        print(f"  result (ours: logits + hidden + sampled ids): {mib(result)}")
        base = statistics.median(times["compare(reference='generate')"] or [1.0])
        print(f"median of {args.repeats} alternating runs:")
        for name, ts in times.items() if not args.skip_timings else ():
            m = statistics.median(ts)
            print(f"  {name:<32} {m:7.2f} s   {m / base:5.2f}x compare()")

        for dtype in ("float32", "float64"):
            res = work / f"numpy_{dtype}.safetensors"
            t = time.perf_counter()
            subprocess.run([sys.executable, str(ROOT / "examples" / "numpy_gpt2.py"), "--checkpoint", str(ckpt),
                            "--reference", str(work / "ref_layers"), "--out", str(res), "--dtype", dtype],
                           check=True, capture_output=True)
            wall = time.perf_counter() - t
            chk = compare_dump(work / "ref_layers", res, tokenizer=tok)
            r = chk.reports[0]
            print(f"  numpy example {dtype}: {wall:.1f} s, {mib(res)}, verdict {r.verdict_kind!r} "
                  f"(agree={chk.agree}), worst max|Δ|/tolerance {worst_ratio(chk)}, "
                  f"max|Δlogit| {r.max_abs_dlogit:.2e}")
        print(f"  ours (torch, as a result file): worst max|Δ|/tolerance {worst_ratio(out['check'])}")
        from core.cli import format_report

        res = work / "numpy_mistake.safetensors"
        subprocess.run([sys.executable, str(ROOT / "examples" / "numpy_gpt2.py"), "--checkpoint", str(ckpt),
                        "--reference", str(work / "ref_layers"), "--out", str(res), "--mistake",
                        "last_block_no_scale", "--no-sampling"], check=True, capture_output=True)
        report = compare_dump(work / "ref_layers", res, tokenizer=tok).reports[0]
        print("numpy example with --mistake last_block_no_scale:")
        print("\n".join(format_report(report).splitlines()[:20]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
