"""Training parity by data exchange, for implementations that cannot run in this process (C, CUDA, Rust, JAX...):
the dump format's training kind, and llm.c's own debug state file.

Training kind (docs/dump-format.md, "Training"): one safetensors file per side, the manifest as JSON in its
metadata under dump.METADATA_KEY. The reference ("training-reference", written by export_training_reference from
HF's model): `x`, `y` (B, T) int64, `loss` (1,), `logits` (B, T, V) and `grad.<HF name>` for every parameter in HF's
layout (Conv1D weights (in, out)), float32. A result ("training-result", written by your code) holds the same
tensors computed by your implementation (`x`, `y` optional; logits may have a padded vocabulary).

llm.c (karpathy/llm.c, train_gpt2.py write_state, read by test_gpt2.c): a header of 256 int32 (magic 20240327,
version 2, B, T), then x and y (B*T int32 each), the logits (B*T*V float32, V = 50257), the loss (one float32) and
every parameter's gradient in llm.c's order and layout: wte (V or Vp, C; newer llm.c pads the vocabulary to
Vp = 50304 with zero rows), wpe (maxT, C), then for each kind the L blocks stacked: c_attn.weight (3C, C) and bias,
attn c_proj.weight (C, C) and bias, c_fc.weight (4C, C) and bias, mlp c_proj.weight (C, 4C) and bias (nn.Linear's
(out, in): HF's Conv1D transposed), ln_1 weight and bias, ln_2 weight and bias, then ln_f weight and bias.

Both are judged by train_judge.judge_training like compare_training's runs (there is no residual stream in a file:
the loss, the logits and every parameter's gradient). Knows file layouts and HF's names; a file is only data.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from ..precision import FLOAT32
from .dump import FORMAT, METADATA_KEY, VERSION, DumpError, read_header
from .training import Matching, Piece, SideRun, backward_order, hf_layer_of, make_batch

LLMC_MAGIC = 20240327
LLMC_VERSION = 2
LLMC_HEADER_INTS = 256
MAX_TRAINING_BYTES = 4 << 30


@dataclass
class TrainingDump:
    """One side of a training step as data: the batch, the loss, the logits, every gradient in HF's layout."""

    x: torch.Tensor | None
    y: torch.Tensor | None
    loss: float
    logits: torch.Tensor | None  # (B, T, V') float32
    grads: dict[str, torch.Tensor]  # HF name -> gradient (HF layout)
    manifest: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------
# The lab's training kind


def hf_training_step(hf, x: torch.Tensor, y: torch.Tensor) -> TrainingDump:
    """HF's model on (x, y) in train mode without dropout: loss, logits and gradients (a copy is trained)."""
    from .training import training_copy, train_mode_without_dropout

    model = training_copy(hf, "HF's model").float()
    with train_mode_without_dropout(model):
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        loss.backward()
    grads = {n: p.grad.detach().float() for n, p in model.named_parameters()}
    return TrainingDump(x, y, float(loss.detach()), logits.detach().float(), grads)


def _config(hf_config) -> dict:
    return {k: int(getattr(hf_config, k)) for k in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")} | {
        "n_inner": int(hf_config.n_inner or 4 * hf_config.n_embd),
        "tie_word_embeddings": bool(getattr(hf_config, "tie_word_embeddings", True))}


def export_training_reference(hf, path: str | os.PathLike, *, batch_size: int = 4, seq_len: int = 64, seed: int = 0,
                              model: str = "custom") -> Path:
    """HF's training step on a batch drawn from `seed` to one safetensors file (kind "training-reference")."""
    x, y = make_batch(batch_size, seq_len, int(hf.config.vocab_size), seed)
    ref = hf_training_step(hf, x, y)
    manifest = {"format": FORMAT, "version": VERSION, "kind": "training-reference", "model": model,
                "config": _config(hf.config), "batch": {"batch_size": batch_size, "seq_len": seq_len, "seed": seed},
                "parameters": {n: list(g.shape) for n, g in ref.grads.items()},
                "layout": "HF GPT2LMHeadModel names and shapes (Conv1D weights are (in, out))",
                "loss": "mean cross-entropy of logits[:, t] against y[:, t] = x[:, t + 1] over B x T"}
    return save_training(path, manifest, {"x": x, "y": y, "loss": torch.tensor([ref.loss]), "logits": ref.logits,
                                          **{f"grad.{n}": g for n, g in ref.grads.items()}})


