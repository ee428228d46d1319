"""Training parity by files: the dump format's training kind (a reference exported from HF, a result written from
another implementation's own run) and llm.c's debug state layout, written here by the test itself."""

import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY

from core.parity.dump import DumpError
from core.parity.train_dump import (compare_llmc_state, compare_training_dump, export_training_reference,
                                    load_training, save_training, training_result_manifest)
from core.structured import VARIED_PARAMS, random_gpt2
from examples.my_gpt2 import from_hf_state_dict


@pytest.fixture(scope="module")
def hf():
    return random_gpt2(seed=2, vocab_size=1000, bos_token_id=0, eos_token_id=0, **VARIED_PARAMS, **TINY)


def _hf_step(hf, x, y):
    """HF's loss, logits and gradients, computed here (the test's own reference run)."""
    hf.zero_grad(set_to_none=True)
    logits = hf(input_ids=x).logits
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
    loss.backward()
    grads = {n: p.grad.clone() for n, p in hf.named_parameters()}
    hf.zero_grad(set_to_none=True)
    return loss.detach(), logits.detach(), grads


def _mine_in_hf_layout(hf, x, y):
    """examples/my_gpt2.py's own training step, its gradients put in HF's layout by hand (q/k/v re-fused)."""
    m = from_hf_state_dict(hf.state_dict(), hf.config).train()
    logits, loss = m(x, y)
    loss.backward()
    d = m.decoder
    g = {"transformer.wte.weight": d.tokens.weight.grad, "transformer.wpe.weight": d.positions.weight.grad,
         "transformer.ln_f.weight": d.norm.weight.grad, "transformer.ln_f.bias": d.norm.bias.grad}
    for i, b in enumerate(d.blocks):
        p, a = f"transformer.h.{i}.", b.attention
        g[p + "ln_1.weight"], g[p + "ln_1.bias"] = b.norm1.weight.grad, b.norm1.bias.grad
        g[p + "ln_2.weight"], g[p + "ln_2.bias"] = b.norm2.weight.grad, b.norm2.bias.grad
        g[p + "attn.c_attn.weight"] = torch.cat([a.query.weight.grad, a.key.weight.grad, a.value.weight.grad]).t()
        g[p + "attn.c_attn.bias"] = torch.cat([a.query.bias.grad, a.key.bias.grad, a.value.bias.grad])
        g[p + "attn.c_proj.weight"], g[p + "attn.c_proj.bias"] = a.out.weight.grad.t(), a.out.bias.grad
        g[p + "mlp.c_fc.weight"], g[p + "mlp.c_fc.bias"] = b.ffn.up.weight.grad.t(), b.ffn.up.bias.grad
        g[p + "mlp.c_proj.weight"], g[p + "mlp.c_proj.bias"] = b.ffn.down.weight.grad.t(), b.ffn.down.bias.grad
    return loss.detach(), logits.detach(), g


def test_training_kind_round_trip(hf, tmp_path):
    ref_path = export_training_reference(hf, tmp_path / "ref.safetensors", batch_size=2, seq_len=10, model="tiny")
    ref = load_training(ref_path, "training-reference")
    loss, logits, grads = _hf_step(hf, ref.x, ref.y)  # the reference holds HF's own numbers
    assert abs(ref.loss - float(loss)) < 1e-5 and torch.allclose(ref.grads["transformer.h.0.mlp.c_fc.weight"],
                                                                 grads["transformer.h.0.mlp.c_fc.weight"], atol=1e-6)
    loss, logits, g = _mine_in_hf_layout(hf, ref.x, ref.y)
    manifest = training_result_manifest(ref.manifest, {"name": "my_gpt2", "framework": "torch"})
    tensors = {"loss": loss.reshape(1), "logits": logits, **{f"grad.{n}": t for n, t in g.items()}}
    good = save_training(tmp_path / "good.safetensors", manifest, tensors)
    r = compare_training_dump(ref_path, good)
    assert r.agree, r.verdict
    bad = dict(tensors)
    bad["grad.transformer.h.0.mlp.c_fc.weight"] = bad["grad.transformer.h.0.mlp.c_fc.weight"] * 1.01
    r = compare_training_dump(ref_path, save_training(tmp_path / "bad.safetensors", manifest, bad))
    assert not r.agree and r.first_diverging_parameter == "transformer.h.0.mlp.c_fc.weight"
    with pytest.raises(DumpError, match="training-result"):
        compare_training_dump(ref_path, ref_path)


def _write_llmc_state(path, x, y, logits, loss, grads, L, vp, transpose=True):
    """llm.c's write_state layout (train_gpt2.py), written by hand: header, x, y, logits, loss, gradients."""
    header = np.zeros(256, dtype="<i4")
    header[:4] = [20240327, 2, x.size(0), x.size(1)]
    order = ["transformer.wte.weight", "transformer.wpe.weight"]
    for kind in ("attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight", "attn.c_proj.bias",
                 "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias", "ln_1.weight",
                 "ln_1.bias", "ln_2.weight", "ln_2.bias"):
        order += [f"transformer.h.{i}.{kind}" for i in range(L)]
    order += ["transformer.ln_f.weight", "transformer.ln_f.bias"]
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(x.numpy().astype("<i4").tobytes())
        f.write(y.numpy().astype("<i4").tobytes())
        f.write(logits.numpy().astype("<f4").tobytes())
        f.write(struct.pack("<f", float(loss)))
        for name in order:
            t = grads[name]
            if name == "transformer.wte.weight":  # newer llm.c pads the vocabulary with zero rows
                t = torch.cat([t, torch.zeros(vp - t.size(0), t.size(1))])
            elif name.endswith("weight") and t.dim() == 2 and name != "transformer.wpe.weight" and transpose:
                t = t.t()  # llm.c keeps nn.Linear's (out, in)
            f.write(t.contiguous().numpy().astype("<f4").tobytes())


def test_llmc_debug_state_layout(hf, tmp_path):
    x = torch.randint(0, 1000, (2, 8), generator=torch.Generator().manual_seed(3))
    y = torch.roll(x, -1, dims=1)
    loss, logits, grads = _hf_step(hf, x, y)
    path = tmp_path / "gpt2_debug_state.bin"
    _write_llmc_state(path, x, y, logits, loss, grads, hf.config.n_layer, vp=1024)
    r = compare_llmc_state(path, hf)
    assert r.agree, r.verdict
    assert r.batch["batch_size"] == 2 and r.batch["seq_len"] == 8
    # a port that wrote its matmul gradients in HF's (in, out) layout instead of llm.c's is caught at the first
    _write_llmc_state(path, x, y, logits, loss, grads, hf.config.n_layer, vp=1024, transpose=False)
    r = compare_llmc_state(path, hf)
    assert not r.agree and r.first_diverging_parameter == "transformer.h.1.attn.c_attn.weight"
    path.write_bytes(b"\0" * 2048)
    with pytest.raises(DumpError, match="magic"):
        compare_llmc_state(path, hf)
