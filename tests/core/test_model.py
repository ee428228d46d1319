"""Our GPT-2 against HuggingFace's GPT2LMHeadModel: logits, hidden states, KV cache, port and loader errors."""

import pytest
import torch
from conftest import DISTIL, GPT2_124M, ODD, TINY
from transformers import GPT2Config

from core import (
    ContextLengthError,
    GPTConfig,
    ModelNotAvailableError,
    PortError,
    UnsupportedConfigError,
    load_pretrained,
    port_from_hf,
)
from core.structured import random_gpt2

TOL = 1e-4  # fp32 max |Δlogit| allowed between ours and HF's


def _max_diff(a, b):
    return (a - b).abs().max().item()


CASES = [
    pytest.param(TINY, 3.0, id="tiny-2L"),
    pytest.param(ODD, 4.0, id="odd-3L-5H-80d"),
    pytest.param(DISTIL, 3.0, id="distilgpt2-shape", marks=pytest.mark.slow),
    pytest.param(GPT2_124M, 2.0, id="gpt2-124M-shape", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("shape,sharpen", CASES)
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_logits_match_hf_at_full_context(shape, sharpen, attn):
    hf = random_gpt2(seed=1, logit_std=sharpen, attn_implementation=attn, wte_scale=3.0, **shape)
    ours = port_from_hf(hf)
    T = shape["n_positions"]
    idx = torch.randint(0, hf.config.vocab_size, (2, T), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf(idx).logits
        got = ours(idx)
    assert got.shape == (2, T, 50257)
    assert ref.std() > 0.5, "the test model should have non-flat logits"
    assert _max_diff(got, ref) <= TOL


def test_hidden_states_match_hf(tiny_pair):
    ours, hf = tiny_pair
    idx = torch.randint(0, 50257, (3, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = hf(idx, output_hidden_states=True).hidden_states
        got = ours(idx, return_hidden=True).hidden
    n = hf.config.n_layer
    assert len(ref) == n + 1 and len(got) == n + 2
    for i in range(n):  # HF: embeddings, then the input of each later block
        torch.testing.assert_close(got[i], ref[i], rtol=1e-5, atol=1e-5, msg=f"layer {i}")
    torch.testing.assert_close(got[-1], ref[-1], rtol=1e-5, atol=1e-5)  # HF puts ln_f's output last


@pytest.mark.parametrize("layout", ["shared", "decode"])
def test_kv_cache_decoding_equals_full_recompute(layout):
    hf = random_gpt2(seed=4, **ODD)
    ours = port_from_hf(hf)
    if layout == "decode":
        ours.use_decode_layout()
        assert ours.transformer.h[0].mlp.c_fc.weight.is_contiguous()
    B, prompt, steps = 3, 7, 20
    idx = torch.randint(0, 50257, (B, prompt + steps), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full = ours(idx)
        cache = ours.new_cache(B, prompt + steps)
        pre = ours(idx[:, :prompt], cache, last_only=True)
        assert _max_diff(pre[:, -1], full[:, prompt - 1]) <= 1e-5
        for t in range(prompt, prompt + steps):
            step = ours(idx[:, t : t + 1], cache)
            assert _max_diff(step[:, -1], full[:, t]) <= 1e-5, f"step {t}"
        assert cache.pos == prompt + steps
        # a multi-token chunk after a cached prefix uses the offset causal mask
        cache = ours.new_cache(B, prompt + steps)
        ours(idx[:, :prompt], cache)
        chunk = ours(idx[:, prompt:], cache)
        assert _max_diff(chunk, full[:, prompt:]) <= 1e-5


def test_context_length_is_refused_clearly(tiny_pair):
    ours, _ = tiny_pair
    n = ours.config.n_positions
    with pytest.raises(ContextLengthError, match=f"n_positions={n}"):
        ours(torch.zeros(1, n + 1, dtype=torch.long))
    cache = ours.new_cache(1, n)
    ours(torch.zeros(1, n - 1, dtype=torch.long), cache)
    with pytest.raises(ContextLengthError):
        ours(torch.zeros(1, 2, dtype=torch.long), cache)


def test_port_shares_storage_and_ties_head(tiny_pair):
    ours, hf = tiny_pair
    assert ours.transformer.wte.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()
    assert ours.lm_head.weight is ours.transformer.wte.weight
    w_ours = ours.transformer.h[0].attn.c_attn.weight
    w_hf = hf.transformer.h[0].attn.c_attn.weight
    assert w_ours.data_ptr() == w_hf.data_ptr() and torch.equal(w_ours, w_hf.t())


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "pytorch_model.bin"])
def test_load_pretrained_round_trip_from_save_pretrained(tmp_path, safe):
    hf = random_gpt2(seed=6, **ODD)
    if safe:
        hf.save_pretrained(tmp_path)
    else:  # transformers 5 only writes safetensors; older checkpoints on the Hub ship a pickled .bin
        hf.config.save_pretrained(tmp_path)
        torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    assert (tmp_path / ("model.safetensors" if safe else "pytorch_model.bin")).is_file()
    ours = load_pretrained(tmp_path)
    idx = torch.randint(0, 50257, (2, 30), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert _max_diff(ours(idx), hf(idx).logits) <= TOL


def test_old_style_checkpoint_keys_port(tiny_hf):
    """The Hub's `gpt2` files were saved from GPT2Model: no `transformer.` prefix, plus attn.bias buffers."""
    sd = {k.removeprefix("transformer."): v for k, v in tiny_hf.state_dict().items() if k != "lm_head.weight"}
    n_pos = tiny_hf.config.n_positions
    for i in range(tiny_hf.config.n_layer):
        sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n_pos, n_pos)).view(1, 1, n_pos, n_pos)
        sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    ours = port_from_hf(sd, tiny_hf.config)
    idx = torch.randint(0, 50257, (1, 12), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        assert _max_diff(ours(idx), tiny_hf(idx).logits) <= TOL


def test_untied_head_is_ported():
    hf = random_gpt2(seed=9, logit_std=None, tie_word_embeddings=False, **TINY)
    assert hf.lm_head.weight.data_ptr() != hf.transformer.wte.weight.data_ptr()
    ours = port_from_hf(hf)
    assert ours.lm_head.weight is not ours.transformer.wte.weight
    idx = torch.randint(0, 50257, (1, 9), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        assert _max_diff(ours(idx), hf(idx).logits) <= TOL


def _tiny_sd(tiny_hf):
    return dict(tiny_hf.state_dict())


def test_port_error_names_missing_key(tiny_hf):
    sd = _tiny_sd(tiny_hf)
    del sd["transformer.h.1.mlp.c_fc.bias"]
    with pytest.raises(PortError, match=r"missing keys: transformer\.h\.1\.mlp\.c_fc\.bias"):
        port_from_hf(sd, tiny_hf.config)


def test_port_error_names_unexpected_key(tiny_hf):
    sd = _tiny_sd(tiny_hf)
    sd["transformer.h.0.attn.q_attn.weight"] = torch.zeros(32, 32)
    with pytest.raises(PortError, match=r"unexpected keys: transformer\.h\.0\.attn\.q_attn\.weight"):
        port_from_hf(sd, tiny_hf.config)


def test_port_error_names_wrong_shape(tiny_hf):
    sd = _tiny_sd(tiny_hf)
    sd["transformer.h.0.attn.c_proj.weight"] = torch.zeros(32, 33)
    with pytest.raises(PortError, match=r"wrong shapes: transformer\.h\.0\.attn\.c_proj\.weight: got \(32, 33\), "
                       r"expected \(32, 32\)") as info:
        port_from_hf(sd, tiny_hf.config)
    assert "missing" not in str(info.value)


def test_port_reports_every_problem_at_once(tiny_hf):
    sd = _tiny_sd(tiny_hf)
    del sd["transformer.ln_f.weight"]
    sd["transformer.extra"] = torch.zeros(1)
    sd["transformer.wpe.weight"] = torch.zeros(3, 32)
    with pytest.raises(PortError) as info:
        port_from_hf(sd, tiny_hf.config)
    msg = str(info.value)
    assert "transformer.ln_f.weight" in msg and "transformer.extra" in msg and "transformer.wpe.weight" in msg


def test_state_dict_without_config_is_refused(tiny_hf):
    with pytest.raises(PortError, match="n_head"):
        port_from_hf(_tiny_sd(tiny_hf))


@pytest.mark.parametrize(
    "option,value",
    [
        ("scale_attn_by_inverse_layer_idx", True),
        ("reorder_and_upcast_attn", True),
        ("add_cross_attention", True),
        ("scale_attn_weights", False),
        ("activation_function", "relu"),
        ("activation_function", "gelu_fast"),
    ],
)
def test_unsupported_config_options_are_refused_by_name(option, value):
    config = GPT2Config(**TINY, **{option: value})
    with pytest.raises(UnsupportedConfigError, match=option):
        GPTConfig.from_hf(config)


@pytest.mark.parametrize("activation", ["gelu_new", "gelu_pytorch_tanh", "gelu"])
def test_supported_activations_match_hf(activation):
    hf = random_gpt2(seed=10, logit_std=None, wte_scale=3.0, activation_function=activation, **TINY)
    ours = port_from_hf(hf)
    idx = torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        assert _max_diff(ours(idx), hf(idx).logits) <= TOL


def test_loader_errors_are_clear_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelNotAvailableError, match="pass a local checkpoint directory"):
        load_pretrained("gpt2")
    with pytest.raises(ModelNotAvailableError, match="no checkpoint directory"):
        load_pretrained(str(tmp_path / "does-not-exist"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotAvailableError, match="config.json"):
        load_pretrained(tmp_path / "empty")


def test_load_pretrained_dtype_and_device(tiny_checkpoint):
    ours = load_pretrained(tiny_checkpoint, device="cpu", dtype=torch.bfloat16)
    assert ours.dtype == torch.bfloat16 and ours.device.type == "cpu"
    assert ours.lm_head.weight is ours.transformer.wte.weight


def test_decode_layout_matches_hf_and_bf16_prepack_is_exact():
    hf = random_gpt2(seed=13, **ODD)
    idx = torch.randint(0, 50257, (3, 1), generator=torch.Generator().manual_seed(14))
    fast = port_from_hf(hf).use_decode_layout()
    with torch.no_grad():
        assert _max_diff(fast(idx), hf(idx).logits) <= TOL  # (out, in) weights, this process's linear kernel
    plain = port_from_hf(hf).to(torch.bfloat16)
    packed = port_from_hf(hf).to(torch.bfloat16).use_decode_layout()
    with torch.no_grad():
        assert torch.equal(packed(idx), plain(idx))
    from core.kernels import bf16_prepack_available

    assert (packed.transformer.h[0].attn.c_attn.packed is not None) == bf16_prepack_available()