def save_training(path: str | os.PathLike, manifest: dict, tensors: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(path),
              metadata={METADATA_KEY: json.dumps(manifest)})
    return Path(path)


def training_result_manifest(reference: dict, implementation: dict | None = None) -> dict:
    """A result's manifest for a training reference's manifest: its model, config and batch copied."""
    return {"format": FORMAT, "version": VERSION, "kind": "training-result", "model": reference["model"],
            "config": reference["config"], "batch": reference["batch"],
            "implementation": implementation or {"name": "", "framework": ""}}


def load_training(path: str | os.PathLike, kind: str, *, max_bytes: int = MAX_TRAINING_BYTES) -> TrainingDump:
    """A training reference or result file, checked: its manifest, every tensor's dtype and finiteness."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise DumpError(f"no {kind} file at {str(path)!r}")
    read_header(p, max_bytes, f"the {kind} file")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            if METADATA_KEY not in meta:
                raise DumpError(f"the {kind} file has no manifest under {METADATA_KEY!r} in its metadata")
            try:
                manifest = json.loads(meta[METADATA_KEY])
            except json.JSONDecodeError as exc:
                raise DumpError(f"the {kind} file's manifest is not valid JSON ({exc.msg})") from None
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("kind") != kind:
                got = manifest.get("kind") if isinstance(manifest, dict) else None
                raise DumpError(f"the {kind} file is not a {FORMAT} {kind} (kind {got!r})")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as exc:
        raise DumpError(f"the {kind} file is not a valid safetensors file: {exc}") from None
    for name in ("loss", "logits"):
        if name not in tensors:
            raise DumpError(f"the {kind} file has no tensor {name!r}")
    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise DumpError(f"the {kind} file's tensor {name!r} has {int((~torch.isfinite(t)).sum())} NaN/Inf values")
    grads = {k.removeprefix("grad."): v.float() for k, v in tensors.items() if k.startswith("grad.")}
    return TrainingDump(tensors.get("x"), tensors.get("y"), float(tensors["loss"].float().reshape(-1)[0]),
                        tensors["logits"].float(), grads, manifest)


# ---------------------------------------------------------------------------------------------------------
# llm.c's debug state


def llmc_order(n_layer: int) -> list[tuple[str, bool]]:
    """(HF name, stored transposed) in llm.c's order: wte, wpe, each kind over the L blocks, ln_f."""
    order = [("transformer.wte.weight", False), ("transformer.wpe.weight", False)]
    kinds = [("attn.c_attn.weight", True), ("attn.c_attn.bias", False), ("attn.c_proj.weight", True),
             ("attn.c_proj.bias", False), ("mlp.c_fc.weight", True), ("mlp.c_fc.bias", False),
             ("mlp.c_proj.weight", True), ("mlp.c_proj.bias", False), ("ln_1.weight", False), ("ln_1.bias", False),
             ("ln_2.weight", False), ("ln_2.bias", False)]
    for kind, transposed in kinds:
        order += [(f"transformer.h.{i}.{kind}", transposed) for i in range(n_layer)]
    return order + [("transformer.ln_f.weight", False), ("transformer.ln_f.bias", False)]


