"""GPT-2 written with numpy only (no torch), as an implementation in "another framework" would be: it loads a
checkpoint's model.safetensors, runs on the token ids of a reference exported by `python -m core.parity export`,
and writes a result file that `python -m core.parity check` judges (format: docs/dump-format.md).

    python -m core.parity export --model gpt2 --out ref --layers
    python examples/numpy_gpt2.py --checkpoint gpt2 --reference ref --out numpy_result.safetensors
    python -m core.parity check --reference ref --yours numpy_result.safetensors

--mistake injects a porting bug (to see what the check says); --dtype float64 computes in double precision.
Its only dependencies are numpy and safetensors (and huggingface_hub to fetch a Hub checkpoint by name).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

MISTAKES = {
    "none": "a faithful port",
    "ln_eps": "LayerNorm eps 1e-6 instead of the checkpoint's 1e-5 (every LayerNorm)",
    "last_block_no_scale": "attention scores not divided by sqrt(head_dim) in the last block only",
    "gelu_relu": "ReLU instead of GELU in the first block's MLP",
}


# ---------------------------------------------------------------------------------------------------------
# The model


def load_checkpoint(name_or_dir: str, dtype) -> tuple[dict[str, np.ndarray], dict]:
    """Weights (HF's names without the 'transformer.' prefix; Conv1D weights stay (in, out)) and config.json."""
    folder = name_or_dir
    if not os.path.isdir(folder):
        from huggingface_hub import snapshot_download  # a Hub id: fetch (or reuse the cache) only what we read

        folder = snapshot_download(name_or_dir, allow_patterns=["config.json", "model.safetensors"])
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    weights = {}
    for key, value in load_file(os.path.join(folder, "model.safetensors")).items():
        key = key.removeprefix("transformer.")
        if key.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # old checkpoints store the causal mask as a buffer
        weights[key] = value.astype(dtype)
    return weights, config


def layer_norm(x, gain, bias, eps):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gain + bias


def gelu(x):
    """GPT-2's GELU: the tanh approximation."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def attention(x, w, p, n_head, scale=True):
    B, T, C = x.shape
    hd = C // n_head
    qkv = x @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]  # (B, T, 3C)
    q, k, v = (a.reshape(B, T, n_head, hd).transpose(0, 2, 1, 3) for a in np.split(qkv, 3, axis=-1))
    scores = q @ k.transpose(0, 1, 3, 2)  # (B, H, T, T)
    if scale:
        scores = scores / np.sqrt(np.asarray(hd, dtype=x.dtype))
    future = np.triu(np.ones((T, T), dtype=bool), k=1)
    scores = np.where(future, -np.inf, scores)
    y = softmax(scores) @ v  # (B, H, T, hd)
    y = y.transpose(0, 2, 1, 3).reshape(B, T, C)
    return y @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]


def forward(w, config, ids: np.ndarray, mistake: str = "none"):
    """ids (B, T) -> logits (B, T, V) and the residual stream [embeddings, each block, ln_f] (each (B, T, C))."""
    n_layer, n_head = config["n_layer"], config["n_head"]
    eps = 1e-6 if mistake == "ln_eps" else config.get("layer_norm_epsilon", 1e-5)
    T = ids.shape[1]
    x = w["wte.weight"][ids] + w["wpe.weight"][np.arange(T)]
    hidden = [x]
    for i in range(n_layer):
        p = f"h.{i}."
        scale = not (mistake == "last_block_no_scale" and i == n_layer - 1)
        x = x + attention(layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"], eps), w, p, n_head, scale)
        h = layer_norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"], eps) @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"]
        act = np.maximum(h, 0) if (mistake == "gelu_relu" and i == 0) else gelu(h)
        x = x + act @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
        hidden.append(x)
    x = layer_norm(x, w["ln_f.weight"], w["ln_f.bias"], eps)
    hidden.append(x)
    head = w.get("lm_head.weight", w["wte.weight"])  # tied to the token embeddings in GPT-2
    return x @ head.T, hidden


# ---------------------------------------------------------------------------------------------------------
# Our own sampling loop (numpy's RNG: same distribution as HF's, different random numbers)


def sample(w, config, prompt_ids: list[int], settings: dict, eos: int, mistake: str) -> np.ndarray:
    """Rows grown from the prompt under the case's settings, recomputing the whole sequence at each step
    (no KV cache); rows that produce eos are padded with eos, and sampling stops when every row has."""
    rows = settings["num_return_sequences"]
    n_new = settings["max_new_tokens"] or settings["max_length"] - len(prompt_ids)
    greedy = settings["method"] == "greedy" or not settings["do_sample"] or settings["temperature"] == 0
    rng = np.random.default_rng(settings["seed"])
    seqs = np.tile(np.asarray(prompt_ids, dtype=np.int64), (rows, 1))
    done = np.zeros(rows, dtype=bool)
    for _ in range(n_new):
        logits, _ = forward(w, config, seqs, mistake)
        logits = logits[:, -1].astype(np.float64)
        if greedy:
            nxt = logits.argmax(axis=-1)
        else:
            logits = logits / settings["temperature"]
            if settings["top_k"]:
                kth = np.sort(logits, axis=-1)[:, -settings["top_k"]][:, None]
                logits = np.where(logits < kth, -np.inf, logits)
            probs = softmax(logits)
            if settings["top_p"] < 1.0:  # keep the smallest set of most likely tokens with mass >= top_p
                order = np.argsort(-probs, axis=-1)
                sorted_p = np.take_along_axis(probs, order, axis=-1)
                drop_sorted = np.cumsum(sorted_p, axis=-1) - sorted_p >= settings["top_p"]
                drop = np.zeros_like(drop_sorted)
                np.put_along_axis(drop, order, drop_sorted, axis=-1)
                probs = np.where(drop, 0.0, probs)
                probs = probs / probs.sum(axis=-1, keepdims=True)
            nxt = np.array([rng.choice(p.size, p=p) for p in probs])
        nxt = np.where(done, eos, nxt)
        seqs = np.concatenate([seqs, nxt[:, None]], axis=1)
        done |= nxt == eos
        if done.all():
            break
    return seqs


# ---------------------------------------------------------------------------------------------------------
# Reference in, result out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="GPT-2 in numpy: write a result file for `python -m core.parity check`")
    ap.add_argument("--checkpoint", required=True, help="directory with config.json + model.safetensors, or a Hub id")
    ap.add_argument("--reference", required=True, help="directory written by `python -m core.parity export`")
    ap.add_argument("--out", required=True, help="the result file to write (.safetensors)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--mistake", default="none", choices=sorted(MISTAKES), help="inject a porting bug")
    ap.add_argument("--no-layers", action="store_true", help="do not write the residual stream")
    ap.add_argument("--no-sampling", action="store_true", help="do not write our own sampled ids")
    args = ap.parse_args(argv)

    dtype = np.dtype(args.dtype)
    weights, config = load_checkpoint(args.checkpoint, dtype)
    with open(os.path.join(args.reference, "result_template.json"), encoding="utf-8") as f:
        template = json.load(f)
    manifest = template["manifest"]
    manifest["implementation"] = {"name": "examples/numpy_gpt2.py", "framework": f"numpy {np.__version__}",
                                  "dtype": args.dtype, "notes": MISTAKES[args.mistake]}
    manifest["sampler"] = "other"  # numpy's random numbers, not torch's
    eos = config.get("eos_token_id", 50256)

    tensors = {}
    with safe_open(os.path.join(args.reference, "reference.safetensors"), framework="numpy") as f:
        streams = {case["name"]: f.get_tensor(case["name"] + ".tokens") for case in manifest["cases"]}
    for case in manifest["cases"]:
        name, P = case["name"], len(case["prompt_ids"])
        tokens = streams[name]  # (B, T): the very token ids HF's numbers were computed on
        logits, hidden = forward(weights, config, tokens[:, :-1], args.mistake)
        tensors[name + ".tokens"] = tokens
        tensors[name + ".logits"] = np.ascontiguousarray(logits[:, P - 1:])  # the positions that predict new tokens
        if not args.no_layers and manifest["layers"]:
            tensors[name + ".hidden"] = np.stack(hidden)  # (n_layer + 2, B, T - 1, C)
        if not args.no_sampling:
            tensors[name + ".sampled"] = sample(weights, config, case["prompt_ids"], case["settings"], eos,
                                                args.mistake)
    save_file(tensors, args.out, metadata={template["metadata_key"]: json.dumps(manifest)})
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 2**20:.1f} MiB, {len(manifest['cases'])} case(s), "
          f"{args.dtype}, mistake: {args.mistake})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
