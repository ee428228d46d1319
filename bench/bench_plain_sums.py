"""Benchmark: how much float noise a correct port that sums in plain order shows against HF's reference.

A float32 GPT-2 forward in numpy where every sum (each dot product, LayerNorm's mean and variance, softmax's
normaliser) runs in plain sequential order, as naive loops in C would: no blocked or pairwise sums as BLAS and
numpy make them, so its rounding differs from HF's as much as an independent port's may. It runs on the seed's
case at the gpt2-124M shape (random init, logits sharpened to std ~3, as bench/bench_dump.py builds it), writes
a result file and prints, per layer, the check's worst max|Δ| / tolerance (each row and position against its
own tolerance; > 1 is flagged). docs/dump-format.md quotes the worst.
Run: `.venv/bin/python bench/bench_plain_sums.py` (a few minutes: the sums are Python loops over numpy rows).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

import numpy_gpt2  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from core import load_tokenizer  # noqa: E402
from core.parity.dump import compare_dump, export_reference, make_cases, save_reference  # noqa: E402

PROMPT = "Hello, I'm a language model,"
SEED_CASE = dict(num_return_sequences=5, max_length=30, top_k=50)
F32 = np.float32


def matmul(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x (..., K) @ w (K, N), accumulated over k = 0, 1, ..., K-1 in that order."""
    out = np.zeros(x.shape[:-1] + (w.shape[1],), dtype=F32)
    for k in range(x.shape[-1]):
        out += x[..., k : k + 1] * w[k]
    return out


def plain_sum(x: np.ndarray) -> np.ndarray:
    """Sum over the last axis in order (cumsum is sequential), keeping the axis."""
    return np.cumsum(x, axis=-1, dtype=F32)[..., -1:]


def layer_norm(x, gain, bias, eps):
    C = F32(x.shape[-1])
    mean = plain_sum(x) / C
    var = plain_sum((x - mean) ** 2) / C
    return (x - mean) / np.sqrt(var + F32(eps)) * gain + bias


def attention(x, w, p, n_head):
    B, T, C = x.shape
    hd = C // n_head
    qkv = matmul(x, w[p + "attn.c_attn.weight"]) + w[p + "attn.c_attn.bias"]
    q, k, v = (a.reshape(B, T, n_head, hd).transpose(0, 2, 1, 3) for a in np.split(qkv, 3, axis=-1))
    scores = np.zeros((B, n_head, T, T), dtype=F32)
    for d in range(hd):
        scores += q[..., d : d + 1] * k[..., d][:, :, None, :]
    scores = np.where(np.triu(np.ones((T, T), dtype=bool), k=1), -np.inf, scores / np.sqrt(F32(hd)))
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    att = e / plain_sum(e)
    y = np.zeros((B, n_head, T, hd), dtype=F32)
    for j in range(T):
        y += att[..., j : j + 1] * v[:, :, j : j + 1, :]
    y = y.transpose(0, 2, 1, 3).reshape(B, T, C)
    return matmul(y, w[p + "attn.c_proj.weight"]) + w[p + "attn.c_proj.bias"]


def forward(w, config, ids):
    """ids (B, T) -> logits (B, T, V) and the residual stream [embeddings, each block, ln_f]."""
    eps = config.get("layer_norm_epsilon", 1e-5)
    x = w["wte.weight"][ids] + w["wpe.weight"][np.arange(ids.shape[1])]
    hidden = [x]
    for i in range(config["n_layer"]):
        p = f"h.{i}."
        x = x + attention(layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"], eps), w, p, config["n_head"])
        h = matmul(layer_norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"], eps), w[p + "mlp.c_fc.weight"])
        h = h + w[p + "mlp.c_fc.bias"]
        x = x + matmul(numpy_gpt2.gelu(h), w[p + "mlp.c_proj.weight"]) + w[p + "mlp.c_proj.bias"]
        hidden.append(x)
    x = layer_norm(x, w["ln_f.weight"], w["ln_f.bias"], eps)
    hidden.append(x)
    head = w.get("lm_head.weight", w["wte.weight"])
    return matmul(x, np.ascontiguousarray(head.T)), hidden


def main() -> int:
    torch.set_grad_enabled(False)
    tok = load_tokenizer(None)
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config()).eval()
    hf.transformer.ln_f.weight.mul_(3.0 / (0.02 * hf.config.n_embd**0.5))
    work = Path(tempfile.mkdtemp(prefix="bench-plain-sums-"))
    try:
        hf.save_pretrained(work / "ckpt")
        cases = make_cases([PROMPT], tok, [42], **SEED_CASE)
        save_reference(export_reference(hf, cases, model="gpt2-124M-random", layers=True, tokenizer=tok),
                       work / "ref")
        weights, config = numpy_gpt2.load_checkpoint(str(work / "ckpt"), F32)
        manifest = json.loads((work / "ref" / "result_template.json").read_text())["manifest"]
        manifest["implementation"] = {"name": "bench/bench_plain_sums.py", "framework": f"numpy {np.__version__}",
                                      "dtype": "float32", "notes": "every sum in plain sequential order"}
        tensors = {}
        with safe_open(str(work / "ref" / "reference.safetensors"), framework="numpy") as f:
            for case in manifest["cases"]:
                tokens, P = f.get_tensor(case["name"] + ".tokens"), len(case["prompt_ids"])
                logits, hidden = forward(weights, config, tokens[:, :-1])
                tensors[case["name"] + ".tokens"] = tokens
                tensors[case["name"] + ".logits"] = np.ascontiguousarray(logits[:, P - 1 :])
                tensors[case["name"] + ".hidden"] = np.stack(hidden)
        save_file(tensors, str(work / "plain.safetensors"), metadata={"gpt2_parity_dump": json.dumps(manifest)})
        report = compare_dump(work / "ref", work / "plain.safetensors", tokenizer=tok).reports[0]
        print(f"plain-order float32 port vs HF, seed's case at the 124M shape: verdict {report.verdict_kind!r}")
        for layer in report.layers:
            print(f"  {layer.name:<12} worst max|Δ|/tolerance {layer.ratio:.3f}")
        steps = max(d.max_abs_dlogit / d.tolerance for st in report.steps for d in st if d is not None)
        worst = max(report.layers, key=lambda layer: layer.ratio)
        print(f"worst: {worst.ratio:.3f} ({worst.name}); per step and row: {steps:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