def read_llmc_state(path: str | os.PathLike, hf_config, *, max_bytes: int = MAX_TRAINING_BYTES) -> TrainingDump:
    """llm.c's gpt2_124M_debug_state.bin (or any model's, with `hf_config` giving its shape) -> a TrainingDump
    with the gradients in HF's layout. The vocabulary of wte's gradient (V, or llm.c's padded Vp) is read from the
    file's size."""
    p = Path(path)
    if not p.is_file():
        raise DumpError(f"no llm.c state file at {str(path)!r}")
    size = p.stat().st_size
    if size > max_bytes:
        raise DumpError(f"the llm.c state file is {size / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:.0f} MiB")
    if size < LLMC_HEADER_INTS * 4:
        raise DumpError(f"the llm.c state file is {size} bytes, shorter than its {LLMC_HEADER_INTS * 4}-byte header")
    raw = np.fromfile(p, dtype="<i4", count=LLMC_HEADER_INTS)
    if int(raw[0]) != LLMC_MAGIC:
        raise DumpError(f"not an llm.c debug state file: magic {int(raw[0])}, expected {LLMC_MAGIC}")
    if int(raw[1]) != LLMC_VERSION:
        raise DumpError(f"llm.c state version {int(raw[1])}; this lab reads version {LLMC_VERSION}")
    B, T = int(raw[2]), int(raw[3])
    V, C, L, P = (int(hf_config.vocab_size), int(hf_config.n_embd), int(hf_config.n_layer),
                  int(hf_config.n_positions))
    if not (0 < B <= 4096 and 0 < T <= P):
        raise DumpError(f"the llm.c state's batch B={B}, T={T} does not fit the model (context {P})")
    mlp = int(hf_config.n_inner or 4 * C)
    shapes = _hf_shapes(hf_config)
    rest = sum(int(np.prod(s)) for n, s in shapes.items() if n != "transformer.wte.weight")
    head = LLMC_HEADER_INTS * 4 + 2 * B * T * 4 + B * T * V * 4 + 4
    grad_floats, rem = divmod(size - head, 4)
    rows, rem2 = divmod(grad_floats - rest, C) if grad_floats > rest else (0, 1)
    if rem or rem2 or rows < V:
        raise DumpError(f"the llm.c state file's size ({size:,} bytes) does not fit B={B}, T={T} and this model's "
                        f"parameters (V={V}, C={C}, L={L}, MLP {mlp}, context {P}): is it another model's state?")
    with open(p, "rb") as f:
        f.seek(LLMC_HEADER_INTS * 4)
        x = torch.from_numpy(np.fromfile(f, dtype="<i4", count=B * T).astype(np.int64)).view(B, T)
        y = torch.from_numpy(np.fromfile(f, dtype="<i4", count=B * T).astype(np.int64)).view(B, T)
        logits = torch.from_numpy(np.fromfile(f, dtype="<f4", count=B * T * V).copy()).view(B, T, V)
        loss = float(np.fromfile(f, dtype="<f4", count=1)[0])
        grads = {}
        for name, transposed in llmc_order(L):
            shape = shapes[name]
            if name == "transformer.wte.weight":
                stored = (rows, C)
            else:
                stored = shape[::-1] if transposed else shape
            t = torch.from_numpy(np.fromfile(f, dtype="<f4", count=int(np.prod(stored))).copy()).view(*stored)
            grads[name] = (t.t() if transposed else t)[: shape[0]].contiguous() if name == "transformer.wte.weight" \
                else (t.t().contiguous() if transposed else t)
    if int(x.min()) < 0 or int(x.max()) >= V or int(y.min()) < 0 or int(y.max()) >= V:
        raise DumpError(f"the llm.c state's x or y holds ids outside [0, {V})")
    return TrainingDump(x, y, loss, logits, grads, {"kind": "llm.c debug state", "B": B, "T": T, "wte_rows": rows})


def _hf_shapes(cfg) -> dict[str, tuple[int, ...]]:
    """HF GPT2LMHeadModel's parameter names and shapes for a config (its named_parameters order)."""
    V, C, P = int(cfg.vocab_size), int(cfg.n_embd), int(cfg.n_positions)
    M = int(getattr(cfg, "n_inner", None) or 4 * C)
    shapes = {"transformer.wte.weight": (V, C), "transformer.wpe.weight": (P, C)}
    for i in range(int(cfg.n_layer)):
        p = f"transformer.h.{i}."
        shapes.update({p + "ln_1.weight": (C,), p + "ln_1.bias": (C,), p + "attn.c_attn.weight": (C, 3 * C),
                       p + "attn.c_attn.bias": (3 * C,), p + "attn.c_proj.weight": (C, C), p + "attn.c_proj.bias": (C,),
                       p + "ln_2.weight": (C,), p + "ln_2.bias": (C,), p + "mlp.c_fc.weight": (C, M),
                       p + "mlp.c_fc.bias": (M,), p + "mlp.c_proj.weight": (M, C), p + "mlp.c_proj.bias": (C,)})
    shapes.update({"transformer.ln_f.weight": (C,), "transformer.ln_f.bias": (C,)})
    if not getattr(cfg, "tie_word_embeddings", True):
        shapes["lm_head.weight"] = (V, C)
    return shapes


# ---------------------------------------------------------------------------------------------------------
# Judging a file against HF


def _side(d: TrainingDump, vocab: int) -> SideRun:
    return SideRun(loss=d.loss, logits=d.logits[..., :vocab].float() if d.logits is not None else None, hidden=None,
                   stream_grads=None, grads=d.grads, loss_source="the loss in the file",
                   why_no_layers="a file holds no residual stream")


def _identity_matching(names: list[str], have: set[str], n_layer: int) -> Matching:
    order = backward_order(names, n_layer)
    return Matching(pieces={n: Piece(n, "same") for n in names if n in have}, aliases={n: [n] for n in names},
                    hf_order=order, hf_layer={n: hf_layer_of(n) for n in order}, unmatched=[],
                    missing=[n for n in names if n not in have])


def judge_dump(yours: TrainingDump, hf_side: TrainingDump, hf_config, *, model: str, label: str):
    """A file's training step against HF's (from a reference file, or HF run on the file's batch)."""
    from .train_judge import judge_training

    V = int(hf_config.vocab_size)
    names = list(_hf_shapes(hf_config))
    for n, g in yours.grads.items():
        if n in hf_side.grads and tuple(g.shape) != tuple(hf_side.grads[n].shape):
            raise DumpError(f"gradient {n!r} has shape {tuple(g.shape)}; HF's is {tuple(hf_side.grads[n].shape)}")
    if yours.logits is None or tuple(yours.logits.shape[:2]) != tuple(hf_side.logits.shape[:2]) \
            or yours.logits.size(-1) < V:
        got = None if yours.logits is None else tuple(yours.logits.shape)
        raise DumpError(f"logits of shape {got}; expected {tuple(hf_side.logits.shape)}")
    matching = _identity_matching(names, set(yours.grads), int(hf_config.n_layer))
    ys, hs = _side(yours, V), _side(hf_side, V)
    ys.no_grad = []
    x, y = hf_side.x, hf_side.y
    return judge_training(ys, hs, None, [], matching, hf_config, precision=FLOAT32, batch=(x, y),
                          model_name=model, fault=None, label=label, optimizer="none", lr=0.0)


def compare_training_dump(reference: str | os.PathLike, result: str | os.PathLike, *, label: str = "Result file"):
    """A training result file against a training reference file (both the lab's training kind)."""
    ref = load_training(reference, "training-reference")
    res = load_training(result, "training-result")
    cfg = SimpleNamespace(**ref.manifest["config"])
    for name in ("x", "y"):
        t = getattr(res, name)
        if t is not None and not torch.equal(t.long(), getattr(ref, name).long()):
            raise DumpError(f"the result's {name} is not the reference's batch: compute it on the reference's x, y")
    return judge_dump(res, ref, cfg, model=ref.manifest.get("model", "custom"), label=label)


def compare_llmc_state(path: str | os.PathLike, hf, *, model: str = "custom", label: str = "llm.c state"):
    """llm.c's debug state file (written by an llm.c-style port, in llm.c's layout) against HF's model on the
    file's own batch."""
    yours = read_llmc_state(path, hf.config)
    return judge_dump(yours, hf_training_step(hf, yours.x, yours.y), hf.config, model=model, label=label)
